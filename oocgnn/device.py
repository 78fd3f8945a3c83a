"""The compute device behind six calls: pinned memory, async copy, record / wait / sync an event, record_stream.

Why an interface: the schedule of host-to-device transfers (:mod:`oocgnn.train.feed`) must
be right by construction (copies of batch i+1 queued while batch i computes, no staging slot
reused before the copy out of it is done, tensors made on one stream kept alive for the
other), and a CPU-only machine cannot run CUDA.  So the schedule talks to a :class:`Device`:

- :class:`Device` is the CPU: plain and synchronous.  A "copy" returns the tensor itself
  (no copying at all), events are None, waits do nothing: the CPU path is what it was.
- :class:`CUDADevice` is one GPU: page-locked host memory of exact size (``cudaHostRegister``
  of our own buffers: the caching host allocator rounds every block up to a power of two and
  never gives memory back, which a host memory plan cannot count), host-to-device copies on a
  side stream, device-to-host copies (history pushes) on a third stream, CUDA events.
- ``oocgnn.testing.device.RecordingDevice`` logs every call, owns its "pinned" allocations and
  may defer copies until their event is waited on (a slow stream), so tests assert the order
  of queue / wait / release calls on a CPU-only build, as zarr tests prefetch with a latency store.

Each rank drives one GPU: :func:`rank_device` maps ``--device`` and ``LOCAL_RANK`` to it, and
:func:`make_device` makes it the current device before anything is allocated on it.
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from oocgnn.errors import ConfigError
from oocgnn.io import aligned_empty

log = logging.getLogger(__name__)


def rank_device(spec: str, local_rank: int | None, local_world: int, device_count: int) -> str:
    """The device one rank computes on: ``cpu``, or ``cuda:N`` with one GPU per rank of a host.

    ``--device cuda`` on rank ``r`` of a host is ``cuda:LOCAL_RANK``; ``cuda:N`` names one GPU,
    which only a single rank per host may use.  ``device_count`` is what this process sees.
    """
    if spec == "cpu":
        return "cpu"
    if not spec.startswith("cuda"):
        raise ConfigError(f"--device {spec!r}: use cpu or cuda[:N]")
    if device_count < 1:
        raise ConfigError(f"--device {spec} requested but this torch build sees no CUDA device; use --device cpu")
    explicit = spec.partition(":")[2]
    if explicit and not explicit.isdigit():
        raise ConfigError(f"--device {spec!r}: use cpu or cuda[:N]")
    if explicit and local_world > 1:
        raise ConfigError(f"--device {spec} puts all {local_world} ranks of this host on one GPU; use --device cuda "
                          f"(rank r then computes on cuda:LOCAL_RANK)")
    index = int(explicit) if explicit else (local_rank or 0)
    if index >= device_count:
        who = f"rank with LOCAL_RANK {local_rank}" if not explicit and local_world > 1 else f"--device {spec}"
        raise ConfigError(f"{who} needs cuda:{index} but only {device_count} GPU(s) are visible; start at most "
                          f"{device_count} ranks per host (one GPU each) or set CUDA_VISIBLE_DEVICES")
    return f"cuda:{index}"


class Device:
    """The CPU: batches are computed where they were staged, so every call is free.

    Subclasses run copies asynchronously (``asynchronous``): the transfer schedule then reads
    one batch ahead and guards staging memory with events.
    """

    asynchronous = False

    def __init__(self) -> None:
        self.torch_device = torch.device("cpu")
        self.h2d_bytes = 0  #: host-to-device bytes queued (statistics)
        self.d2h_bytes = 0

    @property
    def type(self) -> str:
        return self.torch_device.type

    def alloc_pinned(self, nbytes: int) -> torch.Tensor:
        """A ``uint8`` host buffer of ``nbytes`` that copies to the device may read asynchronously."""
        return torch.empty(int(nbytes), dtype=torch.uint8)

    def copy_async(self, host: torch.Tensor, name: str = "") -> torch.Tensor:
        """``host`` on the device, queued on the copy stream (``name`` labels logs and statistics)."""
        return host

    def record_event(self) -> Any:
        """An event that completes when everything queued on the copy stream so far is done."""
        return None

    def wait_event(self, event: Any) -> None:
        """The compute stream waits for ``event`` (the host does not)."""

    def synchronize(self, event: Any) -> None:
        """The host waits for ``event`` (a slot's copy: before the loader refills it)."""

    def record_stream(self, tensor: torch.Tensor) -> None:
        """``tensor``, made on the copy stream, is used on the compute stream: keep its memory until that is done."""

    def to_host_async(self, tensor: torch.Tensor, out: torch.Tensor) -> Any:
        """Queue ``out[:] = tensor`` (device to pinned host) after the compute so far; an event says when it landed."""
        out.copy_(tensor)
        return None

    def memory_capacity(self) -> int | None:
        """Device memory free for this run at start (bytes), or None where host memory is the device's."""
        return None

    def warm_up(self) -> None:
        """Start the libraries a step uses (their host memory then counts in the memory plan's baseline)."""

    def stats(self) -> dict[str, float]:
        """Bytes copied each way (and, with timing, copy and wait seconds); resets the counters."""
        out = {"h2d_bytes": float(self.h2d_bytes), "d2h_bytes": float(self.d2h_bytes)}
        self.h2d_bytes = self.d2h_bytes = 0
        return out

    def close(self) -> None:
        """Give back what the device holds (page-locked registrations)."""


class CUDADevice(Device):
    """One GPU: a side stream for host-to-device copies, one for device-to-host, CUDA events.

    ``timing``: every batch's copies and every wait of the compute stream are bracketed by
    timed events (a little overhead), so :meth:`stats` reports copy and wait seconds
    (``benchmarks/gpu_check.py``).
    """

    asynchronous = True

    def __init__(self, spec: str, timing: bool = False) -> None:
        super().__init__()
        self.torch_device = torch.device(spec)
        torch.cuda.set_device(self.torch_device)  # streams, handles and the context land on this GPU
        self.copy_stream = torch.cuda.Stream(self.torch_device)
        self.d2h_stream = torch.cuda.Stream(self.torch_device)
        self.timing = timing
        self._registered: list[tuple[int, np.ndarray]] = []
        self._copy_start: torch.cuda.Event | None = None
        self._copies: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []
        self._waits: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []
        self._free_at_start = int(torch.cuda.mem_get_info(self.torch_device)[0])

    def alloc_pinned(self, nbytes: int) -> torch.Tensor:
        """Our own page-aligned buffer, page-locked at its exact size (unregistered by :meth:`close`)."""
        buf = aligned_empty(max(int(nbytes), 1))
        t = torch.from_numpy(buf)
        rc = torch.cuda.cudart().cudaHostRegister(t.data_ptr(), buf.nbytes, 0)
        if int(rc) != 0:  # e.g. a locked-memory limit: the caching host allocator still pins (rounded up)
            log.warning("cudaHostRegister of %d bytes failed (error %s); pinning through torch's host allocator",
                        buf.nbytes, int(rc))
            return torch.empty(int(nbytes), dtype=torch.uint8, pin_memory=True)
        self._registered.append((t.data_ptr(), buf))
        return t[: int(nbytes)]

    def copy_async(self, host: torch.Tensor, name: str = "") -> torch.Tensor:
        with torch.cuda.stream(self.copy_stream):
            if self.timing and self._copy_start is None:
                self._copy_start = torch.cuda.Event(enable_timing=True)
                self._copy_start.record(self.copy_stream)
            dev = host.to(self.torch_device, non_blocking=True)
        self.h2d_bytes += host.numel() * host.element_size()
        return dev

    def record_event(self) -> torch.cuda.Event:
        ev = torch.cuda.Event(enable_timing=self.timing)
        ev.record(self.copy_stream)
        if self.timing and self._copy_start is not None:
            self._copies.append((self._copy_start, ev))
            self._copy_start = None
        return ev

    def wait_event(self, event: Any) -> None:
        if event is None:
            return
        stream = torch.cuda.current_stream(self.torch_device)
        if not self.timing:
            stream.wait_event(event)
            return
        before, after = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        before.record(stream)
        stream.wait_event(event)
        after.record(stream)
        self._waits.append((before, after))

    def synchronize(self, event: Any) -> None:
        if event is not None:
            event.synchronize()

    def record_stream(self, tensor: torch.Tensor) -> None:
        tensor.record_stream(torch.cuda.current_stream(self.torch_device))

    def to_host_async(self, tensor: torch.Tensor, out: torch.Tensor) -> torch.cuda.Event:
        done = torch.cuda.Event()
        done.record(torch.cuda.current_stream(self.torch_device))
        self.d2h_stream.wait_event(done)  # the values are computed
        with torch.cuda.stream(self.d2h_stream):
            out.copy_(tensor, non_blocking=True)
        tensor.record_stream(self.d2h_stream)
        landed = torch.cuda.Event()
        landed.record(self.d2h_stream)
        self.d2h_bytes += out.numel() * out.element_size()
        return landed

    def memory_capacity(self) -> int:
        return self._free_at_start

    def warm_up(self) -> None:
        """One small dense and one sparse product: cuBLAS and cuSPARSE start now, not in the first step."""
        x = torch.ones(8, 8, device=self.torch_device)
        adj = torch.eye(8, device=self.torch_device).to_sparse_csr()
        (x @ x).sum().item()
        torch.sparse.mm(adj, x).sum().item()

    def stats(self) -> dict[str, float]:
        out = super().stats()
        if self.timing:
            torch.cuda.synchronize(self.torch_device)
            out["copy_s"] = sum(a.elapsed_time(b) for a, b in self._copies) / 1e3
            out["wait_s"] = sum(a.elapsed_time(b) for a, b in self._waits) / 1e3
            # between two waits the compute stream runs (or idles for the host): the step's compute
            out["compute_s"] = sum(b.elapsed_time(a) for (_, b), (a, _) in zip(self._waits, self._waits[1:])) / 1e3
            self._copies, self._waits = [], []
        return out

    def close(self) -> None:
        if self._registered:
            torch.cuda.synchronize(self.torch_device)
        for ptr, _buf in self._registered:
            torch.cuda.cudart().cudaHostUnregister(ptr)
        self._registered = []


def make_device(spec: str, local_rank: int | None = None, local_world: int = 1, timing: bool = False) -> Device:
    """The :class:`Device` of ``--device spec`` for this rank (see :func:`rank_device`)."""
    if spec == "cpu":
        return Device()
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return CUDADevice(rank_device(spec, local_rank, local_world, count), timing=timing)


def cuda_rng_state(device: torch.device) -> torch.Tensor | None:
    """The CUDA generator state of ``device`` (dropout draws from it there), or None on the CPU.

    Saved in checkpoints next to the CPU state, per rank, so a resumed CUDA run draws the
    same masks as an uninterrupted one.
    """
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def set_cuda_rng_state(device: torch.device, state: torch.Tensor | None) -> None:
    """Restore :func:`cuda_rng_state` (nothing to do on the CPU, or for a checkpoint made on the CPU)."""
    if state is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state.cpu(), device)
