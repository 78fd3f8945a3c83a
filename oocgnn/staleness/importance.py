"""REST-IS: which histories to refresh first.  **This rule is our design.**

REST's paper says only that REST-IS "prioritises refreshing nodes that are
frequently needed as neighbours by batches"; its code is not available.  Our
rule, chosen to follow VISAGNN's Theorem 1 (the final-layer error is bounded by
sum_j |A_ij| ||h_bar_j - h_j|| over halo neighbours j):

* static importance ``imp(v) = sum over edges (u, v) with part(u) != part(v) of
  |A_hat_uv|`` with ``A_hat_uv = 1 / sqrt((d_u + 1)(d_v + 1))`` (GCN weights,
  global degrees).  Only cross-partition edges count, because a batch reads a
  history row only for halo nodes, i.e. across a partition boundary; a node no
  other partition reads has importance 0.  Computed in one streaming pass over
  the store's CSR (:func:`node_importance`), O(N) floats of RAM.
* a history row's staleness grows with its age (optimizer steps since its last
  push), so the batch importance is ``I(B) = sum_{v in B} imp(v) * age(v)``.
  Pushes cover whole partitions, so ages are per partition and ``I`` of a
  partition is ``imp_part(p) * age(p)`` (:func:`partition_importance`).
* a refresh batch is ``parts_per_batch`` partitions drawn without replacement
  with ``p(P) = (1 - mix) I(P) / sum I + mix / num_partitions`` (mix = 10 % by
  default), so a partition that was just pushed (age 0) is rarely redrawn and
  none starves.  Never-written partitions count as age ``step + 1`` (older than
  anything written).
"""
from __future__ import annotations

import numpy as np


def node_importance(indptr: np.ndarray, indices: np.ndarray, partition_ptr: np.ndarray,
                    block_rows: int = 1 << 16) -> np.ndarray:
    """``imp(v)`` for every store id (float64[N]), streaming ``block_rows`` CSR rows at a time.

    The CSR is symmetric (rows list each node's neighbours), so summing over row
    ``u``'s cross-partition columns ``v`` adds ``|A_uv|`` to ``imp(v)``.
    """
    indptr = np.asarray(indptr)
    n = len(indptr) - 1
    ptr = np.asarray(partition_ptr, dtype=np.int64)
    deg = np.diff(indptr).astype(np.float64)
    dinv = 1.0 / np.sqrt(deg + 1.0)
    imp = np.zeros(n, dtype=np.float64)
    for s in range(0, n, block_rows):
        e = min(n, s + block_rows)
        lo, hi = int(indptr[s]), int(indptr[e])
        cols = np.asarray(indices[lo:hi]).astype(np.int64, copy=False)
        rows = np.repeat(np.arange(s, e, dtype=np.int64), np.diff(indptr[s:e + 1]).astype(np.int64))
        part_u = np.searchsorted(ptr, rows, side="right") - 1
        part_v = np.searchsorted(ptr, cols, side="right") - 1
        cross = part_u != part_v
        np.add.at(imp, cols[cross], dinv[rows[cross]] * dinv[cols[cross]])
    return imp


def partition_importance(imp: np.ndarray, partition_ptr: np.ndarray) -> np.ndarray:
    """``imp_part(p) = sum of imp(v)`` over partition ``p``'s rows."""
    ptr = np.asarray(partition_ptr, dtype=np.int64)
    csum = np.concatenate(([0.0], np.cumsum(np.asarray(imp, dtype=np.float64))))
    return csum[ptr[1:]] - csum[ptr[:-1]]


def partition_ages(part_last: np.ndarray, step: int) -> np.ndarray:
    """Age in optimizer steps per partition; never written (-1) counts as ``step + 1``."""
    last = np.asarray(part_last, dtype=np.int64)
    return np.where(last < 0, step + 1, step - last).astype(np.float64)


def refresh_probabilities(part_imp: np.ndarray, part_last: np.ndarray, step: int,
                          uniform_mix: float = 0.1) -> np.ndarray:
    """REST-IS draw probability per partition (sums to 1)."""
    p_count = len(part_imp)
    score = np.asarray(part_imp, dtype=np.float64) * partition_ages(part_last, step)
    total = score.sum()
    uniform = np.full(p_count, 1.0 / p_count)
    if not total > 0:
        return uniform
    return (1.0 - uniform_mix) * score / total + uniform_mix * uniform


def draw_refresh_parts(part_imp: np.ndarray, part_last: np.ndarray, step: int, k: int,
                       rng: np.random.Generator, uniform_mix: float = 0.1) -> tuple[int, ...]:
    """``k`` distinct partitions drawn by :func:`refresh_probabilities` (sorted)."""
    p = refresh_probabilities(part_imp, part_last, step, uniform_mix)
    k = min(int(k), len(p))
    nonzero = int((p > 0).sum())
    if nonzero < k:  # uniform_mix = 0 and too few important partitions: top up uniformly
        p = p + 1e-12
        p = p / p.sum()
    chosen = rng.choice(len(p), size=k, replace=False, p=p)
    return tuple(int(c) for c in np.sort(chosen))


def batch_importance(imp: np.ndarray, age: np.ndarray) -> float:
    """``I(B) = sum imp(v) * age(v)`` over a batch's rows (ages >= 0, e.g. from :func:`partition_ages`)."""
    return float((np.asarray(imp, dtype=np.float64) * np.asarray(age, dtype=np.float64)).sum())
