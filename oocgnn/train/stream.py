"""Streaming layer-wise inference: load a layer's input table into RAM when the budget has room.

A sweep of :func:`oocgnn.train.evaluate.layerwise_inference` reads, for every batch,
its halo rows of the layer's input table (features for layer 0, history table
``l-1`` after).  Over a sweep every row is read about (1 + mean halo / batch) times,
at random: on the billion-edge store that is most of the 52-minute inference.  When
the table fits in the memory the plan leaves free, one sequential read of the whole
file (buffered ``pread`` in large chunks, at disk bandwidth) replaces all those
random reads, and each batch's input rows are indexed from RAM.  The CSR is still
read batch by batch (sequential ranges).  Values are the same bytes either way, so
the results are bitwise identical (``tests/test_stream_inference.py``).

How much room (:func:`stream_room`), conservatively: at most
:data:`STREAM_MAX_SHARE` of ``--memory-budget``, and never more than the budget
minus: the mapped-page window; the process's anonymous memory *now*, or the plan's
baseline plus its persistent parts (staging ring, row caches, Belady stream) and what
inference allocates beyond the plan (its predictions, 4 bytes per node) when those are
not resident yet, whichever is larger (the heap is trimmed first); and the plan's
per-batch working set (subgraphs, write-behind, runtime reserve, engine buffer, and one
layer's forward activations: a sweep keeps no autograd state) again.  A table that does
not fit is gathered batch by batch through the training row caches, with read-ahead
(:func:`oocgnn.train.evaluate._sweep_cache`).

The row caches take what the plan leaves during training, so on a large graph they hold
exactly the room a table would need.  A table in RAM serves every row a cache could, so
when a table fits only without them, ``auto`` frees the caches
(:func:`oocgnn.cache.release_row_caches`) and streams; the next epoch allocates them
again and they refill as it reads (the billion-edge store at fp16: 6.4 GB tables, a 12 GB
budget, 4.8 GB of caches).

A table that fits neither way may instead be read in ordered passes, one per group of
batches (:mod:`oocgnn.train.scan`). ``--stream-inference on|scan|off`` forces streaming,
scanning or gathers (tests, benchmarks); ``auto`` decides per layer.  Sources already in RAM (history tables without a run dir or with
``--in-memory``) are indexed directly and never copied.  (``--in-memory`` features
are ``np.ascontiguousarray`` of the store memmap, which is a view of the file, not a
copy; they count as file-backed here.)
"""
from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from oocgnn.cache import release_row_caches, row_caches
from oocgnn.errors import ConfigError
from oocgnn.io import file_region
from oocgnn.io.scan import open_sequential, read_exactly
from oocgnn.utils.memory import current_anon_rss, format_size, trim_heap

log = logging.getLogger(__name__)

MODES = ("auto", "on", "scan", "off")
#: an in-RAM input table may take at most this share of --memory-budget (the rest of the
#: reservation below already counts every other allocation, twice where unsure)
STREAM_MAX_SHARE = 0.75
#: bytes per sequential read while loading a table (large: one syscall per 64 MiB)
READ_CHUNK_BYTES = 64 << 20


def stream_room(trainer: Any, without_caches: bool = False) -> int:
    """Bytes an in-RAM input table may take during inference without leaving the budget (see module doc).

    ``without_caches``: the room once the row caches are freed (or already are).
    """
    plan = trainer.memory_plan
    budget = int(trainer.budget)
    baseline, ring = int(plan["baseline_anon_bytes"]), int(plan["staging_ring_bytes"])
    slots = getattr(trainer, "slots", None)
    if slots:  # what the ring holds now (a sweep frees its halo history buffers: Slot.release_hist)
        ring = min(ring, sum(s.nbytes for s in slots))
    caches = row_caches(trainer)
    held_now = bool(caches) and not all(c.released for c in caches)
    held = held_now and not without_caches
    # allocated once and kept: resident now once touched, else still to come
    persistent = ring + (int(plan.get("cache_bytes", 0)) + int(plan.get("belady_bytes", 0)) if held else 0)
    # allocated per batch and freed: subgraphs, activations, write-behind, runtime, engine buffer; a sweep
    # runs one layer forward, without autograd state, so its activations are the plan's sweep figure
    transient = int(plan["planned_peak_anon_bytes"]) - baseline - ring
    if "sweep_activation_bytes" in plan:
        transient += int(plan["sweep_activation_bytes"]) - int(plan["activation_bytes"])
    transient -= int(plan.get("transpose_bytes", 0))  # sweep batches carry no transposed adjacency
    # what inference adds beyond the plan: its predictions (int32; scratch tables keep no last-push steps),
    # already allocated (so in RssAnon) when a sweep asks
    extra = 4 * int(trainer.ds.num_nodes)
    # freeing held caches gives back at least their row buffers (the access stream too, not counted)
    anon = current_anon_rss() - (int(plan.get("cache_bytes", 0)) if without_caches and held_now else 0)
    reserved = int(plan["mapped_window_bytes"]) + transient + max(anon, baseline + persistent + extra)
    return max(0, min(int(budget * STREAM_MAX_SHARE), budget - reserved))


