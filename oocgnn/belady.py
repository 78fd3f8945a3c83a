"""Belady row-cache policy: evict the row whose next use is furthest away, from the known epoch plan.

The epoch plan is fixed before the epoch starts, so :func:`plan_accesses` knows every
halo access and :func:`next_uses` when each row is read again (as Ginex does for
sampled features).  :class:`Policy` keeps the cache content as sorted ids with a
priority and re-ranks ``cached ∪ accessed`` each batch with vectorised numpy,
O(capacity log capacity): used where the access stream fits the budget (at billion
scale the memory plan picks :class:`oocgnn.lru.LRUPolicy` instead).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from oocgnn.subgraph import Ranges, batch_halo

INF = np.iinfo(np.int64).max


def next_uses(accesses: list[np.ndarray]) -> list[np.ndarray]:
    """For every (batch t, id) access, the next batch that reads the id (INF = never)."""
    if not accesses:
        return []
    ids = np.concatenate(accesses)
    t = np.repeat(np.arange(len(accesses), dtype=np.int64), [len(a) for a in accesses])
    order = np.argsort(ids, kind="stable")  # ids are concatenated in t order: ties stay sorted by t
    nxt = np.full(len(ids), INF, dtype=np.int64)
    same = ids[order[1:]] == ids[order[:-1]]
    nxt[order[:-1][same]] = t[order[1:][same]]
    return np.split(nxt, np.cumsum([len(a) for a in accesses])[:-1])


class Policy:
    """Belady cache content as sorted ids with a priority (next use); smaller priority = evicted last.

    Re-ranks ``cached ∪ accessed`` every batch, O(capacity log capacity): used where the
    access stream fits the budget; LRU is :class:`oocgnn.lru.LRUPolicy` (O(rows accessed)).
    """

    def __init__(self, capacity: int, kind: str = "belady") -> None:
        if kind != "belady":
            raise ValueError(f"Policy is Belady's; LRU is oocgnn.lru.LRUPolicy (got {kind!r})")
        self.capacity, self.kind = int(capacity), kind
        self.ids = np.empty(0, np.int64)
        self.prio = np.empty(0, np.int64)
        self.slot = np.empty(0, np.int64)
        self.free = np.arange(self.capacity, dtype=np.int64)[::-1].copy()  # stack of free slots, top = last
        self.n_free = self.capacity
        self.hits = self.accesses = 0

    @property
    def size(self) -> int:
        """Rows cached now."""
        return len(self.ids)

    def cached_slots(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mask of ``ids`` cached now, their slots)."""
        hit, pos = self.lookup(np.asarray(ids, dtype=np.int64))
        return hit, self.slot[pos[hit]]

    def lookup(self, a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pos = np.searchsorted(self.ids, a)
        posc = np.minimum(pos, max(len(self.ids) - 1, 0))
        hit = (pos < len(self.ids)) & (self.ids[posc] == a) if len(self.ids) else np.zeros(len(a), bool)
        return hit, posc

    def step(self, a: np.ndarray, nu: np.ndarray, clock: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Access sorted unique ``a`` at batch ``t``.

        ``nu`` is each id's next use; ``clock`` (a run-wide batch counter) is LRU's, unused here.
        Returns (hit mask, slots of hits, positions in ``a`` inserted, their slots).
        """
        hit, pos = self.lookup(a)
        hit_slots = self.slot[pos[hit]]
        self.hits += int(hit.sum())
        self.accesses += len(a)
        keep_old = np.ones(len(self.ids), bool)
        keep_old[pos[hit]] = False
        # candidates: untouched cached rows and every accessed row
        c_ids = np.concatenate((self.ids[keep_old], a))
        c_prio = np.concatenate((self.prio[keep_old], nu))        # next use: keep smallest
        c_slot = np.concatenate((self.slot[keep_old], np.full(len(a), -1, np.int64)))
        c_slot[len(c_slot) - len(a):][hit] = hit_slots
        # rows with no further use this epoch (INF) stay only while there is room:
        # the next epoch's plan may read them again
        idx = np.arange(len(c_ids))
        if len(idx) > self.capacity:
            idx = idx[np.argpartition(c_prio[idx], self.capacity - 1)[: self.capacity]]
        chosen = np.zeros(len(c_ids), bool)
        chosen[idx] = True
        evicted = c_slot[~chosen & (c_slot >= 0)]  # evicted rows free their slots (pushed in order)
        self.free[self.n_free:self.n_free + len(evicted)] = evicted
        self.n_free += len(evicted)
        new = chosen & (c_slot < 0)
        n_new = int(new.sum())
        new_slots = self.free[self.n_free - n_new:self.n_free][::-1].copy()  # popped from the top
        self.n_free -= n_new
        c_slot[new] = new_slots
        order = np.argsort(c_ids[chosen], kind="stable")
        self.ids, self.prio, self.slot = c_ids[chosen][order], c_prio[chosen][order], c_slot[chosen][order]
        ins_pos = np.flatnonzero(new[len(c_ids) - len(a):])
        return hit, hit_slots, ins_pos, new_slots


def plan_accesses(trainer: Any, plan: list[Ranges]) -> tuple:
    """(halo ids per batch, their next uses, unique ids, first use of each) for one epoch plan."""
    accesses = [batch_halo(trainer.indptr, trainer.indices, r) for r in plan]
    nus = next_uses(accesses)
    first = np.full(0, INF, np.int64)
    uniq = np.empty(0, np.int64)
    if accesses:
        ids = np.concatenate(accesses)
        t = np.repeat(np.arange(len(accesses), dtype=np.int64), [len(a) for a in accesses])
        uniq, idx = np.unique(ids, return_index=True)  # ids are in plan order: first use
        first = t[idx]
    return accesses, nus, uniq, first
