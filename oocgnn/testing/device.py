"""A recording fake of an asynchronous device, so the transfer schedule is tested on a CPU-only build.

:class:`RecordingDevice` behaves like a GPU whose memory is host memory: copies produce new
tensors (the "device" ones), events order them, and every call is appended to :attr:`log`.
It owns its "page-locked" allocations (a CPU-only torch cannot pin), so a test can check
that every tensor a batch copies lies in memory the device pinned.  With ``defer=True`` a
copy runs only when an event after it is waited on or synchronised (a copy stream that
lags arbitrarily): a staging slot refilled before its copy's event, or pushed values read
before theirs, then gives wrong numbers, which a comparison with the CPU run catches.

Log entries are tuples: ``("alloc", nbytes)``, ``("copy", name, nbytes, pinned, event_id)``
(``event_id`` of the event that will cover it), ``("record", id)``, ``("wait", id)``,
``("sync", id, thread)``, ``("record_stream", name)``, ``("d2h", nbytes, pinned, id)``;
tests add their own (``("compute", i)``) through :meth:`note`.
"""
from __future__ import annotations

import threading
from typing import Any

import torch

from oocgnn.device import Device


class FakeEvent:
    """An event of :class:`RecordingDevice`: done once the copies queued before it ran."""

    def __init__(self, device: "RecordingDevice", ident: int, upto: int) -> None:
        self.device, self.id, self.upto = device, ident, upto

    def synchronize(self) -> None:
        self.device.synchronize(self)

    def __repr__(self) -> str:
        return f"FakeEvent({self.id})"


class RecordingDevice(Device):
    """An asynchronous device that logs every call (see module doc); ``capacity``: its memory, for the plan."""

    asynchronous = True

    def __init__(self, defer: bool = True, capacity: int | None = None) -> None:
        super().__init__()
        self.defer = defer
        self.capacity = capacity
        self.log: list[tuple] = []
        self._lock = threading.RLock()
        self._pinned: list[tuple[int, int]] = []
        self._ops: list[tuple[torch.Tensor, torch.Tensor]] = []  #: (src, dst) of every copy queued, in order
        self._done = 0  #: copies run so far (a prefix of _ops)
        self._events = 0

    def note(self, *entry: Any) -> None:
        with self._lock:
            self.log.append(entry)

    def is_pinned(self, t: torch.Tensor) -> bool:
        """Whether ``t``'s bytes lie inside an allocation of :meth:`alloc_pinned`."""
        a = t.data_ptr()
        b = a + t.numel() * t.element_size()
        return any(s <= a and b <= s + n for s, n in self._pinned)

    def alloc_pinned(self, nbytes: int) -> torch.Tensor:
        t = torch.empty(int(nbytes), dtype=torch.uint8)
        with self._lock:
            self._pinned.append((t.data_ptr(), int(nbytes)))
            self.log.append(("alloc", int(nbytes)))
        return t

    def _queue(self, src: torch.Tensor, dst: torch.Tensor) -> None:
        self._ops.append((src, dst))
        if not self.defer:
            self._run(len(self._ops))

    def _run(self, upto: int) -> None:
        while self._done < upto:
            src, dst = self._ops[self._done]
            dst.copy_(src)
            self._ops[self._done] = (None, None)  # let go of the tensors
            self._done += 1

    def copy_async(self, host: torch.Tensor, name: str = "") -> torch.Tensor:
        with self._lock:
            dst = torch.empty_like(host)
            self._queue(host, dst)
            nbytes = host.numel() * host.element_size()
            self.h2d_bytes += nbytes
            self.log.append(("copy", name, nbytes, self.is_pinned(host), self._events))
        return dst

    def record_event(self) -> FakeEvent:
        with self._lock:
            ev = FakeEvent(self, self._events, len(self._ops))
            self._events += 1
            self.log.append(("record", ev.id))
        return ev

    def wait_event(self, event: Any) -> None:
        if event is None:
            return
        with self._lock:
            self.log.append(("wait", event.id))
            self._run(event.upto)  # the compute stream cannot go on before the copies are done

    def synchronize(self, event: Any) -> None:
        if event is None:
            return
        with self._lock:
            self.log.append(("sync", event.id, threading.current_thread().name))
            self._run(event.upto)

    def record_stream(self, tensor: torch.Tensor) -> None:
        with self._lock:
            self.log.append(("record_stream", tensor.data_ptr()))

    def to_host_async(self, tensor: torch.Tensor, out: torch.Tensor) -> FakeEvent:
        with self._lock:
            self._queue(tensor, out)
            nbytes = out.numel() * out.element_size()
            self.d2h_bytes += nbytes
            ev = FakeEvent(self, self._events, len(self._ops))
            self._events += 1
            self.log.append(("d2h", nbytes, self.is_pinned(out), ev.id))
        return ev

    def memory_capacity(self) -> int | None:
        return self.capacity

    def pending(self) -> int:
        """Copies queued and not run yet."""
        return len(self._ops) - self._done
