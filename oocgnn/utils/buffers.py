"""Large buffers that are cheap to touch for the first time.

Why: a fresh anonymous page costs a fault the first time it is written, and on
the virtual machines we measure on that fault is slow: filling a fresh 1 GB
numpy array took 2.6 s (400 MB/s), and scattering the first 64 MB block of rows
into a fresh 1 GB feature table 2.3 s, because random rows touch nearly every
4 KiB page.  Advised for transparent huge pages (``MADV_HUGEPAGE``; the kernel's
default mode on most distributions is ``madvise``) the same scatter took 0.06 s:
one fault per 2 MiB instead of 512.
"""
from __future__ import annotations

import mmap

import numpy as np

#: Below this a buffer is an ordinary numpy array (a huge page would be mostly empty).
HUGE_MIN_BYTES = 8 << 20


def empty_huge(shape: int | tuple[int, ...], dtype) -> np.ndarray:
    """Like ``np.empty``, backed by anonymous memory advised for huge pages when large.

    Falls back to ``np.empty`` where ``madvise(MADV_HUGEPAGE)`` is not available.
    The memory is returned to the system when the array (and every view) is gone.
    """
    dtype = np.dtype(dtype)
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    advice = getattr(mmap, "MADV_HUGEPAGE", None)
    if nbytes < HUGE_MIN_BYTES or advice is None:
        return np.empty(shape, dtype=dtype)
    buf = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        buf.madvise(advice)
    except OSError:  # a kernel without transparent huge pages: ordinary pages
        pass
    return np.frombuffer(buf, dtype=dtype, count=int(np.prod(shape, dtype=np.int64))).reshape(shape)
