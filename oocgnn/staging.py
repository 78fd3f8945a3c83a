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
from typing import Any, Callable, Iterator

import numpy as np
import torch


#: byte alignment of every array an :class:`Arena` hands out
ARENA_ALIGN = 64

#: ``alloc(nbytes) -> uint8 tensor``: where a slot's memory comes from (page-locked for an asynchronous device)
Alloc = Callable[[int], torch.Tensor]


def _plain(nbytes: int) -> torch.Tensor:
    return torch.empty(int(nbytes), dtype=torch.uint8)


class Arena:
    """One buffer of a slot, handed out as aligned numpy arrays by a bump pointer, reset per batch.

    On an asynchronous device every tensor of a batch (CSR parts, degrees, labels, masks,
    edges) must sit in page-locked memory for its copy to run asynchronously; the arena is
    that memory, sized once for the largest batch (:func:`arena_bytes`).
    """

    def __init__(self, buf: torch.Tensor) -> None:
        self.buf = buf
        self._raw = buf.numpy()
        self.used = 0

    def reset(self) -> None:
        self.used = 0

    def take(self, n: int, dtype: Any) -> np.ndarray:
        """An uninitialised array of ``n`` items of ``dtype`` (raises if the arena was sized too small: a bug)."""
        dt = np.dtype(dtype)
        start = -(-self.used // ARENA_ALIGN) * ARENA_ALIGN
        end = start + int(n) * dt.itemsize
        if end > len(self._raw):
            raise RuntimeError(f"staging arena of {len(self._raw)} bytes too small for {end} (a bug in arena_bytes: "
                               f"please report it)")
        self.used = end
        return self._raw[start:end].view(dt)


class Slot:
    """One staging buffer set: input rows, halo rows for each history table, and an optional arena.

    A layer-wise sweep reads no halo history rows, so :meth:`release_hist` frees those
    buffers for it (0.64 GB of the ring at 50 M nodes: room a streamed table needs);
    the next training batch allocates them again (:meth:`ensure_hist`).  Page-locked
    buffers (``pinned``) are never freed: their registration is kept for the run, and
    the memory plan counts them as held.

    ``alloc`` gives every buffer (page-locked ones from :meth:`oocgnn.device.Device.alloc_pinned`);
    ``aux_bytes`` > 0 adds an :class:`Arena` for the batch's other tensors.  ``guard``: the
    event (with ``synchronize()``) of the device copies that read this slot; the loader waits
    for it (:meth:`wait_guard`) before writing the slot again.
    """

    def __init__(self, max_rows: int, max_halo: int, width: int, hist_channels: list[int], pin: bool = False,
                 alloc: Alloc | None = None, aux_bytes: int = 0) -> None:
        self.alloc = alloc or _plain
        self.pin = pin
        self.flat = self._floats(max_rows * width)
        self.max_rows, self.width, self.max_halo = max_rows, width, max_halo
        self.hist_channels = list(hist_channels)
        self.hist: list[torch.Tensor] = []
        self.ensure_hist()
        self.arena = Arena(self.alloc(aux_bytes)) if aux_bytes else None
        self.guard: Any = None
        #: set while the halo history buffers may be written: a slot handed back after its batch's
        #: input layer (see :class:`oocgnn.prefetch.Prefetcher`) gets its feature rows at once and
        #: its history rows once the batch's forward pass has read its own
        self.hist_writable = threading.Event()
        self.hist_writable.set()

    def _floats(self, n: int) -> torch.Tensor:
        return self.alloc(4 * n).view(torch.float32)

    def wait_guard(self) -> None:
        """Block until the device copy out of this slot is done (no-op without one); then the slot may be refilled."""
        guard, self.guard = self.guard, None
        if guard is not None:
            guard.synchronize()

    def ensure_hist(self) -> None:
        """Allocate the halo history buffers if :meth:`release_hist` freed them."""
        if len(self.hist) != len(self.hist_channels):
            with torch.inference_mode(False):  # filled by a sweep's caller or a training step alike
                self.hist = [self._floats(self.max_halo * c).view(self.max_halo, c) for c in self.hist_channels]

    def release_hist(self) -> None:
        """Free the halo history buffers (the next :meth:`ensure_hist` allocates them again); kept when pinned."""
        if not self.pin:
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
        aux = self.arena.buf.numel() if self.arena is not None else 0
        return self.flat.numel() * 4 + sum(h.numel() * 4 for h in self.hist) + aux


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


def arena_bytes(rows: int, batch_rows: int, edges: int, transpose: bool, edge_index: bool) -> int:
    """Bytes of the arena that holds any batch's tensors besides its rows (see :class:`Arena`).

    ``rows`` bounds B + H, ``batch_rows`` B, ``edges`` the CSR entries of a batch with its
    self-loops (nnz + B).  Ids are int32 unless a batch could need int64 (as the builder picks).
    """
    isz = 4 if rows + edges < 2**31 - 1 else 8
    sizes = [(batch_rows + 1) * isz, edges * isz, edges * 4,  # crow, col, weight
             batch_rows * 4, batch_rows * 8, batch_rows, batch_rows * 8]  # deg, y (int64), train mask, train index
    if transpose:
        sizes += [(rows + 1) * isz, edges * isz, edges * 4]
    if edge_index:
        sizes.append(2 * edges * 8)
    return sum(s + ARENA_ALIGN for s in sizes)


def ring_rows_bound(partition_ptr: np.ndarray, halo_sizes: np.ndarray, parts_per_batch: int) -> tuple[int, int]:
    """(max rows, max halo) over *any* group of ``parts_per_batch`` partitions."""
    sizes = np.diff(partition_ptr)
    k = min(parts_per_batch, len(sizes))
    rows = int(np.sort(sizes + halo_sizes)[::-1][:k].sum())
    halo = int(np.sort(halo_sizes)[::-1][:k].sum())
    n = int(partition_ptr[-1])
    return min(rows, n), min(halo, n)
