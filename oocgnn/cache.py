"""Row caches for halo rows: features (:class:`FeatureCache`) and history tables (:class:`HistoryCache`).

Rows that many batches read as halo (high cross-partition degree) are worth keeping
in RAM.  The eviction policy is Belady's where the epoch's access stream fits the
budget (:mod:`oocgnn.belady`: the plan is known, so the row whose next use is
furthest goes; an LRU of the same capacity runs alongside as a shadow, ids only, so
the metrics compare the two on the same stream), else LRU in O(rows read) per batch
(:mod:`oocgnn.lru`), which at scale also reads the next batches' halos with each
miss read (:mod:`oocgnn.read_ahead`).  Decisions are made per batch with vectorised
numpy, never per row in Python; the row buffer is ``capacity x F`` float32 within
the memory budget.  Features are read-only, so their cache never goes stale.

:class:`HistoryCache` (one per history table) reuses the same bookkeeping on the
same access stream (a history table's halo reads are the feature cache's halo
reads).  It is kept coherent with pushes: :meth:`HistorySet._land` hands every
landed push to :meth:`HistoryCache.on_land`, which overwrites cached copies of the
pushed rows *before* ``landed_seq`` advances, and gathers/updates are serialised
by a lock (a miss read and its insertion are atomic w.r.t. a land).  So a cached
row always equals the table as of every landed push <= the loader's snapshot,
exactly what an uncached gather returns; later pushes are patched by
:meth:`HistorySet.patch` as before (``--staleness-bound`` unchanged).
"""
from __future__ import annotations

import logging
import threading
from typing import Any, Callable

import numpy as np
import torch

from oocgnn.batching import Ranges
from oocgnn.belady import INF, Policy, plan_accesses
from oocgnn.lru import LRUPolicy
from oocgnn.read_ahead import attach_read_ahead

log = logging.getLogger(__name__)

def make_policy(capacity: int, kind: str, num_nodes: int | None = None) -> Policy | LRUPolicy:
    """The policy object of ``kind`` (``belady`` or ``lru``)."""
    return LRUPolicy(capacity, num_nodes) if kind == "lru" else Policy(capacity, kind)


