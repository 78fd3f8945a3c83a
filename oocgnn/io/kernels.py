"""The nogil numba kernels of the row-gather engine: plan pages, read them, copy rows out.

Why numba and libc ``pread``: a random row gather is one 4 KiB read per row, and the
disk needs >= 64 of them in flight to reach its IOPS.  Python-level ``os.pread`` costs
~13 us of CPU per read (GIL, bytes objects); a nopython loop calling libc ``pread``
with the GIL released costs the syscall alone, reads straight into an aligned numpy
buffer (so it works with ``O_DIRECT``), and lets a pool of plain threads keep the
queue full.  libc symbols are bound with ``types.ExternalFunction`` (resolved from the
process, no ctypes pointer baked in), which keeps ``cache=True`` working: the kernels
compile once per machine, not once per process.

``direct`` files are read by :func:`aio_read_runs` when the kernel offers Linux
native AIO: one nogil loop keeps ``depth`` ``O_DIRECT`` reads in flight with
``io_submit``/``io_getevents`` (raw ``syscall``), so no thread sleeps and wakes per
read; it measured ~5 us of CPU per 4 KiB read here against ~11 us for 64 threads
in ``pread`` on the loaded box.  The threads kernel (:func:`read_runs`) remains for
buffered ``pread`` (buffered AIO is synchronous) and when ``io_setup`` is refused.
"""
from __future__ import annotations

import numba
import numpy as np
from numba import njit, types

#: ``ssize_t pread(int fd, void *buf, size_t count, off_t offset)``
_pread = types.ExternalFunction("pread", types.intp(types.intc, types.voidptr, types.uintp, types.int64))
#: glibc's thread-local errno
_errno_location = types.ExternalFunction("__errno_location", types.CPointer(types.intc)())
#: ``long syscall(long number, ...)``: glibc's assembly stub just moves registers, so a fixed
#: 6-argument prototype is safe for the AIO calls (which take at most 5)
_syscall = types.ExternalFunction("syscall", types.int64(types.int64, types.int64, types.int64, types.int64,
                                                          types.int64, types.int64))

PAGE = 4096
EINTR = 4
EAGAIN = 11
#: x86-64 syscall numbers (asm/unistd_64.h); other architectures use the threads kernel
SYS_IO_SETUP, SYS_IO_DESTROY, SYS_IO_GETEVENTS, SYS_IO_SUBMIT = 206, 207, 208, 209
IOCB_BYTES = 64  #: sizeof(struct iocb); read as int64[8]: data, key|rw_flags, opcode|prio|fd, buf, nbytes, offset, 0, flags|resfd


@njit(nogil=True, cache=True)
def plan_pages_gaps(offs: np.ndarray, start: int, row_bytes: int, max_gap: int, max_pages: int, pages: np.ndarray,
                    pos: np.ndarray) -> int:
    """Distinct 4 KiB pages that rows at sorted byte offsets ``offs[start:]`` touch, in file order,
    reading through gaps of at most ``max_gap`` pages.

    Writes the page numbers to ``pages`` and, for each row, the byte position of its first
    byte in a buffer holding those pages back to back (``pos``).  A row spanning pages
    ``p..q`` finds them adjacent in the buffer, because every page in ``p..q`` is listed and
    the list is sorted and unique.

    A gap of unneeded pages between two needed ones is listed (read) too when it is at
    most ``max_gap`` long: at high page density (a halo touching half the pages of a
    table) a gather then becomes long sequential reads at the disk's bandwidth instead
    of one IOPS-bound request per page or two.  Stops before the row that would take
    the list past ``max_pages``; writes ``pos`` for rows ``start..`` at ``pos[0..]`` and
    returns ``n_pages * 2**32 + rows planned`` (both fit: chunks are far below 2**31).
    """
    n = 0
    last = -1
    j = start
    while j < offs.shape[0]:
        off = offs[j]
        fp = off // PAGE
        lp = (off + row_bytes - 1) // PAGE
        if fp > last:
            gap = fp - last - 1 if last >= 0 else 0
            fill = gap if gap <= max_gap else 0
            if n + fill + (lp - fp + 1) > max_pages:
                break
            for p in range(fp - fill, fp):
                pages[n] = p
                n += 1
            slot = n
            for p in range(fp, lp + 1):
                pages[n] = p
                n += 1
        else:
            if n + (lp - last if lp > last else 0) > max_pages:
                break
            slot = n - 1 - (last - fp)
            for p in range(last + 1, lp + 1):
                pages[n] = p
                n += 1
        if lp > last:
            last = lp
        pos[j - start] = slot * PAGE + off % PAGE
        j += 1
    return n * 4294967296 + (j - start)


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
def aio_setup(depth: int) -> int:
    """A Linux AIO context for ``depth`` requests, or ``-errno``.

    Kept for the life of a file: ``io_destroy`` waits for an RCU grace period
    (tens of ms here), far too slow to pay per gather.
    """
    ctxbox = np.zeros(1, np.int64)
    r = _syscall(SYS_IO_SETUP, depth, np.int64(ctxbox.ctypes.data), 0, 0, 0)
    if r < 0:
        return -numba.carray(_errno_location(), 1)[0]
    return ctxbox[0]


