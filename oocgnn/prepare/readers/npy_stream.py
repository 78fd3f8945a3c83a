"""Stream ``.npy`` arrays (plain files or members of an ``.npz``) in fixed-size blocks.

Why: OGB's papers100M ships ``np.savez_compressed`` archives (DEFLATE, zip64
extras), which cannot be memory-mapped and which ``np.load`` would decompress
whole (26 GB for ``edge_index``, 57 GB for ``node_feat``).  A member is inflated
as a stream in constant memory (:class:`~oocgnn.prepare.readers.inflate.ZipMemberReader`,
the fastest installed inflater), so each member is read once, sequentially, a
block at a time.  DEFLATE cannot seek, so we never seek backwards; sources that
need a member more than once spill it to a raw file first
(:mod:`oocgnn.prepare.readers.raw_spill`).

Memory order matters (``fortran_order`` in the header):

* ``(2, E)`` edge lists: C order stores all sources then all destinations, so we
  read them in lockstep through two handles on the same member (the second
  skips ``E * itemsize`` bytes once); F order is interleaved ``(src, dst)`` pairs.
* ``[N, F]`` matrices: C order streams rows directly; F order (column-major) is
  spilled once to a raw scratch file (:func:`spill_to_raw`) and row blocks are
  read from it through ``np.memmap(order='F')``.  A plain ``.npy`` on disk is
  memory-mapped directly, whatever its order.

Example: a member ``edge_index.npy`` of shape (2, 5) read in blocks of 2 edges
yields ``(src[0:2], dst[0:2])``, ``(src[2:4], dst[2:4])``, ``(src[4:5], dst[4:5])``.
"""
from __future__ import annotations

import contextlib
import logging
import os
import threading
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterator

import numpy as np

from oocgnn.errors import InputError, InputNotFoundError
from oocgnn.prepare.readers.inflate import ZipMemberReader, member_data_offset
from oocgnn.utils.atomic import atomic_output, atomic_write_json, read_json

log = logging.getLogger(__name__)

_COPY_BYTES = 4 << 20  #: bytes per copy when spilling a member (bounds transient buffers)


@dataclass(frozen=True)
class NpyMemberInfo:
    """Header of one ``.npy`` array: where its data start and how to interpret them."""

    shape: tuple[int, ...]
    dtype: np.dtype
    fortran_order: bool
    data_offset: int  #: bytes of magic + header before the first data byte
    label: str        #: "file member name" for error messages

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize


def _label(path: Path, member: str | None) -> str:
    return f"{path} member {member}" if member else str(path)


@contextlib.contextmanager
def _translated(label: str) -> Iterator[None]:
    """Turn decompression/parse failures into one-line :class:`InputError`s."""
    try:
        yield
    except InputError:
        raise
    except FileNotFoundError as exc:
        raise InputNotFoundError(f"{label} does not exist; download and extract the dataset first") from exc
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, OSError) as exc:
        raise InputError(
            f"{label} is corrupted or truncated ({type(exc).__name__}: {exc}); re-download or re-extract it"
        ) from exc


