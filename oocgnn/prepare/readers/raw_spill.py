"""Spill ``.npz`` members to raw files on a background thread, and read raw files in blocks.

Why: a ``savez_compressed`` member can only be read by inflating it from its
start, and inflating is the slowest thing a conversion does (one core, a few
hundred MB/s), while a raw file is read at disk or page-cache speed as often as
needed.  So a source inflates each big member *once*, into a raw scratch file,
and every later pass reads that:

* ``edge_index`` is read by two CSR passes (count, scatter), and a C-ordered one
  streams sources and destinations through two decoders, so straight from the
  npz it is inflated three times; from its spill once.
* ``node_feat`` is not needed until the partition is known, so its spill runs on
  a second core (:class:`BackgroundSpill`; the inflaters release the GIL) while
  the CSR and partition stages run on the first.  From the spill the feature
  stage can afford a second sequential read instead of bucket files
  (:func:`oocgnn.prepare.features.write_permuted_features`).

The cost is disk: the spills are as large as the uncompressed members (83 GB for
papers100M), in the build's scratch folder, deleted when the store is finished.
A member stored without compression (``np.savez``) needs no spill: its bytes are
read in place at their offset in the archive.

Raw files are read with ``pread`` into fresh arrays, not memory-mapped: mapped
page-cache pages would count against the process's RSS and the budget.
"""
from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from oocgnn.errors import ReadError
from oocgnn.prepare.readers.npy_stream import NpyMemberInfo, SpillCancelled, spill_to_raw

log = logging.getLogger(__name__)


class BackgroundSpill:
    """:func:`spill_to_raw` on a named daemon thread; :meth:`wait` returns its info or re-raises its error.

    :meth:`close` asks the thread to stop (the partial temp file is removed) and joins it.
    ``spill``: another copy routine taking the stop event (e.g. parsing a csv file,
    :func:`oocgnn.prepare.readers.csv_blocks.spill_csv`); :meth:`wait` returns its result.
    """

    def __init__(self, path: str | os.PathLike, member: str, dest: str | os.PathLike, *,
                 spill: Callable[[threading.Event], Any] | None = None) -> None:
        self.path, self.member, self.dest = Path(path), member, Path(dest)
        self._spill = spill or (lambda stop: spill_to_raw(self.path, self.member, self.dest, stop=stop))
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._info: Any = None
        self._thread = threading.Thread(target=self._run, name=f"oocgnn-spill-{member}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._info = self._spill(self._stop)
        except SpillCancelled:
            log.info("spill of %s member %s cancelled", self.path, self.member)
        except BaseException as exc:  # handed to the caller of wait()
            self._error = exc

    def wait(self) -> Any:
        self._thread.join()
        if self._error is not None:
            raise self._error
        if self._info is None:
            raise RuntimeError(f"the spill of {self.path} member {self.member} was cancelled")
        return self._info

    def raise_if_failed(self) -> None:
        """Re-raise the spill's error now if it already failed (fail fast, not stages later)."""
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def _pread_into(fd: int, arr: np.ndarray, offset: int, path: Path) -> None:
    view = memoryview(arr).cast("B")
    got = 0
    while got < len(view):
        n = os.preadv(fd, [view[got:]], offset + got)
        if n <= 0:
            raise ReadError(f"{path} is shorter than its spill marker says; delete it and re-run the command")
        got += n


def iter_raw_edge_blocks(path: str | os.PathLike, info: NpyMemberInfo, block_edges: int,
                         base: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(src, dst)`` int64 blocks of a spilled ``(2, E)`` array, in either memory order,
    whose data start at byte ``base`` of ``path`` (a stored zip member is read in place)."""
    path = Path(path)
    num_edges, item = info.shape[1], info.dtype.itemsize
    fd = os.open(path, os.O_RDONLY)
    try:
        for start in range(0, num_edges, block_edges):
            k = min(block_edges, num_edges - start)
            if info.fortran_order:  # interleaved (src, dst) pairs
                pairs = np.empty((k, 2), dtype=info.dtype)
                _pread_into(fd, pairs, base + 2 * start * item, path)
                yield pairs[:, 0].astype(np.int64), pairs[:, 1].astype(np.int64)
            else:  # all sources, then all destinations
                src, dst = np.empty(k, dtype=info.dtype), np.empty(k, dtype=info.dtype)
                _pread_into(fd, src, base + start * item, path)
                _pread_into(fd, dst, base + (num_edges + start) * item, path)
                yield src.astype(np.int64, copy=False), dst.astype(np.int64, copy=False)
    finally:
        os.close(fd)


def iter_raw_row_blocks(path: str | os.PathLike, info: NpyMemberInfo, block_rows: int,
                        base: int = 0) -> Iterator[np.ndarray]:
    """Consecutive row blocks ``[b, *shape[1:]]`` of a spilled C-ordered array whose data start at byte ``base``."""
    if info.fortran_order:
        raise RuntimeError(f"{info.label} is Fortran-ordered: read its spill with iter_row_blocks(spill_path=...)")
    path = Path(path)
    rows, row_shape = info.shape[0], info.shape[1:]
    row_bytes = int(np.prod(row_shape, dtype=np.int64)) * info.dtype.itemsize
    fd = os.open(path, os.O_RDONLY)
    try:
        for start in range(0, rows, block_rows):
            block = np.empty((min(block_rows, rows - start), *row_shape), dtype=info.dtype)
            _pread_into(fd, block, base + start * row_bytes, path)
            yield block
    finally:
        os.close(fd)
