#!/usr/bin/env python
"""Benchmark `oocgnn prepare ogbn-papers100M` on a generated input in the exact OGB layout.

Generates a papers100M-layout folder (`raw/data.npz` written by `savez_compressed`,
`node-label.npz`, `split/time/*.csv.gz`) at a chosen scale, measures the disk's
sequential bandwidth on the same filesystem, converts with a memory budget, and
reports MB/s (uncompressed array bytes per second of wall time), the ratio to the
disk's sequential read bandwidth, and peak RSS against the budget.

    python benchmarks/bench_prepare.py --nodes 6000000 --edges 30000000 --budget 2GB
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import disk_bandwidth, drop_caches, machine, print_table, run_and_sample_rss, write_json  # noqa: E402

from oocgnn.utils.memory import format_size, parse_size  # noqa: E402


def inflate_ceiling(npz: Path) -> dict[str, float]:
    """Time to only decompress every member of ``npz`` once (zipfile, 16 MiB reads).

    DEFLATE is a serial format: no converter can read a ``savez_compressed`` member
    faster than one core inflates it, so this is the honest ceiling to compare with.
    """
    import zipfile

    t0 = time.perf_counter()
    total = 0
    with zipfile.ZipFile(npz) as zf:
        for name in zf.namelist():
            with zf.open(name) as f:
                while chunk := f.read(16 << 20):
                    total += len(chunk)
    elapsed = time.perf_counter() - t0
    return {"bytes": total, "time_s": elapsed, "Bps": total / elapsed}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=6_000_000, help="nodes (128 float32 features each)")
    ap.add_argument("--edges", type=int, default=30_000_000, help="directed edges in edge_index")
    ap.add_argument("--budget", default="2GB", help="--memory-budget for the conversion")
    ap.add_argument("--workdir", type=Path, default=None, help="where to put input and store (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the generated input and store")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="oocgnn-bench-prepare-", dir=args.workdir))
    try:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", (
            "from oocgnn.testing.ogb_fixtures import make_papers100m_fixture as m; "
            f"m({str(work / 'in')!r}, num_nodes={args.nodes}, num_edges={args.edges}, labelled_fraction=0.02)")],
            check=True)
        gen_s = time.perf_counter() - t0
        disk = disk_bandwidth(work)
        input_bytes = args.nodes * 128 * 4 + args.edges * 16
        drop_caches()
        inflate = inflate_ceiling(work / "in" / "ogbn_papers100M" / "raw" / "data.npz")
        cold = drop_caches()
        cmd = ["oocgnn", "prepare", "ogbn-papers100M", "--root", str(work / "in"), "--out", str(work / "store"),
               "--memory-budget", args.budget, "--no-progress"]
        res = run_and_sample_rss(cmd)
        report = json.loads((work / "store" / "prepare_report.json").read_text())
        budget = parse_size(args.budget)
        mbps = input_bytes / res["time_s"]
        result = {
            "machine": machine(), "nodes": args.nodes, "edges": args.edges, "input_array_bytes": input_bytes,
            "npz_bytes": (work / "in" / "ogbn_papers100M" / "raw" / "data.npz").stat().st_size,
            "generate_s": gen_s, "disk": disk, "page_cache_dropped": cold, "budget_bytes": budget,
            "prepare_s": res["time_s"], "prepare_Bps": mbps, "ratio_to_disk_read": mbps / disk["seq_read_Bps"],
            "inflate_only": inflate, "ratio_to_inflate_ceiling": mbps / inflate["Bps"],
            "peak_rss_bytes": res["peak_rss_bytes"], "rss_under_budget": res["peak_rss_bytes"] <= budget,
            "stages": report["stages"], "command": " ".join(sys.argv),
        }
        print_table([
            ("input (uncompressed arrays)", format_size(input_bytes)),
            ("disk seq read / write", f"{format_size(disk['seq_read_Bps'])}/s / {format_size(disk['seq_write_Bps'])}/s"),
            ("prepare wall time", f"{res['time_s']:.1f} s"),
            ("prepare throughput", f"{format_size(mbps)}/s"),
            ("ratio to disk seq read", f"{mbps / disk['seq_read_Bps']:.2f}  (target >= 0.7)"),
            ("inflate-only ceiling (data.npz)", f"{format_size(inflate['Bps'])}/s"),
            ("ratio to inflate ceiling", f"{mbps / inflate['Bps']:.2f}"),
            ("peak RSS / budget", f"{format_size(res['peak_rss_bytes'])} / {format_size(budget)}"),
            *[(f"  stage {k}", f"{v.get('time_s', 0):.1f} s, peak RSS {format_size(v.get('peak_rss_bytes', 0))}")
              for k, v in report["stages"].items()],
        ])
        print("wrote", write_json("bench_prepare", result))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