class NpyStream:
    """A sequential reader positioned at the first data byte of one ``.npy`` array.

    ``member=None`` reads a plain ``.npy`` file; otherwise the member of the zip
    archive ``path`` (``"edge_index"`` and ``"edge_index.npy"`` are both accepted).
    """

    def __init__(self, path: str | os.PathLike, member: str | None = None) -> None:
        self.path = Path(path)
        self.member = member
        self._zip: ZipMemberReader | None = None  #: set when reading a zip member
        self._fh: IO[bytes] | ZipMemberReader | None = None
        try:
            self._open(member)
        except BaseException:
            self.close()
            raise

    def _open(self, member: str | None) -> None:
        if member is not None and not member.endswith(".npy"):
            member = self.member = member + ".npy"
        label = _label(self.path, member)
        with _translated(label):
            if not self.path.is_file():
                raise InputNotFoundError(f"{self.path} does not exist; download and extract the dataset first")
            if member is None:
                self._fh = open(self.path, "rb")
                available = os.fstat(self._fh.fileno()).st_size
            else:
                with zipfile.ZipFile(self.path) as zf:  # the central directory only
                    try:
                        zinfo = zf.getinfo(member)
                    except KeyError:
                        raise InputError(
                            f"{self.path} has no member {member} (has: {', '.join(zf.namelist())}); "
                            f"re-download the dataset") from None
                self._fh = self._zip = ZipMemberReader(self.path, zinfo)
                available = zinfo.file_size
            version = np.lib.format.read_magic(self._fh)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(self._fh)
            else:  # 2.0 and 3.0 share the 4-byte length field
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(self._fh)
            offset = self._fh.tell()
        if dtype.hasobject:
            raise InputError(f"{label} holds Python objects, not numbers; re-download the dataset")
        self.info = NpyMemberInfo(tuple(int(s) for s in shape), np.dtype(dtype), bool(fortran), offset, label)
        self._pos = 0  # data bytes consumed
        if available < offset + self.info.nbytes:
            raise InputError(
                f"{label} is truncated (has {max(available - offset, 0)} of {self.info.nbytes} data bytes "
                f"for shape {self.info.shape} {self.info.dtype}); re-download or re-extract it")

    def _read_exact(self, nbytes: int) -> bytearray:
        buf = bytearray(nbytes)
        self.readinto_exact(buf)
        return buf

    def readinto_exact(self, buf) -> None:
        """Fill ``buf`` (a writable buffer, e.g. a numpy array) with the next ``len(buf)`` bytes."""
        view = memoryview(buf).cast("B")
        nbytes, got = len(view), 0
        with _translated(self.info.label):
            while got < nbytes:
                n = self._fh.readinto(view[got:])
                if not n:
                    raise InputError(
                        f"{self.info.label} is truncated (got {self._pos + got} of {self.info.nbytes} bytes); "
                        f"re-download or re-extract it")
                got += n
        self._pos += nbytes

    def read_elems(self, count: int) -> np.ndarray:
        """The next ``count`` elements in storage order, as a writable 1-D array."""
        return np.frombuffer(self._read_exact(count * self.info.dtype.itemsize), dtype=self.info.dtype)

    def skip_bytes(self, nbytes: int) -> None:
        """Advance ``nbytes``: a cheap seek on a file, read-and-discard in a zip member."""
        if self._zip is None:
            with _translated(self.info.label):
                self._fh.seek(nbytes, os.SEEK_CUR)
            self._pos += nbytes
            return
        with _translated(self.info.label):
            got = self._zip.skip(nbytes)
            self._pos += got
            if got < nbytes:
                raise InputError(
                    f"{self.info.label} is truncated (got {self._pos} of {self.info.nbytes} bytes); "
                    f"re-download or re-extract it")

    def finish(self) -> None:
        """Read to the end of a zip member so its CRC is verified."""
        if self._zip is not None:
            with _translated(self.info.label):
                self._zip.drain()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
        self._fh = self._zip = None

    def __enter__(self) -> "NpyStream":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_npz_member(path: str | os.PathLike, member: str) -> NpyStream:
    """Open one ``.npy`` member of an ``.npz`` for sequential block reads."""
    return NpyStream(path, member)


def read_npy_info(path: str | os.PathLike, member: str | None = None) -> NpyMemberInfo:
    """Header only: shape, dtype, order (decompresses just the first bytes)."""
    with NpyStream(path, member) as s:
        return s.info


def read_small_array(path: str | os.PathLike, member: str | None = None,
                     max_bytes: int = 64 << 20) -> np.ndarray:
    """Read a small array (``num_nodes_list``, ...) whole, honouring its order."""
    with NpyStream(path, member) as s:
        if s.info.nbytes > max_bytes:
            raise InputError(f"{s.info.label} has shape {s.info.shape}, far larger than expected; "
                             f"check that the dataset is not corrupted")
        flat = s.read_elems(s.info.size)
        s.finish()
        return flat.reshape(s.info.shape, order="F" if s.info.fortran_order else "C")


def iter_flat_blocks(path: str | os.PathLike, member: str | None, block_elems: int) -> Iterator[np.ndarray]:
    """All elements in storage order, ``block_elems`` at a time (for (N,) / (N, 1) columns)."""
    with NpyStream(path, member) as s:
        total = s.info.size
        for start in range(0, total, block_elems):
            yield s.read_elems(min(block_elems, total - start))
        s.finish()


def _check_edge_info(info: NpyMemberInfo) -> None:
    if len(info.shape) != 2 or info.shape[0] != 2 or info.dtype.kind not in "iu":
        raise InputError(f"{info.label} must be an integer array of shape (2, E), found {info.dtype} "
                         f"{info.shape}; re-download the dataset")


