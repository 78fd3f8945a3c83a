#!/usr/bin/env python
"""Throughput of several ranks: batches/s at 1 and 2 ranks, and the bytes they exchange per step.

    python benchmarks/bench_distributed.py --nodes 200000 --edges 2000000 --epochs 3
    python benchmarks/bench_distributed.py --accuracy Planetoid/Cora --seeds 5   # accuracy, 1 vs 2 ranks

Builds a synthetic store (unless ``--store``), then runs the real CLI
(`oocgnn train`, GCN, `--no-checkpoints`) with 1 rank, 2 ranks sharing history
files, and 2 ranks on the cross-host all-to-all path forced on this host, one
after the other.  Batches/s counts every rank's batches over the epochs after the
first (warm-up); bytes per step are the gradient all-reduce (every rank sends the
flat gradient: 4 bytes per parameter) and the halo exchange
(`exchange_bytes_sent` of rank 0's metrics, times the ranks).  Prints a table and
writes ``benchmarks/out/bench_distributed.json``.

``--accuracy CLASS/NAME`` instead trains a real graph (PyG raw layout under
``--datasets``; public split, row-normalised features, 20 METIS parts, 2 per batch)
with each mode, and full batch on 1 rank as the ceiling, for ``--seeds`` seeds and
reports test accuracy at best valid,
mean ± std (``benchmarks/out/bench_distributed_accuracy.json``).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, print_table, write_json  # noqa: E402

os.environ.setdefault("OUTDATED_IGNORE", "1")

MODES = {"1 rank": [], "2 ranks, shared files": ["--nproc-per-node", "2"],
         "2 ranks, all-to-all": ["--nproc-per-node", "2", "--halo-exchange", "all-to-all"]}


def oocgnn(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "oocgnn.cli.main", *args]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"benchmark step failed ({out.returncode}): {' '.join(cmd)}\n{out.stderr[-2000:]}")
    return out


def run_mode(store: Path, run: Path, extra: list[str], args: argparse.Namespace) -> dict:
    t0 = time.perf_counter()
    oocgnn("train", "--data", str(store), "--run-dir", str(run), "--epochs", str(args.epochs), "--hidden",
           str(args.hidden), "--parts-per-batch", str(args.parts_per_batch), "--no-checkpoints", "--no-progress",
           "--eval-every", str(args.epochs), *extra)
    wall = time.perf_counter() - t0
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((run / "summary.json").read_text())
    world = int(summary.get("world_size", 1))
    warm = recs[1:] or recs
    steps = sum(r["train_batches"] for r in warm)           # rank 0's steps (idle steps not counted)
    t = sum(r["epoch_time_s"] for r in warm)
    steps_per_epoch = recs[0]["batches"]
    sent = recs[-1].get("exchange_bytes_sent", 0) * world / max(1, recs[-1]["step"])
    return {"world_size": world, "batches_per_s": steps * world / t, "epoch_time_s": t / len(warm),
            "steps_per_epoch": steps_per_epoch, "exchange_bytes_per_step": sent,
            "test_acc": summary["test_acc_at_best_valid"], "wall_s": wall,
            "io_wait_fraction": sum(r["io_wait_s"] for r in warm) / t}


def accuracy(args: argparse.Namespace) -> None:
    import statistics

    cls, name = args.accuracy.split("/")
    with tempfile.TemporaryDirectory(prefix="oocgnn-bench-dist-acc-") as tmp:
        store = Path(tmp) / "store"
        oocgnn("prepare", "pyg", "--class", cls, "--name", name, "--root", str(args.datasets / cls), "--out",
               str(store), "--partitions", "20", "--no-progress")
        # the ceiling: one batch per epoch (all 20 parts), 1 rank
        modes = {"full batch (ceiling), 1 rank": ["--parts-per-batch", "20"], **MODES}
        accs: dict[str, list[float]] = {m: [] for m in modes}
        for seed in range(args.seeds):  # seeds outermost: load drift hits every mode alike
            for i, (mode, extra) in enumerate(modes.items()):
                run = Path(tmp) / f"run-{seed}-{i}"
                oocgnn("train", "--data", str(store), "--run-dir", str(run), "--epochs", str(args.accuracy_epochs),
                       "--parts-per-batch", "2", "--normalize-features", "--weight-decay", "5e-4", "--seed",
                       str(seed), "--no-checkpoints", "--no-progress", *extra)
                accs[mode].append(json.loads((run / "summary.json").read_text())["test_acc_at_best_valid"])
    rows = [("graph", f"{args.accuracy}, 20 parts, 2 per batch, GCN 2x64, {args.accuracy_epochs} epochs")]
    out = {}
    for mode, v in accs.items():
        out[mode] = {"mean": statistics.mean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0, "runs": v}
        rows.append((mode, f"{100 * out[mode]['mean']:.2f} ± {100 * out[mode]['std']:.2f} ({len(v)} seeds), "
                           f"worst {100 * min(v):.2f}"))
    print_table(rows)
    data = {"machine": machine(), "args": vars(args) | {"datasets": str(args.datasets)}, "results": out}
    print(f"wrote {write_json('bench_distributed_accuracy', data)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", type=Path, help="an existing store (default: generate a synthetic one)")
    ap.add_argument("--nodes", type=int, default=200_000)
    ap.add_argument("--edges", type=int, default=2_000_000)
    ap.add_argument("--features", type=int, default=64)
    ap.add_argument("--partitions", type=int, default=64)
    ap.add_argument("--parts-per-batch", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--accuracy", metavar="CLASS/NAME", help="accuracy sweep on a PyG graph, e.g. Planetoid/Cora")
    ap.add_argument("--datasets", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "datasets",
                    help="folder of PyG raw datasets (default ../shared/datasets)")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--accuracy-epochs", type=int, default=100)
    args = ap.parse_args()
    if args.accuracy:
        accuracy(args)
        return
    with tempfile.TemporaryDirectory(prefix="oocgnn-bench-dist-") as tmp:
        store = args.store
        if store is None:
            store = Path(tmp) / "store"
            oocgnn("prepare", "synthetic", "--nodes", str(args.nodes), "--edges", str(args.edges), "--features",
                   str(args.features), "--classes", "8", "--partitions", str(args.partitions), "--out", str(store))
        results = {name: run_mode(store, Path(tmp) / f"run{i}", extra, args) for i, (name, extra) in
                   enumerate(MODES.items())}
    import torch

    from oocgnn.models import build_model
    params = sum(p.numel() for p in build_model("gcn", args.features, args.hidden, 8, 2).parameters())
    base = results["1 rank"]["batches_per_s"]
    rows = [("store", f"{store if args.store else f'synthetic {args.nodes} nodes / {args.edges} edges'}, "
                      f"{args.partitions} parts, {args.parts_per_batch} per batch, GCN 2x{args.hidden}")]
    for name, r in results.items():
        r["speedup"] = r["batches_per_s"] / base
        r["allreduce_bytes_per_step"] = 4 * (params + 1) * (r["world_size"] if r["world_size"] > 1 else 0)
        rows.append((name, f"{r['batches_per_s']:.2f} batches/s ({r['speedup']:.2f}x), epoch {r['epoch_time_s']:.1f} s, "
                           f"{r['steps_per_epoch']} steps/epoch, all-reduce {r['allreduce_bytes_per_step'] / 1e3:.1f} kB"
                           f"/step, halo exchange {r['exchange_bytes_per_step'] / 1e6:.2f} MB/step, "
                           f"io wait {100 * r['io_wait_fraction']:.0f} %, test acc {r['test_acc']:.4f}"))
    rows.append(("cores", f"{os.cpu_count()} (torch threads per rank: cores / ranks)"))
    print_table(rows)
    out = write_json("bench_distributed", {"machine": machine(), "args": vars(args) | {"store": str(args.store)},
                                           "torch": torch.__version__, "params": params, "results": results})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
