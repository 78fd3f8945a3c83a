"""Epoch plans: which partitions each batch of an epoch trains, on each rank.

The store is partition-ordered (partition ``p`` owns store ids ``[ptr[p], ptr[p+1])``).
A batch is a group of partitions, so its rows are a few contiguous ranges: reading
their CSR rows and feature rows is sequential I/O, and only the halo is a random
gather (the subgraph of a batch: :mod:`oocgnn.subgraph`).

The epoch plan is a pure function of ``(seed, epoch)`` so a resumed run can
recompute it instead of storing it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

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