def iter_edge_blocks(path: str | os.PathLike, member: str | None,
                     block_edges: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(src, dst)`` int64 blocks of a ``(2, E)`` edge array, in either memory order."""
    with NpyStream(path, member) as first:
        info = first.info
        _check_edge_info(info)
        num_edges = info.shape[1]
        if info.fortran_order:  # interleaved pairs
            for start in range(0, num_edges, block_edges):
                pairs = first.read_elems(2 * min(block_edges, num_edges - start)).reshape(-1, 2)
                yield pairs[:, 0].astype(np.int64), pairs[:, 1].astype(np.int64)
            first.finish()
            return
        with NpyStream(path, member) as second:  # lockstep: sources and destinations
            second.skip_bytes(num_edges * info.dtype.itemsize)
            for start in range(0, num_edges, block_edges):
                k = min(block_edges, num_edges - start)
                yield first.read_elems(k).astype(np.int64), second.read_elems(k).astype(np.int64)
            second.finish()


def open_npy_memmap(path: str | os.PathLike) -> np.memmap:
    """Memory-map a plain ``.npy`` read-only (honours ``fortran_order``), checking its size."""
    path = Path(path)
    read_npy_info(path)  # validates existence, header and length with one-line errors
    with _translated(str(path)):
        return np.load(path, mmap_mode="r")


def _spill_marker(dest: Path) -> Path:
    return dest.with_name(dest.name + ".done")


def _spill_identity(path: Path, info: NpyMemberInfo) -> dict:
    st = path.stat()
    return {"source": str(path.resolve()), "label": info.label, "size": st.st_size,
            "mtime_ns": st.st_mtime_ns, "shape": list(info.shape), "dtype": info.dtype.str,
            "fortran_order": info.fortran_order}


class SpillCancelled(Exception):
    """A background spill was told to stop (its temp file is removed)."""


def stored_data_offset(path: str | os.PathLike, member: str) -> tuple[NpyMemberInfo, int | None]:
    """The member's header, and the file offset of its first data byte when it is stored
    uncompressed in the zip (``np.savez``): then its bytes can be read in place, and a
    spill would only copy them.  ``None`` for a DEFLATE-compressed member."""
    path = Path(path)
    with NpyStream(path, member) as s:
        info = s.info
    with zipfile.ZipFile(path) as zf:
        zinfo = zf.getinfo(member if member.endswith(".npy") else member + ".npy")
    if zinfo.compress_type != zipfile.ZIP_STORED:
        return info, None
    with open(path, "rb") as f:
        return info, member_data_offset(f, zinfo) + info.data_offset


def spill_to_raw(path: str | os.PathLike, member: str | None, dest: str | os.PathLike,
                 stop: threading.Event | None = None) -> NpyMemberInfo:
    """Copy the data bytes of an array to the raw file ``dest`` once (resumable).

    A completed spill has a ``<dest>.done`` marker recording the source identity;
    a matching marker makes this a no-op.  Written to a temp name, then renamed.
    ``stop`` (set from another thread) abandons the copy with :class:`SpillCancelled`.
    """
    path, dest = Path(path), Path(dest)
    with NpyStream(path, member) as s:
        ident = _spill_identity(path, s.info)
        marker = _spill_marker(dest)
        if marker.is_file() and dest.is_file() and dest.stat().st_size == s.info.nbytes:
            try:
                if read_json(marker) == ident:
                    log.info("reusing spilled %s at %s", s.info.label, dest)
                    return s.info
            except (OSError, ValueError):
                pass
        marker.unlink(missing_ok=True)
        log.info("spilling %s (%d bytes) to %s", s.info.label, s.info.nbytes, dest)
        with atomic_output(dest, "spilling to") as tmp:
            with open(tmp, "wb") as out:
                buf = memoryview(bytearray(_COPY_BYTES))
                left = s.info.nbytes
                while left > 0:
                    step = min(left, _COPY_BYTES)
                    s.readinto_exact(buf[:step])
                    out.write(buf[:step])
                    left -= step
                    if stop is not None and stop.is_set():
                        raise SpillCancelled(f"spilling {s.info.label} was cancelled")
                s.finish()
        atomic_write_json(marker, ident)
        return s.info


def iter_row_blocks(path: str | os.PathLike, member: str | None, block_rows: int,
                    spill_path: str | os.PathLike | None = None) -> Iterator[np.ndarray]:
    """Consecutive C-contiguous row blocks ``[b, *shape[1:]]`` of an array.

    A Fortran-ordered zip member needs ``spill_path`` (made by :func:`spill_to_raw`;
    spilled here if missing).  Plain ``.npy`` files are memory-mapped directly.
    """
    path = Path(path)
    info = read_npy_info(path, member)
    if not info.shape:
        raise InputError(f"{info.label} is a scalar, expected an array of rows; re-download the dataset")
    rows, row_shape = info.shape[0], info.shape[1:]
    row_elems = int(np.prod(row_shape, dtype=np.int64))
    if member is None or info.fortran_order:
        if member is None:
            arr = open_npy_memmap(path)
        else:
            if spill_path is None:
                raise RuntimeError(f"{info.label} is Fortran-ordered: pass spill_path (see prepare_scratch)")
            spill_to_raw(path, member, spill_path)
            arr = np.memmap(spill_path, dtype=info.dtype, mode="r", shape=info.shape, order="F")
        with _translated(info.label):
            for start in range(0, rows, block_rows):
                yield np.ascontiguousarray(arr[start:start + block_rows])
        return
    with NpyStream(path, member) as s:
        for start in range(0, rows, block_rows):
            k = min(block_rows, rows - start)
            yield s.read_elems(k * row_elems).reshape((k, *row_shape))
        s.finish()
