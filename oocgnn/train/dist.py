"""Several processes train one model: the torch.distributed side of a run.

A run of W ranks (``oocgnn train --nproc-per-node W``, or one ``oocgnn train`` per
process under ``torchrun``) keeps one model: every step each rank trains its own
batch, the gradients are all-reduced (weighted by each batch's labelled nodes, so
the update is the gradient of the union of the W batches), and every rank takes
the same Adam step.  Rank 0 evaluates and writes the run's files.

Why collectives by hand, not the ``DistributedDataParallel`` wrapper: DDP's
all-reduce fires inside ``backward()``, so a rank that has no batch (the last step of
an epoch whose batch count W does not divide) or no labelled node in its batch
would never call it and every other rank would wait forever.  Here every rank calls
exactly one all-reduce of gradients per step, of one flat buffer (what DDP does with
its buckets), whatever its batch held, after one of the labelled counts on the host
(the step's weight is known there without waiting for the device).  The backend is
gloo on CPU; on CUDA each rank computes on the GPU of its ``LOCAL_RANK``, gradients
go through NCCL and host tensors through gloo (``cpu:gloo,cuda:nccl``).
"""
from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from oocgnn.batching import RankSplit
from oocgnn.device import rank_device
from oocgnn.errors import ConfigError

log = logging.getLogger(__name__)

#: ``--halo-exchange``: ranks share the run's history files (one host) or own their rows and exchange them
EXCHANGES = ("auto", "shared-files", "all-to-all")
#: seconds a collective may wait for a peer before it fails (``--dist-timeout``)
DEFAULT_TIMEOUT_S = 1800.0


def check_supported(cfg: Any, world_size: int) -> None:
    """Refuse, in one line, what several ranks cannot run yet."""
    if world_size <= 1:
        return
    if cfg.staleness.method != "gas":
        raise ConfigError(f"--method {cfg.staleness.method} does not run on several ranks yet (its refresh schedule "
                          f"and staleness state are per process); use --method gas with --nproc-per-node / torchrun")
    if cfg.io.in_memory:
        raise ConfigError("--in-memory keeps histories in each process's RAM, which ranks cannot share; drop "
                          "--in-memory to train with several ranks")


@dataclass
class DistContext:
    """Rank, world and halo-exchange mode of this process; a world of 1 makes every call a no-op."""

    rank: int = 0
    world_size: int = 1
    local_world_size: int = 1
    #: this rank's place on its host: with ``--device cuda`` it computes on ``cuda:local_rank``
    local_rank: int = 0
    exchange: str = "shared-files"
    #: shared files, deterministic runs: every rank's pushes of a step land before any rank reads for the
    #: next one (no read-ahead), so what a halo read sees no longer depends on timing
    lockstep: bool = False
    #: the flat gradient buffer of :meth:`sync_gradients`, allocated once
    _flat: torch.Tensor | None = field(default=None, repr=False, compare=False)

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def owns_rows(self) -> bool:
        """True on the cross-host path: this rank's tables hold its own rows plus received halo rows."""
        return self.active and self.exchange == "all-to-all"

    @property
    def shared_tables(self) -> bool:
        """True when several ranks write one set of history tables (one host)."""
        return self.active and self.exchange == "shared-files"

    @property
    def split(self) -> RankSplit:
        return RankSplit(self.rank, self.world_size, by_owner=self.owns_rows)

    @classmethod
    def from_env(cls, exchange: str = "auto", timeout_s: float = DEFAULT_TIMEOUT_S,
                 device: str = "cpu", deterministic: bool = False) -> "DistContext":
        """Join the process group that ``torchrun`` or ``--nproc-per-node`` described in the environment."""
        if exchange not in EXCHANGES:
            raise ConfigError(f"--halo-exchange {exchange!r} is not one of {', '.join(EXCHANGES)}")
        env = os.environ
        world = int(env.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        rank = int(env["RANK"])
        local_world = int(env.get("LOCAL_WORLD_SIZE", str(world)))
        if exchange == "auto":
            exchange = "shared-files" if local_world == world else "all-to-all"
        if exchange == "shared-files" and local_world != world:
            raise ConfigError(f"--halo-exchange shared-files needs every rank on one host (WORLD_SIZE {world}, "
                              f"LOCAL_WORLD_SIZE {local_world}); use --halo-exchange all-to-all or auto")
        for key in ("MASTER_ADDR", "MASTER_PORT"):
            if key not in env:
                raise ConfigError(f"WORLD_SIZE={world} but {key} is not set; launch with torchrun or "
                                  f"`oocgnn train --nproc-per-node N`")
        local_rank = int(env.get("LOCAL_RANK", str(rank % local_world)))
        backend = "gloo"
        if device.startswith("cuda"):  # one GPU per rank, current before NCCL binds to it
            count = torch.cuda.device_count() if torch.cuda.is_available() else 0
            torch.cuda.set_device(torch.device(rank_device(device, local_rank, local_world, count)))
            # tensors on the GPU (gradients) go through NCCL; host tensors (counts, flags, the halo
            # exchange, object collectives) through gloo, which NCCL would reject
            backend = "cpu:gloo,cuda:nccl"
        if not dist.is_initialized():
            dist.init_process_group(backend, rank=rank, world_size=world,
                                    timeout=datetime.timedelta(seconds=timeout_s))
        ctx = cls(rank=rank, world_size=world, local_world_size=local_world, exchange=exchange,
                  lockstep=deterministic and exchange == "shared-files", local_rank=local_rank)
        log.debug("rank %d of %d joined (%s, halo exchange %s)", rank, world, backend, exchange)
        return ctx

    # ------------------------------------------------------------ collectives
    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.active:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather_objects(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        if not self.active:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def any_of(self, flags: list[bool]) -> list[bool]:
        """Each flag True on every rank when it is True on any (checkpoint due, stop requested): one all-reduce."""
        if not self.active:
            return [bool(f) for f in flags]
        t = torch.tensor([1 if f else 0 for f in flags], dtype=torch.int64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return [bool(v) for v in t.tolist()]

    def sync_gradients(self, params: list[torch.nn.Parameter], weight: int) -> int:
        """All-reduce ``weight * grad`` (one flat buffer) after ``weight`` (on the host); grads become the weighted mean.

        ``weight`` is this rank's labelled nodes (0 for an idle rank or a label-free batch,
        whose missing grads count as zeros).  Returns the total weight; 0 means nobody had a
        label this step and the grads are cleared (no optimizer step, as single-process).
        The total is summed on the host, so the step never waits for the device to read it.
        """
        if not params:
            return weight
        count = torch.tensor([weight], dtype=torch.int64)
        dist.all_reduce(count)
        total = int(count[0])
        if total <= 0:
            for p in params:
                p.grad = None
            return 0
        sizes = [p.numel() for p in params]
        flat = self._flat
        if flat is None or flat.numel() != sum(sizes) or flat.device != params[0].device:
            flat = self._flat = torch.empty(sum(sizes), dtype=torch.float32, device=params[0].device)
        flat.zero_()  # reused every step: the grads of the last step are views of it, dropped by zero_grad
        if weight:
            o = 0
            for p, n in zip(params, sizes):
                if p.grad is not None:
                    flat[o:o + n] = p.grad.reshape(-1) * weight
                o += n
        dist.all_reduce(flat)
        flat /= total
        o = 0
        for p, n in zip(params, sizes):
            p.grad = flat[o:o + n].view_as(p).to(p.dtype)  # a view (float32 params): no copy
            o += n
        return total

    def close(self) -> None:
        if self.active and dist.is_initialized():
            dist.destroy_process_group()


SINGLE = DistContext()
