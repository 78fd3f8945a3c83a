"""Epoch plans and vectorised GAS subgraph construction.

Assumptions first: the store is partition-ordered (partition ``p`` owns store ids
``[ptr[p], ptr[p+1])``), its CSR is symmetric without self-loops, and ``indptr``
is int64.  A batch is a group of partitions, so its rows are a few contiguous
ranges: reading their CSR rows and feature rows is sequential I/O, and only the
halo is a random gather.

Worked example (2 ranges)::

    ranges = [(0, 3), (7, 9)]  ->  batch rows = [0, 1, 2, 7, 8], B = 5
    a column c = 8 is in-batch at local id 3 + (8 - 7) = 4; c = 5 is halo and
    gets local id B + (rank of its first appearance among halo columns).

The epoch plan is a pure function of ``(seed, epoch)`` so a resumed run can
recompute it instead of storing it.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from numba import njit

Ranges = list[tuple[int, int]]


@dataclass(frozen=True)
class Action:
    """One pass of an epoch: ``kind`` is ``"train"`` (forward, backward, step, push) or
    ``"refresh"`` (forward-only, push); ``parts`` its sorted partition ids, ``ranges``
    their store-id ranges (what the prefetcher reads)."""

    kind: str
    parts: tuple[int, ...]
    ranges: Ranges


# --------------------------------------------------------------------------- plans
def epoch_plan(num_partitions: int, parts_per_batch: int, seed: int, epoch: int) -> list[np.ndarray]:
    """Shuffled groups of partition ids for one epoch (each group sorted).

    Uses ``np.random.default_rng((seed, epoch))`` so the plan depends on nothing
    but its arguments.
    """
    rng = np.random.default_rng((int(seed), int(epoch)))
    order = rng.permutation(num_partitions)
    return [np.sort(order[i:i + parts_per_batch]) for i in range(0, num_partitions, parts_per_batch)]


def partition_owner(num_partitions: int, world_size: int) -> np.ndarray:
    """Rank owning each partition: contiguous blocks of partition ids, as equal in count as possible.

    Contiguous because a partition-ordered store makes a block of partitions one id
    range, so a rank's rows are one range of every table (the cross-host exchange
    sends only rows of its own block).
    """
    return (np.arange(num_partitions, dtype=np.int64) * world_size // max(num_partitions, 1)).astype(np.int64)


@dataclass(frozen=True)
class RankSplit:
    """How an epoch's batches are shared among ``world_size`` ranks (one per rank per step).

    ``by_owner=False`` (ranks sharing history files): rank ``r`` trains groups
    ``r, r+W, r+2W, ...`` of the one seeded epoch plan, so the W ranks together train
    exactly the single-process plan, W batches per step.  ``by_owner=True`` (each rank
    owns its partitions' history rows, the cross-host path): rank ``r`` shuffles only the
    partitions it owns (:func:`partition_owner`), so it only ever pushes rows it owns.
    Every rank runs :meth:`steps` steps per epoch; a rank with fewer groups idles (its
    gradient counts zero) so the collectives of a step always involve every rank.
    """

    rank: int = 0
    world_size: int = 1
    by_owner: bool = False

    def owned(self, num_partitions: int) -> np.ndarray:
        return np.flatnonzero(partition_owner(num_partitions, self.world_size) == self.rank)

    def groups(self, num_partitions: int, parts_per_batch: int, seed: int, epoch: int) -> list[np.ndarray]:
        """This rank's groups of ``epoch``, in training order (single process: the epoch plan)."""
        if self.world_size == 1:
            return epoch_plan(num_partitions, parts_per_batch, seed, epoch)
        if not self.by_owner:
            return epoch_plan(num_partitions, parts_per_batch, seed, epoch)[self.rank::self.world_size]
        own = self.owned(num_partitions)
        rng = np.random.default_rng((int(seed), int(epoch), self.rank))
        order = own[rng.permutation(len(own))]
        return [np.sort(order[i:i + parts_per_batch]) for i in range(0, len(order), parts_per_batch)]

    def steps(self, num_partitions: int, parts_per_batch: int) -> int:
        """Optimizer steps per epoch, the same on every rank."""
        if not self.by_owner or self.world_size == 1:
            return -(-(-(-num_partitions // parts_per_batch)) // self.world_size)
        counts = np.bincount(partition_owner(num_partitions, self.world_size), minlength=self.world_size)
        return int(max(-(-int(c) // parts_per_batch) for c in counts))


def fixed_plan(num_partitions: int, parts_per_batch: int) -> list[np.ndarray]:
    """Unshuffled groups in id order (evaluation sweeps)."""
    parts = np.arange(num_partitions)
    return [parts[i:i + parts_per_batch] for i in range(0, num_partitions, parts_per_batch)]


def group_ranges(partition_ptr: np.ndarray, group: np.ndarray) -> Ranges:
    """Contiguous store-id ranges of a partition group, adjacent ranges merged."""
    ranges: Ranges = []
    for p in np.sort(np.asarray(group)):
        s, e = int(partition_ptr[p]), int(partition_ptr[p + 1])
        if e <= s:
            continue
        if ranges and ranges[-1][1] == s:
            ranges[-1] = (ranges[-1][0], e)
        else:
            ranges.append((s, e))
    return ranges


def ranges_to_ids(ranges: Ranges) -> np.ndarray:
    """Concatenate ``arange(s, e)`` over ``ranges`` (int64), without a Python loop per row."""
    if not ranges:
        return np.empty(0, dtype=np.int64)
    starts = np.fromiter((s for s, _ in ranges), dtype=np.int64, count=len(ranges))
    lens = np.fromiter((e - s for s, e in ranges), dtype=np.int64, count=len(ranges))
    offs = np.repeat(starts - np.concatenate(([0], np.cumsum(lens)[:-1])), lens)
    return np.arange(int(lens.sum()), dtype=np.int64) + offs


def partition_halo_sizes(indptr: np.ndarray, indices: np.ndarray, partition_ptr: np.ndarray) -> np.ndarray:
    """Halo size of every single partition (one sequential CSR pass).

    The halo of a group is a subset of the union of its members' halos, so the sum
    over a group bounds the group's halo: that sizes the staging ring exactly enough
    without building every batch of every epoch.  Counted by :class:`HaloFinder`'s
    stamp pass (no sort): the billion-edge store's 250 partitions take seconds where
    ``np.unique`` per partition took minutes at every train start.
    """
    find = HaloFinder(indptr, indices)
    ptr = np.asarray(partition_ptr, dtype=np.int64)
    return np.array([find.count([(int(s), int(e))]) for s, e in zip(ptr[:-1], ptr[1:])], dtype=np.int64)


# ----------------------------------------------------------------------- subgraphs
@dataclass
class SubgraphStructure:
    """Everything about a batch that comes from the CSR (no feature rows).

    ``crow``/``col`` are int32 when ``B + H`` and ``nnz + B`` fit (int64 otherwise);
    ``edge_index`` is derived on demand, so a prepared batch waiting in the
    prefetch queue holds only the CSR (about 8 bytes per edge, not 32).
    """

    ranges: Ranges
    n_id: np.ndarray          #: [B+H] int64 store ids
    batch_size: int
    crow: np.ndarray          #: [B+1] int32/int64 row pointer of adj_t (with self-loops)
    col: np.ndarray           #: [nnz+B] int32/int64 local column ids (same dtype as crow)
    weight: np.ndarray        #: [nnz+B] float32 GCN weights from global degrees
    deg: np.ndarray           #: [B] float32 degree without self-loop

    @property
    def num_halo(self) -> int:
        return len(self.n_id) - self.batch_size

    @property
    def edge_index(self) -> np.ndarray:
        """[2, nnz] int64 local (src=col, dst=row), no self-loops, in CSR order."""
        B = self.batch_size
        edge = np.ones(len(self.col), dtype=bool)
        edge[self.crow[:-1]] = False  # the self-loop leads each row
        out = np.empty((2, len(self.col) - B), dtype=np.int64)
        out[0] = self.col[edge]
        out[1] = np.repeat(np.arange(B, dtype=np.int64), np.diff(self.crow) - 1)
        return out

    def adj_t(self) -> torch.Tensor:
        n = len(self.n_id)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "sparse CSR is beta"
            return torch.sparse_csr_tensor(
                torch.from_numpy(self.crow), torch.from_numpy(self.col), torch.from_numpy(self.weight),
                size=(self.batch_size, n), check_invariants=False,
            )


#: bytes per CSR entry of a batch at the peak of :func:`build_subgraph` (int32 ids), and
#: retained by a built :class:`SubgraphStructure`; used to size the memory plan
BUILD_BYTES_PER_EDGE = 32
KEPT_BYTES_PER_EDGE = 8


def build_subgraph(indptr: np.ndarray, indices: np.ndarray, ranges: Ranges) -> SubgraphStructure:
    """Batch rows (the ranges), their 1-hop halo in first-seen order, bipartite CSR.

    Vectorised: per range one slice of ``indptr``/``indices`` (sequential reads),
    then numpy over all edges; the only random reads are two ``indptr`` entries
    per halo node for its global degree.  Per-edge temporaries are int32 (global
    ids below 2**31) and freed as soon as they are used: the peak is about
    :data:`BUILD_BYTES_PER_EDGE` bytes per edge.
    """
    N = len(indptr) - 1
    gid = np.int32 if N < 2**31 - 1 else np.int64     # global and local id dtype
    starts = np.array([s for s, _ in ranges], dtype=np.int64)
    ends = np.array([e for _, e in ranges], dtype=np.int64)
    lens = ends - starts
    offsets = np.concatenate(([0], np.cumsum(lens))).astype(np.int64)
    B = int(offsets[-1])
    batch_ids = ranges_to_ids(ranges)

    # row pointers and columns of the batch rows
    ptr_parts = [np.asarray(indptr[s:e + 1], dtype=np.int64) for s, e in ranges]
    counts = np.concatenate([np.diff(p) for p in ptr_parts]) if ptr_parts else np.empty(0, np.int64)
    cols = np.concatenate([np.asarray(indices[int(p[0]):int(p[-1])]) for p in ptr_parts]) \
        if ptr_parts else np.empty(0, gid)
    cols = cols.astype(gid, copy=False)
    nnz = len(cols)

    # map columns: in-batch -> local id (cols + offset - start of its range), else halo
    r = np.searchsorted(starts.astype(gid), cols, side="right")
    r -= 1
    inb = r >= 0
    np.maximum(r, 0, out=r)
    inb &= cols < ends.astype(gid)[r]
    local = np.empty(nnz, dtype=gid)
    shift = (offsets[:-1] - starts).astype(gid)
    local[inb] = cols[inb] + shift[r[inb]]
    del r
    out = ~inb
    del inb
    halo_cols = cols[out]
    del cols
    if len(halo_cols):
        uniq, first, inv = np.unique(halo_cols, return_index=True, return_inverse=True)
        del halo_cols
        order = np.argsort(first, kind="stable")
        del first
        rank = np.empty(len(uniq), dtype=gid)
        rank[order] = np.arange(B, B + len(uniq), dtype=gid)
        local[out] = rank[inv]
        del inv
        halo_ids = uniq[order].astype(np.int64)
    else:
        halo_ids = np.empty(0, dtype=np.int64)
    del out
    n_id = np.concatenate((batch_ids, halo_ids))

    # global degrees (+1 for the self-loop) and GCN weights
    deg_b = counts.astype(np.float64)
    deg_h = (np.asarray(indptr[halo_ids + 1]) - np.asarray(indptr[halo_ids])).astype(np.float64)
    dinv = 1.0 / np.sqrt(np.concatenate((deg_b, deg_h)) + 1.0)
    cid = np.int32 if max(len(n_id), nnz + B) < 2**31 - 1 else np.int64  # torch: crow and col share a dtype
    row_local = np.repeat(np.arange(B, dtype=cid), counts)
    w_edge = dinv[row_local]
    del row_local
    w_edge *= dinv[local]

    # insert the self-loop first in each row
    crow = np.empty(B + 1, dtype=cid)
    crow[0] = 0
    np.cumsum(counts + 1, out=crow[1:])
    is_self = np.zeros(nnz + B, dtype=bool)
    is_self[crow[:-1]] = True
    col = np.empty(nnz + B, dtype=cid)
    weight = np.empty(nnz + B, dtype=np.float32)
    col[is_self] = np.arange(B, dtype=cid)
    weight[is_self] = dinv[:B] ** 2
    np.invert(is_self, out=is_self)
    col[is_self] = local
    del local
    weight[is_self] = w_edge
    return SubgraphStructure(ranges=list(ranges), n_id=n_id, batch_size=B, crow=crow, col=col,
                             weight=weight, deg=deg_b.astype(np.float32))


def batch_halo(indptr: np.ndarray, indices: np.ndarray, ranges: Ranges) -> np.ndarray:
    """Sorted unique out-of-batch neighbours of a batch (its halo as a set)."""
    cols = np.concatenate([np.asarray(indices[int(indptr[s]):int(indptr[e])]) for s, e in ranges]).astype(np.int64)
    inb = np.zeros(len(cols), dtype=bool)
    for s, e in ranges:
        inb |= (cols >= s) & (cols < e)
    return np.unique(cols[~inb])


class HaloFinder:
    """:func:`batch_halo` for many batches of one graph, without sorting every edge.

    Keeps a stamp per node (4 bytes per node): one nogil pass marks the batch rows,
    then collects each unmarked neighbour once; only the halo itself (not every edge,
    ~9x more on the billion-edge store) is sorted.
    """

    BYTES_PER_NODE = 4

    def __init__(self, indptr: np.ndarray, indices: np.ndarray) -> None:
        self.indptr, self.indices = np.asarray(indptr), np.asarray(indices)
        self.stamp = np.zeros(len(self.indptr) - 1, dtype=np.int32)
        self.mark = 0

    def __call__(self, ranges: Ranges) -> np.ndarray:
        """The sorted halo of ``ranges``."""
        nnz = int(sum(int(self.indptr[e]) - int(self.indptr[s]) for s, e in ranges))
        out = np.empty(nnz, dtype=np.int64)
        return np.sort(out[:self._pass(ranges, out)])

    def count(self, ranges: Ranges) -> int:
        """How many nodes the halo of ``ranges`` has (nothing collected)."""
        return self._pass(ranges, np.empty(0, dtype=np.int64))

    def _pass(self, ranges: Ranges, out: np.ndarray) -> int:
        self.mark += 1
        if self.mark == np.iinfo(np.int32).max:
            self.stamp[:] = 0
            self.mark = 1
        starts = np.array([s for s, _ in ranges], dtype=np.int64)
        ends = np.array([e for _, e in ranges], dtype=np.int64)
        return _collect_halo(self.indptr, self.indices, starts, ends, self.stamp, self.mark, out)


@njit(nogil=True, cache=True)
def _collect_halo(indptr: np.ndarray, indices: np.ndarray, starts: np.ndarray, ends: np.ndarray, stamp: np.ndarray,
                  mark: int, out: np.ndarray) -> int:
    for r in range(len(starts)):
        for v in range(starts[r], ends[r]):
            stamp[v] = mark
    n = 0
    for r in range(len(starts)):
        for k in range(indptr[starts[r]], indptr[ends[r]]):
            c = indices[k]
            if stamp[c] != mark:
                stamp[c] = mark
                if len(out):  # empty out: count only
                    out[n] = c
                n += 1
    return n
