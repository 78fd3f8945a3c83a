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

import os
from pathlib import Path

import numpy as np

from oocgnn.errors import translate_os_error
from oocgnn.store.checksum import Crc32

#: bytes before the first data byte of files written from now on: one 4 KiB page
DATA_ALIGN = 4096
_HEADER_LEN = DATA_ALIGN  # any shape of up to 3 dims with 20-digit sizes fits in far less


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

    def __init__(self, path: str | Path, dtype, row_shape: tuple[int, ...] = ()) -> None:
        self.path = Path(path)
        self.dtype = np.dtype(dtype)
        self.row_shape = tuple(row_shape)
        self.rows = 0
        self.crc = Crc32()
        self.tmp = self.path.with_name(f".{self.path.name}.partial")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.tmp, "wb")
        self._f.write(b"\0" * _HEADER_LEN)

    def append(self, block: np.ndarray) -> None:
        block = np.ascontiguousarray(block, dtype=self.dtype)
        if block.shape[1:] != self.row_shape:
            raise ValueError(f"block rows of shape {block.shape[1:]} != {self.row_shape}")
        try:
            self._f.write(memoryview(block).cast("B"))
        except OSError as exc:
            raise translate_os_error(exc, self.path, "writing") from exc
        self.crc.update(block)
        self.rows += block.shape[0]

    def close(self) -> str:
        """Finalise header, fsync, rename into place; returns the data checksum."""
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

    def abort(self) -> None:
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
