"""How one ``--memory-budget`` is split during training, decided before anything is allocated.

The budget bounds the resident set.  Anonymous memory (``RssAnon``: heap, numpy
and torch buffers) is planned below; file pages that the store and history
memmaps map in are held under a fixed *mapped window* by
:class:`oocgnn.utils.mapped.MappedPageReleaser` (they stay in the page cache,
only our page tables let go), and that window is taken off the top.  The plan,
from the process baseline measured when the trainer is built::

    baseline                         interpreter, torch, labels, last-push steps, ...
  + (depth + 1) x staging slot       ring (x rows + halo history rows)
  + (depth + 1) x kept subgraph      CSR of batches waiting in the ring (and its transpose, GCN/GCNII),
                                   one more when slots go back after the forward pass (early release)
  + one subgraph build               build_subgraph temporaries (prefetch thread)
  + activations of one step          autograd state of forward + backward
  + write-behind pushes              up to ``max_pending + 1`` batches of pushed rows (lowered, down to
                                   one waiting push, before read-ahead is)
  + runtime reserve                  torch/OpenMP/malloc-arena overhead of the threads
  + row-gather engine buffers        aligned page buffers of oocgnn.io, one per concurrent gather
                                   (features, histories; none with --io-engine mmap)
  + row caches + Belady lists        whatever is left, times --cache-fraction
                                   (features + history tables, equal rows each)

Bounds are over *any* group of ``parts_per_batch`` partitions (largest sizes,
halos and edge counts), so no epoch plan can exceed them.  When the requested
``--prefetch`` depth does not fit it is lowered (results do not depend on it);
when even one batch does not fit, :class:`ConfigError` says so in one line.

Belady eviction (and the LRU/Belady shadow comparison) needs the epoch's halo
access stream, ~58 bytes per access at its peak: 12.3 GB (charged) for an epoch of
the 50 M-node / 1.66 B-entry store of ``benchmarks/scale_run.py``.  When the stream would take more than
:data:`ACCESS_STREAM_MAX_SHARE` of the room left after one batch, the caches run
as plain LRU without it (a warning says so) and that room holds rows instead.
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np

from oocgnn.subgraph import (BUILD_BYTES_PER_EDGE, KEPT_BYTES_PER_EDGE, READER_BYTES_PER_EDGE, TRANSPOSE_BYTES_PER_EDGE,
                             TRANSPOSE_BYTES_PER_ROW, HaloFinder)
from oocgnn.errors import ConfigError
from oocgnn.lru import LRUPolicy
from oocgnn.read_ahead import READ_AHEAD_BATCHES
from oocgnn.utils.memory import current_anon_rss, format_size, parse_size

log = logging.getLogger(__name__)

#: autograd state per layer, in units of one [B+H, width] float32 tensor: a dropout's
#: output and its one-byte keep mask (oocgnn.models.dropout)
ACT_TENSORS_PER_LAYER = 1.25
#: a backward through a dropout holds the incoming gradient and its masked copy, both [B+H, width]
ACT_BACKWARD_TENSORS = 2
#: backward of a CSR ``sparse.mm`` transposes the adjacency (int64 indices + sort)
ACT_BYTES_PER_EDGE = 24
#: policy bookkeeping per cached row (Belady: ids, priority, slot, free stack; LRU: id, last use, free
#: stack, eviction queue), a Belady policy and its LRU shadow
CACHE_META_PER_ROW = 2 * 32
#: read-ahead bookkeeping per row (ids read, memoised halos of the group, their union)
READ_AHEAD_META_PER_ROW = 32
#: torch runtime, thread stacks and per-thread malloc arenas once training runs
RUNTIME_RESERVE = 48 << 20
#: fewest pushes the write-behind queue may hold while the trainer goes on (the plan lowers it from
#: HistorySet's default when a batch of read-ahead would not fit otherwise)
MIN_PENDING = 1
#: peak bytes per halo access of an epoch while the access stream and its next uses are computed
#: (:func:`oocgnn.cache.plan_accesses`; measured 58: ids, batch index, argsort, next use, unique); 16 stay
BELADY_BYTES_PER_ACCESS = 64
#: the access stream may take at most this share of the room left after one batch; past it the caches
#: run as LRU without the Belady shadow (neither needs the stream), so the rest can hold rows
ACCESS_STREAM_MAX_SHARE = 0.5
#: cuSPARSE's SpMM workspace and the row expansion a sparse backward makes, per CSR entry of a batch
CUSPARSE_BYTES_PER_EDGE = 16
#: what a GPU holds besides the plan's terms: cuBLAS / cuSPARSE handles and workspaces, allocator rounding
DEVICE_RESERVE = 512 << 20
#: ``--gpu-memory-budget`` default: this share of the device memory free when the run starts
GPU_BUDGET_SHARE = 0.9
#: share of the budget that memmapped file pages may occupy in RSS with ``--io-engine mmap``, and its bounds
MAPPED_WINDOW_FRACTION = 0.08
MAPPED_WINDOW_MIN, MAPPED_WINDOW_MAX = 32 << 20, 1 << 30
#: the row-gather engine maps no rows; this holds stray reads of store memmaps (degrees at start, splits)
ENGINE_WINDOW_MIN = 16 << 20


def engine_bytes(trainer: Any) -> int:
    """The page buffers the row-gather engine keeps (feature and history gathers run side by side)."""
    io = trainer.cfg.io
    if io.in_memory or io.io_engine == "mmap":
        return 0
    from oocgnn.io.rowfile import buffer_bytes

    row_bytes = max([trainer.ds.num_features * trainer.features.dtype.itemsize,
                     *(t.row_bytes for t in trainer.histories.tables)])
    # features and history tables are gathered at the same time (two buffers) when histories are on disk
    concurrent = 2 if any(t.path is not None for t in trainer.histories.tables) else 1
    return concurrent * buffer_bytes(trainer.max_halo, row_bytes)


def mapped_window(budget: int, io_engine: str = "mmap", push_bytes: int = 0) -> int:
    """RSS our memmaps' file pages may take: released past half of it, the other half is room for reads in flight.

    With ``--io-engine mmap`` every gathered row maps pages: a share of the budget.  The
    row-gather engine (``direct``/``pread``, and tables in RAM) maps no gathered row and
    history pushes land with ``pwrite``; what still maps pages is the checkpoint journal's
    read of the rows a push overwrites (one push's rows at a time), so the window is twice
    one push (``push_bytes``).  The budget-share rule reserved ~3x what that path maps (issue
    #27: 120 MB at a 1.5 GB budget), room that read-ahead needs.
    """
    share = int(min(MAPPED_WINDOW_MAX, max(MAPPED_WINDOW_MIN, budget * MAPPED_WINDOW_FRACTION)))
    if io_engine == "mmap":
        return share
    return min(share, max(ENGINE_WINDOW_MIN, 2 * int(push_bytes)))


def batch_edges_bound(indptr: np.ndarray, partition_ptr: np.ndarray, parts_per_batch: int) -> int:
    """Most CSR entries any group of ``parts_per_batch`` partitions can hold."""
    ptr = np.asarray(indptr[np.asarray(partition_ptr, dtype=np.int64)], dtype=np.int64)
    per_part = np.sort(np.diff(ptr))[::-1]
    return int(per_part[: max(1, parts_per_batch)].sum())


def plan_memory(trainer: Any, halo_sizes: np.ndarray, per_slot: int) -> dict[str, Any]:
    """Choose the prefetch depth and the cache room; raise ConfigError if one batch cannot fit."""
    cfg = trainer.cfg
    budget = trainer.budget
    baseline = current_anon_rss()
    rows, width = trainer.max_rows, max([trainer.ds.num_features, *trainer.model.history_channels])
    edges = batch_edges_bound(trainer.indptr, trainer.partition_ptr, cfg.train.parts_per_batch) + rows
    # training batches carry adj_t transposed (GCN, GCNII); sweep batches do not
    transposed = TRANSPOSE_BYTES_PER_EDGE * edges + TRANSPOSE_BYTES_PER_ROW * rows \
        if getattr(trainer.model, "uses_adj_transpose", False) else 0
    kept = KEPT_BYTES_PER_EDGE * edges + 8 * rows + transposed
    build = BUILD_BYTES_PER_EDGE * edges
    layers = trainer.cfg.model.layers
    act = int((ACT_TENSORS_PER_LAYER * layers + ACT_BACKWARD_TENSORS) * rows * width * 4) + ACT_BYTES_PER_EDGE * edges
    devops = getattr(trainer, "devops", None)
    capacity = devops.memory_capacity() if devops is not None else None
    device_plan = plan_device_memory(trainer, capacity, edges, act) if capacity is not None else None
    if device_plan is not None:
        act = 0  # a step's autograd state lives on the device (planned there), not in host RAM

    sizes = np.sort(np.diff(np.asarray(trainer.partition_ptr, dtype=np.int64)))[::-1]
    batch_rows = int(sizes[: max(1, cfg.train.parts_per_batch)].sum())
    hs = trainer.histories
    push = sum(t.channels * t.array.dtype.itemsize for t in hs.tables) * batch_rows + 16 * batch_rows
    fixed = RUNTIME_RESERVE + engine_bytes(trainer)
    if devops is not None and devops.asynchronous:  # page-locked push and patch buffers, allocated once
        from oocgnn.train.feed import PATCH_CHUNK_BYTES, PUSH_BUFFERS

        fixed += PUSH_BUFFERS * 4 * batch_rows * sum(t.channels for t in hs.tables) + 2 * PATCH_CHUNK_BYTES

    # a slot handed back after the forward pass (Trainer.early_release) is refilled while the batch it
    # held still runs backward: one more batch CSR is alive than there are slots
    early = kept if getattr(trainer, "early_release", False) else 0

    def need(depth: int, pending: int) -> int:
        return (depth + 1) * (per_slot + kept) + early + build + act + (pending + 1) * push + fixed

    on_disk = [t for t in hs.tables if t.path is not None]
    maps_rows = "mmap" if cfg.io.io_engine == "mmap" and not cfg.io.in_memory else "engine"
    window = mapped_window(budget, maps_rows, sum(t.row_bytes for t in on_disk) * batch_rows)
    room = budget - baseline - window
    # read-ahead first, then the write-behind queue (pushes wait for the writer sooner), then the caches:
    # a batch read ahead hides a whole batch's reads, a queued push only smooths the writer
    depth, pending = cfg.io.prefetch, hs._max_pending
    while need(depth, pending) > room and (depth > 0 or pending > MIN_PENDING):
        if pending > MIN_PENDING:
            pending -= 1
        else:
            depth, pending = depth - 1, hs._max_pending
    pushes = (pending + 1) * push + fixed
    if need(depth, pending) > room:
        raise ConfigError(
            f"--memory-budget {format_size(budget)} cannot hold one batch: process baseline {format_size(baseline)} + "
            f"mapped-page window {format_size(window)} + "
            f"staging ring {format_size(per_slot)} + subgraph {format_size(kept + build)} + activations "
            f"{format_size(act)} + write-behind {format_size(pushes)} = {format_size(baseline + need(0, pending))} (largest batch {rows:,} rows, {edges:,} edges); "
            f"use fewer --parts-per-batch or more partitions (oocgnn prepare --partitions), or raise the budget")
    if depth < cfg.io.prefetch:
        log.warning("--prefetch %d does not fit --memory-budget %s: reading %d batch(es) ahead", cfg.io.prefetch,
                    format_size(budget), depth)
    left = room - need(depth, pending)
    stream = BELADY_BYTES_PER_ACCESS * int(np.sum(halo_sizes)) if cfg.io.cache != "none" else 0
    with_stream = 0 < stream <= ACCESS_STREAM_MAX_SHARE * left
    policy = cfg.io.cache if with_stream or cfg.io.cache == "none" else "lru"
    if policy != cfg.io.cache:
        log.warning("--cache %s needs the epoch's halo access stream (%s), more than half of the %s the budget leaves: "
                    "using LRU caches without the Belady comparison", cfg.io.cache, format_size(stream),
                    format_size(max(left, 0)))
    belady = stream if with_stream else 0
    return {"budget_bytes": budget, "baseline_anon_bytes": baseline, "mapped_window_bytes": window,
            "prefetch_depth": depth,
            "staging_ring_bytes": (depth + 1) * per_slot, "subgraph_bytes": (depth + 1) * kept + early + build,
            "activation_bytes": act, "writebehind_and_runtime_bytes": pushes, "belady_bytes": belady, "cache_room_bytes": max(0, left - belady),
            "cache_policy": policy, "cache_shadow": with_stream,
            "planned_peak_anon_bytes": baseline + need(depth, pending), "batch_edges": edges,
            "write_behind_pending": pending,
            "transpose_bytes": (depth + 1) * transposed,
            # a layer-wise sweep: one layer, forward only (its output and the propagated input)
            "sweep_activation_bytes": 2 * rows * width * 4 if device_plan is None else 0,
            "device": device_plan}


def device_batch_bytes(rows: int, halo: int, batch_rows: int, edges: int, width: int, hist_width: int,
                       transpose: bool, edge_index: bool) -> int:
    """Device bytes of one batch: input and halo history rows, CSR (and its transpose), degrees, labels, edges."""
    isz = 4 if rows + edges < 2**31 - 1 else 8
    n = rows * width * 4 + halo * hist_width * 4 + (batch_rows + 1) * isz + edges * (isz + 4) + batch_rows * 21
    if transpose:
        n += (rows + 1) * isz + edges * (isz + 4)
    if edge_index:
        n += 16 * edges
    return n


def device_memory_need(batch_bytes: int, lookahead: int, activation_bytes: int, param_bytes: int, edges: int,
                       ranks: bool) -> dict[str, int]:
    """What one training step holds on the device, by term (see :func:`plan_device_memory`)."""
    return {"model and optimizer": (4 + int(ranks)) * param_bytes,  # weights, grads, Adam's two moments (+ flat grads)
            "batches": (1 + lookahead) * batch_bytes,  # the one computing and the one being copied
            "activations": activation_bytes,
            "cuSPARSE workspace": CUSPARSE_BYTES_PER_EDGE * edges,
            "reserve": DEVICE_RESERVE}


def check_device_memory(need: dict[str, int], budget: int, where: str, rows: int, edges: int) -> None:
    """One line, before training starts, when a step does not fit the device's budget."""
    total = sum(need.values())
    if total <= budget:
        return
    terms = " + ".join(f"{k} {format_size(v)}" for k, v in need.items())
    raise ConfigError(f"--gpu-memory-budget {format_size(budget)} on {where} cannot hold one training step: {terms} = "
                      f"{format_size(total)} (largest batch {rows:,} rows, {edges:,} edges); use fewer "
                      f"--parts-per-batch (smaller batches) or a smaller --hidden, or raise --gpu-memory-budget")


def plan_device_memory(trainer: Any, capacity: int, edges: int, activation_bytes: int) -> dict[str, Any]:
    """The device side of the plan: a step's tensors there against ``--gpu-memory-budget``.

    ``capacity`` is the device memory free when the run started (the default budget is
    :data:`GPU_BUDGET_SHARE` of it).  Raises :class:`ConfigError` (one line, with the advice)
    when the largest batch cannot train, before any step runs: a ``torch.OutOfMemoryError``
    mid-epoch would come back at the same batch on every resume.
    """
    cfg = trainer.cfg
    flag = getattr(cfg.io, "gpu_memory_budget", None)
    budget = int(GPU_BUDGET_SHARE * capacity) if flag in (None, "", "auto") else parse_size(flag, "--gpu-memory-budget")
    model = trainer.model
    width = max([trainer.ds.num_features, *model.history_channels])
    rows, halo = int(trainer.max_rows), int(trainer.max_halo)
    batch = device_batch_bytes(rows, halo, int(getattr(trainer, "max_batch_rows", rows)), edges, width,
                               sum(model.history_channels), bool(getattr(model, "uses_adj_transpose", False)),
                               bool(getattr(model, "uses_edge_index", False)))
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    need = device_memory_need(batch, int(getattr(trainer, "lookahead", 1)), activation_bytes, params, edges,
                              trainer.dist.active)
    check_device_memory(need, budget, str(trainer.device), rows, edges)
    return {"budget_bytes": budget, "capacity_bytes": int(capacity), "need_bytes": sum(need.values()),
            "terms": need}


def cache_capacity(trainer: Any, width: int, hist_widths: list[int] | tuple[int, ...] = ()) -> int:
    """Rows per row cache (features, and one per history table in ``hist_widths``) in the cache share.

    Every halo access reads one feature row and one row of each table, so expected
    reads per row are equal and the share proportional to row bytes x reads gives
    every cache the same number of rows.
    """
    plan = trainer.memory_plan
    # every cache has one LRU policy (its own, or the shadow of a Belady one): a 4-byte slot per node id
    per_node = LRUPolicy.BYTES_PER_NODE * (1 + len(hist_widths)) * trainer.ds.num_nodes
    room = max(0.0, plan["cache_room_bytes"] * trainer.cfg.io.cache_fraction - per_node)
    per_row = sum(w * 4 + CACHE_META_PER_ROW for w in (width, *hist_widths))
    # LRU caches at scale read the next batches' halos with this one's misses (oocgnn.read_ahead): the
    # extra rows are staged (float32, every cache at once on two threads) plus ids, memoised halos and
    # the halo finder's stamps and CSR read buffer; as many batches ahead as leave the caches twice the rows read ahead
    n = trainer.ds.num_nodes
    rows = min(int(room) // per_row, n)
    ahead = ahead_bytes = batches = 0
    if plan.get("cache_policy") == "lru" and not plan.get("cache_shadow", True):
        for k in range(READ_AHEAD_BATCHES, 1, -1):  # the largest group whose rows the caches can keep until used
            a = min((k - 1) * int(getattr(trainer, "max_halo", 0)), n)
            a_bytes = a * (sum(w * 4 for w in (width, *hist_widths)) + READ_AHEAD_META_PER_ROW) \
                + HaloFinder.BYTES_PER_NODE * n + READER_BYTES_PER_EDGE * int(plan.get("batch_edges", 0))
            r = min(int(room - a_bytes) // per_row, n)
            if a and r >= min(2 * a, n):
                ahead, ahead_bytes, batches, rows = a, a_bytes, k, r
                break
    plan["read_ahead_rows"], plan["read_ahead_bytes"], plan["read_ahead_batches"] = ahead, ahead_bytes, batches
    plan["cache_bytes"] = rows * per_row + (per_node if rows else 0) + ahead_bytes
    trainer.memory_plan["feature_cache_bytes"] = rows * (width * 4 + CACHE_META_PER_ROW)
    trainer.memory_plan["hist_cache_bytes"] = rows * sum(w * 4 + CACHE_META_PER_ROW for w in hist_widths)
    return rows
