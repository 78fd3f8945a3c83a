"""Write large ``.npy`` files sequentially without knowing their length up front.

The CSR ``indices`` length is only known after de-duplication, and we never want
to copy a 13 GB array just to prepend a header.  So we reserve a fixed-size
header, stream the data after it, and rewrite the header with the final shape
(padded with spaces to the same length, which every ``.npy`` reader accepts).
Files are written under a temporary name and renamed by :meth:`NpyWriter.close`.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from oocgnn.errors import translate_os_error
from oocgnn.store.checksum import Crc32

_HEADER_LEN = 128  # bytes; fits any shape of up to 3 dims with 20-digit sizes


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
