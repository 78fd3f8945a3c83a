"""Cold halo gathers of real batches: the row-gather engine with and without gap reads.

    python benchmarks/bench_halo_gather.py --store /tmp/epoch/syn2m_p200 --parts-per-batch 2 --batches 3

Why: a halo of 130 k rows in a 2 M-row table of 512-byte rows touches ~45 % of the
table's 4 KiB pages, so one request per page (or per run of adjacent pages) is
IOPS-bound, while reading through the short gaps between needed pages turns the gather
into long sequential reads.  For the first ``--batches`` batches of epoch 0's plan
(seed 0) this gathers the halo's feature rows with each engine (``direct``, ``pread``)
and ``max_gap`` 0 and :data:`oocgnn.io.rowfile.MAX_GAP_PAGES`, dropping the page cache
before every gather; CPU = user + sys of the process.  Prints a table and writes
``benchmarks/out/bench_halo_gather.json``.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import drop_caches, machine, write_json  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", required=True, help="dataset store (oocgnn prepare ...)")
    ap.add_argument("--parts-per-batch", type=int, default=2)
    ap.add_argument("--batches", type=int, default=3, help="halos gathered per configuration")
    args = ap.parse_args()
    from oocgnn.batching import epoch_plan, group_ranges
    from oocgnn.subgraph import SubgraphBuilder
    from oocgnn.io import rowfile_for
    from oocgnn.io.rowfile import MAX_GAP_PAGES
    from oocgnn.store.reader import open_dataset

    ds = open_dataset(args.store)
    ptr = np.asarray(ds.partition_ptr, np.int64)
    plan = epoch_plan(len(ptr) - 1, args.parts_per_batch, 0, 0)[: args.batches]
    halos = []
    build = SubgraphBuilder(ds.indptr, ds.indices)  # one builder: its degree array and id map are 8 B/node
    for g in plan:
        sub = build(group_ranges(ptr, g))
        halos.append(sub.n_id[sub.batch_size:])
    build.close()
    feats = ds.features
    rows = []
    for engine in ("direct", "pread"):
        for gap in (0, MAX_GAP_PAGES):
            rf = rowfile_for(feats, engine, max_gap=gap)
            el = cpu = 0.0
            for ids in halos:
                out = np.empty((len(ids), feats.shape[1]), feats.dtype)
                if not drop_caches():
                    raise SystemExit("cannot drop the page cache (needs root): the gathers would not be cold")
                c0, t0 = os.times(), time.perf_counter()
                rf.gather(ids, out)
                el += time.perf_counter() - t0
                c1 = os.times()
                cpu += (c1.user - c0.user) + (c1.system - c0.system)
            rf.close()
            n = sum(len(h) for h in halos)
            rows.append({"engine": engine, "max_gap": gap, "halo_rows_mean": n / len(halos),
                         "s_per_halo": el / len(halos), "cpu_s_per_halo": cpu / len(halos),
                         "cpu_us_per_row": cpu / n * 1e6, "rows_per_s": n / el})
    print(f"{'engine':7} {'max_gap':>7} {'s/halo':>7} {'CPU s/halo':>10} {'CPU us/row':>10} {'rows/s':>9}")
    for r in rows:
        print(f"{r['engine']:7} {r['max_gap']:>7} {r['s_per_halo']:>7.2f} {r['cpu_s_per_halo']:>10.2f} "
              f"{r['cpu_us_per_row']:>10.1f} {r['rows_per_s']:>9.0f}")
    page_rows = 4096 // (feats.shape[1] * feats.dtype.itemsize) or 1
    density = 1 - (1 - np.mean([len(h) for h in halos]) / ds.num_nodes) ** page_rows
    print(f"mean halo {rows[0]['halo_rows_mean']:.0f} rows of {ds.num_nodes}; ~{density:.0%} of the table's pages touched")
    write_json("bench_halo_gather", {"machine": machine(), "args": vars(args), "rows": rows,
                                     "page_density_estimate": float(density)})


if __name__ == "__main__":
    main()
