"""Out-of-core multilevel partitioning: METIS quality where METIS does not fit.

Why: METIS needs the whole graph in RAM (~``METIS_BYTES_PER_ENTRY`` per CSR
entry); streaming LDG fits anywhere but cuts 2-3x more edges, and every cut edge
is halo a batch must read from disk.  Multilevel partitioners get their quality
from partitioning a *small* graph well and then fixing it up locally, and both
the shrinking and the fixing are local per-edge work that streams.

Pipeline (every step reads CSR blocks in id order from memmaps; RAM holds O(N)
int32/int64 arrays, a block, and at the end the coarsest graph for METIS):

1. **Coarsen** by size-constrained label propagation (as KaMinPar does): each
   node joins the cluster it is most strongly connected to, unless that would
   make the cluster heavier than ``max_cluster_weight``.  A few streamed passes,
   numba per-edge loops.  Isolated nodes are packed into full clusters.
2. **Contract** clusters into a weighted graph (node weight = fine nodes, edge
   weight = fine entries between the clusters), aggregated in row-range buckets on
   disk so even the first, large coarse graph is built in bounded memory.
3. Repeat until the coarse graph's METIS estimate fits the budget.
4. **Initial partition** of the coarsest graph with pymetis (weighted).
5. **Uncoarsen**: project each level's partition to the next finer one and refine
   it with streamed label-propagation moves (move a node to the neighbouring part
   it has most edges to, if that lowers the cut and keeps every part at most
   ``IMBALANCE`` x the mean), plus a greedy rebalance if a part is over.

Resumable: every level and every refined partition is written atomically under
``workdir`` with a marker; a re-run (e.g. after ``kill -9``) loads what is done
and recomputes the rest.  Every step is sequential and seeded, so the result is
identical to an uninterrupted run.

Measured (``benchmarks/bench_partition.py``, RESULTS.md): at 1/8 of METIS's memory,
0.95-1.04x METIS's cut on a 1 M / 10 M synthetic graph, Coauthor CS and Amazon
Photo at 8 and 64 parts; 50 M nodes / 1.66 B entries in 17 min at 6.5 GB RSS.
"""
from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from oocgnn.errors import ConfigError
from oocgnn.prepare import multilevel_kernels as K
from oocgnn.prepare.metis import metis_fits, metis_partition
from oocgnn.prepare.multilevel_graph import BLOCK_ENTRIES, Graph, load_level, save_array
from oocgnn.store.npyfile import NpyWriter
from oocgnn.utils.atomic import atomic_write_json, read_json

log = logging.getLogger(__name__)

VERSION = "oocgnn-multilevel/1"
#: max part size / mean part size that refinement guarantees.
IMBALANCE = 1.10
#: refinement never takes a part below this share of the mean part weight (no part drains away)
MIN_SHARE = 0.5
#: RAM per fine node while multilevel runs, at the peak (clustering: int32
#: labels, cluster weights and node weights, int64 connection scratch, the int32
#: relabel and coarse map; contraction adds int64 coarse degrees and two int32
#: slot arrays per coarse node).
BYTES_PER_NODE = 40
#: A cluster may hold at most this fraction of a part's weight, so METIS can
#: still balance the coarse graph.
_CLUSTER_FRACTION = 0.05
_COARSEN_PASSES = 4
#: Clustering stops once a pass moves fewer than this fraction of the nodes.
_CLUSTER_MIN_MOVED = 0.01
_REFINE_PASSES = 6
#: Refinement stops once a pass takes less than this fraction of the cut away
#: (later passes on a 2 M-node graph moved 50 k nodes each for ~0.1 % of the cut).
_REFINE_MIN_GAIN = 0.002
_MAX_LEVELS = 24
#: A level that shrinks the graph by less than this lets clusters grow 2x.
_MIN_SHRINK = 0.9
#: Fewest CSR entries per streamed block, and what one costs in RAM while a block
#: is contracted (ids, weights, coarse triples and their grouping scratch).
_MIN_BLOCK_ENTRIES = 1 << 16
_BYTES_PER_BLOCK_ENTRY = 96
#: RAM per key while a contraction bucket is aggregated (keys, weights, unique, inverse).
_BYTES_PER_KEY = 64
#: Fewest keys per bucket (tests lower it to exercise many buckets).
_MIN_BUCKET_KEYS = 1 << 20
_METIS_UFACTOR = 30


