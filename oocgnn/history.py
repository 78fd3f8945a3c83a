"""Per-layer history tables that live on disk, and the push log that keeps reads exact.

A GAS model with L layers keeps L-1 tables ``[N, H]``; table ``l`` holds layer
``l``'s output for every node.  Here a table is a ``.npy`` memmap in
``RUN/histories/`` (or an ordinary in-RAM array with the same interface, used as
the differential oracle and by the in-RAM benchmark).  Pushes are slice writes of
a batch's contiguous ranges; pulls gather halo rows.

:class:`HistorySet` owns the tables, the per-row last-push step (``int64[N]`` per
table: 8 bytes/row/table, the only O(N) state here), a write-behind thread, and a
short log of recent pushes.  The log is what makes prefetching exact: a reader
that gathered rows when ``landed_seq`` was ``s`` later re-reads exactly the rows
that pushes ``> s`` touched, from the pending values if that push has not landed
yet, else from the table (see :meth:`HistorySet.patch`).
"""
from __future__ import annotations

import collections
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from oocgnn.batching import Ranges, ranges_to_ids
from oocgnn.errors import OocgnnError
from oocgnn.io import RowFile, aligned_empty, file_region, rowfile_for
from oocgnn.store.npyfile import create_npy_memmap
from oocgnn.utils.mapped import register_mapped

log = logging.getLogger(__name__)

DTYPES = {"float16": np.float16, "float32": np.float32}


