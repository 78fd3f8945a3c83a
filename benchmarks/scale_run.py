#!/usr/bin/env python
"""Billion-edge proof: generate, prepare, train one epoch and run inference on a
graph whose features + CSR + histories exceed this machine's RAM, under a
memory budget, recording per-stage time, I/O, bandwidth and peak RSS.

Every stage is a separate `oocgnn` command and is resumable: re-running this
script after a crash or restart skips finished stages (`COMPLETE` store,
`summary.json` of the run, the inference result) and resumes unfinished ones
(stage markers of `prepare`, checkpoints of `train`).

    python benchmarks/scale_run.py --nodes 50000000 --edges 1000000000 --features 64 --budget 12GB \
        --workdir /work/scale

Writes ``WORKDIR/scale_results.json`` as it goes, ``benchmarks/out/scale_run.json``
at the end, and prints a markdown table for ``benchmarks/RESULTS.md``.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import disk_bandwidth, disk_random_read_aio, machine, write_json  # noqa: E402

from oocgnn.utils.memory import format_size, parse_size  # noqa: E402

#: training history tables in RUN/histories (not their step arrays, the journal or eval scratch tables)
HISTORY_TABLE = re.compile(r"layer_\d+\.npy")


def _device_reads() -> tuple[int, int]:
    """Reads completed and bytes read by every block device (whole-box counters, /proc/diskstats)."""
    disks = psutil.disk_io_counters(perdisk=True) or {}
    whole = [v for k, v in disks.items() if not k[-1].isdigit() or k.startswith("nvme") and "p" not in k[4:]]
    return sum(v.read_count for v in whole), sum(v.read_bytes for v in whole)


def device_read_rates(samples: list[tuple[float, int, int]], window_s: float = 10.0) -> dict[str, float]:
    """Device read ops/s and bytes/s over ``window_s`` windows of a stage: median and the busiest tenth.

    "While I/O-bound" is the busy windows, so the 90th percentile is the figure to hold
    against the device's random-read rate; bytes/4 KiB gives the 4 KiB-page equivalent of
    merged reads (the engine merges neighbouring pages into requests of up to 512 KiB).
    """
    ops, bps = [], []
    start = 0
    for i in range(1, len(samples)):
        if samples[i][0] - samples[start][0] >= window_s:
            dt = samples[i][0] - samples[start][0]
            ops.append((samples[i][1] - samples[start][1]) / dt)
            bps.append((samples[i][2] - samples[start][2]) / dt)
            start = i
    if not ops:
        return {}
    q = lambda xs, f: float(sorted(xs)[min(len(xs) - 1, int(f * len(xs)))])  # noqa: E731
    return {"read_ops_per_s_median": q(ops, 0.5), "read_ops_per_s_p90": q(ops, 0.9),
            "read_Bps_median": q(bps, 0.5), "read_Bps_p90": q(bps, 0.9),
            "read_4k_equiv_per_s_p90": q(bps, 0.9) / 4096, "windows": len(ops)}


def run_stage(cmd: list[str], stdout_path: Path | None = None, interval: float = 0.5) -> dict[str, Any]:
    """Run one command; sample its peak RSS, /proc I/O counters (bytes that reached the block layer)
    and the device's read counters."""
    t0 = time.perf_counter()
    out = stdout_path.open("w") if stdout_path is not None else None
    samples: list[tuple[float, int, int]] = []
    try:
        proc = subprocess.Popen(cmd, stdout=out)
        ps = psutil.Process(proc.pid)
        peak, io = 0, None
        while proc.poll() is None:
            try:
                peak = max(peak, ps.memory_info().rss)
                io = ps.io_counters()
            except psutil.Error:
                pass
            samples.append((time.perf_counter(), *_device_reads()))
            time.sleep(interval)
    finally:
        if out is not None:
            out.close()
    if proc.returncode != 0:
        if stdout_path is not None:
            stdout_path.unlink(missing_ok=True)
        raise SystemExit(f"stage failed with exit code {proc.returncode}: {' '.join(cmd)} (re-run to resume)")
    elapsed = time.perf_counter() - t0
    read = io.read_bytes if io else 0
    written = io.write_bytes if io else 0
    return {"time_s": elapsed, "peak_rss_bytes": peak, "bytes_read": read, "bytes_written": written,
            "read_Bps": read / elapsed, "write_Bps": written / elapsed, "device": device_read_rates(samples)}


def stage_from_report(store: Path) -> dict[str, Any]:
    """Prepare-stage figures of a store built outside this script (its own prepare_report.json).

    The report has per-stage time and peak RSS but not the /proc I/O counters, so bytes stay ``None``.
    """
    rep = json.loads((store / "prepare_report.json").read_text())
    return {"time_s": rep["total_time_s"], "peak_rss_bytes": rep["peak_rss_bytes"], "bytes_read": None,
            "bytes_written": None, "read_Bps": None, "write_Bps": None,
            "note": "store built by `oocgnn prepare` before this script ran; figures from its prepare_report.json"}


