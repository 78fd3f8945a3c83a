"""Cost of crash safety: run time with/without checkpoints + history journal, and time to resume.

    python benchmarks/bench_resume.py --nodes 100000 --epochs 3 --repeats 2

Builds a synthetic store (unless ``--store``), then trains in this process with
``--no-checkpoints`` (baseline), default settings (epoch-end checkpoints, 30 min
interval, journal with an fsync per record) and ``--checkpoint-every N``,
interleaving repeats so load drift hits every mode alike; reports the median
``fit`` time.  Resume time = checks + journal rollback + state load for a run
"killed" halfway between two checkpoints, next to the set-up time of a fresh
start.  Prints a table, writes ``benchmarks/out/bench_resume.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT_DIR, machine  # noqa: E402

os.environ.setdefault("OUTDATED_IGNORE", "1")


class _Crash(Exception):
    pass


def config(store: Path, run_dir: Path, args: argparse.Namespace):
    from oocgnn.config import RunConfig

    return RunConfig.from_dict({"data": str(store), "run_dir": str(run_dir),
                                "model": {"layers": args.layers, "hidden": args.hidden},
                                "train": {"epochs": args.epochs, "parts_per_batch": 1, "seed": 0}})


def train_once(store: Path, work: Path, args: argparse.Namespace, opts) -> dict:
    from oocgnn.checkpoint import RunSession
    from oocgnn.store.reader import open_dataset
    from oocgnn.runner import make_trainer
    from oocgnn.train.run import fit

    run_dir = work / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    ds = open_dataset(store)
    cfg = config(store, run_dir, args)
    session = RunSession(run_dir, opts)
    session.prepare(cfg, ds)
    trainer = make_trainer(ds, cfg, run_dir)
    try:
        session.attach(trainer)
        t0 = time.perf_counter()
        summary = fit(trainer, None, session)
        elapsed = time.perf_counter() - t0
    finally:
        trainer.close()
        session.close()
    j = session.journal
    return {"time_s": elapsed, "steps": summary["steps"], "checkpoints": session.checkpoints_written,
            "checkpoint_s": session.checkpoint_s, "journal_bytes": j.bytes_journaled if j else 0,
            "history_bytes": sum(t.array.nbytes for t in trainer.histories.tables)}


def resume_time(store: Path, work: Path, args: argparse.Namespace) -> dict:
    """Crash halfway through epoch 2 (pushes journaled since the epoch-1 checkpoint), then time the resume."""
    from oocgnn.checkpoint import CheckpointOptions, RunSession
    from oocgnn.store.reader import open_dataset
    from oocgnn.runner import make_trainer
    from oocgnn.train.run import fit

    run_dir = work / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    ds = open_dataset(store)
    cfg = config(store, run_dir, args)
    session = RunSession(run_dir, CheckpointOptions())
    session.prepare(cfg, ds)
    trainer = make_trainer(ds, cfg, run_dir)
    half = len(trainer.plan(0)) * 3 // 2
    orig = session.after_step

    def crash_later(tr):
        orig(tr)
        if tr.state.global_step == half:
            raise _Crash
    session.after_step = crash_later
    try:
        session.attach(trainer)
        t0 = time.perf_counter()
        fit(trainer, None, session)
    except _Crash:
        lost = time.perf_counter() - t0
    finally:
        trainer.close()
        session.close()
    t0 = time.perf_counter()
    s2 = RunSession(run_dir, CheckpointOptions())
    s2.prepare(cfg, open_dataset(store))
    t_checks = time.perf_counter() - t0
    tr2 = make_trainer(open_dataset(store), cfg, run_dir)
    t_build = time.perf_counter() - t0 - t_checks
    t1 = time.perf_counter()
    s2.attach(tr2)
    t_attach = time.perf_counter() - t1
    step = tr2.state.global_step
    tr2.close()
    s2.close()
    return {"resume_total_s": time.perf_counter() - t0, "checks_s": t_checks, "build_trainer_s": t_build,
            "rollback_and_load_s": t_attach, "resumed_at_step": step, "crashed_at_step": half,
            "work_before_crash_s": lost}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", type=Path, help="existing store (default: build a synthetic one)")
    ap.add_argument("--nodes", type=int, default=100_000)
    ap.add_argument("--features", type=int, default=64)
    ap.add_argument("--partitions", type=int, default=40)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--every", type=int, default=10, help="N of the --checkpoint-every mode")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(2)
    from oocgnn.checkpoint import CheckpointOptions

    work = Path(tempfile.mkdtemp(prefix="bench_resume_", dir=args.workdir))
    try:
        store = args.store
        if store is None:
            from oocgnn.testing.stores import make_store, random_graph

            store = work / "store"
            g = random_graph(num_nodes=args.nodes, num_edges=args.nodes * 10, num_features=args.features,
                             num_classes=8, seed=0)
            make_store(store, g["edge_index"], g["x"], g["y"], g["splits"], num_partitions=args.partitions)
        modes = {"no checkpoints (--no-checkpoints)": CheckpointOptions(enabled=False),
                 "default (epoch ends + 30 min, journal)": CheckpointOptions(),
                 f"--checkpoint-every {args.every}": CheckpointOptions(every_steps=args.every)}
        results: dict[str, list[dict]] = {m: [] for m in modes}
        for _ in range(args.repeats):
            for m, opts in modes.items():
                results[m].append(train_once(store, work, args, opts))
        base = statistics.median(r["time_s"] for r in results[next(iter(modes))])
        rows = []
        for m, rs in results.items():
            t = statistics.median(r["time_s"] for r in rs)
            rows.append({"mode": m, "median_time_s": t, "overhead_pct": 100 * (t / base - 1),
                         "times_s": [r["time_s"] for r in rs], "steps": rs[0]["steps"],
                         "checkpoints": rs[0]["checkpoints"], "checkpoint_s": statistics.median(r["checkpoint_s"] for r in rs),
                         "journal_bytes": rs[0]["journal_bytes"], "history_bytes": rs[0]["history_bytes"]})
        resume = resume_time(store, work, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"\n{'mode':42s} {'time s':>8s} {'overhead':>9s} {'ckpts':>6s} {'ckpt s':>7s} {'journal MB':>11s}")
    for r in rows:
        print(f"{r['mode']:42s} {r['median_time_s']:8.2f} {r['overhead_pct']:8.1f}% {r['checkpoints']:6d} "
              f"{r['checkpoint_s']:7.3f} {r['journal_bytes'] / 2**20:11.1f}")
    print(f"\nresume after a crash at step {resume['crashed_at_step']} (back to step {resume['resumed_at_step']}): "
          f"{resume['resume_total_s']:.2f} s total = checks {resume['checks_s']:.2f} + trainer set-up "
          f"{resume['build_trainer_s']:.2f} (same as a fresh start) + rollback & state load "
          f"{resume['rollback_and_load_s']:.2f}")
    OUT_DIR.mkdir(exist_ok=True)
    out = {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
           "machine": machine(), "modes": rows, "resume": resume}
    (OUT_DIR / "bench_resume.json").write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {OUT_DIR / 'bench_resume.json'}")


if __name__ == "__main__":
    main()
