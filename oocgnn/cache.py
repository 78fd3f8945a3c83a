"""Hot-row cache for halo feature rows, with Belady eviction from the known plan.

Rows that many batches read as halo (high cross-partition degree) are worth
keeping in RAM.  Because the epoch plan is fixed before the epoch starts, we know
every future access: :meth:`FeatureCache.begin_epoch` computes each batch's halo
ids (one sequential CSR pass) and the next use of every access, so eviction can
keep the rows whose next use is soonest (Belady), as Ginex does for sampled
features; rows not read again this epoch are evicted first and re-ranked by their
first use when the next epoch's plan is known.  A plain LRU of the same capacity runs alongside as a shadow (ids only,
no data) so the metrics compare the two policies on the same access stream.

Decisions are made per batch with vectorised numpy over ``cached ∪ accessed``
ids, never per row in Python.  Bookkeeping per epoch is ``O(sum of halo sizes)``
int64 (the access stream); the row buffer is ``capacity x F`` float32 within the
memory budget.  Features are read-only, so the cache never goes stale; history
rows are *not* cached here (recently pushed rows are served by the write-behind
buffer or the page cache, see :mod:`oocgnn.history`).
"""
from __future__ import annotations

import logging
from typing import Any, Callable

import numpy as np
import torch

from oocgnn.batching import Ranges

log = logging.getLogger(__name__)

INF = np.iinfo(np.int64).max