@njit(nogil=True, cache=True)
def aio_destroy(ctx: int) -> None:
    """Release an AIO context (waits for, or cancels, whatever is still in flight)."""
    _syscall(SYS_IO_DESTROY, ctx, 0, 0, 0, 0)


@njit(nogil=True, cache=True)
def aio_read_runs(ctx: int, fd: int, buf: np.ndarray, run_page: np.ndarray, run_slot: np.ndarray,
                  run_len: np.ndarray, n_runs: int, depth: int, data_end: int, iocbs: np.ndarray, ptrs: np.ndarray,
                  events: np.ndarray, slot_run: np.ndarray, err: np.ndarray) -> int:
    """Read every run through AIO context ``ctx``, ``depth`` in flight, from this one thread (GIL released).

    Returns 0, or -1 with ``err`` as in :func:`read_runs`; every submitted read has
    completed when it returns (on errors too: the buffer may be reused at once).
    ``iocbs`` is ``int64[depth, 8]``, ``ptrs`` ``int64[depth]``, ``events``
    ``int64[depth, 4]`` and ``slot_run`` ``int64[depth]``: caller-owned scratch.
    One context serves one caller at a time.
    """
    base = np.int64(buf.ctypes.data)
    iocb_base = np.int64(iocbs.ctypes.data)
    free = np.arange(depth)
    nfree = depth
    next_run = 0
    done = 0
    rc = 0
    while done < next_run or (next_run < n_runs and rc == 0):
        n = 0
        while rc == 0 and nfree > 0 and next_run < n_runs:
            nfree -= 1
            k = free[nfree]
            run = next_run
            next_run += 1
            slot_run[k] = run
            iocbs[k, 0] = k
            iocbs[k, 1] = 0
            iocbs[k, 2] = np.int64(fd) << 32  # IOCB_CMD_PREAD = 0, priority 0
            iocbs[k, 3] = base + run_slot[run] * PAGE
            iocbs[k, 4] = run_len[run] * PAGE
            iocbs[k, 5] = run_page[run] * PAGE
            iocbs[k, 6] = 0
            iocbs[k, 7] = 0
            ptrs[n] = iocb_base + k * IOCB_BYTES
            n += 1
        if n > 0:
            s = _syscall(SYS_IO_SUBMIT, ctx, n, np.int64(ptrs.ctypes.data), 0, 0)
            if s < 0:
                s = 0
                e = numba.carray(_errno_location(), 1)[0]
                if e != EAGAIN or nfree + n == depth:  # EAGAIN with reads in flight: reap, then retry
                    err[0], err[1], err[2], err[3] = slot_run[int(ptrs[0] - iocb_base) // IOCB_BYTES], e, 0, 0
                    rc = -1
            for j in range(s, n):  # not submitted: give the slots and runs back
                k = (ptrs[j] - iocb_base) // IOCB_BYTES
                free[nfree] = k
                nfree += 1
            next_run -= n - s
        if nfree == depth:
            continue
        got = _syscall(SYS_IO_GETEVENTS, ctx, 1, depth, np.int64(events.ctypes.data), 0)
        if got < 0:
            e = numba.carray(_errno_location(), 1)[0]
            if e == EINTR:
                continue
            err[0], err[1], err[2], err[3] = 0, e, 0, 0
            aio_destroy(ctx)  # cannot reap: make sure nothing is still writing into buf
            return -3
        for i in range(got):
            k = events[i, 0]
            run = slot_run[k]
            res = events[i, 2]
            off = run_page[run] * PAGE
            expect = min(run_len[run] * PAGE, data_end - off)
            if rc == 0 and res < 0:
                err[0], err[1], err[2], err[3] = run, -res, 0, expect
                rc = -1
            elif rc == 0 and res < expect:
                err[0], err[1], err[2], err[3] = run, -1, res, expect
                rc = -1
            free[nfree] = k
            nfree += 1
        done += got
    return rc


@njit(nogil=True, cache=True)
def copy_rows(buf: np.ndarray, pos: np.ndarray, dest: np.ndarray, out: np.ndarray) -> None:
    """``out[dest[j]] = buf[pos[j] : pos[j] + row_bytes]`` (``out`` is ``uint8[n, row_bytes]``)."""
    rb = out.shape[1]
    for j in range(pos.shape[0]):
        p = pos[j]
        o = dest[j]
        for b in range(rb):
            out[o, b] = buf[p + b]
