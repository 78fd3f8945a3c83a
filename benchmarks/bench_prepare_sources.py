#!/usr/bin/env python
"""Benchmark the user-input sources of `oocgnn prepare` (issue #24): `arrays` and `ogb`.

``arrays``: the synthetic graph of ``--nodes`` / ``--edges`` / ``--features`` is dumped once
to ``.npy`` files (edge_index (2, E) int64, node_feat [N, F] float32, node_label, split ids);
then, in interleaved rounds from a dropped page cache, ``oocgnn prepare arrays`` of those
files and ``oocgnn prepare synthetic`` of the same graph (same width, budget, seed): wall
time, per-stage times, peak RSS of the process tree against ``--budget``.  The two stores
must be identical array for array (same CSR, partition, features): checked.

``ogb``: an ogbn-products-layout csv download (2.4 M x 100 features, 62 M edges by
default) is generated (`oocgnn.testing.ogb_csv_fixtures`); then from a dropped page cache
``oocgnn prepare ogb --name ogbn-products`` (time, stages, peak RSS) and OGB's own
``NodePropPredDataset('ogbn-products')`` reading the same raw files (time, of which its
``torch.save`` of the processed data, and peak RSS).

Every timed command runs under ``nice -n 10``, one at a time.

    python benchmarks/bench_prepare_sources.py arrays --nodes 2000000 --edges 20000000 --features 128 --budget 2GB --repeat 2
    python benchmarks/bench_prepare_sources.py ogb --nodes 2449029 --edges 61859140 --features 100 --budget 4GB
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import drop_caches, machine, print_table, run_and_sample_rss, write_json  # noqa: E402

from oocgnn.utils.memory import format_size, parse_size  # noqa: E402

NICE = ["nice", "-n", "10"]
OOCGNN = [*NICE, sys.executable, "-m", "oocgnn.cli.main"]


def _report(store: Path) -> dict:
    return json.loads((store / "prepare_report.json").read_text())


def _manifest(store: Path) -> dict:
    return json.loads((store / "zarr.json").read_text())["attributes"]["oocgnn"]


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def timed(cmd: list[str], store: Path | None = None, env: dict | None = None) -> dict:
    """One command from a dropped page cache: wall, CPU seconds (user + system, every thread: on a
    shared box the steadier figure), peak RSS of the tree, the store's stage report."""
    drop_caches()
    load, c0 = os.getloadavg()[0], _children_cpu()
    res = run_and_sample_rss(cmd, env={**os.environ, **(env or {})})
    out = {**res, "cpu_s": _children_cpu() - c0, "loadavg_1min_before": load, "command": " ".join(cmd)}
    if store is not None:  # the build's own clock: from source opened to COMPLETE (no interpreter start-up)
        report = _report(store)
        out["stages"], out["build_s"] = report["stages"], report["total_time_s"]
    return out


STAGES = ("scratch", "csr_orig", "partition", "csr", "features", "meta")


def _stage_line(stages: dict) -> str:
    """Wall seconds per stage, in pipeline order."""
    return ", ".join(f"{k} {stages[k].get('time_s', 0):.1f}" for k in STAGES if k in stages)