def batch_halo(indptr: np.ndarray, indices: np.ndarray, ranges: Ranges) -> np.ndarray:
    """Sorted unique out-of-batch neighbours of a batch (its halo as a set)."""
    cols = np.concatenate([np.asarray(indices[int(indptr[s]):int(indptr[e])]) for s, e in ranges]).astype(np.int64)
    inb = np.zeros(len(cols), dtype=bool)
    for s, e in ranges:
        inb |= (cols >= s) & (cols < e)
    return np.unique(cols[~inb])


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
    """Cache content as sorted ids with a priority; smaller priority = evicted last."""

    def __init__(self, capacity: int, kind: str) -> None:
        self.capacity, self.kind = int(capacity), kind
        self.ids = np.empty(0, np.int64)
        self.prio = np.empty(0, np.int64)
        self.slot = np.empty(0, np.int64)
        self.free = np.arange(self.capacity, dtype=np.int64)[::-1].copy()  # stack of free slots, top = last
        self.n_free = self.capacity
        self.hits = self.accesses = 0

    def lookup(self, a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pos = np.searchsorted(self.ids, a)
        posc = np.minimum(pos, max(len(self.ids) - 1, 0))
        hit = (pos < len(self.ids)) & (self.ids[posc] == a) if len(self.ids) else np.zeros(len(a), bool)
        return hit, posc

    def step(self, a: np.ndarray, nu: np.ndarray, clock: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Access sorted unique ``a`` at batch ``t``.

        ``nu`` is each id's next use (Belady), ``clock`` a run-wide batch counter (LRU).
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
        if self.kind == "belady":
            c_prio = np.concatenate((self.prio[keep_old], nu))        # next use: keep smallest
        else:
            c_prio = np.concatenate((self.prio[keep_old], np.full(len(a), -clock, np.int64)))  # -last use
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


class FeatureCache:
    """Row cache used by :class:`~oocgnn.prefetch.BatchLoader` for halo feature rows."""

    def __init__(self, capacity: int, width: int, row_bytes: int, policy: str = "belady") -> None:
        self.capacity, self.width, self.row_bytes, self.kind = int(capacity), width, row_bytes, policy
        self.buf = torch.empty(self.capacity, width, dtype=torch.float32)
        self.last_misses = 0
        self.clock = 0  #: batches seen over the whole run (LRU recency survives epochs)
        self._reset()

    def _reset(self) -> None:
        self.policy = Policy(self.capacity, self.kind)
        self.shadow = Policy(self.capacity, "lru" if self.kind == "belady" else "belady")

    def begin_epoch(self, trainer: Any, plan: list[Ranges]) -> None:
        self.accesses = [batch_halo(trainer.indptr, trainer.indices, r) for r in plan]
        self.nus = next_uses(self.accesses)
        self.t = 0
        first = np.full(0, INF, np.int64)
        uniq = np.empty(0, np.int64)
        if self.accesses:
            ids = np.concatenate(self.accesses)
            t = np.repeat(np.arange(len(self.accesses), dtype=np.int64), [len(a) for a in self.accesses])
            uniq, idx = np.unique(ids, return_index=True)  # ids are in plan order: first use
            first = t[idx]
        for p in (self.policy, self.shadow):
            p.hits = p.accesses = 0
            if p.kind == "belady" and len(p.ids):  # re-rank cached rows by first use in the new plan
                pos = np.searchsorted(uniq, p.ids)
                posc = np.minimum(pos, max(len(uniq) - 1, 0))
                found = (pos < len(uniq)) & (uniq[posc] == p.ids) if len(uniq) else np.zeros(len(p.ids), bool)
                p.prio = np.where(found, first[posc], INF) if len(uniq) else np.full(len(p.ids), INF)

    def gather(self, halo: np.ndarray, out: torch.Tensor, miss_fn: Callable[[np.ndarray, torch.Tensor], None]) -> None:
        """``out[i] = features[halo[i]]``: hits from RAM, misses via ``miss_fn`` (called in plan order)."""
        a, nu = self.accesses[self.t], self.nus[self.t]
        self.shadow.step(a, nu, self.clock)
        hit, hit_slots, ins_pos, ins_slots = self.policy.step(a, nu, self.clock)
        self.t += 1
        self.clock += 1
        # halo is in first-seen order; a is sorted: map between them
        where = np.searchsorted(a, halo)
        h_hit = hit[where]
        tmp = torch.empty(int((~h_hit).sum()), self.width, dtype=torch.float32)
        miss_ids = halo[~h_hit]
        miss_fn(miss_ids, tmp)
        self.last_misses = len(miss_ids)
        if h_hit.any():
            slot_of = np.full(len(a), -1, np.int64)
            slot_of[np.flatnonzero(hit)] = hit_slots
            out[torch.from_numpy(np.flatnonzero(h_hit))] = self.buf[torch.from_numpy(slot_of[where[h_hit]])]
        if len(miss_ids):
            out[torch.from_numpy(np.flatnonzero(~h_hit))] = tmp
        if len(ins_pos):
            # inserted rows were misses of this batch: copy them from tmp
            miss_pos = np.full(len(a), -1, np.int64)
            miss_pos[where[~h_hit]] = np.arange(len(miss_ids))
            self.buf[torch.from_numpy(ins_slots)] = tmp[torch.from_numpy(miss_pos[ins_pos])]

    def epoch_metrics(self) -> dict[str, Any]:
        p, s = self.policy, self.shadow
        return {"cache_policy": p.kind, "cache_rows": self.capacity,
                "cache_hit_rate": p.hits / p.accesses if p.accesses else 0.0,
                "cache_bytes_saved": p.hits * self.row_bytes,
                f"cache_hit_rate_{s.kind}_same_size": s.hits / s.accesses if s.accesses else 0.0,
                f"cache_bytes_saved_{s.kind}_same_size": s.hits * self.row_bytes}


def attach_feature_cache(trainer: Any) -> None:
    """Give ``trainer`` a feature cache sized from ``cache_fraction`` of its memory budget."""
    cfg = trainer.cfg.io
    if cfg.in_memory:
        return
    width = trainer.ds.num_features
    row_bytes = width * trainer.features.dtype.itemsize
    plan = getattr(trainer, "memory_plan", None)
    if plan is None:  # trainers built without a memory plan (tests): the old rule
        capacity = min(int(max(0, trainer.budget - trainer.ring_bytes) * cfg.cache_fraction) // (width * 4),
                       trainer.ds.num_nodes)
    else:
        from oocgnn.train.budget import cache_capacity

        capacity = cache_capacity(trainer, width)
    if capacity < 1:
        return
    trainer.cache = FeatureCache(capacity, width, row_bytes, cfg.cache)
    log.info("feature cache: %d rows (%s eviction, LRU/Belady shadow for comparison)", capacity, cfg.cache)
