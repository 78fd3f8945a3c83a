"""Accuracy when batches are many: GAS, REST, REST-IS, VISAGNN against the full-batch ceiling.

Every graph too big for RAM is trained with many batches per epoch; this measures
what that costs.  For each dataset (Amazon Photo, Coauthor CS, CiteSeer from
``../shared/datasets``; the synthetic community graph) the store is cut into
``--partitions`` METIS parts once; ``B`` batches/epoch means ``partitions / B``
parts per batch.  Each method trains ``--epochs`` epochs per seed with the run
defaults of ``oocgnn train`` unless a flag here overrides them; evaluation is exact
layer-wise inference into scratch tables (``--no-eval-refresh``: evaluation never
refreshes the training histories), and the reported accuracy is the test accuracy
at the best validation epoch.  The **ceiling** is the same model and options trained
full-batch (one batch holding every partition: no halo, no history).
``true_staleness`` = ||H_bar - H|| / ||H|| of history table 0 after the last epoch,
against an exact recompute with the final parameters.

Prints a table, writes ``benchmarks/out/<out>.json`` (rows appended as they finish,
so a stopped sweep keeps what it measured) and ``<out>.png``: accuracy vs
batches/epoch, one line per method, the ceiling dashed.  Example (2 cores, ~1 h)::

    python benchmarks/bench_staleness.py --datasets photo,cs --batches 2,40 --seeds 5 --epochs 50

``--dtypes float32,float16`` repeats every run with float16 features (``prepare
--feature-dtype float16``) and float16 history tables (``--history-dtype float16``).
"""
from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT_DIR, machine  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
PYG = {"photo": ("Amazon", "Photo"), "cs": ("Coauthor", "CS"), "citeseer": ("Planetoid", "CiteSeer")}
#: method name -> [staleness] options (everything else: the run defaults)
METHODS: dict[str, dict[str, Any]] = {
    "GAS": {"method": "gas"},
    "REST": {"method": "rest"},
    "REST-IS": {"method": "rest-is"},
    "VISAGNN": {"method": "visagnn"},
}


def prepare(work: Path, name: str, partitions: int, dtype: str = "float32") -> Path:
    out = work / f"store_{name}_{partitions}" if dtype == "float32" else work / f"store_{name}_{partitions}_{dtype}"
    if (out / "COMPLETE").exists():
        return out
    cmd = [sys.executable, "-m", "oocgnn.cli.main", "prepare"]
    if name in PYG:
        cls, dname = PYG[name]
        root = work / f"pyg_{cls}"
        if not root.exists():
            shutil.copytree(SHARED / cls, root)
        cmd += ["pyg", "--class", cls, "--name", dname, "--root", str(root)]
    else:
        cmd += ["synthetic", "--nodes", "20000", "--edges", "200000", "--features", "32", "--classes", "8"]
    cmd += ["--partitions", str(partitions), "--partitioner", "metis", "--feature-dtype", dtype, "--out", str(out),
            "--no-progress"]
    subprocess.run(cmd, check=True, capture_output=True)
    return out


