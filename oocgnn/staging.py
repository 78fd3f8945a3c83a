"""Staging buffers that batches are read into, and how to know when one is free again.

A ring of :class:`Slot` objects is preallocated once (first touch of new memory costs
~10x a refill), sized from an upper bound on any batch (:func:`ring_rows_bound`), and
reused by the loader for every batch.  A slot's parts are free again when the trainer no
longer reads them: at the next batch, or during the forward pass (input rows after the
input layer, halo history rows after the last hidden layer) when nothing autograd saved
for backward, nor anything the pass still holds, lives in them (:func:`saved_storages`).
"""
from __future__ import annotations

import contextlib
import threading
from typing import Iterator

import numpy as np
import torch


class Slot:
    """One staging buffer set: input rows, and halo rows for each history table.

    A layer-wise sweep reads no halo history rows, so :meth:`release_hist` frees those
    buffers for it (0.64 GB of the ring at 50 M nodes: room a streamed table needs);
    the next training batch allocates them again (:meth:`ensure_hist`).
    """

    def __init__(self, max_rows: int, max_halo: int, width: int, hist_channels: list[int], pin: bool) -> None:
        self.flat = torch.empty(max_rows * width, dtype=torch.float32, pin_memory=pin)
        self.max_rows, self.width, self.max_halo, self.pin = max_rows, width, max_halo, pin
        self.hist_channels = list(hist_channels)
        self.hist: list[torch.Tensor] = []
        self.ensure_hist()
        #: set while the halo history buffers may be written: a slot handed back after its batch's
        #: input layer (see :class:`oocgnn.prefetch.Prefetcher`) gets its feature rows at once and
        #: its history rows once the batch's forward pass has read its own
        self.hist_writable = threading.Event()
        self.hist_writable.set()

    def ensure_hist(self) -> None:
        """Allocate the halo history buffers if :meth:`release_hist` freed them."""
        if len(self.hist) != len(self.hist_channels):
            with torch.inference_mode(False):  # filled by a sweep's caller or a training step alike
                self.hist = [torch.empty(self.max_halo, c, dtype=torch.float32, pin_memory=self.pin)
                             for c in self.hist_channels]

    def release_hist(self) -> None:
        """Free the halo history buffers (the next :meth:`ensure_hist` allocates them again)."""
        self.hist = []

    def x_storage(self) -> int:
        """Address of the input rows' storage (a view's ``untyped_storage()`` is its base's)."""
        return self.flat.untyped_storage().data_ptr()

    def hist_storages(self) -> set[int]:
        """Addresses of the halo history buffers' storages."""
        return {t.untyped_storage().data_ptr() for t in self.hist}

    def x(self, rows: int, width: int) -> torch.Tensor:
        return self.flat[: rows * width].view(rows, width)

    @property
    def nbytes(self) -> int:
        return self.flat.numel() * 4 + sum(h.numel() * 4 for h in self.hist)


_tracking = threading.local()


@contextlib.contextmanager
def saved_storages() -> Iterator[set[int]]:
    """Collect the storage addresses of every strided tensor autograd saves for backward in the block.

    A staging buffer whose storage is not among them (nor in what the forward pass still
    holds) may be refilled while the pass goes on: it copied what it needed out of it
    (e.g. dropout into its own buffer).  :func:`saved_so_far` gives the set to code the
    block calls (a batch's ``release_staging``, called from inside the model).
    """
    saved: set[int] = set()

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.layout == torch.strided:
            saved.add(t.untyped_storage().data_ptr())
        return t

    outer = getattr(_tracking, "saved", None)
    _tracking.saved = saved
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            yield saved
    finally:
        _tracking.saved = outer


def saved_so_far() -> set[int] | None:
    """The set of the innermost :func:`saved_storages` block on this thread (None outside one)."""
    return getattr(_tracking, "saved", None)


def storages_of(tensors: list) -> set[int]:
    """Storage addresses of the strided tensors in ``tensors`` (other items are skipped)."""
    return {t.untyped_storage().data_ptr() for t in tensors
            if isinstance(t, torch.Tensor) and t.layout == torch.strided}


def ring_rows_bound(partition_ptr: np.ndarray, halo_sizes: np.ndarray, parts_per_batch: int) -> tuple[int, int]:
    """(max rows, max halo) over *any* group of ``parts_per_batch`` partitions."""
    sizes = np.diff(partition_ptr)
    k = min(parts_per_batch, len(sizes))
    rows = int(np.sort(sizes + halo_sizes)[::-1][:k].sum())
    halo = int(np.sort(halo_sizes)[::-1][:k].sum())
    n = int(partition_ptr[-1])
    return min(rows, n), min(halo, n)
