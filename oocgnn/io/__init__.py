"""The row-gather engine: how bytes move between disk and staging buffers.

Every random row read of training and inference (feature rows, halo history rows,
cache misses) goes through :func:`gather_rows` on a :class:`RowFile`, with the engine
chosen by ``--io-engine {auto,direct,pread,mmap}`` (see :mod:`oocgnn.io.rowfile`).
:func:`rowfile_for` finds the file behind a numpy memmap so callers keep passing the
arrays they already have.
"""
from oocgnn.io.rowfile import ENGINES, RowFile, aligned_empty, gather_rows, reset_fallback_warnings
from oocgnn.io.source import file_region, is_mapped, rowfile_for

__all__ = ["ENGINES", "RowFile", "aligned_empty", "file_region", "gather_rows", "is_mapped",
           "reset_fallback_warnings", "rowfile_for"]
