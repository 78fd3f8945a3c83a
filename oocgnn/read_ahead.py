"""Read the halo rows of the next few batches together with this batch's cache misses.

At billion scale a batch's halo rows touch a large share of a table's 4 KiB pages (on
the 50 M-node store, ~770 k rows of 256 bytes: ~1/4 of all pages), so the row-gather
engine, which reads through short gaps, streams most of the file for every batch.  The
halos of the next batches lie in the same pages.  When the LRU caches have room for
them, the miss read of batch ``t`` also fetches the halo rows of batches ``t+1 ..
t+k-1`` that are not cached yet, in the same sorted pass, and the cache keeps them; those
batches then find their halos in RAM.  The file is streamed about once per ``k`` batches
instead of every batch.

History caches stay exact: rows read ahead are inserted under the cache's lock, like any
miss, and every landed push refreshes cached copies (:class:`oocgnn.cache.HistoryCache`).

The halos of upcoming batches come from the epoch plan (one CSR pass per batch,
:class:`~oocgnn.subgraph.HaloFinder`, memoised and shared by the feature cache and every
history cache, which read on two threads).
"""
from __future__ import annotations

import threading
from typing import Any

import numpy as np

from oocgnn.subgraph import HaloFinder, Ranges

#: batches one read covers at most (this one and the next READ_AHEAD_BATCHES - 1)
READ_AHEAD_BATCHES = 4


class ReadAhead:
    """Which upcoming halo ids each cache should read with batch ``t``'s misses."""

    def __init__(self, indptr: np.ndarray, indices: np.ndarray, plan: list[Ranges], max_rows: int,
                 batches: int = READ_AHEAD_BATCHES, engine: str = "mmap") -> None:
        self.plan = plan
        # 4 bytes per node, charged with the read-ahead rows; CSR rows read through the engine (--io-engine)
        self._find = HaloFinder(indptr, indices, engine)
        self.max_rows = int(max_rows)  #: most ids one read may add (the memory plan charges their staging)
        self.batches = int(batches)
        self._halos: dict[int, np.ndarray] = {}
        self._until: dict[int, int] = {}  #: per cache: plan index up to which an earlier read covered halos
        self._last: tuple[int, int, np.ndarray] | None = None  #: (t, end, ids) of the latest group
        self._lock = threading.Lock()

    def _halo(self, i: int) -> np.ndarray:
        h = self._halos.get(i)
        if h is None:
            h = self._halos[i] = self._find(self.plan[i])
        return h

    def ids_for(self, cache_key: int, t: int) -> np.ndarray:
        """Sorted unique halo ids of the batches after ``t`` that cache ``cache_key`` should read now.

        Empty unless batch ``t`` starts a new group for that cache (an earlier read did not
        cover it); a group takes batches while their halos fit ``max_rows``.
        """
        with self._lock:
            if t < self._until.get(cache_key, 0):
                return np.empty(0, np.int64)
            if self._last is not None and self._last[0] == t:  # another cache asked for this group already
                self._until[cache_key] = self._last[1]
                return self._last[2]
            picked, total, j = [], 0, t + 1
            while j < len(self.plan) and j < t + self.batches:
                h = self._halo(j)
                if total + len(h) > self.max_rows:
                    break
                picked.append(h)
                total += len(h)
                j += 1
            self._until[cache_key] = j
            done = min(self._until.values())  # memoised halos every cache has passed
            for i in [i for i in self._halos if i < done]:
                del self._halos[i]
            ids = np.unique(np.concatenate(picked)) if picked else np.empty(0, np.int64)
            self._last = (t, j, ids)  # the feature cache and every history cache read the same group
        return ids


def attach_read_ahead(caches: list[Any], trainer: Any, plan: list[Ranges]) -> None:
    """Give LRU caches without an access stream one shared :class:`ReadAhead` for this epoch's plan.

    Only when the plan charged the staging of read-ahead rows (``read_ahead_rows``, over
    ``read_ahead_batches`` batches per read).
    """
    mp = getattr(trainer, "memory_plan", None) or {}
    rows, batches = int(mp.get("read_ahead_rows", 0)), int(mp.get("read_ahead_batches", READ_AHEAD_BATCHES))
    lru = [c for c in caches if c.kind == "lru" and not c.needs_stream]
    ra = ReadAhead(trainer.indptr, trainer.indices, plan, rows, batches, trainer.cfg.io.io_engine) \
        if rows > 0 and lru else None
    for c in caches:
        c.read_ahead = ra if c in lru else None
