"""Write large ``.npy`` files sequentially without knowing their length up front.

The CSR ``indices`` length is only known after de-duplication, and we never want
to copy a 13 GB array just to prepend a header.  So we reserve a fixed-size
header, stream the data after it, and rewrite the header with the final shape
(padded with spaces to the same length, which every ``.npy`` reader accepts).
Files are written under a temporary name and renamed by :meth:`NpyWriter.close`.

The header is :data:`DATA_ALIGN` (4096) bytes, so the data starts on a page: a row's
4 KiB pages are the file's pages and ``O_DIRECT`` reads of the row-gather engine
(:mod:`oocgnn.io`) start on the data instead of straddling the header.  ``np.load``
reads such files as any other (a v1.0 header may be up to 65,535 bytes, and numpy's
``max_header_size`` safety limit is 10,000).  Files written before this, with the
128-byte header numpy itself writes, keep working: readers take the offset from the
header.  :func:`create_npy_memmap` makes a new writable table with the same layout
(history tables).
"""
from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np

from oocgnn.errors import translate_os_error
from oocgnn.store.checksum import Crc32

#: bytes before the first data byte of files written from now on: one 4 KiB page
DATA_ALIGN = 4096
_HEADER_LEN = DATA_ALIGN  # any shape of up to 3 dims with 20-digit sizes fits in far less
#: Smallest block :class:`NpyWriter` writes with ``O_DIRECT`` (smaller ones are not worth a flush).
DIRECT_MIN_BYTES = 1 << 20


def npy_header(shape: tuple[int, ...], dtype: np.dtype, total_len: int = _HEADER_LEN) -> bytes:
    """A version-1.0 ``.npy`` header for a C-ordered array, padded to ``total_len`` bytes."""
    d = "{'descr': %r, 'fortran_order': False, 'shape': %r, }" % (
        np.lib.format.dtype_to_descr(np.dtype(dtype)), tuple(int(s) for s in shape))
    body_len = total_len - 10  # magic(6) + version(2) + uint16 length(2)
    d = d.ljust(body_len - 1) + "\n"
    if len(d) != body_len:
        raise ValueError(f"npy header for shape {shape} does not fit in {total_len} bytes")
    return b"\x93NUMPY\x01\x00" + body_len.to_bytes(2, "little") + d.encode("latin1")


class NpyWriter:
    """Append row blocks to a new ``.npy`` file; shape[0] is fixed at close.

    >>> import tempfile; p = Path(tempfile.mkdtemp()) / "a.npy"
    >>> w = NpyWriter(p, np.int32, row_shape=()); w.append(np.arange(5, dtype=np.int32)); _ = w.close()
    >>> np.load(p).tolist()
    [0, 1, 2, 3, 4]
    """

    def __init__(self, path: str | Path, dtype, row_shape: tuple[int, ...] = (), *, direct: bool = False) -> None:
        """``direct``: write page-aligned blocks of at least :data:`DIRECT_MIN_BYTES` with
        ``O_DIRECT``, past the page cache (see :mod:`oocgnn.utils.buffers`); other bytes,
        and every byte where the filesystem refuses ``O_DIRECT``, go through it as usual."""
        self.path = Path(path)
        self.dtype = np.dtype(dtype)
        self.row_shape = tuple(row_shape)
        self.rows = 0
        self.crc = Crc32()
        self.direct_bytes = 0  #: data bytes written with O_DIRECT
        self.tmp = self.path.with_name(f".{self.path.name}.partial")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.tmp, "wb")
        self._f.write(b"\0" * _HEADER_LEN)
        self._offset = _HEADER_LEN
        self._direct_fd: int | None = None
        if direct and hasattr(os, "O_DIRECT"):
            try:
                self._direct_fd = os.open(self.tmp, os.O_WRONLY | os.O_DIRECT)
            except OSError:  # tmpfs and some network filesystems: buffered writes only
                self._direct_fd = None

    def append(self, block: np.ndarray) -> None:
        block = np.ascontiguousarray(block, dtype=self.dtype)
        if block.shape[1:] != self.row_shape:
            raise ValueError(f"block rows of shape {block.shape[1:]} != {self.row_shape}")
        data = memoryview(block).cast("B")
        try:
            aligned = self._direct_prefix(block, len(data))
            if aligned:
                self._pwrite_direct(data[:aligned])
                self._f.seek(self._offset)  # buffered bytes still pending keep their own offsets
            if aligned < len(data):
                self._f.write(data[aligned:])
                self._offset += len(data) - aligned
        except OSError as exc:
            raise translate_os_error(exc, self.path, "writing") from exc
        self.crc.update(block)
        self.rows += block.shape[0]

    def _direct_prefix(self, block: np.ndarray, nbytes: int) -> int:
        """Bytes of ``block`` that may be written with O_DIRECT now (0 if none)."""
        if (self._direct_fd is None or nbytes < DIRECT_MIN_BYTES or self._offset % DATA_ALIGN
                or block.ctypes.data % DATA_ALIGN):
            return 0
        return nbytes - nbytes % DATA_ALIGN

    def _pwrite_direct(self, data: memoryview) -> None:
        done = 0
        while done < len(data):
            try:
                done += os.pwrite(self._direct_fd, data[done:], self._offset + done)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                os.close(self._direct_fd)  # refused after all: the rest goes through the page cache
                self._direct_fd = None
                self._f.seek(self._offset + done)
                self._f.write(data[done:])
                break
        self.direct_bytes += done
        self._offset += len(data)

    def close(self) -> str:
        """Finalise header, fsync, rename into place; returns the data checksum."""
        self._close_direct()
        try:
            self._f.seek(0)
            self._f.write(npy_header((self.rows, *self.row_shape), self.dtype))
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()
            os.replace(self.tmp, self.path)
        except OSError as exc:
            raise translate_os_error(exc, self.path, "writing") from exc
        return self.crc.hexdigest()

    def _close_direct(self) -> None:
        if self._direct_fd is not None:
            os.close(self._direct_fd)
            self._direct_fd = None

    def abort(self) -> None:
        self._close_direct()
        if not self._f.closed:
            self._f.close()
        self.tmp.unlink(missing_ok=True)


def create_npy_memmap(path: str | Path, dtype, shape: tuple[int, ...]) -> np.memmap:
    """A new zero-filled ``.npy`` file opened as a writable memmap, data at byte :data:`DATA_ALIGN`.

    Replaces ``np.lib.format.open_memmap(mode="w+")``, whose header is 128 bytes.
    The file is sized with ``truncate`` (sparse: nothing is written but the header).
    """
    path = Path(path)
    dtype = np.dtype(dtype)
    shape = tuple(int(s) for s in shape)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    try:
        with open(path, "wb") as f:
            f.write(npy_header(shape, dtype))
            f.truncate(_HEADER_LEN + nbytes)
    except OSError as exc:
        raise translate_os_error(exc, path, "writing") from exc
    return np.load(path, mmap_mode="r+")


def npy_data_offset(path: str | Path) -> int:
    """Byte offset of the data in ``.npy`` file ``path`` (128 for numpy's own, 4096 for ours)."""
    with open(path, "rb") as f:
        major, _ = np.lib.format.read_magic(f)
        if major == 1:
            np.lib.format.read_array_header_1_0(f)
        else:
            np.lib.format.read_array_header_2_0(f)
        return f.tell()
