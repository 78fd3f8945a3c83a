"""Gather rows of a raw row-major table in a file: sorted page reads, no page faults.

:class:`RowFile` is one table (a file, the byte offset of its data, bytes per row,
rows) opened for an engine:

- ``direct``: ``O_DIRECT`` reads of the 4 KiB pages the rows need into an aligned
  buffer.  Nothing is mapped and nothing enters the page cache, so RSS is the
  process's own buffers and the disk sees exactly one read per distinct page.
  Submitted with Linux native AIO from one nogil loop when available
  (``transport="aio"``), else by the threads below (``transport="threads"``).
- ``pread``: the same kernel on a buffered descriptor (filesystems that refuse
  ``O_DIRECT``; warm data served from the page cache).
- ``mmap``: numpy fancy indexing of a memmap, the path before this engine.
- ``auto``: ``direct``, falling back to ``pread`` when ``open(O_DIRECT)`` or the first
  aligned read is refused (tmpfs, some network filesystems), with one warning per
  filesystem.

A gather sorts the rows by offset, walks them in chunks of at most ``chunk_pages``
pages (bounded buffer whatever the batch), reads each chunk's distinct pages, and
the gaps of at most ``max_gap`` unneeded pages between them (:data:`MAX_GAP_PAGES`), with
``queue_depth`` requests in flight (AIO: one nogil loop; threads: ``queue_depth``
threads each running the nogil ``pread`` kernel on a share of them), then copies
every row, possibly spanning two pages, to its place in ``out`` in the caller's
order, duplicates included.

Coherence with writers: a table written through a shared writable memmap is read
correctly by ``direct`` *after* the writes, because Linux writes back the dirty
page-cache pages of a range before an ``O_DIRECT`` read of it (tested in
``tests/test_gather.py``); reads *racing* such writes are not safe on Linux 6.18
(see :func:`oocgnn.io.source.rowfile_for`), so history tables use ``pread``.
"""
from __future__ import annotations

import errno as errno_mod
import logging
import mmap
import os
import platform
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from oocgnn.errors import ConfigError, ReadError
from oocgnn.io import kernels
from oocgnn.io.kernels import PAGE

log = logging.getLogger(__name__)

ENGINES = ("auto", "direct", "pread", "mmap")
#: reads in flight: the virtio disk here reaches its 4 KiB random-read ceiling at ~64
QUEUE_DEPTH = 64
#: pages per chunk (16 MiB buffer, charged by the memory plan): bounds memory whatever the
#: batch size, and is large enough that the tail of a chunk (the last reads, when fewer
#: than the queue depth are left) costs little: ~64 of >= 2,048 reads
CHUNK_PAGES = 4096
#: longest single read (pages) when pages are consecutive: dense or sequential ids, gaps read through;
#: 512 KiB requests read a dense halo ~15 % faster than 128 KiB here (1.2 vs 1.45 s for 130k rows of 1 GB)
MAX_RUN_PAGES = 128
#: unneeded pages read through between two needed ones.  A request costs ~18 us of the
#: device's 55k IOPS at 64 in flight, a 4 KiB page ~3 us of its ~1.4 GB/s: reading a gap
#: of up to 4 pages is cheaper than a second request.  Dense gathers (a halo touching half
#: of a table's pages) then run at the disk's bandwidth; sparse ones are unchanged.
MAX_GAP_PAGES = 4
#: the AIO kernel uses x86-64 syscall numbers; elsewhere direct reads use the threads
AIO_AVAILABLE = platform.machine() == "x86_64" and platform.system() == "Linux"

_warned_devices: set[int] = set()
_warn_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()
#: page buffers kept for reuse: the prefetcher gathers feature and history rows concurrently
KEPT_BUFFERS = 2
_free_buffers: list[np.ndarray] = []  # aligned page buffers reused across gathers (first touch is slow)
_buf_lock = threading.Lock()


def _open_direct(path: str) -> int:
    """``open(path, O_RDONLY | O_DIRECT)``; a seam where tests inject a refusal."""
    return os.open(path, os.O_RDONLY | os.O_DIRECT | getattr(os, "O_CLOEXEC", 0))


def _read_pool(workers: int) -> ThreadPoolExecutor:
    """One process-wide pool of reader threads (idle threads cost nothing but a stack)."""
    global _pool
    with _pool_lock:
        if _pool is None or _pool._max_workers < workers:  # noqa: SLF001 - grow by replacing
            old, _pool = _pool, ThreadPoolExecutor(workers, thread_name_prefix="oocgnn-read")
            if old is not None:
                old.shutdown(wait=False)
        return _pool


