"""nogil numba kernels of the out-of-core CSR build: count, bucket, de-duplicate in one pass each.

Why: the numpy formulation of each streamed pass makes five to eight full-size
temporaries per block (self-loop mask, compacted copies, relabelled copies, the
symmetrised concatenations, bucket ids, argsort, keys), each a trip through
memory and, for blocks of tens of MB, fresh pages the kernel must zero.  The CSR
stages were the largest part of ``prepare`` once inflating ran on the other
core.  Here one loop per pass touches each edge once and writes straight into
the output (counts, a preallocated key buffer, the column array).

Every kernel checks ids against ``[0, num_nodes)`` itself (numba does not bound
check, so an out-of-range id would write anywhere) and reports the first
violation instead of raising; the caller then builds the usual one-line error.
The results are the same as the numpy formulation's, byte for byte: the same
entries reach the same buckets, and buckets are sorted before they are written.
"""
from __future__ import annotations

import numpy as np
from numba import njit


@njit(nogil=True, cache=True)
def count_entries(src, dst, num_nodes, relabel, symmetric, counts):
    """Add each kept entry's row to ``counts``; returns ``(self_loops, ok)``.

    ``relabel`` of length 0 means no relabelling.  ``ok`` is False as soon as an
    id is outside ``[0, num_nodes)`` (``counts`` is then partly updated).
    """
    loops = 0
    do_relabel = relabel.shape[0] > 0
    for i in range(src.shape[0]):
        s = src[i]
        d = dst[i]
        if s < 0 or s >= num_nodes or d < 0 or d >= num_nodes:
            return loops, False
        if s == d:
            loops += 1
            continue
        if do_relabel:
            s = relabel[s]
            d = relabel[d]
        counts[s] += 1
        if symmetric:
            counts[d] += 1
    return loops, True


@njit(nogil=True, cache=True)
def bucket_keys(src, dst, num_nodes, relabel, symmetric, bounds, keys, offsets):
    """Group the block's entries by sort bucket as keys ``(row - bounds[b]) * N + col``.

    ``keys`` (int64, at least ``2 * len(src)`` long) receives the keys of bucket
    ``b`` in ``keys[offsets[b]:offsets[b + 1]]``; ``offsets`` has ``len(bounds)``
    slots.  Returns False if an id is outside ``[0, num_nodes)``.
    """
    num_buckets = bounds.shape[0] - 1
    do_relabel = relabel.shape[0] > 0
    fill = np.zeros(num_buckets + 1, dtype=np.int64)
    for i in range(src.shape[0]):  # pass 1: entries per bucket
        s = src[i]
        d = dst[i]
        if s < 0 or s >= num_nodes or d < 0 or d >= num_nodes:
            return False
        if s == d:
            continue
        if do_relabel:
            s = relabel[s]
            d = relabel[d]
        fill[np.searchsorted(bounds, s, side="right")] += 1
        if symmetric:
            fill[np.searchsorted(bounds, d, side="right")] += 1
    offsets[0] = 0
    for b in range(num_buckets):
        offsets[b + 1] = offsets[b] + fill[b + 1]
        fill[b + 1] = offsets[b]  # now the write position of bucket b
    for i in range(src.shape[0]):  # pass 2: place the keys
        s = src[i]
        d = dst[i]
        if s == d:
            continue
        if do_relabel:
            s = relabel[s]
            d = relabel[d]
        b = np.searchsorted(bounds, s, side="right") - 1
        keys[fill[b + 1]] = (s - bounds[b]) * num_nodes + d
        fill[b + 1] += 1
        if symmetric:
            b = np.searchsorted(bounds, d, side="right") - 1
            keys[fill[b + 1]] = (d - bounds[b]) * num_nodes + s
            fill[b + 1] += 1
    return True


@njit(nogil=True, cache=True)
def dedupe_decode(keys, num_nodes, row_counts, cols):
    """Walk sorted keys once: skip repeats, count rows, write column ids; returns how many were kept."""
    j = 0
    prev = -1
    for i in range(keys.shape[0]):
        k = keys[i]
        if k == prev:
            continue
        prev = k
        r = k // num_nodes
        row_counts[r] += 1
        cols[j] = k - r * num_nodes
        j += 1
    return j


@njit(nogil=True, cache=True)
def scatter_relabelled_rows(old_indptr, ids, lo, hi, inv_perm, new_indptr, first, last, out):
    """Copy old rows ``lo..hi-1`` whose new id ``inv_perm[u]`` is in ``first..last-1`` to ``out``,
    ids mapped through ``inv_perm``; ``ids`` holds old entries ``old_indptr[lo]..old_indptr[hi]-1``
    and ``out`` new entries from ``new_indptr[first]`` on.

    Old rows are read in order and only the id map is looked up at random, which
    is ~3x faster here than gathering old rows in new order."""
    base, out_base = old_indptr[lo], new_indptr[first]
    for u in range(lo, hi):
        v = inv_perm[u]
        if v < first or v >= last:
            continue
        p = new_indptr[v] - out_base
        for j in range(old_indptr[u] - base, old_indptr[u + 1] - base):
            out[p] = inv_perm[ids[j]]
            p += 1


@njit(nogil=True, cache=True)
def sort_rows(indptr, cols, lo, hi, base):
    """Sort rows ``lo..hi-1`` of a CSR in place; ``cols`` starts at entry ``base`` (insertion sort for short rows)."""
    for i in range(lo, hi):
        s, e = indptr[i] - base, indptr[i + 1] - base
        if e - s <= 32:
            for k in range(s + 1, e):
                v = cols[k]
                p = k
                while p > s and cols[p - 1] > v:
                    cols[p] = cols[p - 1]
                    p -= 1
                cols[p] = v
        else:
            cols[s:e].sort()