class HistoryTable:
    """One ``[N, H]`` table: ``pull(ids, out)`` gathers, ``push(ranges, values)`` writes.

    ``path=None`` keeps the table in RAM (same code path otherwise).  A new file has its
    data at byte 4096 (:func:`~oocgnn.store.npyfile.create_npy_memmap`); an existing
    one is opened at whatever offset its header says (older runs: 128).
    """

    def __init__(self, num_nodes: int, channels: int, dtype: str = "float32", path: str | Path | None = None) -> None:
        self.num_nodes, self.channels, self.dtype = int(num_nodes), int(channels), dtype
        self.path = Path(path) if path is not None else None
        npdt = DTYPES[dtype]
        if self.path is None:
            self.array = np.zeros((self.num_nodes, self.channels), dtype=npdt)
        else:
            shape = (self.num_nodes, self.channels)
            if self.path.exists():
                arr = np.load(self.path, mmap_mode="r+")
                if arr.shape != shape or arr.dtype != npdt:
                    raise ValueError(f"history table {self.path} has shape {arr.shape} {arr.dtype}, expected {shape} {dtype}")
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                arr = create_npy_memmap(self.path, npdt, shape)  # data at 4 KiB: page-aligned rows
            self.array = register_mapped(arr)
        self._t = torch.from_numpy(np.asarray(self.array).view(self.array.dtype))
        self._range_rows: RowFile | None = None  #: opened on the first read_ranges
        self._range_buf: np.ndarray | None = None  #: aligned buffer of read_ranges, grown, reused
        self._range_lock = threading.Lock()
        self._write_fd: int | None = None  #: range writes (pwrite), opened on the first push
        self._data_offset = 0

    @property
    def row_bytes(self) -> int:
        return self.channels * self.array.dtype.itemsize

    def pull(self, ids: np.ndarray, out: torch.Tensor) -> torch.Tensor:
        """Gather rows ``ids`` into ``out[:len(ids)]`` (float32) and return that view."""
        n = len(ids)
        dst = out[:n]
        idx = torch.from_numpy(np.ascontiguousarray(ids, dtype=np.int64))
        if self._t.dtype == dst.dtype:
            torch.index_select(self._t, 0, idx, out=dst)
        else:
            dst.copy_(self._t.index_select(0, idx))
        return dst

    def read_ranges(self, ranges: Ranges, out: torch.Tensor) -> torch.Tensor:
        """Sequential read of contiguous ranges into ``out`` (float32).

        A file-backed table is read with buffered ``pread`` in 512 KiB requests
        (:meth:`oocgnn.io.RowFile.read_range`; the page cache it shares with the memmap
        writes keeps it coherent): slicing the memmap faulted one 4 KiB page at a time
        under ``MADV_RANDOM``, ~0.15 s for a batch's 10 MB of rows when cold, on the
        training thread (the push-drift metric reads every batch's rows).
        """
        o = 0
        for s, e in ranges:
            if e <= s:
                continue
            rows = self._range_file()
            if rows is None:
                out[o:o + e - s].copy_(self._t[s:e])
            else:
                with self._range_lock:
                    need = rows.range_bytes(s, e)
                    if self._range_buf is None or self._range_buf.nbytes < need:
                        self._range_buf = aligned_empty(need)
                    raw = rows.read_range(s, e, self._range_buf)
                    out[o:o + e - s].copy_(torch.from_numpy(raw.view(self.array.dtype)))
            o += e - s
        return out[:o]

    def _range_file(self) -> RowFile | None:
        """The table's file opened for range reads (buffered ``pread``), or None for RAM tables."""
        if self._range_rows is None and self.path is not None:
            self._range_rows = rowfile_for(self.array, "pread")
        return self._range_rows

    def write(self, ranges: Ranges | None, ids: np.ndarray | None, values: np.ndarray) -> None:
        """Write rows already converted to the table dtype (``pwrite`` of each range, scatter for ids).

        A file-backed table's ranges are written with ``pwrite``, not through the memmap:
        a memmap write maps every page it touches into RSS (a batch's rows, tens of MB, per
        push), which the memory plan had to reserve as mapped-page window.  ``pwrite`` goes
        to the same page cache that the memmap and the buffered range/row reads see.
        """
        if ranges is None:
            self.array[ids] = values
            return
        fd = self._writer_fd()
        o = 0
        for s, e in ranges:
            if e <= s:
                continue
            if fd is None:
                self.array[s:e] = values[o:o + e - s]
            else:
                _pwrite_all(fd, np.ascontiguousarray(values[o:o + e - s]), self._data_offset + s * self.row_bytes)
            o += e - s

    def _writer_fd(self) -> int | None:
        """Descriptor the range writes go through (opened once), or None for RAM tables."""
        if self.path is None:
            return None
        if self._write_fd is None:
            region = file_region(self.array)
            if region is None:
                return None
            self._write_fd = os.open(region[0], os.O_WRONLY)
            self._data_offset = region[1]
        return self._write_fd

    def flush(self) -> None:
        """Make every write durable: the memmap's (scatter writes) and the descriptor's (range writes)."""
        if isinstance(self.array, np.memmap):
            self.array.flush()
        if self._write_fd is not None:
            os.fsync(self._write_fd)

    def close_reader(self) -> None:
        """Close the range reader's and writer's descriptors and free the read buffer (reopened on demand)."""
        with self._range_lock:
            if self._range_rows is not None:
                self._range_rows.close()
            self._range_rows, self._range_buf = None, None
        if self._write_fd is not None:
            os.close(self._write_fd)
            self._write_fd = None


def _pwrite_all(fd: int, rows: np.ndarray, offset: int) -> None:
    view = memoryview(rows).cast("B")
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


