"""One level of the multilevel partitioner: a weighted symmetric CSR on disk, streamed in blocks.

Why a module of its own: the levels are what the partitioner's steps (cluster,
contract, refine) share, and what a resumed run loads back (``load_level``); the
edge-cut count of :mod:`oocgnn.prepare.partition` streams the same blocks.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from oocgnn.utils.atomic import atomic_output
from oocgnn.utils.mapped import release_pages

#: Most CSR entries per streamed block.
BLOCK_ENTRIES = 1 << 22


@dataclass
class Graph:
    """One level: a symmetric CSR with optional weights (None = all ones)."""

    indptr: np.ndarray
    indices: np.ndarray
    eweights: np.ndarray | None = None
    vweights: np.ndarray | None = None
    block_entries: int = BLOCK_ENTRIES   #: CSR entries per streamed block (sized from the budget)

    @property
    def num_nodes(self) -> int:
        return len(self.indptr) - 1

    @property
    def num_entries(self) -> int:
        return int(self.indptr[-1])

    def node_weights(self) -> np.ndarray:
        """int32: a node weight counts fine nodes, and N < 2**31 (checked on entry)."""
        return np.ones(self.num_nodes, np.int32) if self.vweights is None else np.asarray(self.vweights, np.int32)

    def blocks(self, weights: bool = True):
        """Yield ``(first_row, ptr, cols, weights)`` in id order; ptr is relative to cols
        (``weights`` None when not asked for)."""
        n, block_entries = self.num_nodes, self.block_entries
        row = 0
        ones = np.ones(0, np.int64)  # unit weights, allocated once (fresh pages per block cost ~4 % of a run)
        while row < n:
            start = int(self.indptr[row])
            stop = int(np.searchsorted(self.indptr, start + block_entries, side="right")) - 1
            stop = min(max(stop, row + 1), n)
            ptr = np.asarray(self.indptr[row:stop + 1], dtype=np.int64) - start
            cols = np.asarray(self.indices[start:start + ptr[-1]])
            if not weights:
                w = None
            elif self.eweights is None:
                if ones.size < cols.size:
                    ones = np.ones(max(cols.size, block_entries), np.int64)
                w = ones[:cols.size]
            else:
                w = np.asarray(self.eweights[start:start + ptr[-1]], dtype=np.int64)
            for a in (self.indices, self.eweights):
                if a is not None:
                    release_pages(a)
            yield row, ptr, cols, w
            row = stop


def load_level(d: Path, block_entries: int) -> Graph:
    return Graph(np.load(d / "indptr.npy", mmap_mode="r"), np.load(d / "indices.npy", mmap_mode="r"),
                 np.load(d / "eweights.npy", mmap_mode="r"), np.load(d / "vweights.npy"), block_entries)


def save_array(path: Path, arr: np.ndarray) -> None:
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, arr)