class FeatureCache:
    """Row cache used by :class:`~oocgnn.prefetch.BatchLoader` for halo feature rows.

    ``shadow=False`` (LRU only) runs without the epoch's access stream, whose next-use
    lists cost ~58 bytes per halo access at their peak: at billion scale more than the
    budget, so the memory plan turns Belady and the shadow off there.
    """

    def __init__(self, capacity: int, width: int, row_bytes: int, policy: str = "belady",
                 shadow: bool = True, num_nodes: int | None = None) -> None:
        if policy == "belady" and not shadow:
            raise ValueError("a Belady cache needs the access stream; shadow=False is for LRU")
        self.capacity, self.width, self.row_bytes, self.kind = int(capacity), width, row_bytes, policy
        self.with_shadow = shadow
        self.num_nodes = num_nodes  #: bound of the LRU id map (None: grown by doubling)
        self.buf = torch.empty(self.capacity, width, dtype=torch.float32)
        self.last_misses = 0  #: rows the last gather read from disk (its misses and any rows read ahead)
        self.clock = 0  #: batches seen over the whole run (LRU recency survives epochs)
        self.read_ahead = None  #: oocgnn.read_ahead.ReadAhead of this epoch (LRU at scale), or None
        self.read_ahead_rows = 0  #: rows read ahead this epoch
        self._reset()

    def _reset(self) -> None:
        self.policy = make_policy(self.capacity, self.kind, self.num_nodes)
        self.shadow = make_policy(self.capacity, "lru" if self.kind == "belady" else "belady", self.num_nodes) \
            if self.with_shadow else None

    @property
    def needs_stream(self) -> bool:
        """Whether :meth:`begin_epoch` needs :func:`plan_accesses` (Belady, or any shadow)."""
        return self.with_shadow

    @property
    def released(self) -> bool:
        """Whether :meth:`release` gave the row buffer back (the next epoch allocates it again)."""
        return self.buf.shape[0] != self.capacity

    def release(self) -> None:
        """Free the row buffer and forget every cached row.

        An input table loaded whole into RAM for a layer-wise sweep (:mod:`oocgnn.train.stream`)
        serves every row a cache could, and at billion scale the caches hold the room it needs.  :meth:`begin_epoch` allocates the buffer
        again, and the rows come back as the next epoch reads them.
        """
        self.buf = torch.empty(0, self.width, dtype=torch.float32)
        self.accesses = self.nus = None  # the epoch's access stream (Belady): begin_epoch loads it again
        self.detach_read_ahead()
        self._reset()

    def detach_read_ahead(self) -> None:
        """Forget this plan's read-ahead (shared by the caches: freed with the last one to drop it)."""
        self.read_ahead = None

    def begin_epoch(self, trainer: Any, plan: list[Ranges], pre: tuple | None = None) -> None:
        """Load the epoch's access stream; ``pre`` = :func:`plan_accesses` shared by several caches."""
        self.t = 0
        self.read_ahead_rows = 0
        if self.released:  # a normal tensor even when a sweep (inference mode) allocates it: training updates it
            with torch.inference_mode(False):
                self.buf = torch.empty(self.capacity, self.width, dtype=torch.float32)
        if not self.needs_stream:
            self.accesses = self.nus = None
            self.policy.hits = self.policy.accesses = 0
            return
        self.accesses, self.nus, uniq, first = pre if pre is not None else plan_accesses(trainer, plan)
        for p in (self.policy, self.shadow):
            p.hits = p.accesses = 0
            if p.kind == "belady" and len(p.ids):  # re-rank cached rows by first use in the new plan
                pos = np.searchsorted(uniq, p.ids)
                posc = np.minimum(pos, max(len(uniq) - 1, 0))
                found = (pos < len(uniq)) & (uniq[posc] == p.ids) if len(uniq) else np.zeros(len(p.ids), bool)
                p.prio = np.where(found, first[posc], INF) if len(uniq) else np.full(len(p.ids), INF)

    def gather(self, halo: np.ndarray, out: torch.Tensor, miss_fn: Callable[[np.ndarray, torch.Tensor], None]) -> None:
        """``out[i] = features[halo[i]]``: hits from RAM, misses via ``miss_fn`` (called in plan order)."""
        if self.accesses is None:  # LRU without the stream: the halo itself (unique, any order) is the access
            a, nu = halo, None
            where = np.arange(len(halo))
        else:
            a, nu = self.accesses[self.t], self.nus[self.t]
            self.shadow.step(a, nu, self.clock)
            where = None
        hit, hit_slots, ins_pos, ins_slots = self.policy.step(a, nu, self.clock)
        if where is None:  # halo is in first-seen order; the stream's a is sorted: map between them
            where = np.searchsorted(a, halo)
        h_hit = hit[where]
        miss_ids = halo[~h_hit]
        ahead = self._ahead_ids()
        nm = len(miss_ids)
        tmp = torch.empty(nm + len(ahead), self.width, dtype=torch.float32)
        miss_fn(np.concatenate((miss_ids, ahead)) if len(ahead) else miss_ids, tmp)
        self.last_misses = nm + len(ahead)
        if len(ahead):  # as recent as this batch's rows; never evicts them
            a_pos, a_slots = self.policy.insert(ahead, self.clock)
            self.buf[torch.from_numpy(a_slots)] = tmp[nm:][torch.from_numpy(a_pos)]
            self.read_ahead_rows += len(ahead)
        tmp = tmp[:nm]
        self.t += 1
        self.clock += 1
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

    def _ahead_ids(self) -> np.ndarray:
        """Upcoming halo rows to read with this batch's misses (see :mod:`oocgnn.read_ahead`), not cached."""
        if self.read_ahead is None:
            return np.empty(0, np.int64)
        up = self.read_ahead.ids_for(id(self), self.t)
        if len(up):
            cached, _ = self.policy.cached_slots(up)  # this batch's rows are cached by now too
            up = up[~cached]
        return up

    def epoch_metrics(self) -> dict[str, Any]:
        return cache_metrics([self], "cache")


def cache_metrics(caches: list[FeatureCache], prefix: str) -> dict[str, Any]:
    """Hit rate and bytes saved pooled over ``caches`` (same policy), with the same-size shadow's figures."""
    p0, s0 = caches[0].policy, caches[0].shadow
    hits = sum(c.policy.hits for c in caches)
    acc = sum(c.policy.accesses for c in caches)
    rec = {f"{prefix}_policy": p0.kind, f"{prefix}_rows": caches[0].capacity,
           f"{prefix}_hit_rate": hits / acc if acc else 0.0,
           f"{prefix}_bytes_saved": sum(c.policy.hits * c.row_bytes for c in caches),
           f"{prefix}_read_ahead_rows": sum(c.read_ahead_rows for c in caches)}
    if s0 is None:  # no access stream, no comparison
        return rec
    s_hits = sum(c.shadow.hits for c in caches)
    s_acc = sum(c.shadow.accesses for c in caches)
    return {**rec,
            f"{prefix}_hit_rate_{s0.kind}_same_size": s_hits / s_acc if s_acc else 0.0,
            f"{prefix}_bytes_saved_{s0.kind}_same_size": sum(c.shadow.hits * c.row_bytes for c in caches)}