def cluster(g: Graph, max_weight: int, progress: bool, desc: str) -> tuple[np.ndarray, int]:
    """Size-constrained label propagation; returns dense cluster ids ``[N]`` and their count."""
    n = g.num_nodes
    vw = g.node_weights()
    label = np.arange(n, dtype=np.int32)
    cweight = vw.copy()
    conn = np.zeros(n, np.int64)
    touched = np.empty(0, np.int64)
    for k in range(_COARSEN_PASSES):
        moved = 0
        with tqdm(total=n, unit="node", unit_scale=True, desc=f"{desc} cluster {k + 1}/{_COARSEN_PASSES}",
                  disable=not progress) as bar:
            for row, ptr, cols, w in g.blocks():
                if touched.size < cols.size:
                    touched = np.empty(cols.size, np.int64)
                moved += K.cluster_block(row, ptr, cols, w, vw, label, cweight, max_weight, conn, touched)
                bar.update(len(ptr) - 1)
        if moved < n * _CLUSTER_MIN_MOVED:
            break
    deg = np.diff(np.asarray(g.indptr))
    K.pack_isolated(np.flatnonzero(deg == 0), vw, label, cweight, max_weight)
    present = np.zeros(n, np.int32)
    present[label] = 1
    dense = np.cumsum(present, dtype=np.int32) - 1
    return dense[label], int(present.sum())