def store_facts(store: Path) -> dict[str, Any]:
    """Counts, partitioning and array sizes of the finished store (`oocgnn inspect --json`)."""
    info = json.loads(subprocess.run(["oocgnn", "inspect", str(store), "--json"], capture_output=True, text=True,
                                     check=True).stdout)
    arrays = {n: (store / n).stat().st_size for n in ("features.npy", "graph/indptr.npy", "graph/indices.npy")}
    return {"num_nodes": info["num_nodes"], "num_edges": info["num_edges"], "partition": info["partition"],
            "graph": info["graph"], "bytes_on_disk": info["bytes_on_disk"], "array_bytes": arrays}


def summarise(results: dict[str, Any], store: Path, run: Path) -> None:
    """Derived figures: bandwidth ratios, budget checks, training I/O rates."""
    disk, budget = results["disk"], results["budget_bytes"]
    for name, st in results["stages"].items():
        st["under_budget"] = st["peak_rss_bytes"] <= budget
        if st["bytes_read"] is not None:
            st["read_ratio_to_seq"] = st["read_Bps"] / disk["seq_read_Bps"]
            st["write_ratio_to_seq"] = st["write_Bps"] / disk["seq_write_Bps"]
    results["store"] = store_facts(store)
    hist = sum(f.stat().st_size for f in (run / "histories").iterdir() if HISTORY_TABLE.fullmatch(f.name))
    results["history_bytes"] = hist
    results["features_csr_histories_bytes"] = sum(results["store"]["array_bytes"].values()) + hist
    results["exceeds_ram"] = results["features_csr_histories_bytes"] > results["machine"]["ram_bytes"]
    results["run_bytes_on_disk"] = sum(f.stat().st_size for f in run.rglob("*") if f.is_file())
    results["prepare_substages"] = json.loads((store / "prepare_report.json").read_text())["stages"]

    summary = json.loads((run / "summary.json").read_text())
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    train_s = sum(m["epoch_time_s"] for m in metrics)
    halo_rows = sum(m.get("halo_rows", 0) for m in metrics)
    batches = sum(m.get("batches", 0) for m in metrics)
    width, hidden = results["features"], results["hidden"]
    # rows that missed the RAM caches and were gathered from the memmaps (page cache or disk)
    fbytes = 2 if results.get("feature_dtype") == "float16" else 4
    hbytes = 2 if results.get("history_dtype") == "float16" else 4
    rows_read = (sum(m.get("feature_bytes_read", 0) for m in metrics) / (fbytes * width)
                 + sum(m.get("history_bytes_read", 0) for m in metrics) / (hbytes * hidden))
    last = metrics[-1]
    results["train"] = {
        "epoch_time_s": train_s, "batches": batches, "s_per_batch": train_s / max(batches, 1),
        "io_wait_fraction": sum(m["io_wait_s"] for m in metrics) / train_s,
        "halo_rows": halo_rows, "halo_rows_per_batch": halo_rows / max(batches, 1),
        "halo_rows_per_s": halo_rows / train_s,
        "memmap_rows_read_per_s": rows_read / train_s,
        "memmap_rows_read_per_s_over_disk_rand_iops": rows_read / train_s / disk["rand_read_iops"],
        "cache": {k: v for k, v in last.items() if k.startswith(("cache_", "hist_cache_"))},
        "eval_time_s": last.get("eval_time_s"), "fill_histories_s": metrics[0].get("fill_histories_s"),
        "inference_paths": last.get("inference_paths"), "valid_acc": summary["best_valid_acc"],
        "test_acc": summary["test_acc_at_best_valid"],
        "peak_rss_bytes": summary["peak_rss_bytes"], "peak_anon_rss_bytes": summary["peak_anon_rss_bytes"],
        "memory_plan": summary.get("memory_plan"),
    }


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def markdown(results: dict[str, Any]) -> str:
    """The RESULTS.md tables of this run."""
    disk, budget = results["disk"], results["budget_bytes"]
    st, tr, sf = results["stages"], results["train"], results["store"]
    m = results["machine"]
    lines = [
        f"Machine: {m['cpus']} cores, {format_size(m['ram_bytes'])} RAM; disk measured in this run: sequential "
        f"{disk['seq_read_Bps'] / 1e6:.0f} MB/s read, {disk['seq_write_Bps'] / 1e6:.0f} MB/s write (dd O_DIRECT 1 MiB), "
        f"{disk['rand_read_iops']:,.0f} random 4 KiB reads/s ({disk.get('rand_read_depth', disk.get('rand_read_threads'))} "
        "in flight, O_DIRECT).",
        "",
        f"Graph: {sf['num_nodes']:,} nodes, {sf['graph']['input_edges']:,} generated directed edges -> "
        f"{sf['num_edges']:,} CSR entries (symmetrised, deduplicated), {results['features']}-d {results.get('feature_dtype', 'float32')} features, "
        f"homophily {results['homophily']}; {sf['partition']['num_partitions']} partitions "
        f"({sf['partition']['method']}), edge cut {100 * sf['partition']['edge_cut_fraction']:.1f} %.",
        f"Features + CSR + histories: **{format_size(results['features_csr_histories_bytes'])}** "
        f"(features {format_size(sf['array_bytes']['features.npy'])}, CSR "
        f"{format_size(sf['array_bytes']['graph/indptr.npy'] + sf['array_bytes']['graph/indices.npy'])}, "
        f"histories {format_size(results['history_bytes'])}) vs {format_size(m['ram_bytes'])} RAM; "
        f"`--memory-budget {format_size(budget)}`.",
        "",
        "| stage | wall time | read | written | read MB/s (of seq) | write MB/s (of seq) | peak RSS | under budget |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, s in st.items():
        if s["bytes_read"] is None:
            io = "n/a | n/a | n/a | n/a"
        else:
            io = (f"{format_size(s['bytes_read'])} | {format_size(s['bytes_written'])} | "
                  f"{s['read_Bps'] / 1e6:.0f} ({s['read_ratio_to_seq']:.2f}) | "
                  f"{s['write_Bps'] / 1e6:.0f} ({s['write_ratio_to_seq']:.2f})")
        lines.append(f"| {name} | {_duration(s['time_s'])} | {io} | {format_size(s['peak_rss_bytes'])} | "
                     f"{'yes' if s['under_budget'] else '**no**'} |")
    for name, s in results["prepare_substages"].items():
        lines.append(f"| prepare / {name} | {_duration(s['time_s'])} | | | | | {format_size(s['peak_rss_bytes'])} | "
                     f"{'yes' if s['peak_rss_bytes'] <= budget else '**no**'} |")
    cache = tr["cache"]
    dev = st.get("train", {}).get("device")
    lines += [
        "",
        "| training figure | value |",
        "|---|---|",
        f"| epoch (train steps only) | {_duration(tr['epoch_time_s'])}, {tr['batches']} batches, "
        f"{tr['s_per_batch']:.1f} s/batch |",
        *([f"| histories filled before step 0 (one layer-wise sweep, `--fill-histories`) | "
           f"{_duration(tr['fill_histories_s'])} |"] if tr.get("fill_histories_s") is not None else []),
        f"| end-of-epoch evaluation inside `train` (layer-wise, all nodes) | "
        f"{_duration(tr['eval_time_s'] or 0)} (input tables: {', '.join(tr.get('inference_paths') or ['?'])}) |",
        f"| time waiting on I/O | {100 * tr['io_wait_fraction']:.1f} % of the epoch |",
        f"| halo rows per batch | {tr['halo_rows_per_batch']:,.0f} |",
        f"| halo rows gathered / s | {tr['halo_rows_per_s']:,.0f} |",
        *([f"| the device while training: read requests / s, busiest tenth of 10 s windows (median) | "
           f"{dev['read_ops_per_s_p90']:,.0f} ({dev['read_ops_per_s_median']:,.0f}) = "
           f"{dev['read_ops_per_s_p90'] / disk['rand_read_iops']:.2f} x its random 4 KiB read rate |",
           f"| the device while training: MB/s read, busiest tenth (median); in 4 KiB pages vs its random rate | "
           f"{dev['read_Bps_p90'] / 1e6:,.0f} ({dev['read_Bps_median'] / 1e6:,.0f}); "
           f"{dev['read_4k_equiv_per_s_p90'] / disk['rand_read_iops']:.2f} x |"] if dev else []),
        f"| rows read from disk files (cache misses, features + histories) / s | "
        f"{tr['memmap_rows_read_per_s']:,.0f} = {tr['memmap_rows_read_per_s_over_disk_rand_iops']:.2f} x the disk's "
        f"random 4 KiB read rate |",
        f"| row caches | {cache.get('cache_policy')}, {cache.get('cache_rows', 0):,} rows each; hit rate features "
        f"{cache.get('cache_hit_rate', 0):.3f}, histories {cache.get('hist_cache_hit_rate', 0):.3f} |",
        f"| peak RSS / anonymous | {format_size(tr['peak_rss_bytes'])} / {format_size(tr['peak_anon_rss_bytes'])} "
        f"(budget {format_size(budget)}) |",
        f"| accuracy after 1 epoch (valid / test) | {tr['valid_acc']:.4f} / {tr['test_acc']:.4f} |",
    ]
    inf = results.get("inference_result")
    if inf:
        lines.append(f"| `oocgnn eval` (valid / test) | {inf.get('valid_acc', float('nan')):.4f} / "
                     f"{inf.get('test_acc', float('nan')):.4f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=50_000_000)
    ap.add_argument("--edges", type=int, default=1_000_000_000)
    ap.add_argument("--features", type=int, default=64)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--homophily", type=float, default=0.9,
                    help="share of edges inside a community; 1 - this is the floor of the edge cut, and so of "
                         "the halo volume an epoch must gather (the generator's own default is 0.6)")
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--partitions", type=int, default=None)
    ap.add_argument("--parts-per-batch", type=int, default=1)
    ap.add_argument("--io-threads", type=int, default=None,
                    help="train's --io-threads (only --io-engine mmap and --in-memory use threads; the default "
                         "row-gather engine keeps 64 page reads in flight itself, so this is not passed unless given)")
    ap.add_argument("--budget", default="12GB")
    ap.add_argument("--partitioner", default=None, help="prepare's --partitioner (default: its auto)")
    ap.add_argument("--feature-dtype", default="float32", choices=["float32", "float16"])
    ap.add_argument("--history-dtype", default="float32", choices=["float32", "float16"])
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--skip-inference", action="store_true",
                    help="no separate `oocgnn eval` stage (train's last epoch already ends with a layer-wise sweep "
                         "over all nodes, timed as eval_time_s)")
    args = ap.parse_args()
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    store, run = work / "store", work / "run"
    results_path = work / "scale_results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {"stages": {}}
    results.update(machine=machine(), nodes=args.nodes, edges=args.edges, features=args.features,
                   hidden=args.hidden, layers=args.layers, homophily=args.homophily, io_threads=args.io_threads,
                   feature_dtype=args.feature_dtype, history_dtype=args.history_dtype,
                   budget_bytes=parse_size(args.budget), command=" ".join(sys.argv))
    if "disk" not in results:
        results["disk"] = disk_bandwidth(work)

    def save() -> None:
        results_path.write_text(json.dumps(results, indent=2) + "\n")

    inference_out = run / "inference.json"
    stages = {
        "prepare": (store / "COMPLETE", None, [
            "oocgnn", "prepare", "synthetic", "--nodes", str(args.nodes), "--edges", str(args.edges),
            "--features", str(args.features), "--classes", str(args.classes), "--homophily", str(args.homophily),
            "--out", str(store),
            "--memory-budget", args.budget, "--feature-dtype", args.feature_dtype,
            *(["--partitions", str(args.partitions)] if args.partitions else []),
            *(["--partitioner", args.partitioner] if args.partitioner else [])]),
        "train": (run / "summary.json", None, [
            "oocgnn", "train", "--data", str(store), "--run-dir", str(run), "--epochs", "1",
            "--layers", str(args.layers), "--hidden", str(args.hidden), "--parts-per-batch", str(args.parts_per_batch),
            *(["--io-threads", str(args.io_threads)] if args.io_threads is not None else []),
            "--memory-budget", args.budget, "--checkpoint-every", "20",
            "--history-dtype", args.history_dtype]),
        # `oocgnn eval` prints its accuracies as one JSON line: that file is also the stage's done-marker
        "inference": (inference_out, inference_out, ["oocgnn", "eval", "--run-dir", str(run)]),
    }
    if args.skip_inference:
        del stages["inference"]
    for name, (done, stdout_path, cmd) in stages.items():
        if name == "prepare" and done.exists() and name not in results["stages"]:
            results["stages"][name] = stage_from_report(store)  # built by a plain `oocgnn prepare` earlier
        if done.exists() and name in results["stages"]:
            print(f"stage {name}: done before, skipping")
            continue
        print(f"stage {name}: {' '.join(cmd)}", flush=True)
        results["stages"][name] = run_stage(cmd, stdout_path)
        save()
    if inference_out.exists() and inference_out.read_text().strip():
        results["inference_result"] = json.loads(inference_out.read_text().strip().splitlines()[-1])
    # measured after the stages, so it does not compete with them
    if "rand_read_iops" not in results["disk"]:  # the device's 4 KiB random reads at 64 in flight (AIO)
        results["disk"].update(disk_random_read_aio(store / "features.npy"))
    summarise(results, store, run)
    save()
    table = markdown(results)
    results["markdown"] = table
    print(table)
    print("wrote", write_json("scale_run", results))


if __name__ == "__main__":
    main()
