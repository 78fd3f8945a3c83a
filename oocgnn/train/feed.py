"""The device transfer stage: host batches to the compute device on an explicit schedule, pushes back.

The schedule, for an asynchronous device (CUDA; :mod:`oocgnn.device`), one batch ahead::

    hand over batch i:   the compute stream waits for batch i's copy event;
                         its halo rows are patched (pushes since its gather: rows and values
                         staged in page-locked buffers, copied, written on the device);
    then at once:        batch i+1 is taken from the prefetcher and its copies are queued
                         on the copy stream (every tensor: rows, halo rows, CSR parts,
                         degrees, labels, masks, edges, all in its page-locked slot);
                         an event marks their end and guards the slot: the loader waits
                         for it before refilling the slot (:meth:`Slot.wait_guard`);
    then:                batch i computes while batch i+1's copies run.

Tensors made on the copy stream are recorded on the compute stream (``record_stream``),
so the caching allocator never hands their memory to the next copies early.  Exactness is
that of the CPU path: batch i+1's halo rows were read before step i pushed, and the patch at
its turn, after step i, brings them up to date (the same rows and values as a read then).
Pushes go back through page-locked buffers (:class:`PushStager`): the device-to-host copy
is queued after the forward pass and its event handed to the write-behind thread
(:meth:`oocgnn.history.HistorySet.push`), so no step waits for it.

On the CPU (a synchronous :class:`~oocgnn.device.Device`) the same loop reads no batch
ahead, "copies" return the staging tensors themselves and patches are written into them:
exactly the prefetcher's own iteration, without a copy.
"""
from __future__ import annotations

import collections
import dataclasses
import threading
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import torch

from oocgnn.batch import SubgraphBatch
from oocgnn.device import Device
from oocgnn.history import HistorySet
from oocgnn.prefetch import IOStats, Prepared, Prefetcher

#: page-locked bytes of one patch chunk (row positions and values); two alternate
PATCH_CHUNK_BYTES = 8 << 20
#: page-locked push buffers: one being filled, one whose copy the write-behind thread may still convert
PUSH_BUFFERS = 3

_DENSE = ("x", "deg", "y", "train_mask", "train_index", "edge_index")
_SPARSE = ("adj_t", "adj_t_T")


@dataclass
class _InFlight:
    """A batch whose copies are queued: its prefetched host form, the device tensors, their event."""

    prep: Prepared
    fields: dict[str, Any]
    hist: list[torch.Tensor]
    event: Any
    parts: dict[str, tuple] = field(default_factory=dict)  #: sparse name -> (crow, col, values, size)


