"""Streaming a store's CSR (memmaps welcome) in row blocks, in bounded RAM.

Why in ``store/``: verifying a store (:mod:`oocgnn.store.verify`) and relabelling a
CSR while a store is built (:mod:`oocgnn.prepare`) both walk every entry once;
the builder sits above the store, so the shared helper lives here.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

from oocgnn.utils.mapped import release_pages


def iter_csr_edges(indptr: np.ndarray, indices: np.ndarray, block_edges: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Stream the entries of a CSR (memmaps welcome) as ``(row, col)`` blocks."""
    num_nodes = len(indptr) - 1
    row = 0
    while row < num_nodes:
        start = int(indptr[row])
        stop_row = int(np.searchsorted(indptr, start + block_edges, side="right")) - 1
        stop_row = min(max(stop_row, row + 1), num_nodes)
        ptr = np.asarray(indptr[row:stop_row + 1])
        cols = np.asarray(indices[ptr[0]:ptr[-1]], dtype=np.int64)
        rows = np.repeat(np.arange(row, stop_row, dtype=np.int64), np.diff(ptr))
        release_pages(indices)  # streaming a 7 GB memmap would otherwise map all of it into RSS
        yield rows, cols
        row = stop_row
