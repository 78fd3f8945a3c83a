"""GAS vs REST vs REST-IS vs VISAGNN in the many-small-batches regime.

Real graph (Amazon Photo, seeded random split) and a synthetic one, >= 40
batches per epoch, evaluation *without* refreshing the training histories
(``--no-eval-refresh`` semantics: scratch tables), several seeds per method at
equal epochs.  Prints a table, writes ``benchmarks/out/bench_staleness.json`` and
``bench_staleness.png``.  ``true_staleness`` = ||H_bar - H|| / ||H|| of history
table 0 after the last epoch, against the exact recompute evaluation just made.

Default configuration (2 cores: ~15 min)::

    python benchmarks/bench_staleness.py
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT_DIR, machine  # noqa: E402

from oocgnn.staleness.control import StalenessConfig, StalenessControl  # noqa: E402
from oocgnn.staleness.driver import train_epoch  # noqa: E402
from oocgnn.staleness.metrics import compare_tables  # noqa: E402
from oocgnn.store.reader import open_dataset  # noqa: E402
from oocgnn.train.config import EvalConfig, IOConfig, ModelConfig, OptimConfig, RunConfig  # noqa: E402
from oocgnn.train.evaluate import _scratch, evaluate  # noqa: E402
from oocgnn.train.loop import Trainer  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"

METHODS = {
    "GAS": StalenessConfig(method="gas"),
    "REST": StalenessConfig(method="rest", refresh_per_step=2.0),
    "REST-IS": StalenessConfig(method="rest-is", refresh_per_step=2.0),
    "VISAGNN": StalenessConfig(method="visagnn", stale_loss_weight=0.3),
}


def prepare(work: Path, name: str, partitions: int) -> Path:
    out = work / f"store_{name}"
    cmd = [sys.executable, "-m", "oocgnn.cli.main", "prepare"]
    pyg = {"photo": ("Amazon", "Photo"), "cs": ("Coauthor", "CS")}
    if name in pyg:
        cls, dname = pyg[name]
        root = work / f"pyg_{cls}"
        if not root.exists():
            shutil.copytree(SHARED / cls, root)
        cmd += ["pyg", "--class", cls, "--name", dname, "--root", str(root)]
    else:
        cmd += ["synthetic", "--nodes", "8000", "--edges", "80000", "--features", "32", "--classes", "8"]
    cmd += ["--partitions", str(partitions), "--out", str(out), "--no-progress"]
    subprocess.run(cmd, check=True, capture_output=True)
    return out


def run_one(store: Path, scfg: StalenessConfig, model: str, seed: int, epochs: int, hidden: int,
            layers: int = 3, lr: float = 0.01, dropout: float = 0.3, heads: int = 2) -> dict:
    ds = open_dataset(store)
    cfg = RunConfig(model=ModelConfig(name=model, layers=layers, hidden=hidden, dropout=dropout),
                    train=OptimConfig(lr=lr, epochs=epochs, parts_per_batch=1, seed=seed),
                    io=IOConfig(io_threads=1, prefetch=1, cache="none", in_memory=True),
                    eval=EvalConfig(eval_refresh=False), staleness=scfg)
    ctl = StalenessControl(scfg, ds.num_nodes, ds.indptr, ds.indices, ds.partition_ptr, 1, seed, layers - 1,
                           ds.num_classes)
    torch.manual_seed(seed)
    kw = {"heads": heads} if model == "gat" else {}
    mobj = ctl.build_model(model, ds.num_features, hidden, ds.num_classes, layers, dropout=dropout, **kw)
    if mobj is None:
        from oocgnn.models import build_model
        mobj = build_model(model, ds.num_features, hidden, ds.num_classes, layers, dropout=dropout, **kw)
    tr = Trainer(ds, cfg, None, model=mobj)
    times, recs = [], []
    try:
        for _ in range(epochs):
            rec = train_epoch(tr, ctl)
            times.append(rec["epoch_time_s"])
            recs.append(rec)
        accs, _ = evaluate(tr, refresh=False)
        true = compare_tables(tr.histories, _scratch(tr))
    finally:
        tr.close()
    last = recs[-1]
    return {"test_acc": accs["test_acc"], "valid_acc": accs["valid_acc"], "true_staleness": true["true_staleness_0"],
            "epoch_time_s": float(np.mean(times)), "age_mean": last["age_mean_0"], "batches": last["batches"],
            "train_batches": last["train_batches"], "refresh_passes": last["refresh_passes"],
            "push_drift": last["push_drift_0"], "curve": [r["loss"] for r in recs]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", default="photo,synthetic", help="comma list of photo, cs, synthetic")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--partitions", type=int, default=40, help=">= 40 batches per epoch (1 partition per batch)")
    p.add_argument("--model", default="gat",
                   help="backbone for every method (VISAGNN's paper uses GAT; a 3-layer GCN collapsed on Photo here)")
    p.add_argument("--hidden", type=int, default=16)
    p.add_argument("--layers", type=int, default=3, help="message-passing layers (layers-1 history tables)")
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--dropout", type=float, default=0.3)
    p.add_argument("--heads", type=int, default=2, help="GAT heads in hidden layers")
    p.add_argument("--out", default="bench_staleness", help="basename of the JSON/PNG in benchmarks/out")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(2)
    work = Path(tempfile.mkdtemp(prefix="bench_staleness_"))
    results: dict = {"machine": machine(), "args": vars(args), "runs": {}}
    t_all = time.perf_counter()
    try:
        for name in args.datasets.split(","):
            store = prepare(work, name, args.partitions)
            for method in args.methods.split(","):
                rows = [run_one(store, METHODS[method], args.model, s, args.epochs, args.hidden, args.layers,
                                args.lr, args.dropout, args.heads)
                        for s in range(args.seeds)]
                results["runs"][f"{name}/{method}"] = rows
                acc = np.array([r["test_acc"] for r in rows]) * 100
                st = np.array([r["true_staleness"] for r in rows])
                print(f"{name:10s} {method:8s} test {acc.mean():6.2f} ± {acc.std():4.2f}  "
                      f"true-stale {st.mean():.3f} ± {st.std():.3f}  age {np.mean([r['age_mean'] for r in rows]):6.1f}"
                      f"  {np.mean([r['epoch_time_s'] for r in rows]):5.2f} s/epoch  "
                      f"batches {rows[0]['batches']} (train {rows[0]['train_batches']})", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results["total_s"] = time.perf_counter() - t_all
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    (OUT_DIR / f"{args.out}.json").write_text(json.dumps(results, indent=1))
    plot(results, OUT_DIR / f"{args.out}.png")
    print(f"total {results['total_s']:.0f} s; wrote {OUT_DIR / (args.out + '.json')} and .png")
    return 0


def plot(results: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(results["runs"])
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, field, label in zip(axes, ("test_acc", "true_staleness", "epoch_time_s"),
                                ("test accuracy", "true staleness (table 0)", "s / epoch")):
        vals = [[r[field] for r in results["runs"][k]] for k in keys]
        ax.bar(range(len(keys)), [np.mean(v) for v in vals], yerr=[np.std(v) for v in vals], capsize=3)
        ax.set_xticks(range(len(keys)), keys, rotation=45, ha="right", fontsize=8)
        ax.set_title(label)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
