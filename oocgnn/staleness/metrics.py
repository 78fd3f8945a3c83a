"""Staleness metrics per history table, one flat record per epoch.

Keys (``l`` = history table, i.e. the output of model layer ``l`` read by layer
``l + 1``), all cheap unless marked:

``age_mean_l, age_p90_l, age_max_l``
    age in optimizer steps of the halo rows training steps pulled (written rows);
``never_frac_l``
    fraction of pulled rows never written (they hold zeros);
``grad_norm_l``
    mean L2 norm of the loss gradient w.r.t. a pulled row (the pulled tensor is
    made a leaf with ``requires_grad`` and its ``.grad`` read after backward);
``push_drift_l``
    ``||h_new - h_old|| / ||h_new||`` over every push of the epoch (Frobenius,
    pooled), ``h_old`` read back exactly through the push log before the push;
``refresh_passes, rows_refreshed``
    forward-only (REST) passes and the batch rows they pushed;
``true_staleness_l`` (expensive, ``--measure-true-staleness``)
    ``||H_bar - H|| / ||H||`` over all rows of table ``l``, ``H`` an exact
    recompute with the current parameters into scratch tables (eval semantics).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from oocgnn.batch import SubgraphBatch
from oocgnn.batching import Ranges
from oocgnn.history import HistorySet


def enable_halo_grads(batch: SubgraphBatch) -> None:
    """Make every pulled halo tensor a leaf that records its gradient."""
    batch.halo_hist = [h.detach().requires_grad_(True) for h in batch.halo_hist]


def halo_grad_norms(batch: SubgraphBatch) -> list[Tensor | None]:
    """Per table, the [H] gradient norms of the pulled rows (None if no gradient reached them)."""
    return [None if h.grad is None else h.grad.detach().norm(dim=1) for h in batch.halo_hist]


def read_rows_exact(histories: HistorySet, table: int, ranges: Ranges, rows: int) -> Tensor:
    """Current value of a batch's rows in ``table`` including pushes not yet landed."""
    from oocgnn.batching import ranges_to_ids

    snap = histories.snapshot_seq()
    out = torch.empty(rows, histories.tables[table].channels)
    histories.tables[table].read_ranges(ranges, out)
    histories.patch(table, ranges_to_ids(ranges), out, snap)
    return out


class StalenessMeter:
    """Accumulates one epoch of staleness statistics (reset by :meth:`record`)."""

    def __init__(self, num_tables: int, age_sample_cap: int = 1 << 18) -> None:
        self.num_tables, self.cap = int(num_tables), int(age_sample_cap)
        self.reset()

    def reset(self) -> None:
        t = self.num_tables
        self._ages: list[list[np.ndarray]] = [[] for _ in range(t)]
        self._kept = [0] * t
        self._stride = [1] * t
        self._age_sum = [0.0] * t
        self._age_n = [0] * t
        self._age_max = [-1] * t
        self._never = [0] * t
        self._pulled = [0] * t
        self._grad_sum = [0.0] * t
        self._grad_n = [0] * t
        self._drift_num = [0.0] * t
        self._drift_den = [0.0] * t
        self.refresh_passes = 0
        self.rows_refreshed = 0

    def observe_ages(self, batch: SubgraphBatch) -> None:
        for t, a in enumerate(batch.hist_age[: self.num_tables]):
            a = a.numpy() if isinstance(a, Tensor) else np.asarray(a)
            self._pulled[t] += len(a)
            never = a < 0
            self._never[t] += int(never.sum())
            w = a[~never]
            if len(w) == 0:
                continue
            self._age_sum[t] += float(w.sum())
            self._age_n[t] += len(w)
            self._age_max[t] = max(self._age_max[t], int(w.max()))
            sample = w[:: self._stride[t]].copy()
            self._ages[t].append(sample)
            self._kept[t] += len(sample)
            if self._kept[t] > self.cap:  # decimate: keep every 2nd sample from now on
                self._ages[t] = [np.concatenate(self._ages[t])[::2]]
                self._kept[t] = len(self._ages[t][0])
                self._stride[t] *= 2

    def observe_grads(self, norms: list[Tensor | None]) -> None:
        for t, g in enumerate(norms[: self.num_tables]):
            if g is not None and g.numel():
                self._grad_sum[t] += float(g.sum())
                self._grad_n[t] += int(g.numel())

    def observe_drift(self, table: int, new: Tensor, old: Tensor) -> None:
        new = new.detach().float().cpu()
        self._drift_num[table] += float((new - old).pow(2).sum())
        self._drift_den[table] += float(new.pow(2).sum())

    def observe_refresh(self, rows: int) -> None:
        self.refresh_passes += 1
        self.rows_refreshed += int(rows)

    def record(self) -> dict[str, Any]:
        """The epoch's flat metrics (None where nothing was observed), then reset."""
        rec: dict[str, Any] = {"refresh_passes": self.refresh_passes, "rows_refreshed": self.rows_refreshed}
        for t in range(self.num_tables):
            ages = np.concatenate(self._ages[t]) if self._ages[t] else np.empty(0)
            rec[f"age_mean_{t}"] = self._age_sum[t] / self._age_n[t] if self._age_n[t] else None
            rec[f"age_p90_{t}"] = float(np.percentile(ages, 90)) if len(ages) else None
            rec[f"age_max_{t}"] = self._age_max[t] if self._age_n[t] else None
            rec[f"never_frac_{t}"] = self._never[t] / self._pulled[t] if self._pulled[t] else None
            rec[f"grad_norm_{t}"] = self._grad_sum[t] / self._grad_n[t] if self._grad_n[t] else None
            rec[f"push_drift_{t}"] = (float(np.sqrt(self._drift_num[t] / self._drift_den[t]))
                                      if self._drift_den[t] > 0 else None)
        self.reset()
        return rec


def compare_tables(stale: HistorySet, exact: HistorySet, block_rows: int = 1 << 15) -> dict[str, float]:
    """``true_staleness_l = ||stale_l - exact_l||_F / ||exact_l||_F`` per table, streamed."""
    stale.flush()
    exact.flush()
    out = {}
    for t, (a, b) in enumerate(zip(stale.tables, exact.tables)):
        num = den = 0.0
        for s in range(0, a.num_nodes, block_rows):
            e = min(a.num_nodes, s + block_rows)
            x = np.asarray(a.array[s:e], dtype=np.float64)
            y = np.asarray(b.array[s:e], dtype=np.float64)
            num += float(((x - y) ** 2).sum())
            den += float((y ** 2).sum())
        out[f"true_staleness_{t}"] = float(np.sqrt(num / den)) if den > 0 else float("nan")
    return out


def true_staleness(trainer: Any) -> dict[str, float]:
    """Exact layer-wise recompute into scratch tables, then :func:`compare_tables`.

    ``trainer.exact_histories()`` recomputes into evaluation's scratch tables, so the
    training histories and their last-push steps are untouched.  Costs one full inference.
    """
    return compare_tables(trainer.histories, trainer.exact_histories())
