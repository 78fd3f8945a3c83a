"""Graph partitioning, so each partition can become a contiguous id range.

* ``metis`` (pymetis): best cuts, but needs the whole graph in RAM, roughly
  :data:`oocgnn.prepare.metis.METIS_BYTES_PER_ENTRY` per CSR entry (measured here: 3.2 GB for 1 M
  nodes / 10 M edges).  Chosen by ``auto`` when that fits the memory budget.
* ``multilevel`` (:mod:`oocgnn.prepare.multilevel`): out-of-core multilevel
  partitioning -- coarsen by streamed label propagation until METIS fits the
  budget, METIS on the coarse graph, project back and refine in streamed passes.
  Near-METIS cuts; RAM is ~``multilevel.BYTES_PER_NODE`` per node plus blocks.
  Chosen by ``auto`` when METIS does not fit.
* ``ldg``: a blocked, vectorised *linear deterministic greedy* streaming
  partitioner (Stanton & Kliot 2012): nodes arrive in blocks in id order, each
  goes to the partition holding most of its already-placed neighbours, damped
  by how full that partition is.  One pass over the memmapped CSR, RAM is one
  ``[N]`` int32 array plus a block.  Chosen by ``auto`` only when not even
  multilevel's per-node arrays fit the budget.
* ``range``: contiguous ranges of the original ids (keeps whatever locality the
  source order has; instant).

Every method reports the edge-cut fraction, so users see the quality they got.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from oocgnn.errors import ConfigError
from oocgnn.prepare.metis import metis_fits, metis_partition
from oocgnn.prepare.multilevel import BYTES_PER_NODE, multilevel_partition
from oocgnn.prepare.multilevel_graph import Graph
from oocgnn.prepare.multilevel_kernels import cut_entries

log = logging.getLogger(__name__)

METHODS = ("auto", "metis", "multilevel", "ldg", "range")
_LDG_BLOCK = 1 << 15
_LDG_SLACK = 1.05
_LDG_PASSES = 3


@dataclass
class PartitionResult:
    part: np.ndarray            #: [N] int32 partition of every node (original ids)
    method: str                 #: the method actually used
    edge_cut_fraction: float    #: fraction of CSR entries whose endpoints lie in different partitions


def default_num_partitions(num_nodes: int) -> int:
    """About 10k nodes per partition for small graphs, ~200k for large ones; at least 1."""
    if num_nodes <= 100_000:
        return max(1, min(num_nodes // 100, max(1, num_nodes // 10_000) * 8 or 1))
    return int(min(4096, max(8, num_nodes // 200_000)))


def choose_method(method: str, num_nodes: int, num_entries: int, memory_budget: int) -> str:
    if method not in METHODS:
        raise ConfigError(f"--partitioner {method!r} is not one of {', '.join(METHODS)}")
    if method != "auto":
        return method
    if metis_fits(num_nodes, num_entries, memory_budget):
        return "metis"
    # multilevel's METIS step needs room beyond its per-node arrays; ask for 2x of them
    return "multilevel" if 2 * BYTES_PER_NODE * num_nodes <= memory_budget else "ldg"


def _ldg(indptr: np.ndarray, indices: np.ndarray, num_parts: int, progress: bool, passes: int = _LDG_PASSES) -> np.ndarray:
    """Restreaming LDG (Nishimura & Ugander 2013): later passes score neighbours
    not yet re-placed by their previous assignment, which cuts far fewer edges
    than a single pass at the cost of one more sequential scan each."""
    num_nodes = len(indptr) - 1
    part = np.full(num_nodes, -1, dtype=np.int32)
    for k in range(passes):
        prev, part = part, np.full(num_nodes, -1, dtype=np.int32)
        _ldg_pass(indptr, indices, num_parts, part, prev, progress, f"partition (ldg {k + 1}/{passes})")
    return part


def _ldg_pass(indptr: np.ndarray, indices: np.ndarray, num_parts: int, part: np.ndarray, prev: np.ndarray,
              progress: bool, desc: str) -> None:
    num_nodes = len(indptr) - 1
    sizes = np.zeros(num_parts, dtype=np.int64)
    cap = int(np.ceil(num_nodes / num_parts * _LDG_SLACK))
    with tqdm(total=num_nodes, unit="node", unit_scale=True, desc=desc, disable=not progress) as bar:
        step = int(min(_LDG_BLOCK, max(64, num_nodes // 512)))  # small blocks: later nodes see earlier placements
        for s in range(0, num_nodes, step):
            e = min(s + step, num_nodes)
            b = e - s
            ptr = np.asarray(indptr[s:e + 1])
            cols = np.asarray(indices[ptr[0]:ptr[-1]])
            rows = np.repeat(np.arange(b, dtype=np.int64), np.diff(ptr))
            p = part[cols]
            p = np.where(p >= 0, p, prev[cols])
            placed = p >= 0
            score = np.bincount(rows[placed] * num_parts + p[placed], minlength=b * num_parts)
            score = score.reshape(b, num_parts).astype(np.float32)
            score *= np.maximum(0.0, 1.0 - sizes / cap).astype(np.float32)
            choice = score.argmax(axis=1).astype(np.int32)
            best = score[np.arange(b), choice]
            # nodes with no placed neighbours, and overflow, go to the emptiest partitions in turn
            counts = np.bincount(choice[best > 0], minlength=num_parts)
            room = np.maximum(cap - sizes, 0)
            over = np.flatnonzero(counts > room)
            loose = best <= 0
            for q in over:
                members = np.flatnonzero((choice == q) & ~loose)
                weakest = members[np.argsort(best[members], kind="stable")][: counts[q] - room[q]]
                loose[weakest] = True
            if loose.any():
                fill = sizes + np.bincount(choice[~loose], minlength=num_parts)
                n_loose = int(loose.sum())
                target = np.argsort(fill, kind="stable")
                # water-fill: repeat the emptiest partitions so sizes level out
                order = np.argsort(np.concatenate([fill[target] + k for k in range(int(np.ceil(n_loose / num_parts)) + 1)]), kind="stable")
                slots = np.tile(target, int(np.ceil(n_loose / num_parts)) + 1)[order][:n_loose]
                choice[loose] = slots
            part[s:e] = choice
            sizes += np.bincount(choice, minlength=num_parts)
            bar.update(b)


def edge_cut_fraction(indptr: np.ndarray, indices: np.ndarray, part: np.ndarray, block: int = 1 << 22) -> float:
    """Fraction of CSR entries (u, v) with ``part[u] != part[v]``, streamed in row blocks (one numba loop each)."""
    total = int(indptr[-1])
    blocks = Graph(indptr, indices, block_entries=block).blocks(weights=False)
    cut = sum(cut_entries(row, ptr, cols, part) for row, ptr, cols, _ in blocks)
    return cut / total if total else 0.0


def partition_graph(indptr: np.ndarray, indices: np.ndarray, num_parts: int, method: str = "auto", *,
                    memory_budget: int, seed: int = 0, progress: bool = True,
                    workdir: Path | None = None) -> PartitionResult:
    """Partition a symmetric CSR (memmaps welcome) into ``num_parts`` parts.

    ``workdir``: where ``multilevel`` keeps its levels, so a killed run resumes
    (a temporary directory when None)."""
    num_nodes = len(indptr) - 1
    if num_parts < 1 or num_parts > max(1, num_nodes):
        raise ConfigError(f"--partitions {num_parts} must be between 1 and the number of nodes ({num_nodes})")
    used = choose_method(method, num_nodes, len(indices), memory_budget)
    if num_parts == 1:
        part = np.zeros(num_nodes, dtype=np.int32)
    elif used == "metis":
        log.info("partitioning %d nodes into %d parts with METIS", num_nodes, num_parts)
        part = metis_partition(indptr, indices, num_parts, seed)
    elif used == "multilevel":
        log.info("partitioning %d nodes into %d parts with the multilevel partitioner", num_nodes, num_parts)
        part = multilevel_partition(indptr, indices, num_parts, memory_budget=memory_budget, seed=seed,
                                    workdir=workdir, progress=progress)
    elif used == "ldg":
        part = _ldg(indptr, indices, num_parts, progress)
    else:
        part = (np.arange(num_nodes, dtype=np.int64) * num_parts // max(num_nodes, 1)).astype(np.int32)
    return PartitionResult(part=part, method=used, edge_cut_fraction=edge_cut_fraction(indptr, indices, part))
