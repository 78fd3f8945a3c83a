"""Epoch time out of core vs in RAM, I/O wait, history traffic, and full-batch PyG GCN.

    python benchmarks/bench_epoch.py --store /tmp/bench_syn --epochs 3 --cgroup-limit 256MiB

Each configuration runs in its own process.  The out-of-core run is moved into a
child memory cgroup (cgroup v1, see shared/design/machine-facts.md) whose limit
is smaller than features + histories, so page cache cannot hold them; without
permission to create it the run falls back to dropping caches before starting
(documented in the JSON as ``cgroup: false``).  ``reads`` runs the out-of-core
configuration's loader alone through one epoch plan (no model step, same cgroup): the
time the epoch's reads take by themselves, so ``reads_vs_ram_epoch_ratio`` says how
far the out-of-core epoch could drop however well reads overlap compute.  Prints a table and writes
``benchmarks/out/bench_epoch.json``.  Create the store first, e.g.
``oocgnn prepare synthetic --nodes 400000 --edges 4000000 --features 128 --partitions 100 --out /tmp/bench_syn``.

Issue #12's configuration (a store ~5x the page cache its cgroup leaves; 2 parts of 200
per batch, since one batch of 2 of the default 10 parts needs 8.8 GB)::

    oocgnn prepare synthetic --nodes 2000000 --edges 20000000 --features 128 --partitions 200 \
        --partitioner metis --out /tmp/syn2m_p200
    python benchmarks/bench_epoch.py --store /tmp/syn2m_p200 --epochs 1 --layers 2 --hidden 128 \
        --parts-per-batch 2 --budget 1500MB --cgroup-limit 1.9GB --skip-pyg --only ooc reads ram
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT_DIR, drop_caches, machine  # noqa: E402


def worker(spec: dict) -> dict:
    os.environ.setdefault("OUTDATED_IGNORE", "1")
    if spec.get("cgroup"):
        Path(spec["cgroup"], "cgroup.procs").write_text(str(os.getpid()))
    import numpy as np
    import torch

    torch.set_num_threads(2)
    from oocgnn.store.reader import open_dataset
    from oocgnn.config import EvalConfig, IOConfig, ModelConfig, OptimConfig, RunConfig
    from oocgnn.runner import make_trainer
    from oocgnn.train.run import fit
    from oocgnn.utils.memory import lifetime_peak_rss

    ds = open_dataset(spec["store"])
    if spec["mode"] == "pyg":
        from torch_geometric.nn import GCNConv

        torch.manual_seed(0)
        x = torch.from_numpy(np.array(ds.features, dtype=np.float32))
        indptr = np.asarray(ds.indptr)
        ei = torch.from_numpy(np.stack([np.asarray(ds.indices, np.int64), np.repeat(np.arange(ds.num_nodes), np.diff(indptr))]))
        y = torch.from_numpy(np.asarray(ds.labels).astype(np.int64))
        tr, te = torch.from_numpy(ds.split("train")), torch.from_numpy(ds.split("test"))
        dims = [ds.num_features] + [spec["hidden"]] * (spec["layers"] - 1) + [ds.num_classes]
        convs = torch.nn.ModuleList(GCNConv(a, b, cached=True) for a, b in zip(dims[:-1], dims[1:]))
        opt = torch.optim.Adam(convs.parameters(), lr=0.01)

        def fwd(train: bool):
            h = x
            for i, c in enumerate(convs):
                h = torch.nn.functional.dropout(h, 0.5, train)
                h = c(h, ei)
                if i < len(convs) - 1:
                    h = h.relu()
            return h
        times = []
        for _ in range(spec["epochs"]):
            t0 = time.perf_counter()
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(fwd(True)[tr], y[tr])
            loss.backward()
            opt.step()
            times.append(time.perf_counter() - t0)
        with torch.no_grad():
            acc = float((fwd(False)[te].argmax(-1) == y[te]).float().mean())
        return {"epoch_time_s": float(np.median(times)), "test_acc": acc, "peak_rss_bytes": lifetime_peak_rss()}
    cfg = RunConfig(model=ModelConfig(layers=spec["layers"], hidden=spec["hidden"], dropout=0.5),
                    train=OptimConfig(epochs=spec["epochs"], parts_per_batch=spec["ppb"], lr=0.01),
                    io=IOConfig(in_memory=spec["mode"] == "ram", prefetch=spec["prefetch"], io_threads=spec["io_threads"],
                                memory_budget=spec["budget"], cache=spec["cache"],
                                history_dtype=spec.get("history_dtype", "float32")),
                    eval=EvalConfig(eval_every=spec["epochs"]))
    run_dir = Path(tempfile.mkdtemp(prefix="bench_epoch_", dir=spec["tmp"]))
    if spec["mode"] == "reads":
        try:
            return read_floor(ds, cfg, run_dir)
        finally:
            shutil.rmtree(run_dir, ignore_errors=True)
    try:
        tr = make_trainer(ds, cfg, run_dir)
        plan = dict(getattr(tr, "memory_plan", None) or {})
        records = []
        s = fit(tr)
        tr.close()
        from oocgnn.train.metrics import MetricsLog

        records = MetricsLog(run_dir).read()
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    last = records[1:] or records  # the first epoch includes first-touch of the ring
    ep = float(np.median([r["epoch_time_s"] for r in last]))
    hist_rows_min = sum(r["halo_rows"] for r in last) + sum(r["batch_rows"] for r in last)
    row_bytes = spec["hidden"] * (2 if spec.get("history_dtype") == "float16" else 4) * (spec["layers"] - 1)
    moved = sum(r["history_bytes_read"] + r["bytes_written"] for r in last)
    return {"epoch_time_s": ep, "io_wait_fraction": float(np.mean([r["io_wait_fraction"] for r in last])),
            "history_bytes_moved": moved, "history_bytes_min": hist_rows_min * row_bytes,
            "history_bytes_ratio": moved / max(1, hist_rows_min * row_bytes),
            "patched_rows": sum(r["patched_from_pending"] + r["patched_from_table"] for r in last),
            "cache_hit_rate": last[-1].get("cache_hit_rate"), "test_acc": records[-1].get("test_acc"),
            "peak_rss_bytes": s["peak_rss_bytes"], "peak_anon_rss_bytes": s["peak_anon_rss_bytes"],
            "batches_per_epoch": last[-1]["batches"], "prefetch_depth": plan.get("prefetch_depth"),
            "planned_peak_anon_bytes": plan.get("planned_peak_anon_bytes"),
            "mapped_window_bytes": plan.get("mapped_window_bytes")}


def read_floor(ds, cfg, run_dir: Path) -> dict:
    """The out-of-core epoch's reads alone: its loader through the whole epoch plan, no model step.

    Same trainer, memory plan, caches and prefetcher as the ``ooc`` run; histories are
    filled first (unwritten tables are sparse files, read without touching the disk) and the
    page cache dropped after. Slots go back only when the next batch is asked for, so the
    batches are read one after another: the time is what the loader needs per epoch, a
    floor for the out-of-core epoch however well it overlaps with compute.
    """
    from oocgnn.cache import begin_epoch_caches, caches_epoch_metrics, end_epoch_caches
    from oocgnn.runner import make_trainer

    tr = make_trainer(ds, cfg, run_dir)
    try:
        tr.fill_histories()
        plan = [a.ranges for a in tr.policy.plan_epoch(tr)]
        dropped = drop_caches()
        loader = tr.epoch_loader()
        begin_epoch_caches(tr, plan)
        t0, c0 = time.perf_counter(), time.process_time()
        pf = tr.prefetcher(plan, loader)
        batches = sum(1 for _ in pf)
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
        loader.close()
        st = pf.stats
        caches = caches_epoch_metrics(tr)
        end_epoch_caches(tr)
        from oocgnn.utils.memory import lifetime_peak_rss

        return {"epoch_time_s": elapsed, "cpu_s": cpu, "batches_per_epoch": batches, "caches_dropped_after_fill": dropped,
                "feature_bytes_read": st.feature_bytes, "history_bytes_read": st.history_bytes,
                "cache_hit_rate": caches.get("cache_hit_rate"), "peak_rss_bytes": lifetime_peak_rss()}
    finally:
        tr.close()


def make_cgroup(limit: int) -> Path | None:
    try:
        line = next(x for x in Path("/proc/self/cgroup").read_text().splitlines() if ":memory:" in x)
        cg = Path("/sys/fs/cgroup/memory") / line.split(":", 2)[2].lstrip("/") / f"oocgnn_bench_{os.getpid()}"
        cg.mkdir()
        (cg / "memory.limit_in_bytes").write_text(str(limit))
        return cg
    except (OSError, StopIteration):
        return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", required=True, help="dataset store (e.g. from `oocgnn prepare synthetic`)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--parts-per-batch", type=int, default=10)
    ap.add_argument("--prefetch", type=int, default=2)
    ap.add_argument("--io-threads", type=int, default=8)
    ap.add_argument("--budget", default="192MiB", help="--memory-budget of the out-of-core run")
    ap.add_argument("--cgroup-limit", default="384MiB", help="memory cgroup limit of the out-of-core run")
    ap.add_argument("--tmp", default=None, help="where run dirs (histories) go")
    ap.add_argument("--history-dtype", default="float32", choices=["float32", "float16"],
                    help="dtype of the history tables (with a float16 store: fp16 end to end)")
    ap.add_argument("--skip-pyg", action="store_true")
    ap.add_argument("--only", nargs="*", help="run only these configurations (ooc, ooc_no_prefetch, reads, ram, pyg_full_batch); "
                    "reads: the out-of-core run's loader alone, no model step (the epoch's read time)")
    ap.add_argument("--out", default="bench_epoch", help="basename of the JSON in benchmarks/out (default bench_epoch)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    from oocgnn.utils.memory import parse_size

    base = {"store": args.store, "epochs": args.epochs, "layers": args.layers, "hidden": args.hidden,
            "ppb": args.parts_per_batch, "prefetch": args.prefetch, "io_threads": args.io_threads,
            "tmp": args.tmp, "cache": "belady", "budget": args.budget, "history_dtype": args.history_dtype}
    cg = make_cgroup(parse_size(args.cgroup_limit))
    runs = {"ooc": dict(base, mode="ooc", cgroup=str(cg) if cg else None),
            "ooc_no_prefetch": dict(base, mode="ooc", prefetch=0, io_threads=1, cgroup=str(cg) if cg else None),
            "reads": dict(base, mode="reads", cgroup=str(cg) if cg else None),
            "ram": dict(base, mode="ram", budget="4GB", cache="none")}
    if not args.skip_pyg:
        runs["pyg_full_batch"] = dict(base, mode="pyg")
    if args.only:
        runs = {k: v for k, v in runs.items() if k in args.only}
    results = {}
    try:
        for name, spec in runs.items():
            dropped = drop_caches() if spec["mode"] in ("ooc", "reads") else False
            out = subprocess.run([sys.executable, __file__, "--store", args.store, "--worker", json.dumps(spec)],
                                 capture_output=True, text=True)
            if out.returncode != 0:
                last = out.stderr.strip().splitlines()[-1] if out.stderr.strip() else ""
                results[name] = {"error": f"exit {out.returncode} (-9 = killed, e.g. by the cgroup OOM killer) {last}"}
                continue
            results[name] = json.loads(out.stdout.strip().splitlines()[-1])
            results[name]["caches_dropped"] = dropped
    finally:
        if cg is not None:
            cg.rmdir()
    ooc, ram, reads = results.get("ooc", {}), results.get("ram", {}), results.get("reads", {})
    ratio = ooc["epoch_time_s"] / ram["epoch_time_s"] if "epoch_time_s" in ooc and "epoch_time_s" in ram else None
    floor = reads["epoch_time_s"] / ram["epoch_time_s"] if "epoch_time_s" in reads and "epoch_time_s" in ram else None
    report = {"machine": machine(), "args": vars(args), "cgroup": cg is not None, "results": results,
              "ooc_vs_ram_epoch_ratio": ratio, "reads_vs_ram_epoch_ratio": floor}
    print(f"{'run':18} {'epoch s':>8} {'io wait':>8} {'hist moved/min':>14} {'test acc':>8} {'peak RSS MB':>11} "
          f"{'anon MB':>8} {'depth':>5}")
    for name, r in results.items():
        if "error" in r:
            print(f"{name:18} error: {r['error']}")
            continue
        f = lambda k, fmt: (fmt % r[k]) if r.get(k) is not None else "-"  # noqa: E731
        print(f"{name:18} {f('epoch_time_s', '%.2f'):>8} {f('io_wait_fraction', '%.3f'):>8} "
              f"{f('history_bytes_ratio', '%.3f'):>14} {f('test_acc', '%.3f'):>8} {r['peak_rss_bytes'] / 1e6:>11.0f} "
              f"{(r.get('peak_anon_rss_bytes') or 0) / 1e6:>8.0f} {f('prefetch_depth', '%d'):>5}")
    print(f"out-of-core / in-RAM epoch time: {ratio:.2f}" if ratio else "ratio unavailable")
    if floor:
        print(f"out-of-core reads alone / in-RAM epoch time: {floor:.2f}")
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    (OUT_DIR / f"{args.out}.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
