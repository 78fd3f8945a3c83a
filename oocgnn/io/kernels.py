"""The nogil numba kernels of the row-gather engine: plan pages, read them, copy rows out.

Why numba and libc ``pread``: a random row gather is one 4 KiB read per row, and the
disk needs >= 64 of them in flight to reach its IOPS.  Python-level ``os.pread`` costs
~13 us of CPU per read (GIL, bytes objects); a nopython loop calling libc ``pread``
with the GIL released costs the syscall alone, reads straight into an aligned numpy
buffer (so it works with ``O_DIRECT``), and lets a pool of plain threads keep the
queue full.  libc symbols are bound with ``types.ExternalFunction`` (resolved from the
process, no ctypes pointer baked in), which keeps ``cache=True`` working: the kernels
compile once per machine, not once per process.
"""
from __future__ import annotations

import numba
import numpy as np
from numba import njit, types

#: ``ssize_t pread(int fd, void *buf, size_t count, off_t offset)``
_pread = types.ExternalFunction("pread", types.intp(types.intc, types.voidptr, types.uintp, types.int64))
#: glibc's thread-local errno
_errno_location = types.ExternalFunction("__errno_location", types.CPointer(types.intc)())

PAGE = 4096
EINTR = 4


@njit(nogil=True, cache=True)
def plan_pages(offs: np.ndarray, row_bytes: int, pages: np.ndarray, pos: np.ndarray) -> int:
    """Distinct 4 KiB pages that rows at sorted byte offsets ``offs`` touch, in file order.

    Writes the page numbers to ``pages`` (returns how many) and, for each row, the byte
    position of its first byte in a buffer holding those pages back to back (``pos``).
    A row spanning pages ``p..q`` finds them adjacent in the buffer, because every page
    in ``p..q`` is listed and the list is sorted and unique.
    """
    n = 0
    last = -1
    for j in range(offs.shape[0]):
        off = offs[j]
        fp = off // PAGE
        lp = (off + row_bytes - 1) // PAGE
        if fp > last:  # a new first page: everything from fp on is new
            slot = n
            for p in range(fp, lp + 1):
                pages[n] = p
                n += 1
        else:  # fp..last are the previous row's pages, listed consecutively
            slot = n - 1 - (last - fp)
            for p in range(last + 1, lp + 1):
                pages[n] = p
                n += 1
        if lp > last:
            last = lp
        pos[j] = slot * PAGE + off % PAGE
    return n


@njit(nogil=True, cache=True)
def plan_runs(pages: np.ndarray, n_pages: int, max_run: int, run_page: np.ndarray, run_slot: np.ndarray,
              run_len: np.ndarray) -> int:
    """Merge consecutive pages into reads of at most ``max_run`` pages; returns the number of reads."""
    r = 0
    i = 0
    while i < n_pages:
        j = i + 1
        while j < n_pages and j - i < max_run and pages[j] == pages[j - 1] + 1:
            j += 1
        run_page[r] = pages[i]
        run_slot[r] = i
        run_len[r] = j - i
        r += 1
        i = j
    return r


@njit(nogil=True, cache=True)
def read_runs(fd: int, buf: np.ndarray, run_page: np.ndarray, run_slot: np.ndarray, run_len: np.ndarray,
              n_runs: int, first: int, step: int, data_end: int, err: np.ndarray) -> int:
    """Read runs ``first, first + step, ...`` into ``buf`` (GIL released); 0, or -1 with ``err`` set.

    Each run asks for whole pages (``O_DIRECT`` needs aligned lengths) and must return
    every byte up to ``data_end`` (the end of the table's data): less is a short read,
    the file is shorter than its header says.  ``err`` gets (run, errno or -1 for a
    short read, bytes read, bytes expected).
    """
    base = buf.ctypes.data
    for k in range(first, n_runs, step):
        off = run_page[k] * PAGE
        want = run_len[k] * PAGE
        expect = min(want, data_end - off)
        done = 0
        while done < expect:
            r = _pread(fd, base + run_slot[k] * PAGE + done, want - done, off + done)
            if r < 0:
                e = numba.carray(_errno_location(), 1)[0]
                if e == EINTR:
                    continue
                err[0], err[1], err[2], err[3] = k, e, done, expect
                return -1
            if r == 0:
                break
            done += r
        if done < expect:
            err[0], err[1], err[2], err[3] = k, -1, done, expect
            return -1
    return 0


@njit(nogil=True, cache=True)
def copy_rows(buf: np.ndarray, pos: np.ndarray, dest: np.ndarray, out: np.ndarray) -> None:
    """``out[dest[j]] = buf[pos[j] : pos[j] + row_bytes]`` (``out`` is ``uint8[n, row_bytes]``)."""
    rb = out.shape[1]
    for j in range(pos.shape[0]):
        p = pos[j]
        o = dest[j]
        for b in range(rb):
            out[o, b] = buf[p + b]
