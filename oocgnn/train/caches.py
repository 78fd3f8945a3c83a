"""Giving a trainer its row caches, sized from its memory plan.

Why in ``train/``: the caches themselves (:mod:`oocgnn.cache`) know rows and
eviction, not budgets; how many rows they may hold is the memory plan's decision
(:mod:`oocgnn.train.budget`), and this module applies it to a built trainer.
"""
from __future__ import annotations

import logging
from typing import Any

from oocgnn.cache import FeatureCache, HistoryCache
from oocgnn.train.budget import cache_capacity

log = logging.getLogger(__name__)


def attach_row_caches(trainer: Any) -> None:
    """Give ``trainer`` its row caches (features and, for on-disk histories, every history table).

    The cache share of the memory plan is split so every cache holds the same number
    of rows: each halo access reads one feature row and one row of every table, so
    this is the split proportional to row bytes x expected reads.
    """
    cfg = trainer.cfg.io
    if cfg.in_memory:
        return
    width = trainer.ds.num_features
    row_bytes = width * trainer.features.dtype.itemsize
    hs = getattr(trainer, "histories", None)
    tables = [t for t in (hs.tables if hs is not None else [])]
    # in-RAM tables (no run dir) gain nothing from a copy; tables other ranks write too (several ranks
    # sharing history files) would leave a cached row as old as the cache keeps it, not a few steps
    dist = getattr(trainer, "dist", None)
    shared_writers = dist is not None and dist.shared_tables
    hist_widths = ([t.channels for t in tables] if tables and all(t.path is not None for t in tables)
                   and not shared_writers else [])
    if shared_writers and tables:
        log.info("history caches off: ranks share the history tables, so another rank's push would leave a cached "
                 "row stale; the feature cache takes their share")
    plan = getattr(trainer, "memory_plan", None)
    if plan is None:  # trainers built without a memory plan (tests): the old rule
        capacity = min(int(max(0, trainer.budget - trainer.ring_bytes) * cfg.cache_fraction)
                       // ((width + sum(hist_widths)) * 4), trainer.ds.num_nodes)
    else:
        capacity = cache_capacity(trainer, width, hist_widths)
    if capacity < 1:
        return
    policy = plan.get("cache_policy", cfg.cache) if plan is not None else cfg.cache
    shadow = plan.get("cache_shadow", True) if plan is not None else True
    n = trainer.ds.num_nodes
    trainer.cache = FeatureCache(capacity, width, row_bytes, policy, shadow, num_nodes=n)
    log.info("feature cache: %d rows (%s eviction%s)", capacity, policy,
             ", LRU/Belady shadow for comparison" if shadow else "; no access stream, so no Belady comparison")
    if hist_widths:
        trainer.hist_caches = [HistoryCache(capacity, t.channels, t.row_bytes, policy, shadow, num_nodes=n)
                               for t in tables]
        hs.caches = list(trainer.hist_caches)
        log.info("history caches: %d rows x %d tables, coherent with pushes", capacity, len(tables))
