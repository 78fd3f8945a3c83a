#!/usr/bin/env python
"""Edge cut, balance and time of METIS, multilevel and LDG on the same graphs (issue #13).

For each graph the symmetric CSR is built once on disk (as `oocgnn prepare` does);
then every (method, number of parts) runs in its own process on the memmapped CSR,
so its wall time and peak RSS are its own.  METIS gets a budget it fits in;
multilevel gets ``--ml-budget-fraction`` of METIS's estimated need, so METIS does
*not* fit and multilevel has to coarsen on disk first — the situation it is for.

``metis-1.10`` is METIS given the same 1.10 balance slack multilevel may use.

Target: multilevel edge cut <= 1.15x METIS's at the same number of parts, with
max/mean part size <= 1.10.

    python benchmarks/bench_partition.py                      # synthetic 1M/10M, Coauthor CS, Amazon Photo
    python benchmarks/bench_partition.py --graphs synthetic --homophily 0.9 --tag _h0.9
    python benchmarks/bench_partition.py --graphs synthetic --nodes 50000000 --edges 1000000000 \
        --homophily 0.9 --parts 250 --methods multilevel,ldg --ml-budget 12GB --csr-budget 8GB --tag _50M_1B
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, run_and_sample_rss, write_json  # noqa: E402

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"
GRAPHS = ("synthetic", "cs", "photo")


def build_graph(name: str, out: Path, args) -> dict:
    """Symmetric, de-duplicated CSR of ``name`` as orig_indptr/indices.npy in ``out``."""
    from oocgnn.prepare.csr import build_csr

    out.mkdir(parents=True, exist_ok=True)
    if name == "synthetic":
        from oocgnn.prepare.sources.synthetic import SyntheticSource

        src = SyntheticSource(args.nodes, args.edges, 8, 8, seed=0, homophily=args.homophily)
    else:
        from oocgnn.prepare.sources.pyg import PygSource

        cls, ds = {"cs": ("Coauthor", "CS"), "photo": ("Amazon", "Photo")}[name]
        src = PygSource(cls, ds, DATASETS / cls)
        src.prepare_scratch(out / "scratch")  # copies the raw files; PyG writes only there
    info = src.info()
    t0 = time.perf_counter()
    r = build_csr(lambda: src.iter_edges(1 << 22), info.num_nodes, out / "indptr.npy", out / "indices.npy", out,
                  symmetric=True, memory_budget=args.csr_budget, progress=True)
    shutil.rmtree(out / "scratch", ignore_errors=True)
    return {"num_nodes": info.num_nodes, "num_entries": r.num_entries, "csr_s": time.perf_counter() - t0}


def worker(args) -> None:
    """One partitioning run; writes its figures to ``args.result``."""
    import numpy as np

    from oocgnn.prepare.partition import partition_graph

    ip = np.load(args.csr / "indptr.npy", mmap_mode="r")
    ix = np.load(args.csr / "indices.npy", mmap_mode="r")
    work = args.result.parent / f"{args.result.stem}.work"
    t0 = time.perf_counter()
    if args.method == "metis-1.10":  # METIS given the same 1.10 balance slack multilevel uses
        import pymetis

        from oocgnn.prepare.partition import PartitionResult, edge_cut_fraction

        opts = pymetis.Options(seed=0, ufactor=100)
        adj = pymetis.CSRAdjacency(np.asarray(ip, np.int64), np.asarray(ix, np.int64))
        part = np.asarray(pymetis.part_graph(args.k, adjacency=adj, options=opts)[1], np.int32)
        r = PartitionResult(part, "metis-1.10", edge_cut_fraction(ip, ix, part))
    else:
        r = partition_graph(ip, ix, args.k, args.method, memory_budget=args.budget, seed=0, progress=args.progress,
                            workdir=work)
    elapsed = time.perf_counter() - t0
    sizes = np.bincount(r.part, minlength=args.k)
    levels = [json.loads((d / "DONE").read_text()) for d in sorted(work.glob("level*"), key=lambda p: int(p.name[5:]))]
    shutil.rmtree(work, ignore_errors=True)
    args.result.write_text(json.dumps({"method": r.method, "cut": r.edge_cut_fraction, "time_s": elapsed,
                                       "max_over_mean": float(sizes.max() / sizes.mean()), "levels": levels}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--graphs", default=",".join(GRAPHS), help=f"comma list of {', '.join(GRAPHS)}")
    ap.add_argument("--parts", default="8,64", help="comma list of numbers of parts")
    ap.add_argument("--nodes", type=int, default=1_000_000, help="synthetic graph: nodes")
    ap.add_argument("--edges", type=int, default=10_000_000, help="synthetic graph: directed edges generated")
    ap.add_argument("--ml-budget-fraction", type=float, default=0.125,
                    help="multilevel's budget as a fraction of METIS's estimated need (default 1/8)")
    ap.add_argument("--ml-budget", default=None,
                    help="multilevel's --memory-budget, e.g. 12GB (overrides --ml-budget-fraction)")
    ap.add_argument("--homophily", type=float, default=0.6, help="synthetic graph: homophily (generator default 0.6)")
    ap.add_argument("--csr-budget", default="4GB", help="memory budget of the CSR build")
    ap.add_argument("--methods", default="metis,metis-1.10,multilevel,ldg",
                    help="metis-1.10 = METIS with ufactor 100, the balance slack multilevel uses")
    ap.add_argument("--tag", default="", help="suffix of the JSON file name")
    ap.add_argument("--progress", action="store_true", help="progress bars in the partitioning runs")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--budget", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--csr", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--k", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--method", help=argparse.SUPPRESS)
    ap.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    from oocgnn.utils.memory import parse_size

    args.csr_budget = parse_size(args.csr_budget)

    from oocgnn.prepare.multilevel import BYTES_PER_NODE
    from oocgnn.prepare.metis import METIS_BYTES_PER_ENTRY

    work = Path(tempfile.mkdtemp(prefix="oocgnn-bench-partition-", dir=args.workdir))
    results = []
    try:
        for name in args.graphs.split(","):
            g = build_graph(name, work / name, args)
            metis_need = g["num_entries"] * METIS_BYTES_PER_ENTRY + g["num_nodes"] * 64
            for k in (int(x) for x in args.parts.split(",")):
                row = {"graph": name, **g, "parts": k}
                for method in args.methods.split(","):
                    budget = 16 << 30
                    if method == "multilevel":
                        budget = (parse_size(args.ml_budget) if args.ml_budget else
                                  int(args.ml_budget_fraction * metis_need) + BYTES_PER_NODE * g["num_nodes"])
                    out = work / f"{name}-{k}-{method}.json"
                    res = run_and_sample_rss([sys.executable, __file__, "--worker", "--csr", str(work / name),
                                              "--k", str(k), "--method", method, "--budget", str(budget),
                                              "--result", str(out)] + (["--progress"] if args.progress else []))
                    row[method] = {**json.loads(out.read_text()), "wall_s": res["time_s"],
                                   "peak_rss_bytes": res["peak_rss_bytes"], "budget_bytes": budget}
                if "metis" in row and "multilevel" in row:
                    row["ml_over_metis"] = row["multilevel"]["cut"] / row["metis"]["cut"]
                    row["target_met"] = row["ml_over_metis"] <= 1.15 and row["multilevel"]["max_over_mean"] <= 1.10
                if "metis-1.10" in row and "multilevel" in row:
                    row["ml_over_metis_1.10"] = row["multilevel"]["cut"] / row["metis-1.10"]["cut"]
                if "ldg" in row and "multilevel" in row:
                    row["ml_over_ldg"] = row["multilevel"]["cut"] / row["ldg"]["cut"]
                results.append(row)
                print(json.dumps(row), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    methods = args.methods.split(",")
    head = (["graph", "nodes", "entries", "parts"] + [f"{m} cut / max:mean / s" for m in methods]
            + ["ML/METIS", "ML/METIS-1.10", "ML/LDG", "target met"])
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in results:
        cells = [r["graph"], f"{r['num_nodes']:,}", f"{r['num_entries']:,}", str(r["parts"])]
        cells += [f"{r[m]['cut']:.4f} / {r[m]['max_over_mean']:.3f} / {r[m]['time_s']:.1f}" for m in methods]
        cells += [f"{r.get(key, float('nan')):.3f}" for key in ("ml_over_metis", "ml_over_metis_1.10", "ml_over_ldg")]
        cells += ["yes" if r.get("target_met") else ("no" if "target_met" in r else "-")]
        print("| " + " | ".join(cells) + " |")
    suffix = ("" if args.graphs == ",".join(GRAPHS) else "_" + args.graphs.replace(",", "_")) + args.tag
    print("wrote", write_json(f"bench_partition{suffix}", {"machine": machine(), "command": " ".join(sys.argv),
                                                           "ml_budget_fraction": args.ml_budget_fraction,
                                                           "results": results}))


if __name__ == "__main__":
    main()
