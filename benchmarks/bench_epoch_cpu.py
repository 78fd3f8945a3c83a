"""CPU seconds per training epoch of two checkouts of oocgnn on one store, interleaved (a before/after A/B).

Why CPU seconds (all threads of the process) and not wall time: on a shared box the same run's
wall time varies several-fold with the other tenants' load, while the work a process does does
not.  Each run: a fresh trainer (GCN, ``--hidden``, ``--parts-per-batch``), one history fill,
``--epochs`` epochs, one evaluation sweep; runs alternate between the checkouts.

    git archive 10b36b5 | tar -x -C /tmp/before      # the "before" checkout
    oocgnn prepare synthetic --nodes 200000 --edges 2000000 --features 64 --partitions 30 \\
        --partitioner metis --out /tmp/ab_store
    python benchmarks/bench_epoch_cpu.py --store /tmp/ab_store --code before=/tmp/before --code after=. --reps 4

Prints a table and writes ``benchmarks/out/bench_epoch_cpu.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, write_json  # noqa: E402


def worker(spec: dict) -> dict:
    os.environ.setdefault("OUTDATED_IGNORE", "1")
    import torch

    torch.set_num_threads(2)
    from oocgnn.config import IOConfig, ModelConfig, OptimConfig, RunConfig
    from oocgnn.runner import make_trainer
    from oocgnn.store.reader import open_dataset
    from oocgnn.train.evaluate import evaluate

    cfg = RunConfig(model=ModelConfig(layers=2, hidden=spec["hidden"]),
                    train=OptimConfig(epochs=spec["epochs"], parts_per_batch=spec["parts_per_batch"]),
                    io=IOConfig(memory_budget=spec["budget"]))
    tr = make_trainer(open_dataset(spec["store"]), cfg, spec["run_dir"])
    out: dict = {"epoch_cpu_s": [], "epoch_wall_s": [], "loss": []}
    try:
        tr.fill_histories()
        for _ in range(spec["epochs"]):
            c0, w0 = time.process_time(), time.perf_counter()
            rec = tr.train_epoch()
            out["epoch_cpu_s"].append(time.process_time() - c0)
            out["epoch_wall_s"].append(time.perf_counter() - w0)
            out["loss"].append(rec["loss"])
        c0 = time.process_time()
        out["test_acc"] = evaluate(tr, refresh=False)[0]["test_acc"]
        out["eval_cpu_s"] = time.process_time() - c0
    finally:
        tr.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store")
    ap.add_argument("--code", action="append", default=[], metavar="NAME=DIR",
                    help="a checkout to time (its directory goes first on PYTHONPATH); give two")
    ap.add_argument("--reps", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=3, help="epochs per run; the first is reported apart (warm-up)")
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--parts-per-batch", type=int, default=3)
    ap.add_argument("--budget", default="4GB")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    if not args.store or len(args.code) < 1:
        ap.error("--store and --code NAME=DIR (twice, for an A/B) are required")
    codes = dict(c.split("=", 1) for c in args.code)
    runs: dict[str, list] = {name: [] for name in codes}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.reps):
            for name, code in codes.items():
                spec = {"store": args.store, "run_dir": f"{tmp}/{name}_{rep}", "epochs": args.epochs,
                        "hidden": args.hidden, "parts_per_batch": args.parts_per_batch, "budget": args.budget}
                env = dict(os.environ, PYTHONPATH=str(Path(code).resolve()))
                r = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True,
                                   text=True, env=env, check=True)
                runs[name].append(json.loads(r.stdout.strip().splitlines()[-1]))
    print(f"{'code':10} {'epoch CPU s (after the first)':>40} {'mean':>6} {'eval CPU s':>10} {'test acc':>8}")
    summary = {}
    for name, rs in runs.items():
        steady = [c for r in rs for c in r["epoch_cpu_s"][1:]]
        ev = statistics.mean(r["eval_cpu_s"] for r in rs)
        summary[name] = {"epoch_cpu_s_mean": statistics.mean(steady), "epoch_cpu_s_stdev": statistics.pstdev(steady),
                         "eval_cpu_s_mean": ev, "test_acc": [r["test_acc"] for r in rs]}
        print(f"{name:10} {' '.join(f'{c:.2f}' for c in steady):>40} {statistics.mean(steady):>6.2f} {ev:>10.2f} "
              f"{rs[0]['test_acc']:>8.4f}")
    path = write_json("bench_epoch_cpu", {"machine": machine(), "args": vars(args), "runs": runs, "summary": summary})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
