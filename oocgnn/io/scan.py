"""Many rows of a table read in one ordered pass over the spans that hold them, at sequential bandwidth.

A random row costs a 4 KiB page read (the disk does ~50k of those a second); a page of
256-byte rows holds 16 of them. Once a set of rows touches a good share of a table's
pages, reading the spans that contain them in order, in large requests, is cheaper than
one random read per row: 1.5 GB/s sequential is ~370k pages a second. :func:`scan_rows`
does that: starting at the first wanted row it reads up to ``chunk_bytes`` of consecutive
rows, copies out the wanted ones, and starts the next read at the next wanted row, so
gaps longer than a chunk are skipped and shorter ones are read through.

Reads are buffered ``pread`` into one reused buffer (``POSIX_FADV_SEQUENTIAL``): nothing
is mapped, so RSS grows by the buffer and the output only, and rows pushed to a history
table through its memmap but not yet written back are seen. Bytes are copied unchanged,
so rows equal a numpy gather bitwise.
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator

import numpy as np

from oocgnn.errors import ReadError
from oocgnn.io.source import file_region

#: largest read of one span (one syscall; the kernel's read-ahead runs behind it)
SCAN_CHUNK_BYTES = 32 << 20


def scan_rows(array: np.ndarray, ids: np.ndarray, out: np.ndarray, chunk_bytes: int = SCAN_CHUNK_BYTES) -> int:
    """``out[:len(ids)] = array[ids]`` for sorted unique ``ids``, by ordered span reads; returns bytes read.

    ``array``: a 2-D C-ordered file memmap (or a view of one); arrays without a file
    behind them are indexed directly (0 bytes read). ``out`` has ``array``'s dtype and
    row width.
    """
    n = len(ids)
    if n == 0:
        return 0
    if len(ids) > 1 and not bool(np.all(ids[1:] > ids[:-1])):
        raise ValueError("scan_rows needs sorted unique ids")
    if ids[0] < 0 or ids[-1] >= array.shape[0]:
        raise IndexError(f"row ids {int(ids[0])}..{int(ids[-1])} outside a table of {array.shape[0]} rows")
    region = file_region(array)
    if region is None:
        np.take(array, ids, axis=0, out=out[:n])
        return 0
    path, offset = region
    row_bytes = array.shape[1] * array.dtype.itemsize
    span_rows = max(1, chunk_bytes // row_bytes)
    buf = np.empty(span_rows * row_bytes, dtype=np.uint8)
    read = 0
    with open_sequential(path, offset, array.shape[0] * row_bytes) as fd:
        k = 0
        while k < n:
            first = int(ids[k])
            j = k + int(np.searchsorted(ids[k:min(n, k + span_rows)], first + span_rows, side="left"))
            last = int(ids[j - 1])
            nbytes = (last + 1 - first) * row_bytes
            read_exactly(fd, path, buf[:nbytes], offset + first * row_bytes, array.shape[0])
            rows = buf[:nbytes].view(array.dtype).reshape(last + 1 - first, array.shape[1])
            np.take(rows, ids[k:j] - first, axis=0, out=out[k:j])
            read += nbytes
            k = j
    return read


@contextlib.contextmanager
def open_sequential(path: str, offset: int, nbytes: int) -> Iterator[int]:
    """A read-only descriptor of ``path`` advised for a sequential read of ``nbytes`` from ``offset``."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise ReadError(f"cannot open {path} for reading: {exc.strerror}; check the path and its permissions") from exc
    try:
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fd, offset, nbytes, os.POSIX_FADV_SEQUENTIAL)
        yield fd
    finally:
        os.close(fd)


def read_exactly(fd: int, path: str, dst: np.ndarray, pos: int, nrows: int) -> None:
    """Fill ``dst`` (bytes) from offset ``pos`` of open file ``path`` holding ``nrows`` rows.

    A short read or an I/O error is one line naming the file (shared by every buffered
    sequential read of a table: this module and :func:`oocgnn.train.stream.load_table`).
    """
    done = 0
    while done < len(dst):
        try:
            got = os.preadv(fd, [memoryview(dst[done:])], pos + done)
        except OSError as exc:
            raise ReadError(f"reading {path} failed at offset {pos + done}: {exc.strerror}; check the disk (dmesg) "
                            f"and restore the file") from exc
        if got == 0:
            raise ReadError(f"short read of {path} at offset {pos + done} (the file ends before its {nrows} rows: "
                            f"truncated? restore or re-create it)")
        done += got
