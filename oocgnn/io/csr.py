"""A batch's rows of the CSR graph, read as ranges: no page faults on the graph.

A batch is a few contiguous ranges of store ids, so its rows of ``indptr`` and of
``indices`` are ranges too (about 26 MB per batch on the billion-edge store).  Read
through the store's memmaps they fault in one page at a time (the memmaps are
advised ``MADV_RANDOM``) and the mapped pages must then be released to bound RSS:
profiling a streamed inference sweep at 50 M nodes put ~1/5 of the CPU in those
faults and in the page releaser.  :class:`CSRReader` reads them with the row-gather
engine's range read (:meth:`oocgnn.io.rowfile.RowFile.read_range`: 512 KiB requests,
64 in flight, ``O_DIRECT`` where the filesystem allows) straight into page-aligned
buffers it keeps and grows.  Arrays in RAM (``--in-memory``, tests) and
``--io-engine mmap`` are sliced as before.
"""
from __future__ import annotations

import threading

import numpy as np

from oocgnn.errors import StoreError
from oocgnn.io.rowfile import RowFile, aligned_empty
from oocgnn.io.source import rowfile_for

#: ranges are a batch's partitions: (start, stop) store ids
Ranges = list[tuple[int, int]]


class CSRReader:
    """``indptr``/``indices`` rows of id ranges, read through ``engine`` (one caller at a time per buffer set)."""

    def __init__(self, indptr: np.ndarray, indices: np.ndarray, engine: str = "auto") -> None:
        self.indptr, self.indices = indptr, indices
        self._ptr_file = _column_file(indptr, engine)
        self._idx_file = _column_file(indices, engine)
        self._bufs: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()  # the buffers are reused: one read at a time

    @property
    def reads_files(self) -> bool:
        """True when ranges are read from the files (no page faults), not sliced from memmaps or RAM."""
        return self._ptr_file is not None and self._idx_file is not None

    def close(self) -> None:
        for f in (self._ptr_file, self._idx_file):
            if f is not None:
                f.close()
        self._bufs.clear()

    def slices(self, ranges: Ranges) -> tuple[np.ndarray, np.ndarray]:
        """``(counts, cols)``: neighbour counts (int64, one per row) and neighbours of the rows in ``ranges``.

        Rows in range order; ``cols`` has the dtype of ``indices`` and may be a view of
        this reader's buffer, valid until the next call.
        """
        with self._lock:
            ptrs = [self._range("ptr", self._ptr_file, self.indptr, s, e + 1, k).astype(np.int64)
                    for k, (s, e) in enumerate(ranges)]
            counts = np.concatenate([np.diff(p) for p in ptrs]) if ptrs else np.empty(0, np.int64)
            self._check_offsets(ptrs, counts, ranges)
            parts = [self._range("idx", self._idx_file, self.indices, int(p[0]), int(p[-1]), k)
                     for k, p in enumerate(ptrs)]
            cols = parts[0] if len(parts) == 1 else (np.concatenate(parts) if parts else np.empty(0, self.indices.dtype))
            self._check_ids(cols, ranges)
            return counts, cols

    # A damaged store must fail with one line, never reach the numba kernels that index
    # per-node arrays with these ids (an id past the node count was a SIGSEGV there).
    # Two vectorised passes over what was just read cost ~1 % of reading it.
    def _check_offsets(self, ptrs: list[np.ndarray], counts: np.ndarray, ranges: Ranges) -> None:
        total = len(self.indices)
        if any(int(p[0]) < 0 or int(p[-1]) > total for p in ptrs) or (counts.size and int(counts.min()) < 0):
            raise _damaged(self.indptr, f"row offsets of rows {_span(ranges)} are decreasing or outside [0, {total}]")

    def _check_ids(self, cols: np.ndarray, ranges: Ranges) -> None:
        n = len(self.indptr) - 1
        if cols.size and (int(cols.min()) < 0 or int(cols.max()) >= n):
            bad = int(cols[(cols < 0) | (cols >= n)][0])
            raise _damaged(self.indices, f"neighbour id {bad} of rows {_span(ranges)} is outside [0, {n})")

    def _range(self, kind: str, rf: RowFile | None, array: np.ndarray, start: int, stop: int, k: int) -> np.ndarray:
        if rf is None:
            return np.asarray(array[start:stop])
        key = f"{kind}{k}"
        need = rf.range_bytes(start, stop)
        buf = self._bufs.get(key)
        if buf is None or buf.nbytes < need:
            buf = self._bufs[key] = aligned_empty(int(need * 1.25) + 4096)  # grown rarely: partitions differ in size
        return rf.read_range(start, stop, buf).view(array.dtype).reshape(-1)


def _span(ranges: Ranges) -> str:
    return ", ".join(f"[{s}, {e})" for s, e in ranges)


def _damaged(array: np.ndarray, what: str) -> StoreError:
    name = getattr(array, "filename", None) or "the store's CSR"
    return StoreError(f"{name} is damaged: {what}; run `oocgnn inspect STORE --verify` and rebuild the store "
                      f"with `oocgnn prepare ... --overwrite`")


def _column_file(array: np.ndarray, engine: str) -> RowFile | None:
    """A RowFile over a 1-D memmap as rows of one element (None: RAM, ``mmap`` engine or empty)."""
    if array.ndim != 1 or len(array) == 0 or not array.flags.c_contiguous:
        return None
    return rowfile_for(array.reshape(-1, 1), engine)