def dump_synthetic(folder: Path, nodes: int, edges: int, features: int, classes: int) -> dict[str, Path]:
    """The synthetic graph `prepare synthetic` would build, written as the files `prepare arrays` takes."""
    from oocgnn.prepare.sources.synthetic import SyntheticSource

    src = SyntheticSource(num_nodes=nodes, num_edges=edges, num_features=features, num_classes=classes, seed=0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {k: folder / f"{k}.npy" for k in ("edge_index", "node_feat", "node_label", "train", "valid", "test")}
    ei = np.lib.format.open_memmap(paths["edge_index"], mode="w+", dtype=np.int64, shape=(2, edges))
    pos = 0
    for s, d in src.iter_edges(1 << 22):
        ei[0, pos:pos + len(s)], ei[1, pos:pos + len(s)] = s, d
        pos += len(s)
    ei.flush()
    del ei
    x = np.lib.format.open_memmap(paths["node_feat"], mode="w+", dtype=np.float32, shape=(nodes, features))
    pos = 0
    for block in src.iter_features(1 << 16):
        x[pos:pos + len(block)] = block
        pos += len(block)
    x.flush()
    del x
    np.save(paths["node_label"], src.labels())
    for k, ids in src.splits().items():
        np.save(paths[k], ids)
    return paths


def bench_arrays(args, work: Path, budget: int) -> dict:
    t0 = time.perf_counter()
    p = dump_synthetic(work / "in", args.nodes, args.edges, args.features, args.classes)
    gen_s = time.perf_counter() - t0
    common = ["--memory-budget", args.budget, "--no-progress", "--overwrite"]
    configs = {
        "prepare arrays": [*OOCGNN, "prepare", "arrays", "--edge-index", str(p["edge_index"]), "--node-feat",
                           str(p["node_feat"]), "--node-label", str(p["node_label"]), "--train-idx", str(p["train"]),
                           "--valid-idx", str(p["valid"]), "--test-idx", str(p["test"])],
        "prepare synthetic": [*OOCGNN, "prepare", "synthetic", "--nodes", str(args.nodes), "--edges",
                              str(args.edges), "--features", str(args.features), "--classes", str(args.classes)],
    }
    trials: dict[str, list[dict]] = {k: [] for k in configs}
    manifests: dict[str, dict] = {}
    for _ in range(args.repeat):  # interleaved rounds: a neighbour's burst hits both sides alike
        for name, cmd in configs.items():
            store = work / name.replace(" ", "_")
            trials[name].append(timed([*cmd, "--out", str(store), *common], store))
            manifests[name] = _manifest(store)
            shutil.rmtree(store)
    a, s = manifests["prepare arrays"], manifests["prepare synthetic"]
    same = {k: a["checksums"][k] == s["checksums"].get(k) for k in a["checksums"]}
    runs = {k: {**min(t, key=lambda r: r["time_s"]), "trials": [
        {f: r[f] for f in ("time_s", "cpu_s", "peak_rss_bytes", "loadavg_1min_before")} for r in t]}
        for k, t in trials.items()}
    for r in runs.values():
        r["peak_rss_bytes"] = max(t["peak_rss_bytes"] for t in r["trials"])
        r["rss_under_budget"] = r["peak_rss_bytes"] <= budget
    rows = [("input", f"{args.nodes:,} nodes, {args.edges:,} edges, {args.features} float32 features "
                      f"(.npy files {format_size(sum(f.stat().st_size for f in p.values()))}, dumped in {gen_s:.0f} s)")]
    for name, r in runs.items():
        rows += [(f"{name} (best of {args.repeat})", f"{r['time_s']:.1f} s (build {r['build_s']:.1f} s, CPU "
                                                     f"{r['cpu_s']:.1f} s), peak RSS "
                                                     f"{format_size(r['peak_rss_bytes'])} "
                                                     f"/ budget {format_size(budget)} "
                                                     f"({'under' if r['rss_under_budget'] else 'OVER'})"),
                 ("  stages (s)", _stage_line(r["stages"]))]
    rows.append(("stores identical (checksums)", f"{all(same.values())} {same}"))
    print_table(rows)
    return {"generate_s": gen_s, "runs": runs, "identical_checksums": same, "partition": a["partition"]}


_OGB_LOADER = """
import os, sys, time, json
os.environ["OUTDATED_IGNORE"] = "1"
import torch
saving = [0.0]
plain_save = torch.save
def timed_save(*a, **k):
    t0 = time.perf_counter()
    plain_save(*a, **k)
    saving[0] += time.perf_counter() - t0
torch.save = timed_save
from ogb.nodeproppred import NodePropPredDataset
t0 = time.perf_counter()
ds = NodePropPredDataset("ogbn-products", root=sys.argv[1])
graph, label = ds[0]
split = ds.get_idx_split()
print(json.dumps({"loader_s": time.perf_counter() - t0, "torch_save_s": saving[0],
                  "edges": int(graph["edge_index"].shape[1]), "nodes": int(graph["num_nodes"])}))
"""


def bench_ogb(args, work: Path, budget: int) -> dict:
    from oocgnn.testing.ogb_csv_fixtures import make_ogb_csv_fixture

    t0 = time.perf_counter()
    d = make_ogb_csv_fixture(work / "in", "ogbn-products", args.nodes, args.edges, num_features=args.features)
    gen_s = time.perf_counter() - t0
    sizes = {f.name: f.stat().st_size for f in (d / "raw").iterdir()}
    store = work / "store"
    ours = timed([*OOCGNN, "prepare", "ogb", "--name", "ogbn-products", "--root", str(work / "in"), "--out",
                  str(store), "--memory-budget", args.budget, "--no-progress"], store)
    manifest = _manifest(store)
    shutil.rmtree(store)
    # OGB's loader on the same raw files: a folder of links to them, plus the processed/ folder it writes
    ref = work / "ogb" / d.name
    (ref / "processed").mkdir(parents=True)
    for item in ("raw", "split", "RELEASE_v1.txt"):
        (ref / item).symlink_to(d / item)
    script = work / "ogb_loader.py"
    script.write_text(_OGB_LOADER)
    drop_caches()
    load, c0 = os.getloadavg()[0], _children_cpu()
    t0 = time.perf_counter()
    proc = subprocess.Popen([*NICE, sys.executable, str(script), str(work / "ogb")], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    import psutil

    ps, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        try:
            peak = max(peak, ps.memory_info().rss)
        except psutil.Error:
            pass
        time.sleep(0.05)
    wall = time.perf_counter() - t0
    proc.wait()
    cpu = _children_cpu() - c0
    if proc.returncode != 0:
        raise SystemExit(f"OGB's loader failed ({proc.returncode})")
    ogb = {**json.loads(proc.stdout.read().strip().splitlines()[-1]), "wall_s": wall, "cpu_s": cpu,
           "peak_rss_bytes": peak, "loadavg_1min_before": load}
    rows = [
        ("input (products layout)", f"{args.nodes:,} nodes, {args.edges:,} edges, {args.features} features; raw "
                                    f"{format_size(sum(sizes.values()))} gzip ({gen_s:.0f} s to generate)"),
        ("prepare ogb", f"{ours['time_s']:.1f} s (build {ours['build_s']:.1f} s, CPU {ours['cpu_s']:.1f} s), peak RSS {format_size(ours['peak_rss_bytes'])} / budget "
                        f"{format_size(budget)} ({'under' if ours['peak_rss_bytes'] <= budget else 'OVER'}), "
                        f"load {ours['loadavg_1min_before']:.1f}"),
        ("  stages (s)", _stage_line(ours["stages"])),
        ("  partition", f"{manifest['partition']['method']}, {manifest['partition']['num_partitions']} parts, "
                        f"cut {manifest['partition']['edge_cut_fraction']:.3f}"),
        ("OGB NodePropPredDataset from raw", f"{ogb['wall_s']:.1f} s wall, CPU {ogb['cpu_s']:.1f} s "
                                             f"({ogb['loader_s']:.1f} s in the constructor, "
                                             f"{ogb['torch_save_s']:.1f} s of it torch.save), peak RSS "
                                             f"{format_size(ogb['peak_rss_bytes'])}, load {load:.1f}"),
        ("ratio OGB loader / prepare ogb", f"{ogb['wall_s'] / ours['time_s']:.2f} (wall), "
                                          f"{ogb['cpu_s'] / ours['cpu_s']:.2f} (CPU), "
                                          f"{ogb['loader_s'] / ours['build_s']:.2f} (constructor / build), "
                                          f"{ogb['peak_rss_bytes'] / ours['peak_rss_bytes']:.2f} (peak RSS)"),
    ]
    print_table(rows)
    return {"generate_s": gen_s, "raw_bytes": sizes, "prepare_ogb": ours, "ogb_loader": ogb,
            "partition": manifest["partition"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("which", choices=("arrays", "ogb"))
    ap.add_argument("--nodes", type=int, default=None, help="default 2,000,000 (arrays) / 2,449,029 (ogb)")
    ap.add_argument("--edges", type=int, default=None, help="default 20,000,000 (arrays) / 61,859,140 (ogb)")
    ap.add_argument("--features", type=int, default=None, help="default 128 (arrays) / 100 (ogb)")
    ap.add_argument("--classes", type=int, default=10, help="classes of the synthetic graph (arrays)")
    ap.add_argument("--budget", default=None, help="--memory-budget (default 2GB arrays, 4GB ogb)")
    ap.add_argument("--repeat", type=int, default=1, help="interleaved rounds (arrays); the best is reported")
    ap.add_argument("--workdir", type=Path, default=None, help="where inputs and stores go (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the generated inputs")
    args = ap.parse_args()
    arrays = args.which == "arrays"
    args.nodes = args.nodes or (2_000_000 if arrays else 2_449_029)
    args.edges = args.edges or (20_000_000 if arrays else 61_859_140)
    args.features = args.features or (128 if arrays else 100)
    args.budget = args.budget or ("2GB" if arrays else "4GB")
    budget = parse_size(args.budget)
    work = Path(tempfile.mkdtemp(prefix=f"oocgnn-bench-{args.which}-", dir=args.workdir))
    try:
        result = (bench_arrays if arrays else bench_ogb)(args, work, budget)
        result.update({"machine": machine(), "nodes": args.nodes, "edges": args.edges, "features": args.features,
                       "budget_bytes": budget, "command": " ".join(sys.argv), "loadavg_at_end": os.getloadavg()})
        print("wrote", write_json(f"bench_prepare_sources_{args.which}", result))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
