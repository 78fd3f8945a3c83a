"""Least-recently-used row-cache policy whose cost per batch is the rows it reads, not the rows it holds.

The Belady policy (:class:`oocgnn.cache.Policy`) keeps its content as sorted id arrays
and re-ranks ``cached ∪ accessed`` every batch: O(capacity log capacity).  That is fine
at the sizes where Belady's access stream fits the budget, but at billion scale the
plan turns Belady off and gives LRU caches what the budget leaves, 10-16 M rows each,
and re-sorting them took 1.3-2.5 s per batch per cache on this machine, on the prefetch
thread, next to two torch threads on two cores.

Here a direct map ``id -> slot`` (``int32``, 4 bytes per node id seen, grown on
demand) answers lookups, and eviction order is a queue of ``(batch, slots used in it)``,
oldest first: a queued slot may be evicted iff it was not used again after that batch
(``last[slot] == batch``).  Each batch costs O(rows accessed + slots evicted) amortised;
stale queue entries are compacted once they outnumber twice the capacity.

Recency is per batch (rows read by the same batch are equally recent); ties are
broken deterministically (rows leave in the order they were accessed: the caller's
order, sorted ids in the tests), so two caches that see the same accesses make the
same decisions.  No sort is needed: a batch's halo is accessed in first-seen order.
"""
from __future__ import annotations

import collections

import numpy as np


class LRUPolicy:
    """LRU content of a row cache: ``step`` per batch, ``cached_slots`` for push updates."""

    #: bytes per node id the direct map may grow to (the memory plan charges it per cache)
    BYTES_PER_NODE = 4

    def __init__(self, capacity: int, num_nodes: int | None = None) -> None:
        self.capacity, self.kind = int(capacity), "lru"
        #: ids are below this (the map never grows past it); None: unknown, the map doubles as ids need
        self.num_nodes = None if num_nodes is None else int(num_nodes)
        self.slot_of = np.full(0, -1, np.int32)             #: id -> slot, -1 = not cached
        self.id_of = np.full(self.capacity, -1, np.int64)   #: slot -> id, -1 = free
        self.last = np.full(self.capacity, -1, np.int64)    #: slot -> batch clock of its last use
        self.free = np.arange(self.capacity, dtype=np.int64)[::-1].copy()  # stack of free slots, top = last
        self.n_free = self.capacity
        self._queue: collections.deque[tuple[int, np.ndarray]] = collections.deque()
        self._queued = 0
        self.hits = self.accesses = 0

    @property
    def size(self) -> int:
        """Rows cached now."""
        return self.capacity - self.n_free

    def _grow(self, n: int) -> None:
        if n > len(self.slot_of):
            size = max(n, 2 * len(self.slot_of))
            if self.num_nodes is not None:  # doubling past the last id wasted up to 4 B/node (380 MB at 50 M)
                size = min(size, max(n, self.num_nodes))
            grown = np.full(size, -1, np.int32)
            grown[: len(self.slot_of)] = self.slot_of
            self.slot_of = grown

    def cached_slots(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mask of ``ids`` cached now, their slots)."""
        ids = np.asarray(ids, dtype=np.int64)
        known = ids < len(self.slot_of)
        s = np.full(len(ids), -1, np.int64)
        s[known] = self.slot_of[ids[known]]
        hit = s >= 0
        return hit, s[hit]

    def step(self, a: np.ndarray, nu: np.ndarray | None, clock: int) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                                           np.ndarray]:
        """Access unique ``a`` (any order: ties leave in it) at batch ``clock`` (``nu`` is ignored).

        Returns (hit mask, slots of hits, positions in ``a`` inserted, their slots), like
        :meth:`oocgnn.cache.Policy.step`.
        """
        a = np.asarray(a, dtype=np.int64)
        if len(a):
            self._grow(int(a.max()) + 1)
        hit, hit_slots = self.cached_slots(a)
        self.hits += int(hit.sum())
        self.accesses += len(a)
        self.last[hit_slots] = clock
        miss_pos = np.flatnonzero(~hit)
        # every row this batch reads is more recent than any other: all of them stay, as many misses
        # as fit next to this batch's hits (a batch reading more rows than the capacity keeps its lowest ids)
        ins_pos = miss_pos[: max(0, min(len(miss_pos), self.capacity - len(hit_slots)))]
        new_slots = self._take(len(ins_pos), clock)
        new_ids = a[ins_pos]
        self.id_of[new_slots] = new_ids
        self.slot_of[new_ids] = new_slots
        self.last[new_slots] = clock
        at = np.full(len(a), -1, np.int64)  # slots in the order of ``a``: ties leave in ascending id order
        at[hit] = hit_slots
        at[ins_pos] = new_slots
        used = at[at >= 0]
        if len(used):
            self._queue.append((clock, used))
            self._queued += len(used)
        if self._queued > 2 * self.capacity + len(used):
            self._compact()
        return hit, hit_slots, ins_pos, new_slots

    def _take(self, k: int, clock: int) -> np.ndarray:
        """Up to ``k`` slots: free ones first, then the least recently used (never one used at ``clock``)."""
        m = min(k, self.n_free)
        parts = [self.free[self.n_free - m:self.n_free][::-1].copy()]  # popped from the top
        self.n_free -= m
        need = k - m
        while need > 0 and self._queue:
            c, slots = self._queue[0]
            if c >= clock:  # only rows used at this batch are left: keep them
                break
            live = slots[self.last[slots] == c]
            take, rest = live[:need], live[need:]
            if len(rest):
                self._queue[0] = (c, rest)
                self._queued -= len(slots) - len(rest)
            else:
                self._queue.popleft()
                self._queued -= len(slots)
            self.slot_of[self.id_of[take]] = -1
            self.id_of[take] = -1
            parts.append(take)
            need -= len(take)
        return np.concatenate(parts)

    def insert(self, ids: np.ndarray, clock: int) -> tuple[np.ndarray, np.ndarray]:
        """Cache unique ``ids`` (none cached) as used at ``clock``, without counting an access.

        Rows read ahead for later batches (:mod:`oocgnn.read_ahead`).  Evicts only rows
        older than ``clock``, so fewer than ``len(ids)`` may fit: returns (positions in
        ``ids`` inserted, their slots).
        """
        ids = np.asarray(ids, dtype=np.int64)
        if len(ids):
            self._grow(int(ids.max()) + 1)
        slots = self._take(len(ids), clock)
        new_ids = ids[: len(slots)]
        self.id_of[slots] = new_ids
        self.slot_of[new_ids] = slots
        self.last[slots] = clock
        if len(slots):
            self._queue.append((clock, slots))
            self._queued += len(slots)
        return np.arange(len(slots), dtype=np.int64), slots

    def _compact(self) -> None:
        """Drop queue entries of slots used again later (each live slot stays queued once)."""
        kept: collections.deque[tuple[int, np.ndarray]] = collections.deque()
        total = 0
        for c, slots in self._queue:
            live = slots[(self.last[slots] == c) & (self.id_of[slots] >= 0)]
            if len(live):
                kept.append((c, live))
                total += len(live)
        self._queue, self._queued = kept, total
