"""Low-level readers for foreign on-disk formats (``.npy``/``.npz`` members, torch zips).

Everything here streams: no function loads a whole large array into RAM, and every
malformed input surfaces as an :class:`oocgnn.errors.InputError` naming the file.
"""
from oocgnn.prepare.readers.npy_stream import (
    NpyMemberInfo,
    NpyStream,
    iter_edge_blocks,
    iter_flat_blocks,
    iter_row_blocks,
    open_npy_memmap,
    open_npz_member,
    read_npy_info,
    read_small_array,
    spill_to_raw,
)
from oocgnn.prepare.readers.torch_zip import load_torch_pickle

__all__ = [
    "NpyMemberInfo",
    "NpyStream",
    "iter_edge_blocks",
    "iter_flat_blocks",
    "iter_row_blocks",
    "load_torch_pickle",
    "open_npy_memmap",
    "open_npz_member",
    "read_npy_info",
    "read_small_array",
    "spill_to_raw",
]