def run_one(job: dict[str, Any]) -> dict[str, Any]:
    """One (dataset, batches, model, layers, method, seed) training run, in this process."""
    import torch

    from oocgnn.config import (EvalConfig, IOConfig, ModelConfig, OptimConfig, RunConfig, StalenessConfig)
    from oocgnn.runner import make_trainer
    from oocgnn.staleness.metrics import compare_tables
    from oocgnn.store.reader import open_dataset
    from oocgnn.train.evaluate import evaluate

    torch.set_num_threads(1)
    logging.basicConfig(level=logging.ERROR)
    ds = open_dataset(job["store"])
    parts = ds.num_partitions if job["method"] == "ceiling" else job["parts_per_batch"]
    staleness = StalenessConfig(**({} if job["method"] == "ceiling" else METHODS[job["method"]]))
    train = {k: v for k, v in job["train"].items() if v is not None}
    model = {k: v for k, v in job["model"].items() if v is not None}
    cfg = RunConfig(model=ModelConfig(name=job["model_name"], layers=job["layers"], **model),
                    train=OptimConfig(epochs=job["epochs"], parts_per_batch=parts, seed=job["seed"], **train),
                    io=IOConfig(io_threads=1, prefetch=1, cache="none", in_memory=True,
                                history_dtype=job.get("dtype", "float32")),
                    eval=EvalConfig(eval_refresh=False), staleness=staleness)
    tr = make_trainer(ds, cfg, None)
    best = (-1.0, float("nan"), 0)
    times, refreshes, curve = [], 0, []
    try:
        for epoch in range(job["epochs"]):
            rec = tr.train_epoch()
            times.append(rec["epoch_time_s"])
            refreshes += rec.get("refresh_passes", 0)
            if (epoch + 1) % job["eval_every"] == 0 or epoch + 1 == job["epochs"]:
                accs, _ = evaluate(tr, refresh=False)
                curve.append((epoch + 1, accs["valid_acc"], accs["test_acc"]))
                if accs["valid_acc"] > best[0]:
                    best = (accs["valid_acc"], accs["test_acc"], epoch + 1)
        true = compare_tables(tr.histories, tr._eval_scratch)["true_staleness_0"] if len(tr.histories) else 0.0
    finally:
        tr.close()
    return {**{k: job[k] for k in ("dataset", "batches", "model_name", "layers", "method", "seed")},
            "dtype": job.get("dtype", "float32"),
            "valid_acc": best[0], "test_acc": best[1], "best_epoch": best[2], "true_staleness": true,
            "epoch_time_s": float(np.mean(times)), "refresh_passes_per_epoch": refreshes / job["epochs"],
            "train_batches_per_epoch": rec["train_batches"], "lr": tr.optimizer.param_groups[0]["lr"],
            "curve": curve}


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        # fp16 runs (features stored and histories kept in float16) are their own rows: "gcn fp16"
        model = r["model_name"] + ("" if r.get("dtype", "float32") == "float32" else " fp16")
        groups.setdefault((r["dataset"], model, r["layers"], r["batches"], r["method"]), []).append(r)
    out = []
    for (d, m, l, b, meth), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2], kv[0][3],
                                                                         list(METHODS).index(kv[0][4])
                                                                         if kv[0][4] in METHODS else -1)):
        acc = np.array([r["test_acc"] for r in rs]) * 100
        out.append({"dataset": d, "model": m, "layers": l, "batches": b, "method": meth, "seeds": len(rs),
                    "test_mean": float(acc.mean()), "test_std": float(acc.std()), "test_min": float(acc.min()),
                    "true_staleness": float(np.mean([r["true_staleness"] for r in rs])),
                    "epoch_time_s": float(np.mean([r["epoch_time_s"] for r in rs])),
                    "refresh_passes_per_epoch": float(np.mean([r["refresh_passes_per_epoch"] for r in rs])),
                    "lr": rs[0]["lr"]})
    return out


