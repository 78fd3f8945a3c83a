"""Run metrics: one JSON line per epoch in ``RUN/metrics.jsonl`` and ``RUN/summary.json``.

Lines are appended and fsynced so a killed run keeps every finished epoch; the
summary is written atomically at the end.  Keys (per epoch): ``epoch, step, loss,
train_acc, valid_acc, test_acc, epoch_time_s, io_wait_s, io_wait_fraction,
bytes_read, bytes_written, peak_rss_bytes`` plus read-path counters (halo rows,
rows patched from pending pushes / the table, rows read stale within the bound,
mean age of pulled history rows) and cache counters, plus the staleness metrics
of :mod:`oocgnn.staleness.metrics` per history table ``l``: ``age_mean_l,
age_p90_l, age_max_l, never_frac_l, grad_norm_l, push_drift_l``, ``refresh_passes,
rows_refreshed, train_batches, method`` and, with ``--measure-true-staleness``,
``true_staleness_l``.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from oocgnn.utils.atomic import atomic_write_json

METRICS = "metrics.jsonl"
SUMMARY = "summary.json"


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if hasattr(v, "item"):
        return v.item()
    return v


class MetricsLog:
    """Appends epoch records to ``RUN/metrics.jsonl``."""

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / METRICS

    def append(self, record: dict[str, Any]) -> None:
        line = json.dumps({k: _clean(v) for k, v in record.items()}, sort_keys=True) + "\n"
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        with open(self.path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]


def write_summary(run_dir: str | Path, summary: dict[str, Any]) -> None:
    atomic_write_json(Path(run_dir) / SUMMARY, {k: _clean(v) for k, v in summary.items()})


class AgeTally:
    """Ages of the halo history rows an epoch's training steps read, pooled over tables and steps."""

    def __init__(self) -> None:
        self.total = self.rows = self.never = 0

    def add(self, ages: list[Any]) -> None:
        """``ages``: one tensor per table, steps since each halo row's last push (-1 = never written)."""
        for a in ages:
            a = a.numpy()
            self.never += int((a < 0).sum())
            self.total += int(a[a >= 0].sum())
            self.rows += int((a >= 0).sum())

    def record(self) -> dict[str, Any]:
        return {"hist_age_mean": self.total / self.rows if self.rows else None, "hist_never_written": self.never}


def read_path_record(stats: Any, elapsed: float, bytes_written: int) -> dict[str, Any]:
    """The epoch's I/O counters (a prefetcher's ``IOStats``) as metrics keys."""
    return {
        "io_wait_s": stats.io_wait_s, "io_wait_fraction": stats.io_wait_s / elapsed if elapsed > 0 else 0.0,
        "batches": stats.batches, "bytes_read": stats.feature_bytes + stats.history_bytes + stats.csr_bytes,
        "bytes_written": bytes_written, "history_bytes_read": stats.history_bytes,
        "feature_bytes_read": stats.feature_bytes, "halo_rows": stats.halo_rows, "batch_rows": stats.batch_rows,
        "patched_from_pending": stats.patched_pending, "patched_from_table": stats.patched_table,
        "stale_rows_read": stats.stale_rows, "early_releases": stats.early_releases}
