"""Find the file region behind a numpy memmap, so loaders can open it for the engine.

Stores and history tables are ``.npy`` files opened with ``np.load(mmap_mode=...)``;
the loader receives those memmaps (or views of them).  The engine needs the file,
the byte offset of the first row and the row size instead: this module recovers them
from the memmap's base chain, and returns None for arrays that live in RAM (they are
gathered by ``index_select`` as before).
"""
from __future__ import annotations

import logging
import mmap
import threading

import numpy as np

from oocgnn.io.rowfile import RowFile

log = logging.getLogger(__name__)
_said_written = threading.Event()


def file_region(array: np.ndarray) -> tuple[str, int] | None:
    """``(path, byte offset of array[0])`` if ``array`` is a C-contiguous 2-D view of a file memmap."""
    if array.ndim != 2 or not array.flags.c_contiguous:
        return None
    a: object = array
    root = None
    while isinstance(a, np.ndarray):
        if isinstance(a, np.memmap) and isinstance(a.base, mmap.mmap):
            root = a  # created by np.memmap: its first byte is file offset root.offset
            break
        a = a.base
    if root is None or not getattr(root, "filename", None):
        return None
    return str(root.filename), int(root.offset) + (array.ctypes.data - root.ctypes.data)


def is_mapped(array: np.ndarray) -> bool:
    """True if ``array`` is (a view of) a memory-mapped file: reading it may fault pages in."""
    a: object = array
    while isinstance(a, np.ndarray):
        if isinstance(a, np.memmap) or isinstance(a.base, mmap.mmap):
            return True
        a = a.base
    return False


def rowfile_for(array: np.ndarray, engine: str, written: bool = False, **kw) -> RowFile | None:
    """A :class:`RowFile` over the rows of memmap ``array``; None for RAM arrays or ``engine="mmap"``.

    ``mmap`` keeps the caller's own memmap path (which also handles RAM arrays), so
    no second mapping is made.  ``written``: the file is written through a shared
    memmap while it is read (history tables).  Such files are read with buffered
    ``pread`` whatever the engine: ``O_DIRECT`` reads racing those writes made this
    machine's kernel (Linux 6.18, ext4) log "Direct I/O collision with buffered
    writes" and fail later reads of the file with EIO (the error is recorded on the
    mapping), while buffered reads share the memmap's page cache and are coherent by
    construction.  A read after the writes is fine (``tests/test_gather.py``); the race
    during training is not.
    """
    if engine == "mmap":
        return None
    if written and engine in ("auto", "direct"):
        if not _said_written.is_set():
            _said_written.set()
            log.info("history tables are read with buffered pread (O_DIRECT races their memmap writes)")
        engine = "pread"
    region = file_region(array)
    if region is None:
        return None
    path, offset = region
    return RowFile(path, offset, array.shape[1] * array.dtype.itemsize, array.shape[0], engine, **kw)