def table(summary: list[dict[str, Any]]) -> str:
    lines = ["| dataset | model | batches/epoch | method | test acc (mean ± std) | worst seed | vs ceiling | "
             "true staleness | s/epoch | refreshes/epoch | lr used |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    ceil = {(s["dataset"], s["model"], s["layers"]): s["test_mean"] for s in summary if s["method"] == "ceiling"}
    for s in summary:
        c = ceil.get((s["dataset"], s["model"], s["layers"]))
        gap = "" if c is None or s["method"] == "ceiling" else f"{s['test_mean'] - c:+.2f}"
        batches = "1 (full)" if s["method"] == "ceiling" else str(s["batches"])
        # the ceiling keeps no history; its table-0 value is only the dropout noise of training-mode pushes
        stale = f"({s['true_staleness']:.3f})" if s["method"] == "ceiling" else f"{s['true_staleness']:.3f}"
        lines.append(f"| {s['dataset']} | {s['model']} {s['layers']}L | {batches} | {s['method']} | "
                     f"{s['test_mean']:.2f} ± {s['test_std']:.2f} ({s['seeds']}) | {s['test_min']:.2f} | {gap} | "
                     f"{stale} | {s['epoch_time_s']:.2f} | {s['refresh_passes_per_epoch']:.0f} | "
                     f"{s['lr']:.2g} |")
    return "\n".join(lines)


def plot(summary: list[dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({(s["dataset"], s["model"], s["layers"]) for s in summary})
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for ax, key in zip(axes[0], panels):
        rows = [s for s in summary if (s["dataset"], s["model"], s["layers"]) == key]
        for i, meth in enumerate(METHODS):  # one colour per method in every panel
            pts = sorted((s["batches"], s["test_mean"], s["test_std"]) for s in rows if s["method"] == meth)
            if pts:
                b, m, e = zip(*pts)
                ax.errorbar(b, m, yerr=e, marker="o", capsize=3, label=meth, color=f"C{i}")
        for s in rows:
            if s["method"] == "ceiling":
                ax.axhline(s["test_mean"], linestyle="--", color="black", label="full-batch ceiling")
        ax.set_xscale("log")
        ticks = sorted({s["batches"] for s in rows if s["method"] != "ceiling"})
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("batches / epoch")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{key[0]} {key[1]} {key[2]} layers")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def merge(specs: list[str], out: str) -> int:
    """One table and plot from the rows of several sweeps (e.g. one per dataset or method)."""
    rows, commands = [], []
    for spec in specs:
        path, _, keep = spec.partition(":")
        data = json.loads(Path(path).read_text())
        methods = set(keep.split(",")) if keep else None
        rows += [r for r in data["rows"] if methods is None or r["method"] in methods]
        commands.append(data.get("command", ""))
    summary = summarise(rows)
    print(table(summary))
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    (OUT_DIR / f"{out}.json").write_text(json.dumps({"machine": machine(), "merged_from": specs,
                                                     "commands": commands, "rows": rows, "summary": summary},
                                                    indent=1))
    plot(summary, OUT_DIR / f"{out}.png")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", default="photo,cs", help="comma list of photo, cs, citeseer, synthetic")
    p.add_argument("--batches", default="2,10,40,80", help="batches per epoch (must divide --partitions)")
    p.add_argument("--partitions", type=int, default=80, help="METIS parts per store")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--models", default="gcn", help="comma list of gcn, sage, gat")
    p.add_argument("--layers", default="2", help="comma list of depths")
    p.add_argument("--dtypes", default="float32",
                   help="comma list of float32, float16: dtype of stored features (prepare --feature-dtype) and of "
                        "the history tables (train --history-dtype); float16 rows are labelled '<model> fp16'")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--eval-every", type=int, default=5)
    p.add_argument("--no-ceiling", dest="ceiling", action="store_false", help="skip the full-batch runs")
    p.add_argument("--jobs", type=int, default=2, help="runs in parallel (one torch thread each)")
    p.add_argument("--workdir", type=Path, default=None, help="stores go here (default: a temp dir)")
    p.add_argument("--out", default="bench_staleness", help="basename of the JSON/PNG in benchmarks/out")
    for flag in ("lr", "weight-decay", "weight-decay-rest", "grad-clip"):
        p.add_argument(f"--{flag}", type=float, default=None, help="override the run default")
    p.add_argument("--lr-scaling", default=None, help="override the run default (sqrt or none)")
    p.add_argument("--hidden", type=int, default=None)
    p.add_argument("--dropout", type=float, default=None)
    p.add_argument("--normalize-features", action="store_true", default=None)
    p.add_argument("--merge", nargs="+", metavar="JSON[:METHODS]",
                   help="run nothing: gather the rows of earlier sweeps' JSON files into one table and plot; "
                        "FILE:GAS,ceiling keeps only those methods of FILE")
    args = p.parse_args()
    if args.merge:
        return merge(args.merge, args.out)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_staleness_"))
    work.mkdir(parents=True, exist_ok=True)
    train = {"lr": args.lr, "weight_decay": args.weight_decay, "weight_decay_rest": args.weight_decay_rest,
             "grad_clip": args.grad_clip, "lr_scaling": args.lr_scaling}
    model = {"hidden": args.hidden, "dropout": args.dropout, "normalize_features": args.normalize_features}
    jobs = []
    for name, dtype in ((n, d) for n in args.datasets.split(",") for d in args.dtypes.split(",")):
        if dtype not in ("float32", "float16"):
            raise SystemExit(f"--dtypes {dtype!r}: use float32 or float16")
        store = str(prepare(work, name, args.partitions, dtype))
        for model_name in args.models.split(","):
            for layers in (int(x) for x in args.layers.split(",")):
                base = {"store": store, "dataset": name, "model_name": model_name, "layers": layers, "dtype": dtype,
                        "epochs": args.epochs, "eval_every": args.eval_every, "train": train, "model": model}
                if args.ceiling:
                    jobs += [{**base, "batches": 1, "parts_per_batch": args.partitions, "method": "ceiling",
                              "seed": s} for s in range(args.seeds)]
                for b in (int(x) for x in args.batches.split(",")):
                    if args.partitions % b:
                        raise SystemExit(f"--batches {b} does not divide --partitions {args.partitions}")
                    for method in args.methods.split(","):
                        jobs += [{**base, "batches": b, "parts_per_batch": args.partitions // b, "method": method,
                                  "seed": s} for s in range(args.seeds)]
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    out_json = OUT_DIR / f"{args.out}.json"
    results: dict[str, Any] = {"machine": machine(), "args": {k: (str(v) if isinstance(v, Path) else v)
                                                              for k, v in vars(args).items()},
                               "command": " ".join(sys.argv), "rows": []}
    t0 = time.perf_counter()
    with mp.get_context("spawn").Pool(args.jobs) as pool:
        for row in pool.imap_unordered(run_one, jobs):
            results["rows"].append(row)
            results["total_s"] = time.perf_counter() - t0
            results["summary"] = summarise(results["rows"])
            out_json.write_text(json.dumps(results, indent=1))
            print(f"{row['dataset']:9s} {row['model_name']}{row['layers']} {row['dtype']} B={row['batches']:<3d} "
                  f"{row['method']:8s} seed {row['seed']}: test {100 * row['test_acc']:.2f} "
                  f"(best ep {row['best_epoch']}), stale {row['true_staleness']:.3f}, "
                  f"{row['epoch_time_s']:.2f} s/ep", flush=True)
    print(table(results["summary"]))
    plot(results["summary"], OUT_DIR / f"{args.out}.png")
    print(f"total {results['total_s']:.0f} s; wrote {out_json} and {args.out}.png")
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