@dataclass
class _Push:
    seq: int
    step: int
    tables: list[int]
    ranges: Ranges | None
    ids: np.ndarray | None      #: sorted ids the push covers (dropped once landed if ranges say it)
    starts: np.ndarray | None   #: range starts (sorted) when pushed by ranges
    ends: np.ndarray | None
    offsets: np.ndarray | None
    values: list[np.ndarray] | None  #: in table dtype; dropped once landed
    #: float32 host tensors a device copy is still filling (``ready`` says when), converted by :meth:`materialize`
    raw: list[torch.Tensor] | None = None
    ready: Any = None
    release: Callable[[], None] | None = None
    dtypes: list[Any] | None = None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def materialize(self) -> None:
        """Wait for the device copy of the values, convert them to the table dtype, free the copy's buffers.

        By the write-behind thread before landing, by :meth:`HistorySet.patch_rows`, and by
        the next push (by then the copy is long done); whichever comes first.
        """
        with self.lock:
            if self.raw is None:
                return
            if self.ready is not None:
                self.ready.synchronize()
            self.values = [r.numpy().astype(dt, copy=True) for r, dt in zip(self.raw, self.dtypes)]
            self.raw = self.ready = None
            if self.release is not None:
                self.release()
                self.release = None

    def landed(self) -> None:
        """Drop what only landing needed: the values, and the ids when the ranges locate rows (the
        push log keeps up to 4,096 pushes: an epoch's ids of every node, 400 MB at 50 M nodes)."""
        self.values = None
        if self.starts is not None:
            self.ids = None

    def locate(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mask of ``rows`` this push covers, their positions in ``values``)."""
        if self.starts is not None:
            if not len(self.starts):  # a batch of empty partitions pushes no rows
                return np.zeros(len(rows), dtype=bool), np.empty(0, dtype=np.int64)
            r = np.searchsorted(self.starts, rows, side="right") - 1
            rc = np.maximum(r, 0)
            hit = (r >= 0) & (rows < self.ends[rc])
            return hit, (self.offsets[rc] + rows - self.starts[rc])[hit]
        pos = np.searchsorted(self.ids, rows)
        posc = np.minimum(pos, len(self.ids) - 1)
        hit = (pos < len(self.ids)) & (self.ids[posc] == rows) if len(self.ids) else np.zeros(len(rows), bool)
        return hit, posc[hit]


class HistorySet:
    """The L-1 tables of one run plus write-behind and read-after-write bookkeeping."""

    def __init__(self, num_nodes: int, channels: list[int], dtype: str = "float32", directory: str | Path | None = None,
                 prefix: str = "layer", max_pending: int = 4, log_len: int = 4096, track_steps: bool = True) -> None:
        self.tables = [HistoryTable(num_nodes, c, dtype, None if directory is None else Path(directory) / f"{prefix}_{i}.npy")
                       for i, c in enumerate(channels)]
        #: last-push step per row (8 bytes/row/table); evaluation's scratch tables need none (track_steps=False)
        self.track_steps = track_steps
        self.last_step = [np.full(num_nodes if track_steps else 0, -1, dtype=np.int64) for _ in channels]
        self.seq = 0            #: pushes enqueued so far
        self.landed_seq = 0     #: every push with seq <= landed_seq is in the tables
        self.bytes_written = 0
        self._log: collections.deque[_Push] = collections.deque(maxlen=log_len)
        self._pending: collections.deque[_Push] = collections.deque()
        self._cv = threading.Condition()
        self._max_pending = max_pending
        self._writer: threading.Thread | None = None
        self._error: BaseException | None = None
        self._closing = False
        #: undo journal of first overwrites since the last checkpoint, set by
        #: oocgnn.checkpoint.RunSession; called around every land, on the writer thread
        self.journal = None
        #: per-table row caches (oocgnn.cache.HistoryCache or None), refreshed by every land
        self.caches: list = [None] * len(self.tables)
        #: durable last-push steps that other ranks write too (several ranks sharing the tables; set by
        #: the checkpoint session): ages then count other ranks' landed pushes, not only this rank's
        self.landed_steps: list[np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.tables)

    # ------------------------------------------------------------------ pushes
    def push(self, values: list[torch.Tensor], step: int, ranges: Ranges | None = None, ids: np.ndarray | None = None,
             tables: list[int] | None = None, sync: bool = False, ready: Any = None,
             release: Callable[[], None] | None = None) -> int:
        """Enqueue a push of ``values[k]`` to ``tables[k]`` (default: all) and return its seq.

        ``ranges`` (partition-contiguous, sorted) or sorted ``ids`` say which rows.
        The write lands in a background thread unless ``sync``.  ``ready``: an event (with
        ``synchronize()``) of the device copy still filling ``values`` (float32 host tensors);
        they are read only after it, on the write-behind thread or when a read needs them,
        and ``release()`` is called once they are (their buffers may then be reused).
        """
        tables = list(range(len(self.tables))) if tables is None else tables
        dtypes = [self.tables[t].array.dtype for t in tables]
        if ready is None and release is None:
            conv = [v.detach().to("cpu", torch.float32).numpy().astype(dt, copy=True) for v, dt in zip(values, dtypes)]
        else:
            conv = None
        if ranges is not None:
            row_ids = ranges_to_ids(ranges)
            starts = np.array([s for s, _ in ranges], np.int64)
            ends = np.array([e for _, e in ranges], np.int64)
            offsets = np.concatenate(([0], np.cumsum(ends - starts)[:-1])).astype(np.int64)
        else:
            row_ids = np.asarray(ids, dtype=np.int64)
            starts = ends = offsets = None
        for t in tables if self.track_steps else ():
            self.last_step[t][row_ids] = step
        with self._cv:
            self._raise_error()
            self.seq += 1
            p = _Push(self.seq, step, tables, ranges, row_ids, starts, ends, offsets, conv)
            if conv is None:
                p.raw, p.ready, p.release, p.dtypes = list(values), ready, release, dtypes
            for q in self._pending:  # earlier pushes' copies are done by now: convert them, free their buffers
                q.materialize()
            self._log.append(p)
            if sync:
                self.flush_locked()
                self._land(p)
                p.landed()
                self.landed_seq = p.seq
                return p.seq
            while len(self._pending) >= self._max_pending:
                self._cv.wait(0.1)
                self._raise_error()
            self._pending.append(p)
            self._ensure_writer()
            self._cv.notify_all()
            return p.seq

    def _land(self, p: _Push) -> None:
        p.materialize()
        if self.journal is not None:
            self.journal.before_land(p.tables, p.ids)
        for t, v in zip(p.tables, p.values):
            self.tables[t].write(p.ranges, p.ids if p.ranges is None else None, v)
            self.bytes_written += v.nbytes
            if self.caches[t] is not None:  # before landed_seq moves: coherent for any later snapshot
                self.caches[t].on_land(p.ids, v)
        if self.journal is not None:
            self.journal.after_land(p.tables, p.ids, p.step)

    def _ensure_writer(self) -> None:
        if self._writer is None:
            self._closing = False
            self._writer = threading.Thread(target=self._write_loop, name="oocgnn-history-writer", daemon=True)
            self._writer.start()

    def _write_loop(self) -> None:
        while True:
            with self._cv:
                while not self._pending and not self._closing:
                    self._cv.wait()
                if not self._pending:
                    return
                p = self._pending[0]
            try:
                self._land(p)
            except BaseException as exc:  # surfaced in the trainer by _raise_error
                with self._cv:
                    self._error = exc
                    self._cv.notify_all()
                return
            with self._cv:
                self._pending.popleft()
                p.landed()
                self.landed_seq = p.seq
                self._cv.notify_all()

    def _raise_error(self) -> None:
        if self._error is not None:
            if isinstance(self._error, OocgnnError):  # e.g. DiskFullError from the journal: one line
                raise self._error
            raise RuntimeError("history writer thread failed") from self._error

    def flush(self) -> None:
        """Wait until every enqueued push has landed."""
        with self._cv:
            while self._pending:
                self._raise_error()
                self._cv.wait(0.1)
            self._raise_error()
            self.landed_seq = self.seq

    def close(self) -> None:
        self.flush()
        with self._cv:
            self._closing = True
            self._cv.notify_all()
        if self._writer is not None:
            self._writer.join()
            self._writer = None
        for t in self.tables:
            t.flush()
            t.close_reader()

    # ------------------------------------------------------------------ pulls
    def snapshot_seq(self) -> int:
        """Seq to record *before* gathering rows that :meth:`patch` will fix up later."""
        with self._cv:
            return self.landed_seq

    def patch(self, table: int, ids: np.ndarray, out: torch.Tensor, snap_seq: int, bound: int = 0) -> dict[str, int]:
        """Make rows gathered at ``snap_seq`` as fresh as the staleness bound asks (see :meth:`patch_rows`).

        Returns counters of what was actually read.
        """
        rows, values, stats = self.patch_rows(table, ids, snap_seq, bound)
        if len(rows):
            out[torch.from_numpy(rows)] = values
        return stats

    def patch_rows(self, table: int, ids: np.ndarray, snap_seq: int,
                   bound: int = 0) -> tuple[np.ndarray, torch.Tensor | None, dict[str, int]]:
        """Which of the rows ``ids`` gathered at ``snap_seq`` changed since, and their values now.

        Rows touched by pushes after ``snap_seq`` are re-read (pending values, else the
        table), except that pushes among the last ``bound`` ones may be missed.  Returns
        ``(positions in ids, float32 values [len, channels], counters)``: the caller writes
        them where the gathered rows are (the staging buffer, or a copy on the device).
        """
        stats = {"patched_pending": 0, "patched_table": 0, "stale_rows": 0}
        none = np.empty(0, dtype=np.int64)
        if snap_seq >= self.seq or len(ids) == 0:
            return none, None, stats
        width = self.tables[table].channels
        with self._cv:
            entries = [p for p in self._log if p.seq > snap_seq and table in p.tables]
            if self._log and self._log[0].seq > snap_seq + 1:
                log.warning("push log too short for a prefetch snapshot; re-reading %d rows", len(ids))
                self.flush_locked()
                values = torch.empty(len(ids), width, dtype=torch.float32)
                self.tables[table].pull(ids, values)
                return np.arange(len(ids), dtype=np.int64), values, stats
            for p in entries:
                p.materialize()
            snapshot_values = [(p, None if p.values is None else p.values[p.tables.index(table)]) for p in entries]
        source = np.full(len(ids), -1, dtype=np.int64)  # -1: unchanged, -2: the table, k: pending values k
        at = np.zeros(len(ids), dtype=np.int64)
        pending: list[np.ndarray] = []
        for p, vals in snapshot_values:
            hit, pos = p.locate(ids)
            if not hit.any():
                continue
            if p.seq > self.seq - bound:
                stats["stale_rows"] += int(hit.sum())
                continue
            where = np.flatnonzero(hit)
            if vals is not None:  # a later push's values replace an earlier one's
                source[where], at[where] = len(pending), pos
                pending.append(vals)
                stats["patched_pending"] += len(where)
            else:  # landed: the table holds it (and anything that landed after it)
                source[where] = -2
        rows = np.flatnonzero(source != -1)
        if not len(rows):
            return none, None, stats
        values = torch.empty(len(rows), width, dtype=torch.float32)
        src = source[rows]
        from_table = np.flatnonzero(src == -2)
        if len(from_table):
            tmp = torch.empty(len(from_table), width, dtype=torch.float32)
            self.tables[table].pull(ids[rows[from_table]], tmp)
            values[torch.from_numpy(from_table)] = tmp
            stats["patched_table"] = len(from_table)
        for k, vals in enumerate(pending):
            sel = np.flatnonzero(src == k)
            if len(sel):
                values[torch.from_numpy(sel)] = torch.from_numpy(vals[at[rows[sel]]]).to(torch.float32)
        return rows, values, stats

    def flush_locked(self) -> None:
        while self._pending:
            self._cv.wait(0.1)
            self._raise_error()

    def age(self, table: int, ids: np.ndarray, step: int) -> np.ndarray:
        """Steps since each row was last pushed (-1 = never written)."""
        last = self.last_step[table][ids]
        if self.landed_steps is not None:
            last = np.maximum(last, self.landed_steps[table][ids])
        return np.where(last < 0, -1, step - last)