def contract(g: Graph, cmap: np.ndarray, num_coarse: int, out: Path, budget: int, progress: bool, desc: str) -> Graph:
    """Build the coarse graph of ``cmap`` under ``out`` via on-disk row-range buckets.

    Each fine block is merged into coarse ``(row, col, weight)`` triples in RAM
    (numba, dense slot arrays instead of ``np.unique``'s sorts, which took 11 s of
    a 40 M-entry level; now ~4 s) and appended to the bucket of its row range; each bucket is then
    sorted by (row, col) with two counting passes and its repeats summed, so the
    coarse CSR is canonical whatever the block and bucket sizes were.
    """
    out.mkdir(parents=True, exist_ok=True)
    deg = np.diff(np.asarray(g.indptr))
    bound = np.bincount(cmap, weights=deg, minlength=num_coarse).astype(np.int64)
    del deg
    max_keys = max(_MIN_BUCKET_KEYS, budget // _BYTES_PER_KEY)
    cum = np.cumsum(bound)
    bounds = [0]
    while bounds[-1] < num_coarse:
        base = cum[bounds[-1] - 1] if bounds[-1] else 0
        nxt = int(np.searchsorted(cum, base + max_keys, side="right"))
        bounds.append(min(num_coarse, max(nxt, bounds[-1] + 1)))
    bounds = np.asarray(bounds, np.int64)
    del cum, bound
    nb = len(bounds) - 1
    names = [[out / f"b{b:05d}.{kind}" for kind in "rcw"] for b in range(nb)]
    files = [[open(p, "wb") for p in trio] for trio in names]
    try:
        slot = np.full(num_coarse, -1, np.int32)
        cpos = np.full(num_coarse, -1, np.int32)
        scratch: list[np.ndarray] = []
        with tqdm(total=g.num_nodes, unit="node", unit_scale=True, desc=f"{desc} contract",
                  disable=not progress) as bar:
            for row, ptr, cols, w in g.blocks():
                size = cols.size
                if not scratch or scratch[0].size < size:
                    scratch = [np.empty(size, np.int32), np.empty(size + 1, np.int64), np.empty(size, np.int32),
                               np.empty(size, np.int64), np.empty(size, np.int32), np.empty(size, np.int32),
                               np.empty(size, np.int64)]
                grp_row, grp_fill, tmp_c, tmp_w, out_r, out_c, out_w = scratch
                m = K.coarse_block(row, ptr, cols, w, cmap, slot, cpos, grp_row, grp_fill, tmp_c, tmp_w,
                                   out_r, out_c, out_w)
                parts, cut = (out_r, out_c, out_w), np.array([0, m])
                if nb > 1:
                    parts, cut = (grp_row, tmp_c, tmp_w), np.zeros(nb + 1, np.int64)
                    K.group_by_bucket(bounds, out_r[:m], out_c[:m], out_w[:m], *parts, cut)
                for b in range(nb):
                    if cut[b + 1] > cut[b]:
                        for f, a in zip(files[b], parts):
                            a[cut[b]:cut[b + 1]].tofile(f)
                bar.update(len(ptr) - 1)
        del slot, cpos, scratch
    finally:
        for trio in files:
            for f in trio:
                f.close()
    ip_w = NpyWriter(out / "indptr.npy", np.int64)
    ix_w = NpyWriter(out / "indices.npy", np.int32)
    ew_w = NpyWriter(out / "eweights.npy", np.int64)
    ip_w.append(np.zeros(1, np.int64))
    offset = 0
    for b in range(nb):
        rows, cols, ws = (np.fromfile(p, dt) for p, dt in zip(names[b], (np.int32, np.int32, np.int64)))
        lo, hi = int(bounds[b]), int(bounds[b + 1])
        counts = np.empty(hi - lo, np.int64)
        out_c = np.empty(rows.size, np.int32)
        out_w = np.empty(rows.size, np.int64)
        kept = K.merge_bucket(rows, cols, ws, lo, hi - lo, num_coarse, counts, out_c, out_w)
        del rows, cols, ws
        ip_w.append(offset + np.cumsum(counts))
        ix_w.append(out_c[:kept])
        ew_w.append(out_w[:kept])
        offset += kept
        for p in names[b]:
            p.unlink()
    ip_w.close()
    ix_w.close()
    ew_w.close()
    vweights = np.bincount(cmap, weights=g.node_weights(), minlength=num_coarse).astype(np.int32)
    save_array(out / "vweights.npy", vweights)
    save_array(out / "map.npy", cmap)
    return load_level(out, g.block_entries)


def initial_partition(g: Graph, num_parts: int, seed: int) -> np.ndarray:
    return metis_partition(g.indptr, g.indices, num_parts, seed, vweights=g.node_weights(), eweights=g.eweights,
                           ufactor=_METIS_UFACTOR)


def refine(g: Graph, part: np.ndarray, num_parts: int, progress: bool, desc: str) -> np.ndarray:
    """Streamed label-propagation refinement under the balance cap, then rebalance if needed."""
    vw = g.node_weights()
    cap = int(np.floor(IMBALANCE * vw.sum() / num_parts))
    floor = int(np.ceil(MIN_SHARE * vw.sum() / num_parts))
    psize = np.bincount(part, weights=vw, minlength=num_parts).astype(np.int64)
    conn = np.zeros(num_parts, np.int64)
    touched = np.empty(num_parts, np.int64)
    _fill_empty(g, part, psize, vw)
    _rebalance(g, part, psize, cap, vw, num_parts)
    for k in range(_REFINE_PASSES):
        moved = gain = cut = 0
        with tqdm(total=g.num_nodes, unit="node", unit_scale=True, desc=f"{desc} refine {k + 1}/{_REFINE_PASSES}",
                  disable=not progress) as bar:
            for row, ptr, cols, w in g.blocks():
                m, gn, c = K.refine_block(row, ptr, cols, w, vw, part, psize, cap, floor, conn, touched)
                moved, gain, cut = moved + m, gain + gn, cut + c
                bar.update(len(ptr) - 1)
        # a move's gain counts once, the cut it removes twice (both directions of each entry)
        if moved < g.num_nodes * 0.0005 or 2 * gain < _REFINE_MIN_GAIN * cut:
            break
    return part


def _fill_empty(g: Graph, part: np.ndarray, psize: np.ndarray, vw: np.ndarray) -> None:
    """Give every empty part half of the largest part, as a breadth-first region of it.

    METIS leaves parts empty when the coarsest graph's nodes are heavy next to a part
    (the 50 M-node store: 21 of 250); an empty part is a batch of nothing and makes
    the others larger.  Refinement then keeps every part above ``MIN_SHARE`` of the mean.
    """
    empty = np.flatnonzero(psize == 0)
    if len(empty):
        log.info("multilevel: %d empty part(s) after the initial partition; splitting the largest ones", len(empty))
    for q in empty:
        p = int(np.argmax(psize))
        if psize[p] < 2:
            break
        members = np.flatnonzero(part == p)
        moved = K.split_part(np.asarray(g.indptr, np.int64), np.asarray(g.indices), vw, part, p, int(q),
                             int(psize[p] // 2), int(members[0]))
        psize[p] -= moved
        psize[q] += moved


def _rebalance(g: Graph, part: np.ndarray, psize: np.ndarray, cap: int, vw: np.ndarray, num_parts: int) -> None:
    """Move the nodes of over-full parts that lose the fewest cut edges, best first."""
    for _ in range(20):
        if psize.max() <= cap:
            return
        over = psize > cap
        target = np.full(g.num_nodes, -1, np.int32)
        gain = np.zeros(g.num_nodes, np.int64)
        conn = np.zeros(num_parts, np.int64)
        touched = np.empty(num_parts, np.int64)
        for row, ptr, cols, w in g.blocks():
            K.rebalance_candidates(row, ptr, cols, w, vw, part, psize, cap, over, conn, touched, target, gain)
        cand = np.flatnonzero(target >= 0)
        order = cand[np.argsort(-gain[cand], kind="stable")]
        K.apply_moves(order, target, vw, part, psize, cap)
    if psize.max() > cap:
        log.warning("multilevel: could not bring every part under %d (largest %d)", cap, psize.max())


def multilevel_partition(indptr: np.ndarray, indices: np.ndarray, num_parts: int, *, memory_budget: int,
                         seed: int = 0, workdir: Path | None = None, progress: bool = True) -> np.ndarray:
    """Partition a symmetric CSR (memmaps welcome) into ``num_parts`` parts with max/mean <= ``IMBALANCE``."""
    n = len(indptr) - 1
    if n >= 2**31:
        raise ConfigError(f"--partitioner multilevel handles up to 2**31 - 1 nodes (int32 labels); this graph has "
                          f"{n:,}: use --partitioner ldg")
    need = BYTES_PER_NODE * n + _MIN_BLOCK_ENTRIES * _BYTES_PER_BLOCK_ENTRY
    if memory_budget < need:
        raise ConfigError(f"--memory-budget is too small for the multilevel partitioner on {n:,} nodes: it needs "
                          f"about {need:,} bytes; raise it or use --partitioner ldg")
    block = (memory_budget - BYTES_PER_NODE * n) // _BYTES_PER_BLOCK_ENTRY
    fine = Graph(indptr, indices, block_entries=int(min(BLOCK_ENTRIES, max(_MIN_BLOCK_ENTRIES, block))))
    tmp = None
    if workdir is None:
        tmp = workdir = Path(tempfile.mkdtemp(prefix="oocgnn-multilevel-"))
    try:
        return _run(fine, num_parts, memory_budget, seed, Path(workdir), progress)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


#: a rerun reuses the saved levels while its METIS budget is at least 1 / this of the recorded one
_RESUME_SLACK = 1.25


def _run(fine: Graph, num_parts: int, budget: int, seed: int, work: Path, progress: bool) -> np.ndarray:
    n = fine.num_nodes
    # What METIS may use: the budget minus what the O(N) arrays of the fine level take.
    metis_budget = budget - BYTES_PER_NODE * n
    meta = {"version": VERSION, "num_nodes": n, "num_entries": fine.num_entries, "num_parts": num_parts,
            "seed": seed}
    work.mkdir(parents=True, exist_ok=True)
    old = read_json(work / "meta.json") if (work / "meta.json").exists() else None
    # the working budget a rerun gets moves with the interpreter's RSS at start (tens of percent on small
    # graphs): keep the recorded levels unless this budget is far below the one they were coarsened for
    if old is not None and ({k: old.get(k) for k in meta} != meta
                            or old["metis_budget"] > _RESUME_SLACK * metis_budget):
        log.info("multilevel: %s holds another run's levels; starting over", work)
        shutil.rmtree(work)
        work.mkdir(parents=True)
        old = None
    if old is None:
        meta["metis_budget"] = metis_budget
        atomic_write_json(work / "meta.json", meta)
    else:  # resume with the recorded target, so the levels (and the result) match the first run
        metis_budget = old["metis_budget"]
        log.info("multilevel: resuming from %s", work)

    levels = [fine]
    max_weight = max(1, int(_CLUSTER_FRACTION * n / num_parts))
    while len(levels) == 1 or not metis_fits(levels[-1].num_nodes, levels[-1].num_entries, metis_budget):
        i = len(levels)
        if i > _MAX_LEVELS:
            raise ConfigError(f"--memory-budget too small: after {_MAX_LEVELS} coarsening levels the graph still "
                              f"has {levels[-1].num_entries:,} entries; raise --memory-budget or use --partitioner ldg")
        d = work / f"level{i}"
        if (d / "DONE").exists():
            g = load_level(d, fine.block_entries)
            max_weight = int(read_json(d / "DONE")["max_weight"])
        else:
            shutil.rmtree(d, ignore_errors=True)
            cur = levels[-1]
            part_weight = int(cur.node_weights().sum()) // num_parts
            while True:
                cmap, c = cluster(cur, max_weight, progress, f"level {i}")
                if c <= _MIN_SHRINK * cur.num_nodes or max_weight >= part_weight:
                    break
                max_weight *= 2  # clusters are full: let them merge
                log.info("multilevel level %d: clusters full, max cluster weight now %d", i, max_weight)
            g = contract(cur, cmap, c, d, budget, progress, f"level {i}")
            atomic_write_json(d / "DONE", {"max_weight": max_weight, "num_nodes": c, "num_entries": g.num_entries})
        log.info("multilevel level %d: %d nodes, %d entries", i, g.num_nodes, g.num_entries)
        if g.num_nodes >= levels[-1].num_nodes:
            raise ConfigError(f"--memory-budget too small: coarsening stalled at {g.num_nodes:,} nodes / "
                              f"{g.num_entries:,} entries; raise --memory-budget or use --partitioner ldg")
        levels.append(g)

    top = len(levels) - 1
    path = work / f"part{top}.npy"
    if path.exists():
        part = np.load(path)
    else:
        log.info("multilevel: METIS on the coarsest graph (%d nodes, %d entries)", levels[top].num_nodes,
                 levels[top].num_entries)
        part = refine(levels[top], initial_partition(levels[top], num_parts, seed), num_parts, progress,
                      f"level {top}")
        save_array(path, part)
    for i in range(top - 1, -1, -1):
        path = work / f"part{i}.npy"
        if path.exists():
            part = np.load(path)
            continue
        cmap = np.load(work / f"level{i + 1}" / "map.npy")
        part = refine(levels[i], part[cmap], num_parts, progress, f"level {i}")
        save_array(path, part)
    return part