def buffer_bytes(rows: int, row_bytes: int, chunk_pages: int = CHUNK_PAGES) -> int:
    """Bytes of the page buffer one gather of ``rows`` rows takes (the memory plan charges it)."""
    span = (row_bytes + PAGE - 2) // PAGE + 1  # most pages one row touches
    return min(max(rows, 1), max(1, chunk_pages // span)) * span * PAGE


def aligned_empty(nbytes: int) -> np.ndarray:
    """A ``uint8`` buffer of ``nbytes`` whose address is a multiple of 4096 (``O_DIRECT``)."""
    raw = np.empty(nbytes + PAGE, dtype=np.uint8)
    start = (-raw.ctypes.data) % PAGE
    return raw[start:start + nbytes]


def _take_buffer(nbytes: int) -> np.ndarray:
    with _buf_lock:
        for i, b in enumerate(_free_buffers):
            if b.nbytes >= nbytes:
                return _free_buffers.pop(i)
    return aligned_empty(nbytes)


def _give_buffer(buf: np.ndarray) -> None:
    with _buf_lock:
        _free_buffers.append(buf)
        _free_buffers.sort(key=lambda b: b.nbytes)
        del _free_buffers[:-KEPT_BUFFERS]  # keep the largest: training runs two gathers at a time (features, histories)


def _warn_fallback(path: str, reason: str) -> None:
    try:
        dev = os.stat(path).st_dev
    except OSError:
        dev = -1
    with _warn_lock:
        if dev in _warned_devices:
            return
        _warned_devices.add(dev)
    log.warning("O_DIRECT refused for %s (%s): reading this filesystem with buffered pread (--io-engine pread) "
                "instead; said once per filesystem", path, reason)


def reset_fallback_warnings() -> None:
    """Forget which filesystems were warned about (tests)."""
    with _warn_lock:
        _warned_devices.clear()


class RowFile:
    """Rows ``[0, nrows)`` of ``row_bytes`` each, stored at byte ``data_offset`` of ``path``."""

    def __init__(self, path: str | Path, data_offset: int, row_bytes: int, nrows: int, engine: str = "auto",
                 queue_depth: int = QUEUE_DEPTH, chunk_pages: int = CHUNK_PAGES, transport: str = "auto",
                 max_gap: int = MAX_GAP_PAGES) -> None:
        if engine not in ENGINES:
            raise ConfigError(f"--io-engine {engine!r}: choose one of {', '.join(ENGINES)}")
        self.path = str(path)
        self.data_offset, self.row_bytes, self.nrows = int(data_offset), int(row_bytes), int(nrows)
        self.data_end = self.data_offset + self.row_bytes * self.nrows
        self.queue_depth, self.chunk_pages = max(1, int(queue_depth)), max(1, int(chunk_pages))
        self.max_gap = max(0, int(max_gap))  #: pages read through between needed ones (MAX_GAP_PAGES)
        self.fd = -1
        self._mm: np.memmap | None = None
        self.engine = self._open(engine)
        #: how direct reads are kept in flight: "aio" (one thread) or "threads" (queue_depth threads in pread)
        self.transport = "aio" if self.engine == "direct" and transport in ("auto", "aio") and AIO_AVAILABLE \
            else "threads"
        self._aio = [0]  #: the AIO context (0 = none yet), in a list the finalizer shares
        self._aio_lock = threading.Lock()  # one caller per context
        self._closer = weakref.finalize(self, RowFile._release, self.fd, self._aio)

    # ------------------------------------------------------------------ opening
    def _open(self, engine: str) -> str:
        if engine == "mmap":
            if self.nrows:
                self._mm = np.memmap(self.path, np.uint8, "r", self.data_offset, (self.nrows, self.row_bytes))
                self._mm._mmap.madvise(mmap.MADV_RANDOM)  # a row gather must not read ahead the file
            return "mmap"
        if engine in ("direct", "auto"):
            reason = self._try_direct()
            if reason is None:
                return "direct"
            if engine == "direct":
                raise ConfigError(f"--io-engine direct: O_DIRECT is refused for {self.path} ({reason}); "
                                  f"use --io-engine auto or pread")
            _warn_fallback(self.path, reason)
        try:
            self.fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            raise ReadError(f"cannot open {self.path} for reading: {exc.strerror}; check the path and "
                            f"its permissions") from exc
        if hasattr(os, "posix_fadvise"):  # no read-ahead around each page: this descriptor reads at random
            os.posix_fadvise(self.fd, 0, 0, os.POSIX_FADV_RANDOM)
        return "pread"

    def _try_direct(self) -> str | None:
        """Open with ``O_DIRECT`` and read the first page; None if both worked, else why not."""
        try:
            fd = _open_direct(self.path)
        except OSError as exc:
            if exc.errno in (errno_mod.EINVAL, errno_mod.EOPNOTSUPP, errno_mod.ENOTSUP):
                return f"open: {exc.strerror}"
            raise ReadError(f"cannot open {self.path} for reading: {exc.strerror}; check the path and "
                            f"its permissions") from exc
        if self.data_end > 0:
            buf = _take_buffer(PAGE)
            err = np.zeros(4, np.int64)
            one = np.zeros(1, np.int64)
            try:
                r = kernels.read_runs(fd, buf, one, one, np.ones(1, np.int64), 1, 0, 1, min(self.data_end, PAGE), err)
            finally:
                _give_buffer(buf)
            if r != 0 and err[1] == errno_mod.EINVAL:
                os.close(fd)
                return "first aligned read: Invalid argument"
            if r != 0:
                os.close(fd)
                self._raise(err, 0)
        self.fd = fd
        return None

    @staticmethod
    def _release(fd: int, aio: list[int]) -> None:
        if aio[0] > 0:
            kernels.aio_destroy(aio[0])
            aio[0] = 0
        if fd >= 0:
            try:
                os.close(fd)
            except OSError:
                pass

    def close(self) -> None:
        """Close the descriptor (also done when the object is collected)."""
        with self._aio_lock:
            self._closer()
        self.fd = -1
        self._mm = None

    def __enter__(self) -> "RowFile":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ gather
    def gather(self, ids: np.ndarray, out: np.ndarray) -> np.ndarray:
        """``out[i] = row ids[i]`` (raw bytes; ``out`` is C-contiguous, ``len(ids)`` rows of ``row_bytes``)."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        n = len(ids)
        if not np.asarray(out).flags.c_contiguous:  # reshape would copy, and the rows would land in the copy
            raise ValueError("gather_rows needs a C-contiguous out buffer")
        out8 = np.asarray(out).reshape(-1).view(np.uint8)
        if out8.nbytes < n * self.row_bytes:
            raise ValueError(f"out holds {out8.nbytes} bytes, {n} rows of {self.row_bytes} need {n * self.row_bytes}")
        out8 = out8[: n * self.row_bytes].reshape(n, self.row_bytes)
        if n == 0:
            return out
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= self.nrows:
            bad = lo if lo < 0 else hi
            raise ReadError(f"row {bad} is outside {self.path} ({self.nrows} rows): the file does not match "
                            f"the store or run that references it")
        if self.engine == "mmap":
            np.take(self._mm, ids, axis=0, out=out8)
            return out
        if n > 1 and bool(np.all(ids[1:] >= ids[:-1])):
            order, sids = np.arange(n, dtype=np.int64), ids
        else:
            order = np.argsort(ids, kind="stable")
            sids = ids[order]
        offs = sids * self.row_bytes + self.data_offset
        span = (self.row_bytes + PAGE - 2) // PAGE + 1  # most pages one row touches
        rows_per_chunk = max(1, self.chunk_pages // span)
        cap = buffer_bytes(n, self.row_bytes, self.chunk_pages) // PAGE
        buf = _take_buffer(cap * PAGE)
        try:
            pages, pos = np.empty(cap, np.int64), np.empty(min(n, rows_per_chunk), np.int64)
            run_page, run_slot, run_len = (np.empty(cap, np.int64) for _ in range(3))
            a = 0
            while a < n:  # chunks of at most cap pages (gaps read through count) and rows_per_chunk rows
                b = min(n, a + rows_per_chunk)
                packed = kernels.plan_pages_gaps(offs[:b], a, self.row_bytes, self.max_gap, cap, pages, pos)
                n_pages, b = packed >> 32, a + (packed & 0xFFFFFFFF)
                n_runs = kernels.plan_runs(pages, n_pages, MAX_RUN_PAGES, run_page, run_slot, run_len)
                self._read(buf, run_page, run_slot, run_len, n_runs)
                kernels.copy_rows(buf, pos[: b - a], order[a:b], out8)
                a = b
        finally:
            _give_buffer(buf)
        return out

    # ------------------------------------------------------------------ ranges
    def range_bytes(self, start: int, stop: int) -> int:
        """Bytes of the aligned buffer :meth:`read_range` needs for rows ``[start, stop)`` (whole pages)."""
        if stop <= start:
            return 0
        b0, b1 = self.data_offset + start * self.row_bytes, self.data_offset + stop * self.row_bytes
        return (-(-b1 // PAGE) - b0 // PAGE) * PAGE

    def read_range(self, start: int, stop: int, buf: np.ndarray) -> np.ndarray:
        """Rows ``[start, stop)`` as a ``(stop - start, row_bytes)`` uint8 view of ``buf``.

        Consecutive pages in requests of :data:`MAX_RUN_PAGES` pages, ``queue_depth`` in
        flight, straight into ``buf`` (page-aligned, :meth:`range_bytes` long, e.g. from
        :func:`aligned_empty`): no page faults, no copy.  A batch's CSR slices are read
        this way (:class:`oocgnn.io.csr.CSRReader`).
        """
        n = max(0, stop - start)
        if n and (start < 0 or stop > self.nrows):
            raise ReadError(f"rows [{start}, {stop}) are outside {self.path} ({self.nrows} rows): the file does not "
                            f"match the store or run that references it")
        need = self.range_bytes(start, stop)
        if buf.nbytes < need or buf.ctypes.data % PAGE:
            raise ValueError(f"read_range needs a page-aligned buffer of {need} bytes, got {buf.nbytes}")
        if n == 0:
            return buf[:0].reshape(0, self.row_bytes)
        b0 = self.data_offset + start * self.row_bytes
        skip = b0 % PAGE
        if self.engine == "mmap":
            view = buf[skip:skip + n * self.row_bytes].reshape(n, self.row_bytes)
            np.copyto(view, self._mm[start:stop])
            return view
        pages = need // PAGE
        n_runs = -(-pages // MAX_RUN_PAGES)
        run_slot = np.arange(n_runs, dtype=np.int64) * MAX_RUN_PAGES
        run_page = run_slot + b0 // PAGE
        run_len = np.minimum(MAX_RUN_PAGES, pages - run_slot)
        self._read(buf, run_page, run_slot, run_len, n_runs)
        return buf[skip:skip + n * self.row_bytes].reshape(n, self.row_bytes)

    def _read(self, buf: np.ndarray, run_page: np.ndarray, run_slot: np.ndarray, run_len: np.ndarray,
              n_runs: int) -> None:
        if self.transport == "aio":
            with self._aio_lock:
                if self._aio[0] == 0:
                    ctx = kernels.aio_setup(self.queue_depth)
                    if ctx > 0:
                        self._aio[0] = ctx
                    else:
                        log.info("Linux AIO refused (io_setup: %s): direct reads of %s use %d threads in pread",
                                 os.strerror(-ctx), self.path, self.queue_depth)
                        self.transport = "threads"
                if self._aio[0] > 0:
                    d = self.queue_depth
                    err = np.zeros(4, np.int64)
                    rc = kernels.aio_read_runs(self._aio[0], self.fd, buf, run_page, run_slot, run_len, n_runs, d,
                                               self.data_end, np.zeros((d, 8), np.int64), np.zeros(d, np.int64),
                                               np.zeros((d, 4), np.int64), np.zeros(d, np.int64), err)
                    if rc == -3:  # io_getevents failed; the kernel destroyed the context
                        self._aio[0] = 0
                    if rc != 0:
                        self._raise(err, int(run_page[err[0]]) * PAGE)
                    return
        threads = min(self.queue_depth, n_runs)
        errs = [np.zeros(4, np.int64) for _ in range(threads)]
        args = (buf, run_page, run_slot, run_len, n_runs)
        if threads <= 1:
            rcs = [kernels.read_runs(self.fd, *args, 0, 1, self.data_end, errs[0])]
        else:
            pool = _read_pool(self.queue_depth)
            futs = [pool.submit(kernels.read_runs, self.fd, *args, k, threads, self.data_end, errs[k])
                    for k in range(threads)]
            rcs = [f.result() for f in futs]
        for rc, err in zip(rcs, errs):
            if rc != 0:
                self._raise(err, int(run_page[err[0]]) * PAGE)

    def _raise(self, err: np.ndarray, offset: int) -> None:
        code, got, want = int(err[1]), int(err[2]), int(err[3])
        if code < 0:
            raise ReadError(f"short read of {self.path}: {got} of {want} bytes at offset {offset + got} "
                            f"(the file ends before its {self.nrows} rows of {self.row_bytes} bytes: truncated? "
                            f"restore or re-create it)")
        raise ReadError(f"reading {self.path} failed at offset {offset}: {os.strerror(code)} "
                        f"({errno_mod.errorcode.get(code, code)}); check the disk (dmesg) and restore the file",
                        ) from OSError(code, os.strerror(code), self.path)


def gather_rows(file: RowFile, ids: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``out[i] = file's row ids[i]`` through the file's engine; see :class:`RowFile`."""
    return file.gather(ids, out)
