#!/usr/bin/env python
"""Billion-edge proof: generate, prepare, train one epoch and run inference on a
graph whose features + CSR + histories exceed this machine's RAM, under a
memory budget, recording per-stage time, I/O, bandwidth and peak RSS.

Every stage is a separate `oocgnn` command and is resumable: re-running this
script after a crash or restart skips finished stages (`COMPLETE` store,
`summary.json` of the run) and resumes unfinished ones (stage markers of
`prepare`, checkpoints of `train`).

    python benchmarks/scale_run.py --nodes 50000000 --edges 1000000000 --features 64 --budget 12GB \
        --workdir /work/scale
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import disk_bandwidth, machine, print_table, write_json  # noqa: E402

from oocgnn.utils.memory import format_size, parse_size  # noqa: E402


def run_stage(cmd: list[str], interval: float = 0.5) -> dict:
    """Run one command; sample peak RSS (with children) and its /proc I/O counters."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd)
    ps = psutil.Process(proc.pid)
    peak, io = 0, None
    while proc.poll() is None:
        try:
            peak = max(peak, ps.memory_info().rss)
            io = ps.io_counters()
        except psutil.Error:
            pass
        time.sleep(interval)
    if proc.returncode != 0:
        raise SystemExit(f"stage failed with exit code {proc.returncode}: {' '.join(cmd)} (re-run to resume)")
    elapsed = time.perf_counter() - t0
    read = io.read_bytes if io else 0
    written = io.write_bytes if io else 0
    return {"time_s": elapsed, "peak_rss_bytes": peak, "bytes_read": read, "bytes_written": written,
            "read_Bps": read / elapsed, "write_Bps": written / elapsed}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=50_000_000)
    ap.add_argument("--edges", type=int, default=1_000_000_000)
    ap.add_argument("--features", type=int, default=64)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--partitions", type=int, default=None)
    ap.add_argument("--parts-per-batch", type=int, default=1)
    ap.add_argument("--budget", default="12GB")
    ap.add_argument("--workdir", type=Path, required=True)
    args = ap.parse_args()
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    store, run = work / "store", work / "run"
    results_path = work / "scale_results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {"stages": {}}
    results.update(machine=machine(), nodes=args.nodes, edges=args.edges, features=args.features,
                   budget_bytes=parse_size(args.budget), command=" ".join(sys.argv))
    if "disk" not in results:
        results["disk"] = disk_bandwidth(work)

    def save() -> None:
        results_path.write_text(json.dumps(results, indent=2) + "\n")

    stages = {
        "prepare": (store / "COMPLETE", [
            "oocgnn", "prepare", "synthetic", "--nodes", str(args.nodes), "--edges", str(args.edges),
            "--features", str(args.features), "--classes", str(args.classes), "--out", str(store),
            "--memory-budget", args.budget, *(["--partitions", str(args.partitions)] if args.partitions else [])]),
        "train": (run / "summary.json", [
            "oocgnn", "train", "--data", str(store), "--run-dir", str(run), "--epochs", "1",
            "--layers", str(args.layers), "--hidden", str(args.hidden), "--parts-per-batch", str(args.parts_per_batch),
            "--memory-budget", args.budget, "--checkpoint-every", "20"]),
        "inference": (run / "eval_done.json", [
            "oocgnn", "eval", "--run-dir", str(run)]),
    }
    for name, (done, cmd) in stages.items():
        if done.exists() and name in results["stages"]:
            print(f"stage {name}: done before, skipping")
            continue
        print(f"stage {name}: {' '.join(cmd)}", flush=True)
        results["stages"][name] = run_stage(cmd)
        if name == "inference":
            done.write_text("{}")
        save()

    sizes = {p.name: sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) for p in (store, run)}
    results["bytes_on_disk"] = sizes
    hist = sum(f.stat().st_size for f in (run / "histories").glob("*.npy")) if (run / "histories").exists() else 0
    feats_csr = sum((store / n).stat().st_size for n in ("features.npy", "graph/indptr.npy", "graph/indices.npy"))
    results["features_csr_histories_bytes"] = feats_csr + hist
    summary = json.loads((run / "summary.json").read_text())
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    last = metrics[-1] if metrics else {}
    train = results["stages"]["train"]
    halo_rows = sum(m.get("halo_rows", 0) for m in metrics)
    results["train_summary"] = summary
    results["train_io_wait_fraction"] = last.get("io_wait_fraction")
    results["halo_rows_per_s"] = halo_rows / max(summary.get("train_time_s", train["time_s"]), 1e-9)
    save()
    disk = results["disk"]
    rows = [("machine", f"{machine()['cpus']} cores, {format_size(machine()['ram_bytes'])} RAM"),
            ("graph", f"{args.nodes:,} nodes, {args.edges:,} edges, {args.features}-d features"),
            ("features+CSR+histories", format_size(results["features_csr_histories_bytes"])),
            ("disk seq read/write", f"{format_size(disk['seq_read_Bps'])}/s / {format_size(disk['seq_write_Bps'])}/s")]
    for name, st in results["stages"].items():
        rows.append((f"{name}", f"{st['time_s'] / 60:.1f} min, read {format_size(st['bytes_read'])} "
                     f"({st['read_Bps'] / disk['seq_read_Bps']:.2f} of seq), written {format_size(st['bytes_written'])}, "
                     f"peak RSS {format_size(st['peak_rss_bytes'])}"))
    rows.append(("train I/O wait fraction", f"{results['train_io_wait_fraction']}"))
    rows.append(("halo rows gathered / s", f"{results['halo_rows_per_s']:,.0f} (disk: ~50k random 4 KiB reads/s)"))
    print_table(rows)
    print("wrote", write_json("scale_run", results))


if __name__ == "__main__":
    main()