class HistoryCache(FeatureCache):
    """Halo rows of one history table (float32 copies), coherent with landed pushes.

    :meth:`gather` runs on the prefetch thread, :meth:`on_land` on the history
    writer thread (inside :meth:`HistorySet._land`, before ``landed_seq`` moves);
    one lock serialises them, so a row read from the table on a miss and then
    inserted cannot miss a push that landed in between.
    """

    def __init__(self, capacity: int, width: int, row_bytes: int, policy: str = "belady",
                 shadow: bool = True, num_nodes: int | None = None) -> None:
        super().__init__(capacity, width, row_bytes, policy, shadow, num_nodes)
        self.lock = threading.Lock()
        self.updated_rows = 0  #: cached rows overwritten by landed pushes (run total)

    def gather(self, halo: np.ndarray, out: torch.Tensor, miss_fn: Callable[[np.ndarray, torch.Tensor], None]) -> None:
        with self.lock:
            super().gather(halo, out, miss_fn)

    def on_land(self, ids: np.ndarray, values: np.ndarray) -> None:
        """A push of ``values[i]`` (table dtype) to row ``ids[i]`` has been written: refresh cached copies."""
        with self.lock:
            if not self.policy.size or not len(ids):
                return
            hit, slots = self.policy.cached_slots(ids)
            if hit.any():
                self.buf[torch.from_numpy(slots)] = torch.from_numpy(
                    np.ascontiguousarray(values[hit])).to(torch.float32)
                self.updated_rows += int(hit.sum())

    def clear(self) -> None:
        """Forget every cached row (a table was rewritten outside :meth:`HistorySet.push`)."""
        with self.lock:
            self._reset()

    def release(self) -> None:
        with self.lock:  # a land may be refreshing cached rows right now
            super().release()


def row_caches(trainer: Any) -> list[FeatureCache]:
    """The trainer's feature cache and history caches that exist."""
    hist = [c for c in (getattr(trainer, "hist_caches", None) or []) if c is not None]
    return ([trainer.cache] if getattr(trainer, "cache", None) is not None else []) + hist


def release_row_caches(trainer: Any) -> int:
    """Free every row cache's buffer (see :meth:`FeatureCache.release`); returns the bytes the plan gave them."""
    caches = [c for c in row_caches(trainer) if not c.released]
    for c in caches:
        c.release()
    return int(trainer.memory_plan.get("cache_bytes", 0)) if caches and getattr(trainer, "memory_plan", None) else 0


def begin_epoch_caches(trainer: Any, plan: list[Ranges]) -> None:
    """Give every row cache the epoch's access stream (computed once, shared)."""
    caches = row_caches(trainer)
    if caches:
        pre = plan_accesses(trainer, plan) if any(c.needs_stream for c in caches) else None
        for c in caches:
            c.begin_epoch(trainer, plan, pre)
        attach_read_ahead(caches, trainer, plan)


def end_epoch_caches(trainer: Any) -> None:
    """Drop the caches' read-ahead of the finished plan (its halo finder holds 4 bytes per node)."""
    for c in row_caches(trainer):
        c.detach_read_ahead()


def begin_sweep_cache(cache: FeatureCache, trainer: Any, plan: list[Ranges]) -> None:
    """Set one cache up for a layer-wise sweep's plan (the next epoch sets it up for its own again)."""
    cache.begin_epoch(trainer, plan)
    attach_read_ahead([cache], trainer, plan)


def caches_epoch_metrics(trainer: Any) -> dict[str, Any]:
    """``cache_*`` (features) and ``hist_cache_*`` (all history tables pooled) metrics."""
    rec: dict[str, Any] = {}
    if getattr(trainer, "cache", None) is not None:
        rec.update(trainer.cache.epoch_metrics())
    hist = [c for c in (getattr(trainer, "hist_caches", None) or []) if c is not None]
    if hist:
        rec.update(cache_metrics(hist, "hist_cache"))
        rec["hist_cache_push_updates"] = sum(c.updated_rows for c in hist)
    return rec