def choose(trainer: Any, array: np.ndarray, mode: str) -> tuple[bool, str]:
    """Whether to load file-backed ``array`` into RAM for a sweep, and why (for the log)."""
    if mode not in MODES:
        raise ConfigError(f"--stream-inference {mode!r}: use auto, on, scan or off")
    if file_region(array) is None:
        return False, "already in RAM"
    if mode in ("off", "scan"):
        return False, f"--stream-inference {mode}"
    room = stream_room(trainer)
    if mode == "on":
        if array.nbytes > room:
            log.warning("--stream-inference on: loading %s into RAM although only %s of --memory-budget %s is free "
                        "for it; the peak may exceed the budget", format_size(array.nbytes), format_size(room),
                        format_size(trainer.budget))
        return True, "--stream-inference on"
    if array.nbytes <= room:
        return True, f"fits the {format_size(room)} the memory plan leaves"
    if row_caches(trainer):
        trim_heap(collect=True)  # the estimate below starts from RssAnon: drop cyclic garbage from it first
        if array.nbytes <= stream_room(trainer, without_caches=True):
            freed = release_row_caches(trainer)
            trim_heap(collect=True)  # what the caches held goes back now (a cycle held it until a collection)
            room = stream_room(trainer)
            if array.nbytes <= room:
                return True, (f"fits the {format_size(room)} the memory plan leaves once the row caches "
                              f"({format_size(freed)}) are freed; the next epoch refills them")
    return False, f"more than the {format_size(room)} the memory plan leaves"


def load_table(array: np.ndarray, chunk_bytes: int = READ_CHUNK_BYTES) -> np.ndarray:
    """A RAM copy of the 2-D file memmap ``array`` (a view of one), read sequentially in chunks.

    Buffered ``pread`` into the destination, never through the memmap: the memmaps
    are advised ``MADV_RANDOM`` (a fault per page, no read-ahead), and nothing is
    mapped, so RSS grows by the copy only.  Buffered reads share the page cache with
    the writable memmaps of history tables, so rows pushed but not yet written back
    are seen (callers flush the write-behind first).
    """
    region = file_region(array)
    out = np.empty(array.shape, dtype=array.dtype)
    if region is None:  # not a file: copy it (callers only pass memmaps)
        np.copyto(out, array)
        return out
    path, offset = region
    dst = out.reshape(-1).view(np.uint8)
    total = dst.nbytes
    with open_sequential(path, offset, total) as fd:
        for pos in range(0, total, chunk_bytes):
            read_exactly(fd, path, dst[pos:pos + chunk_bytes], offset + pos, array.shape[0])
    return out


def stream_input(trainer: Any, array: np.ndarray, mode: str, layer: int, name: str) -> tuple[np.ndarray | None, str]:
    """``(RAM copy of array or None, path)`` for sweep ``layer``; logs the path taken.

    ``path`` is ``"stream"`` (loaded now), ``"gather"`` (not loaded: batched gathers
    from the file, or a scan) or ``"ram"`` (the source already lives in RAM).
    """
    trim_heap()  # the room is measured from RssAnon: free heap the last sweep left behind first
    stream, why = choose(trainer, array, mode)
    size = format_size(array.nbytes)
    if not stream:
        path = "ram" if why == "already in RAM" else "gather"
        log.info("inference layer %d: %s (%s) %s (%s)", layer, name, size,
                 "indexed in RAM" if path == "ram" else "not loaded into RAM", why)
        return None, path
    t0 = time.perf_counter()
    ram = load_table(array)
    dt = time.perf_counter() - t0
    log.info("inference layer %d: %s (%s) streamed: loaded into RAM in %.1f s (%s/s), %s",
             layer, name, size, dt, format_size(array.nbytes / max(dt, 1e-9)), why)
    return ram, "stream"
