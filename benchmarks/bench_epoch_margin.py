"""Does the out-of-core epoch ratio hold across +-10 % of the budget?  (issue #27, item 3)

For each store (2 M nodes, 128-d; cut into 100 and 200 partitions) and dtype
(float32 features + histories; float16 features + ``--history-dtype float16``) this
runs :mod:`bench_epoch` (GCN 2x128, 2 parts per batch, caches dropped, each run in a
memory cgroup of budget + 400 MB) in-RAM, then out of core at each budget, then in-RAM
again; the ratio divides by the mean of the two in-RAM epochs around it, so the box's
drift over a group shows up as the spread of those two.  Prints one table, writes
``benchmarks/out/bench_epoch_margin.json``.  Stores are made with e.g.::

    oocgnn prepare synthetic --nodes 2000000 --edges 20000000 --features 128 --partitions 200 \\
        --partitioner metis [--feature-dtype float16] --out /tmp/epoch/syn2m_p200[_fp16]

    python benchmarks/bench_epoch_margin.py --stores /tmp/epoch/syn2m_p200 /tmp/epoch/syn2m_p100 \\
        --budgets 1350MB,1500MB,1650MB --tmp /tmp/epoch

A store named ``X`` is run at float32; ``X_fp16`` (when it exists) at float16.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT_DIR, machine  # noqa: E402

HERE = Path(__file__).resolve().parent
TARGET = {"float32": 1.5, "float16": 1.15}


def one(store: Path, dtype: str, only: str, budget: str, cgroup: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, str(HERE / "bench_epoch.py"), "--store", str(store), "--epochs", "1", "--layers", "2",
           "--hidden", "128", "--parts-per-batch", "2", "--budget", budget, "--cgroup-limit", cgroup, "--skip-pyg",
           "--only", only, "--history-dtype", dtype, "--out", "bench_epoch_margin_last"]
    if args.tmp:
        cmd += ["--tmp", args.tmp]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    res = json.loads((OUT_DIR / "bench_epoch_margin_last.json").read_text())["results"][only]
    return res


def main() -> None:
    from oocgnn.utils.memory import format_size, parse_size

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stores", nargs="+", type=Path, required=True, help="float32 stores; X_fp16 beside each is used too")
    ap.add_argument("--budgets", default="1350MB,1500MB,1650MB")
    ap.add_argument("--cgroup-extra", default="400MB", help="cgroup limit = budget + this (default 400MB)")
    ap.add_argument("--dtypes", default="float16,float32")
    ap.add_argument("--tmp", default=None)
    args = ap.parse_args()
    rows = []
    out = OUT_DIR / "bench_epoch_margin.json"
    for store in args.stores:
        for dtype in args.dtypes.split(","):
            path = store if dtype == "float32" else store.with_name(store.name + "_fp16")
            if not (path / "COMPLETE").exists():
                print(f"skip {path}: no such store")
                continue
            budgets = args.budgets.split(",")
            ram0 = one(path, dtype, "ram", "4GB", "64GB", args)
            oocs = [one(path, dtype, "ooc", b, format_size(parse_size(b) + parse_size(args.cgroup_extra)), args)
                    for b in budgets]
            ram1 = one(path, dtype, "ram", "4GB", "64GB", args)
            ram = (ram0["epoch_time_s"] + ram1["epoch_time_s"]) / 2
            for b, r in zip(budgets, oocs):
                row = {"store": path.name, "dtype": dtype, "budget": b, "ram_epoch_s": [ram0["epoch_time_s"],
                       ram1["epoch_time_s"]], **{k: r.get(k) for k in ("epoch_time_s", "io_wait_fraction",
                       "prefetch_depth", "peak_anon_rss_bytes", "peak_rss_bytes", "planned_peak_anon_bytes",
                       "mapped_window_bytes", "cache_hit_rate", "test_acc", "error")}}
                row["ratio"] = r["epoch_time_s"] / ram if "epoch_time_s" in r else None
                row["anon_under_budget"] = bool(r.get("peak_anon_rss_bytes") and r["peak_anon_rss_bytes"] <= parse_size(b))
                row["target"] = TARGET[dtype]
                row["met"] = row["ratio"] is not None and row["ratio"] <= TARGET[dtype] and row["anon_under_budget"]
                rows.append(row)
                print(f"{row['store']:18} {dtype:8} {b:7} ooc {row.get('epoch_time_s') or 0:7.1f} s  ram "
                      f"{ram0['epoch_time_s']:.1f}/{ram1['epoch_time_s']:.1f} s  ratio {row['ratio'] or 0:5.2f} "
                      f"(<= {TARGET[dtype]})  depth {row['prefetch_depth']}  peak anon "
                      f"{(row['peak_anon_rss_bytes'] or 0) / 1e6:.0f} MB  {'met' if row['met'] else 'MISSED'}",
                      flush=True)
                OUT_DIR.mkdir(parents=True, exist_ok=True)
                out.write_text(json.dumps({"machine": machine(), "args": {k: str(v) for k, v in vars(args).items()},
                                           "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