class PatchStager:
    """Page-locked buffers that carry a batch's patched halo rows to the device, in fixed-size chunks."""

    def __init__(self, device: Device, chunk_bytes: int = PATCH_CHUNK_BYTES) -> None:
        self.device = device
        self.bufs = [device.alloc_pinned(chunk_bytes) for _ in range(2)]
        self.events: list[Any] = [None, None]
        self._next = 0

    def write(self, dev_hist: torch.Tensor, rows: np.ndarray, values: torch.Tensor) -> None:
        """``dev_hist[rows] = values`` on the compute stream, the data copied from page-locked memory."""
        dev = self.device
        width = values.shape[1]
        per_row = 8 + 4 * width
        chunk = max(1, (self.bufs[0].numel() - 64) // per_row)
        for a in range(0, len(rows), chunk):
            n = min(chunk, len(rows) - a)
            k, self._next = self._next, 1 - self._next
            dev.synchronize(self.events[k])  # its last chunk's copy is done (long ago but for huge patches)
            buf = self.bufs[k]
            idx = buf[: 8 * n].view(torch.int64)
            at = -(-8 * n // 64) * 64  # values after the row positions, aligned
            val = buf[at:at + 4 * n * width].view(torch.float32).view(n, width)
            idx.copy_(torch.from_numpy(rows[a:a + n]))
            val.copy_(values[a:a + n])
            idx_d, val_d = dev.copy_async(idx, "patch_rows"), dev.copy_async(val, "patch_values")
            self.events[k] = dev.record_event()
            dev.wait_event(self.events[k])
            dev.record_stream(idx_d)
            dev.record_stream(val_d)
            dev_hist.index_copy_(0, idx_d, val_d)


class DeviceFeed:
    """Iterate a :class:`Prefetcher`'s batches as device batches, on the schedule of the module doc.

    ``lookahead``: batches whose copies are queued before the current one computes (1 on an
    asynchronous device, 0 on the CPU or when ranks work in lockstep, which must not read ahead).
    ``patches``: the page-locked patch buffers of an asynchronous device (None: written in place).
    """

    def __init__(self, prefetcher: Prefetcher, device: Device, lookahead: int,
                 patches: PatchStager | None = None) -> None:
        self.pf, self.device, self.lookahead, self.patches = prefetcher, device, lookahead, patches

    @property
    def stats(self) -> IOStats:
        return self.pf.stats

    def __iter__(self) -> Iterator[SubgraphBatch]:
        staged = self.pf.staged()
        ahead: collections.deque[_InFlight] = collections.deque()

        def pull() -> bool:
            prep = next(staged, None)
            if prep is None:
                return False
            ahead.append(self._queue(prep))
            return True

        try:
            while ahead or pull():
                batch = self._hand_over(ahead.popleft())
                while len(ahead) < self.lookahead and pull():  # the next copies run while this batch computes
                    pass
                yield batch
        finally:
            staged.close()

    def _queue(self, prep: Prepared) -> _InFlight:
        """Queue every tensor of ``prep.batch`` on the copy stream; the event guards its slot."""
        dev, b = self.device, prep.batch
        fields = {k: dev.copy_async(getattr(b, k), k) for k in _DENSE if getattr(b, k) is not None}
        hist = [dev.copy_async(h, "halo_hist") for h in b.halo_hist]
        parts = {}
        for k in _SPARSE:
            t = getattr(b, k)
            if t is not None:
                parts[k] = (dev.copy_async(t.crow_indices(), k + ".crow"), dev.copy_async(t.col_indices(), k + ".col"),
                            dev.copy_async(t.values(), k + ".values"), tuple(t.shape))
        event = dev.record_event()
        prep.slot.guard = event  # the loader refills the slot only once these copies are done
        for t in (*fields.values(), *hist, *(p for ps in parts.values() for p in ps[:3])):
            dev.record_stream(t)
        return _InFlight(prep, fields, hist, event, parts)

    def _hand_over(self, cur: _InFlight) -> SubgraphBatch:
        """Batch ``cur`` for the compute stream: its copies waited for, its halo rows patched on the device."""
        dev = self.device
        dev.wait_event(cur.event)
        for h, (rows, values) in zip(cur.hist, self.pf.finish(cur.prep, apply=False)):
            if not len(rows):
                continue
            if self.patches is None:
                h[torch.from_numpy(rows)] = values
            else:
                self.patches.write(h, rows, values)
        fields = dict(cur.fields)
        for k, (crow, col, values, size) in cur.parts.items():
            fields[k] = torch.sparse_csr_tensor(crow, col, values, size=size, check_invariants=None)
        return dataclasses.replace(cur.prep.batch, halo_hist=cur.hist, **fields)


class PushStager:
    """History pushes from the device: copied into page-locked buffers after the forward pass, landed behind.

    On a synchronous device :meth:`push` is :meth:`HistorySet.push` itself.  Buffers hold
    ``rows x width`` float32 (the largest batch, every table); a push waits for a free one,
    which the write-behind thread frees once it converted the values (by the next push at the
    latest: :meth:`HistorySet.push` converts earlier pushes whose copies are done).
    """

    def __init__(self, device: Device, rows: int, width: int, count: int = PUSH_BUFFERS) -> None:
        self.device = device
        self.free = [device.alloc_pinned(4 * rows * width).view(torch.float32) for _ in range(count)]
        self._cv = threading.Condition()

    def push(self, histories: HistorySet, values: list[torch.Tensor], **kwargs: Any) -> int:
        """``histories.push(values, **kwargs)`` with the values copied to the host asynchronously."""
        with self._cv:
            while not self.free:
                self._cv.wait(0.1)
            buf = self.free.pop()
        host, o, event = [], 0, None
        for v in values:
            out = buf[o:o + v.numel()].view(v.shape)
            event = self.device.to_host_async(v.detach(), out)  # one stream, in order: the last event covers all
            host.append(out)
            o += v.numel()

        def release() -> None:
            with self._cv:
                self.free.append(buf)
                self._cv.notify_all()

        return histories.push(host, ready=event, release=release, **kwargs)
