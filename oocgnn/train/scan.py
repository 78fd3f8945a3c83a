"""Scanned sweeps: a layer's input table too large for RAM, read in ordered passes, one per group of batches.

A gathered sweep (:mod:`oocgnn.train.evaluate`) reads every batch's halo rows at random.
On the billion-edge store at fp32 that is ~755 k rows per batch, ~190 M per layer, and
12.5 min per layer even with the row caches and their read-ahead, while the 12.8 GB
table does not fit the room a streamed sweep (:mod:`oocgnn.train.stream`) needs. A
scanned sweep groups consecutive batches of the plan while the rows they read (their own
rows and their halos, as a set) fit the room the memory plan leaves, reads that set in one
ordered pass over the table (:func:`oocgnn.io.scan.scan_rows`, sequential bandwidth, gaps
longer than a read skipped), and lets the loader index it in RAM. There, groups of ~41
batches read the table 7 times in sequence per layer instead (`oocgnn eval` 5.3 min vs a
25 min gathered sweep; ``benchmarks/RESULTS.md``).

``auto`` scans when the table cannot be streamed and :func:`scan_seconds` is below
:func:`gather_seconds` (both from the disk figures below); ``--stream-inference scan``
forces it, ``off`` gathers. The row caches are useless to a scan, so it frees them for
room (the next epoch allocates them again). Values are the table's bytes either way, so
results are bitwise those of a gathered sweep (``tests/test_scan_inference.py``).
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
from numba import njit

from oocgnn.batching import Ranges
from oocgnn.cache import release_row_caches, row_caches
from oocgnn.io.csr import CSRReader
from oocgnn.io.scan import SCAN_CHUNK_BYTES, scan_rows
from oocgnn.train import stream
from oocgnn.utils.memory import format_size, trim_heap

log = logging.getLogger(__name__)

#: random 4 KiB reads a second at 64 in flight (shared/design/machine-facts.md: 50-56 k)
RANDOM_READS_PER_S = 50_000
#: sequential read bandwidth (the low end of the 1.3-1.8 GB/s measured)
SEQUENTIAL_BPS = 1.3e9
#: share of halo rows a gathered sweep still reads from disk past the row caches and their read-ahead
#: (hit rates 0.72 on the billion-edge store; without caches it is 1)
GATHER_MISS_SHARE = 0.3
#: RAM a scan needs besides its staged rows, per node (the group's node -> staged row index, int32)
INDEX_BYTES_PER_NODE = 4


@dataclass
class ScanGroup:
    """Batches ``plan[start:stop]``, the sorted unique rows they read (``rows``), and where each sits.

    ``index[v]`` is the position of node ``v`` in ``rows`` (-1: not read by the group);
    it is the planner's array, valid until the planner moves to the next group.
    """

    start: int
    stop: int
    rows: np.ndarray
    index: np.ndarray


def gather_seconds(halo_rows: int, cached: bool) -> float:
    """Estimated disk time of gathering ``halo_rows`` rows at random (batch rows are ranges: not counted)."""
    return halo_rows * (GATHER_MISS_SHARE if cached else 1.0) / RANDOM_READS_PER_S


def scan_seconds(passes: int, table_bytes: int) -> float:
    """Estimated disk time of ``passes`` ordered passes over a table (an upper bound: gaps are skipped)."""
    return passes * table_bytes / SEQUENTIAL_BPS


def scan_room_rows(trainer: Any, row_bytes: int) -> int:
    """How many rows a group may stage within the budget once the row caches are freed."""
    room = stream.stream_room(trainer, without_caches=True)
    n = int(trainer.ds.num_nodes)
    slots = max(1, len(getattr(trainer, "slots", []) or []))
    # the node index, the read buffer, the loader's local ids per slot and the planner's per-batch id buffer
    fixed = INDEX_BYTES_PER_NODE * n + SCAN_CHUNK_BYTES + 8 * int(trainer.max_rows) * (slots + 1)
    return max(0, (room - fixed) // (row_bytes + 8))  # + 8: the staged rows' ids


class GroupPlanner:
    """Splits a sweep plan into :class:`ScanGroup` s of at most ``max_rows`` rows each (one CSR pass).

    One int32 per node collects a group's rows (marked 0) and then says where each sits
    among them, which the loader reads to index the staged rows (a ``searchsorted`` into
    ~20 M staged ids cost ~2 s per batch at 50 M nodes: a cache miss per probe). A batch
    that would overflow the group is unmarked again and opens the next one; a single
    batch larger than ``max_rows`` is a group of its own (its rows are staged for the
    loader anyway). Groups are planned lazily, each after the previous one was used.
    """

    def __init__(self, indptr: np.ndarray, indices: np.ndarray, max_rows: int, engine: str = "auto") -> None:
        self.reader = CSRReader(indptr, indices, engine)
        self.index = np.full(len(indptr) - 1, -1, dtype=np.int32)
        self.max_rows = max(1, int(max_rows))

    def close(self) -> None:
        self.reader.close()
        self.index = np.zeros(0, dtype=np.int32)

    def groups(self, plan: list[Ranges]) -> Iterator[ScanGroup]:
        start, count = 0, 0
        for b, ranges in enumerate(plan):
            starts = np.array([s for s, _ in ranges], dtype=np.int64)
            ends = np.array([e for _, e in ranges], dtype=np.int64)
            cols = self.reader.slices(ranges)[1]
            new = np.empty(int((ends - starts).sum()) + len(cols), dtype=np.int64)
            n = _mark_new(starts, ends, cols, self.index, new)
            if count + n > self.max_rows and b > start:
                self.index[new[:n]] = -1  # batch b opens the next group
                yield from self._close(start, b)
                start, count = b, 0
                n = _mark_new(starts, ends, cols, self.index, new)
            count += n
        if start < len(plan):
            yield from self._close(start, len(plan))

    def _close(self, start: int, stop: int) -> Iterator[ScanGroup]:
        rows = np.flatnonzero(self.index >= 0).astype(np.int64)
        self.index[rows] = np.arange(len(rows), dtype=np.int32)
        yield ScanGroup(start, stop, rows, self.index)
        self.index[rows] = -1  # the group was used: clean for the next one


@njit(nogil=True, cache=True)
def _mark_new(starts: np.ndarray, ends: np.ndarray, cols: np.ndarray, index: np.ndarray, out: np.ndarray) -> int:
    """Mark (0) the batch rows and their neighbours; write the ids not marked before to ``out``; return their count."""
    n = 0
    for r in range(len(starts)):
        for v in range(starts[r], ends[r]):
            if index[v] < 0:
                index[v] = 0
                out[n] = v
                n += 1
    for k in range(len(cols)):
        c = cols[k]
        if index[c] < 0:
            index[c] = 0
            out[n] = c
            n += 1
    return n


class ScanSweep:
    """One layer's scanned sweep: yields ``(batches, staged rows, node -> staged row index)`` group by group.

    Every group's rows are read into one buffer of the largest group's size, grown only
    when a group needs more: a loader of the last group may outlive its group (the
    prefetcher's threads hold it until a garbage collection), and a fresh array per group
    then coexisted with the next one (15.8 GB peak under a 12 GB budget at 50 M nodes).
    """

    def __init__(self, trainer: Any, table: np.ndarray, plan: list[Ranges], max_rows: int) -> None:
        self.table, self.plan = table, plan
        self.planner = GroupPlanner(trainer.indptr, trainer.indices, max_rows, trainer.cfg.io.io_engine)
        self.first: ScanGroup | None = None
        self._it = self.planner.groups(plan)
        self._buf: np.ndarray | None = None
        self.bytes_read, self.read_s, self.groups = 0, 0.0, 0

    def peek(self) -> ScanGroup | None:
        """The first group (planned, not read): sizes the estimate before the sweep commits."""
        if self.first is None:
            self.first = next(self._it, None)
        return self.first

    def _staging(self, rows: int) -> np.ndarray:
        if self._buf is None or len(self._buf) < rows:
            self._buf = None
            trim_heap(collect=True)  # the smaller buffer (and any loader still holding it) goes first
            self._buf = np.empty((rows, self.table.shape[1]), dtype=self.table.dtype)
        return self._buf[:rows]

    def __iter__(self) -> Iterator[tuple[list[Ranges], np.ndarray, np.ndarray]]:  # noqa: D105
        try:
            first = self.peek()
            if first is None:
                return
            for group in _chain(first, self._it):
                t0 = time.perf_counter()
                staged = self._staging(len(group.rows))
                nbytes = scan_rows(self.table, group.rows, staged)
                dt = time.perf_counter() - t0
                self.bytes_read, self.read_s, self.groups = self.bytes_read + nbytes, self.read_s + dt, self.groups + 1
                log.debug("scan group %d: batches %d-%d, %d rows, read %s in %.1f s", self.groups, group.start,
                          group.stop - 1, len(group.rows), format_size(nbytes), dt)
                yield self.plan[group.start:group.stop], staged, group.index
                del staged, group
        finally:
            self.close()

    def close(self) -> None:
        """Free the planner's node index and the staging buffer."""
        self.planner.close()
        self._buf = None


def _chain(first: ScanGroup, rest: Iterator[ScanGroup]) -> Iterator[ScanGroup]:
    yield first
    yield from rest


def plan_scan(trainer: Any, table: np.ndarray, plan: list[Ranges], mode: str, layer: int,
              name: str, scannable: bool = True) -> ScanSweep | None:
    """A :class:`ScanSweep` over ``table`` when ``mode`` forces it or ``auto`` finds it cheaper; else None (gather).

    Called only for tables the sweep would otherwise gather (see module doc); logs the choice.
    ``scannable=False``: the sweep reads more than this table per batch (GCNII's features
    at every layer), which the loader's staged rows do not cover: gather.
    """
    if mode not in ("auto", "scan") or not scannable:
        log.info("inference layer %d: %s: batched gathers from disk (%s)", layer, name,
                 "the model reads the features at every layer" if not scannable else f"--stream-inference {mode}")
        return None
    row_bytes = table.shape[1] * table.dtype.itemsize
    trim_heap(collect=True)
    max_rows = scan_room_rows(trainer, row_bytes)
    sweep = ScanSweep(trainer, table, plan, max_rows)
    first = sweep.peek()
    if first is None:
        sweep.close()
        return None
    per_group = first.stop - first.start
    passes = math.ceil(len(plan) / per_group)
    scan_s = scan_seconds(passes, table.nbytes)
    halo = getattr(trainer, "partition_halo", None)
    halo_rows = int(np.sum(halo)) if halo is not None else len(first.rows) * passes
    gather_s = gather_seconds(halo_rows, cached=bool(row_caches(trainer)))
    fits = len(first.rows) <= max_rows
    if mode == "auto" and not (fits and scan_s < gather_s):
        sweep.close()
        log.info("inference layer %d: %s (%s): batched gathers from disk (est. %.0f s) rather than ~%d ordered "
                 "passes (est. %.0f s)%s",
                 layer, name, format_size(table.nbytes), gather_s, passes, scan_s,
                 "" if fits else f"; one batch reads more rows than the {max_rows} the room holds")
        return None
    if not fits:
        log.warning("--stream-inference scan: one batch reads %d rows of %s, more than the %d the memory plan leaves "
                    "room for; the peak may exceed --memory-budget", len(first.rows), name, max_rows)
    freed = release_row_caches(trainer)
    if freed:
        trim_heap(collect=True)
    log.info("inference layer %d: %s (%s) scanned: ~%d ordered passes of groups of ~%d batches, up to %d rows "
             "(%s) staged at a time (est. %.0f s vs %.0f s of gathers)%s", layer, name, format_size(table.nbytes),
             passes, per_group, max_rows, format_size(max_rows * row_bytes), scan_s, gather_s,
             f"; row caches ({format_size(freed)}) freed, the next epoch refills them" if freed else "")
    return sweep
