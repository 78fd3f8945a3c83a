"""``oocgnn report RUN [RUN ...] --out report.png``: runs overlaid, one figure.

Six panels from each ``RUN/metrics.jsonl``: accuracy (test solid, valid dashed),
training loss, staleness (mean age of pulled rows of history table 0 solid, and
``true_staleness_0`` dashed on a twin axis when measured), staleness detail (push
drift of table 0 solid, gradient norm of its pulled rows dashed on a twin axis),
refreshes (REST refresh passes per epoch solid, p90 age of pulled rows of table 0
dashed on a twin axis) and I/O (MB read per epoch solid, I/O wait fraction dashed
on a twin axis).  The x-axis is the epoch; missing metrics leave a panel empty.
Runs are labelled by their directory name (or ``--labels``).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from oocgnn.errors import ConfigError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="plot accuracy, loss, staleness and I/O of runs into one PNG",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path, metavar="RUN", help="run directories holding metrics.jsonl")
    p.add_argument("--out", type=Path, default=Path("report.png"), help="output PNG (default report.png)")
    p.add_argument("--labels", nargs="+", help="legend labels, one per RUN (default: directory names)")
    p.add_argument("--title", default=None, help="figure title")
    p.set_defaults(func=run)


def load_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise ConfigError(f"{run_dir}: no metrics.jsonl; pass run directories made by `oocgnn train`")
    with open(path, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    if not rows:
        raise ConfigError(f"{path} is empty: the run has not finished an epoch yet")
    return rows


def _series(rows: list[dict[str, Any]], key: str, scale: float = 1.0) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for i, r in enumerate(rows):
        v = r.get(key)
        if isinstance(v, (int, float)):
            xs.append(float(r.get("epoch", i + 1)))
            ys.append(float(v) * scale)
    return xs, ys


def plot_runs(runs: dict[str, list[dict[str, Any]]], out: Path, title: str | None = None) -> Path:
    """Draw the four panels for ``{label: metrics rows}`` and save ``out`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(18, 8))
    (ax_acc, ax_loss, ax_io), (ax_st, ax_drift, ax_ref) = axes
    ax_true, ax_wait, ax_grad, ax_p90 = ax_st.twinx(), ax_io.twinx(), ax_drift.twinx(), ax_ref.twinx()
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (label, rows) in enumerate(runs.items()):
        c = colors[i % len(colors)]
        ax_acc.plot(*_series(rows, "test_acc", 100), color=c, label=label)
        ax_acc.plot(*_series(rows, "valid_acc", 100), color=c, ls="--", alpha=0.6)
        ax_loss.plot(*_series(rows, "loss"), color=c, label=label)
        key = "age_mean_0" if any("age_mean_0" in r for r in rows) else "hist_age_mean"
        ax_st.plot(*_series(rows, key), color=c, label=label)
        ax_true.plot(*_series(rows, "true_staleness_0"), color=c, ls="--")
        ax_io.plot(*_series(rows, "bytes_read", 1e-6), color=c, label=label)
        ax_wait.plot(*_series(rows, "io_wait_fraction"), color=c, ls="--")
        ax_drift.plot(*_series(rows, "push_drift_0"), color=c, label=label)
        ax_grad.plot(*_series(rows, "grad_norm_0"), color=c, ls="--")
        ax_ref.plot(*_series(rows, "refresh_passes"), color=c, label=label)
        ax_p90.plot(*_series(rows, "age_p90_0"), color=c, ls="--")
    ax_acc.set(title="accuracy (test solid, valid dashed)", xlabel="epoch", ylabel="%")
    ax_loss.set(title="training loss", xlabel="epoch", ylabel="cross-entropy")
    ax_st.set(title="staleness (age of pulled rows solid, true staleness dashed)", xlabel="epoch",
              ylabel="mean age, table 0 [steps]")
    ax_true.set_ylabel("||h_bar - h|| / ||h||, table 0")
    ax_io.set(title="I/O (MB read solid, I/O wait fraction dashed)", xlabel="epoch", ylabel="MB read / epoch")
    ax_wait.set_ylabel("I/O wait fraction")
    ax_drift.set(title="push drift solid, grad norm of pulled rows dashed", xlabel="epoch",
                 ylabel="||h_new - h_old|| / ||h_new||, table 0")
    ax_grad.set_ylabel("mean ||dL/dh_bar||, table 0")
    ax_ref.set(title="REST refresh passes solid, p90 age dashed", xlabel="epoch", ylabel="refresh passes / epoch")
    ax_p90.set_ylabel("p90 age, table 0 [steps]")
    for ax in (ax_acc, ax_loss, ax_st, ax_io, ax_drift, ax_ref):
        ax.grid(alpha=0.3)
    ax_acc.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(out)
    return out


def run(args: argparse.Namespace) -> int:
    labels = args.labels or [Path(r).name or str(r) for r in args.runs]
    if len(labels) != len(args.runs):
        raise ConfigError(f"--labels has {len(labels)} entries for {len(args.runs)} runs; give one per RUN")
    runs = {}
    for label, r in zip(labels, args.runs):
        runs[label if label not in runs else f"{label} ({r})"] = load_metrics(r)
    out = plot_runs(runs, args.out, args.title)
    print(f"wrote {out}")
    return 0
