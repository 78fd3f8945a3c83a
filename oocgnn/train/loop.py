"""The trainer: explicit state, the one epoch loop, one training step, one refresh.

Everything that decides what happens next lives in :class:`TrainState` (epoch,
position in the epoch plan, global step, best-valid bookkeeping) plus the model,
optimizer and torch RNG states, so :meth:`Trainer.state_dict` /
:meth:`Trainer.load_state_dict` capture a run exactly (crash-safe resume builds on
this).  The epoch plan is a pure function of ``(seed, epoch)`` and is recomputed,
never stored.

:meth:`Trainer.train_epoch` is the only epoch loop: it walks the action list of an
epoch policy (:mod:`oocgnn.train.policy`; plain GAS = the shuffled plan, every
batch trains) through one prefetcher.  :meth:`Trainer.train_step` does forward +
backward + (clipped) Adam step + push; :meth:`Trainer.refresh` is forward-only under
``inference_mode`` and pushes every table (REST-style policies schedule those).
Batches without training labels still forward and push: skipping them (as the
GAS reference code does) would leave their histories stale forever.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import math
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from oocgnn.batch import SubgraphBatch
from oocgnn.batching import RankSplit, group_ranges
from oocgnn.cache import begin_epoch_caches, caches_epoch_metrics, end_epoch_caches
from oocgnn.device import Device, cuda_rng_state, make_device, set_cuda_rng_state
from oocgnn.errors import ConfigError, NonFiniteLossError
from oocgnn.history import HistorySet
from oocgnn.models import build_model
from oocgnn.prefetch import BatchLoader, IOStats, Prefetcher, advise_random
from oocgnn.staging import Slot, arena_bytes, ring_rows_bound, saved_storages
from oocgnn.subgraph import SubgraphBuilder, partition_halo_sizes
from oocgnn.train.budget import batch_edges_bound, mapped_window, plan_memory
from oocgnn.config import RunConfig
from oocgnn.train.dist import SINGLE, DistContext
from oocgnn.train.metrics import AgeTally, read_path_record
from oocgnn.train.exchange import HaloExchange
from oocgnn.train.feed import DeviceFeed, PatchStager, PushStager
from oocgnn.train.optim import make_optimizer
from oocgnn.train.policy import EpochPolicy, GASPolicy
from oocgnn.utils.mapped import MappedPageReleaser
from oocgnn.utils.memory import format_size, keep_large_buffers_off_heap, resolve_budget

log = logging.getLogger(__name__)

STATE_VERSION = 1


@dataclass
class TrainState:
    epoch: int = 0             #: epoch in progress (0-based)
    position: int = 0          #: index of the next batch in this epoch's plan
    global_step: int = 0       #: batches trained so far (one push clock tick each)
    best_valid_acc: float = -1.0
    best_epoch: int = -1
    test_acc_at_best_valid: float = float("nan")
    refresh_cursor: int = 0    #: REST refresh batches drawn so far (position in the refresh queue)
    refresh_pending: int = 0   #: REST refreshes still owed after the last training step (``extra`` loop)


class Trainer:
    """Owns model, optimizer, histories, staging ring and I/O pool for one run.

    ``run_dir=None`` or ``cfg.io.in_memory`` keeps histories in RAM (the
    differential oracle); ``cfg.io.in_memory`` also loads the features into RAM.
    ``dist`` (several ranks, :mod:`oocgnn.train.dist`): this rank trains its share of
    each epoch plan, gradients are all-reduced every step, and the memory budget is
    shared by the ranks of this host.
    """

    def __init__(self, ds: Any, cfg: RunConfig, run_dir: str | Path | None = None,
                 model: torch.nn.Module | None = None, policy: EpochPolicy | None = None,
                 dist: DistContext = SINGLE, device: Device | None = None) -> None:
        if policy is None and cfg.staleness.method != "gas":
            raise ConfigError(f"--method {cfg.staleness.method} needs its epoch policy: build the trainer with "
                              "oocgnn.runner.make_trainer (Trainer alone trains plain GAS)")
        self.ds, self.cfg = ds, cfg
        self.policy: EpochPolicy = policy if policy is not None else GASPolicy()
        self.dist = dist
        self.budget = resolve_budget(cfg.io.memory_budget) // dist.local_world_size
        keep_large_buffers_off_heap()  # freed step buffers must leave RSS, or the budget's plan is fiction
        # memmapped store/history pages count in RSS: keep them under a window of the budget from the
        # first read on (the halo sizes below already scan the whole CSR); stopped by close() or GC
        self._releaser = MappedPageReleaser(mapped_window(self.budget)).__enter__()
        self._stop_releaser = weakref.finalize(self, self._releaser.__exit__)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        #: where batches compute (oocgnn.device): made here from --device (this rank's GPU), or given (tests, benchmarks)
        self.devops = device if device is not None else make_device(cfg.io.device, dist.local_rank,
                                                                    dist.local_world_size)
        self._own_device = device is None
        self.device = self.devops.torch_device
        in_mem = cfg.io.in_memory or self.run_dir is None
        m = cfg.model
        torch.manual_seed(cfg.train.seed)
        if model is None:  # a policy may bring its own model (VISAGNN); else the plain backbone
            model = self.policy.build_model(m.name, ds.num_features, m.hidden, ds.num_classes, m.layers,
                                            dropout=m.dropout, batch_norm=m.batch_norm)
        if model is None:
            model = build_model(m.name, ds.num_features, m.hidden, ds.num_classes, m.layers, dropout=m.dropout,
                                batch_norm=m.batch_norm)
        self.model = model
        if dist.active:  # same initial weights on every rank (seeded above), its own dropout stream from here
            torch.manual_seed(cfg.train.seed + 1_000_003 * dist.rank)
        self.model.normalize_features = m.normalize_features
        self.model.to(self.device)
        self.partition_ptr = np.asarray(ds.partition_ptr, dtype=np.int64)
        #: optimizer steps per epoch (with several ranks: each step trains one batch per rank)
        self.batches_per_epoch = self.split.steps(len(self.partition_ptr) - 1, cfg.train.parts_per_batch)
        self.optimizer = make_optimizer(self.model, cfg, self.batches_per_epoch)
        log.info("Adam lr %.3g (--lr %g, --lr-scaling %s, %d batches/epoch)", self.optimizer.param_groups[0]["lr"],
                 cfg.train.lr, cfg.train.lr_scaling, self.batches_per_epoch)
        self.state = TrainState()

        hist_dir = None if in_mem else self.run_dir / "histories"
        if hist_dir is not None and dist.owns_rows:  # cross-host path: every rank keeps its own tables
            hist_dir = hist_dir / f"rank-{dist.rank}"
        self.histories = HistorySet(ds.num_nodes, list(self.model.history_channels), cfg.io.history_dtype, hist_dir)
        #: cross-host path only: ships this rank's fresh rows to the ranks that have them in their halo
        self.exchange = (HaloExchange(dist.world_size, dist.rank, self.histories, ds.indptr, ds.indices,
                                      self.partition_ptr) if dist.owns_rows and len(self.histories) else None)
        self.features = np.ascontiguousarray(ds.features) if cfg.io.in_memory else ds.features
        self.indptr = np.asarray(ds.indptr) if cfg.io.in_memory else ds.indptr
        self.indices = np.asarray(ds.indices) if cfg.io.in_memory else ds.indices
        if not cfg.io.in_memory:
            advise_random(self.features)
            for t in self.histories.tables:
                advise_random(t.array)
        # compact (-1 = no label): int64 labels took 400 MB at 50 M nodes, room a streamed sweep needs
        self.labels = np.asarray(ds.labels).astype(np.int16 if ds.num_classes < 2**15 else np.int32)
        self.train_mask = np.zeros(ds.num_nodes, dtype=bool)
        self.train_mask[ds.split("train")] = True
        #: every batch's subgraph (CSR rows read as ranges; degrees and a local id map: 8 B per node, in the baseline)
        self.subgraphs = SubgraphBuilder(self.indptr, self.indices, cfg.io.io_engine)

        self._build_ring()
        if dist.active:
            log.info("rank %d of %d, halo exchange %s: a halo row may miss other ranks' pushes of the last %d "
                     "step(s)", dist.rank, dist.world_size, dist.exchange, self.peer_lag_bound())
        self._pool: ThreadPoolExecutor | None = None
        self.cache = None  # feature cache, attached by oocgnn.cache when the budget allows
        self.hist_caches: list | None = None  # per-table history caches (same attach)
        self.last_stats = IOStats()
        #: gradient norm before clipping at the last step (a device scalar: read at the epoch's end)
        self.last_grad_norm: torch.Tensor | None = None
        #: per layer of the last layer-wise inference: "stream", "scan", "gather" or "ram" (oocgnn.train.stream)
        self.inference_paths: list[str] = []

    @property
    def split(self) -> RankSplit:
        """This rank's share of every epoch plan (one process: the whole plan)."""
        return self.dist.split

    # ------------------------------------------------------------ staging ring
    def _build_ring(self) -> None:
        halo = partition_halo_sizes(self.indptr, self.indices, self.partition_ptr, self.cfg.io.io_engine)
        self.partition_halo = halo  #: halo size of each partition (scanned sweeps estimate gathers from it)
        self.max_rows, self.max_halo = ring_rows_bound(self.partition_ptr, halo, self.cfg.train.parts_per_batch)
        width = max([self.ds.num_features, *self.model.history_channels])
        dev = self.devops
        pin = dev.asynchronous  # page-locked, and every tensor of a batch in the slot (its arena)
        sizes = np.sort(np.diff(self.partition_ptr))[::-1]
        self.max_batch_rows = int(sizes[: max(1, self.cfg.train.parts_per_batch)].sum())
        aux = arena_bytes(self.max_rows, self.max_batch_rows,
                          batch_edges_bound(self.indptr, self.partition_ptr, self.cfg.train.parts_per_batch)
                          + self.max_batch_rows, self.model.uses_adj_transpose, self.model.uses_edge_index) if pin else 0
        per_slot = (self.max_rows * width + self.max_halo * sum(self.model.history_channels)) * 4 + aux
        dev.warm_up()  # the device libraries' host memory belongs to the baseline the plan measures
        # the whole budget is planned here (ring, batch CSR, builder, activations, cache room; the device's memory)
        self.memory_plan = plan_memory(self, halo, per_slot)
        self.prefetch_depth = self.memory_plan["prefetch_depth"]
        self._releaser.set_window(self.memory_plan["mapped_window_bytes"])  # what the engine in use maps
        self.histories._max_pending = self.memory_plan["write_behind_pending"]
        n_slots = self.prefetch_depth + 1
        alloc = dev.alloc_pinned if pin else None
        self.slots = [Slot(self.max_rows, self.max_halo, width, list(self.model.history_channels), pin, alloc, aux)
                      for _ in range(n_slots)]
        self.ring_bytes = per_slot * n_slots
        # device-side patches of halo rows and device-to-host pushes, through page-locked buffers
        self.patches = PatchStager(dev) if pin else None
        self.pushes = PushStager(dev, self.max_batch_rows, sum(self.model.history_channels) or 1) if pin else None
        self._loss_host = dev.alloc_pinned(4).view(torch.float32) if pin else None
        log.info("staging ring: %d slots x %s (max %d rows, %d halo)", n_slots, format_size(per_slot),
                 self.max_rows, self.max_halo)

    @property
    def pool(self) -> ThreadPoolExecutor | None:
        if self.cfg.io.io_threads <= 1:
            return None
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.cfg.io.io_threads, thread_name_prefix="oocgnn-io")
        return self._pool

    def plan(self, epoch: int) -> list[list[tuple[int, int]]]:
        groups = self.split.groups(len(self.partition_ptr) - 1, self.cfg.train.parts_per_batch, self.cfg.train.seed,
                                   epoch)
        return [group_ranges(self.partition_ptr, g) for g in groups]

    def epoch_loader(self) -> BatchLoader:
        """The loader of a training epoch: features and halo history rows of every table, through the caches."""
        return BatchLoader(self.indptr, self.indices, self.features, self.histories,
                           list(range(len(self.histories))), self.pool, self.cfg.io.io_threads, self.cache,
                           self.hist_caches, io_engine=self.cfg.io.io_engine, subgraphs=self.subgraphs,
                           transpose=self.model.uses_adj_transpose)

    def prefetcher(self, plan: list, loader: BatchLoader) -> DeviceFeed:
        """The plan's batches on the device: read ahead by a :class:`Prefetcher`, copied by a :class:`DeviceFeed`."""
        depth = min(self.cfg.io.prefetch, self.prefetch_depth)  # the memory plan may have lowered it
        if self.dist.lockstep:
            depth = 0  # a read ahead would race other ranks' pushes
        pf = Prefetcher(loader, plan, self.slots, depth, self.labels, self.train_mask, self.device,
                        self.cfg.io.staleness_bound, step_fn=lambda: self.state.global_step,
                        edge_index=self.model.uses_edge_index, early_release=self.early_release)
        return DeviceFeed(pf, self.devops, self.lookahead, self.patches)

    @property
    def lookahead(self) -> int:
        """Batches copied to the device ahead of the one computing: 1 on an asynchronous device, unless ranks
        work in lockstep (a batch read ahead would miss other ranks' pushes)."""
        return 1 if self.devops.asynchronous and not self.dist.lockstep else 0

    def push(self, histories: HistorySet, values: list[torch.Tensor], **kwargs: Any) -> int:
        """``histories.push`` of device values: through page-locked buffers and an event on an asynchronous device."""
        if self.pushes is None:
            return histories.push(values, **kwargs)
        return self.pushes.push(histories, values, **kwargs)

    @property
    def early_release(self) -> bool:
        """Read the next batch while this one runs backward (see :class:`Prefetcher`): one process, read-ahead on.

        Several ranks keep the read-ahead depth that :meth:`peer_lag_bound` states.
        """
        return self.cfg.io.prefetch > 0 and not self.dist.active and not self.devops.asynchronous

    # --------------------------------------------------------------- training
    def train_step(self, batch: SubgraphBatch) -> float:
        """Forward, backward (task + policy loss), clipped Adam step on one batch, then push its rows.

        Returns the loss (NaN when the batch has no labelled node).  On an asynchronous device
        the loss is copied to the host before backward is queued, and read (it must be finite
        before the step changes the model) while the device runs the backward pass.
        """
        model, opt, policy = self.model, self.optimizer, self.policy
        model.train()
        opt.zero_grad(set_to_none=True)
        policy.before_train(batch, self.state.global_step)
        # positions taken on the host: boolean indexing on a device would wait for it to count them
        mask = batch.train_index if batch.train_index is not None else batch.train_mask
        labelled = batch.num_labelled if batch.num_labelled is not None else int(batch.train_mask.sum())
        loss_value = float("nan")
        with saved_storages():
            logits, pushes = model(batch)
            if labelled:
                loss = F.cross_entropy(logits[mask], batch.y[mask])
                extra = policy.extra_loss(logits, batch)
            if batch.release_staging is not None:
                batch.release_staging("all", [])  # the loader reads the next batch during backward
        if labelled:
            read_loss = self._loss_reader(loss)
            (loss if extra is None else loss + extra).backward()
            policy.after_backward(batch, labelled)
            loss_value = read_loss()
            if not math.isfinite(loss_value):
                self._stop_non_finite(loss_value, batch)
        self._optimizer_step(labelled)
        if pushes:
            policy.before_push(self.histories, batch, pushes)
            self.push(self.histories, pushes, step=self.state.global_step, ranges=batch.ranges)
        self._share_pushes(batch.ranges, pushes)
        policy.after_train(batch, logits)
        self.state.global_step += 1
        return loss_value

    def _loss_reader(self, loss: torch.Tensor) -> Callable[[], float]:
        """``float(loss)`` later: on an asynchronous device its copy to the host is queued now, so reading it
        after backward is queued waits for the forward pass only (the device stays busy with backward)."""
        if self._loss_host is None:
            return lambda: float(loss.detach())
        event = self.devops.to_host_async(loss.detach().reshape(1), self._loss_host)

        def read() -> float:
            self.devops.synchronize(event)
            return float(self._loss_host[0])
        return read

    def _stop_non_finite(self, loss_value: float, batch: SubgraphBatch) -> None:
        """Stop before a NaN/inf gradient reaches the parameters: the checkpoints so far stay good.

        A NaN feature row, an overflowing fp16 history or a too-high learning rate all end
        here; training on would silently produce a model at chance accuracy.
        """
        st = self.state
        raise NonFiniteLossError(
            f"the training loss became {loss_value} at step {st.global_step} (epoch {st.epoch + 1}, batch "
            f"{st.position + 1}, store rows {_ranges_text(batch.ranges)}); stopped before that step changed the "
            f"model, checkpoints before it are kept; look for NaN/inf features with `oocgnn inspect STORE --verify`, "
            f"or lower --lr / set --grad-clip")

    def _optimizer_step(self, labelled: int) -> None:
        """(All-reduce,) clip and step; no step when no rank had a labelled node.

        Several ranks: on the shared-files path this rank's pushes land first, so at the
        all-reduce of step k every rank's pushes up to step k-1 are in the tables.
        """
        if self.dist.active:
            if self.exchange is None:
                self.histories.flush()
            labelled = self.dist.sync_gradients(list(self.model.parameters()), labelled)
        if not labelled:
            return
        if self.cfg.train.grad_clip > 0:  # kept on the device: read at the epoch's end
            self.last_grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.grad_clip)
        self.optimizer.step()

    def idle_step(self) -> None:
        """A step of a rank whose share of the epoch is used up: no batch, but every collective."""
        self.optimizer.zero_grad(set_to_none=True)
        self._optimizer_step(0)
        self._share_pushes([], None)
        self.state.global_step += 1

    def _share_pushes(self, ranges: list, pushes: list[torch.Tensor] | None) -> None:
        """Several ranks: start shipping this step's rows (all-to-all), or land them for all (lockstep)."""
        if self.exchange is not None:
            self.exchange.after_step(ranges, pushes, self.state.global_step)
        elif self.dist.lockstep:
            self.histories.flush()
            self.dist.barrier()

    @torch.inference_mode()
    def refresh(self, batch: SubgraphBatch) -> None:
        """Forward-only pass that pushes every table (no parameter update).

        Eval semantics (no dropout, BN running stats untouched) unless the policy asks
        for training semantics (``--refresh-train-mode``).
        """
        was_training = self.model.training
        self.model.train(bool(self.policy.refresh_train_mode))
        try:
            _, pushes = self.model(batch)
        finally:
            self.model.train(was_training)
        if pushes:
            self.policy.before_push(self.histories, batch, pushes)
            self.push(self.histories, pushes, step=self.state.global_step, ranges=batch.ranges)
        self.policy.after_refresh(batch)

    def exact_histories(self) -> HistorySet:
        """Every table recomputed exactly with the current parameters, in scratch tables.

        The training tables and their last-push steps stay untouched (true-staleness metric).
        """
        from oocgnn.train.evaluate import _scratch, layerwise_inference

        layerwise_inference(self, refresh=False)
        return _scratch(self)

    def fill_histories(self) -> None:
        """One exact layer-wise inference into the training tables, so no row is zero at step 0.

        GAS does this before its first epoch; without it the first epoch's halos read
        zeros (``--no-fill-histories`` keeps that behaviour).
        """
        from oocgnn.train.evaluate import layerwise_inference

        journal = self.histories.journal  # its old rows are never needed (see UndoJournal.not_saving)
        with journal.not_saving() if journal is not None else contextlib.nullcontext():
            layerwise_inference(self, refresh=True, tables_only=True)  # flushes: every push has landed

    def train_epoch(self, on_batch: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Run the rest of ``state.epoch``: every action of the policy's plan, read ahead by one prefetcher."""
        st = self.state
        fill_s = None
        if (self.cfg.train.fill_histories and st.epoch == 0 and st.position == 0 and st.global_step == 0
                and len(self.histories)):
            t_fill = time.perf_counter()
            if self.dist.is_main or self.dist.owns_rows:  # shared tables: rank 0 fills them for everyone
                self.fill_histories()
            self.dist.barrier()
            fill_s = time.perf_counter() - t_fill
        t0 = time.perf_counter()
        actions = self.policy.plan_epoch(self)
        loader = self.epoch_loader()
        begin_epoch_caches(self, [a.ranges for a in actions])
        written0 = self.histories.bytes_written
        pf = self.prefetcher([a.ranges for a in actions], loader)
        losses: list[float] = []
        ages = AgeTally()
        for action, batch in zip(actions, pf):
            if action.kind == "train":
                ages.add(batch.hist_age)
                losses.append(self.train_step(batch))
            else:
                self.refresh(batch)
            self.policy.advance(st, action)
            if on_batch is not None:
                on_batch({"loss": losses[-1] if losses else float("nan"), "io_wait_s": pf.stats.io_wait_s})
        while st.position < self.batches_per_epoch and self.dist.active:  # this rank's share ran out
            self.idle_step()
            st.position += 1
            if on_batch is not None:
                on_batch({"loss": float("nan"), "io_wait_s": pf.stats.io_wait_s})
        loader.close()  # the plan is read: its file descriptors and history-gather thread go now, not at GC
        end_epoch_caches(self)  # and the caches' read-ahead of it; the dropout buffers of its steps too, so a
        self.model.release_buffers()  # sweep after the epoch finds the room the plan counts (~1 GB at 50 M nodes)
        self.drain_exchange()
        self.histories.flush()
        self.dist.barrier()  # every rank's pushes of the epoch are in the tables before rank 0 evaluates
        st.epoch += 1
        st.position = 0
        stats = pf.stats
        self.last_stats = stats
        elapsed = time.perf_counter() - t0
        finite = [v for v in losses if not math.isnan(v)]
        rec: dict[str, Any] = {
            "epoch": st.epoch, "step": st.global_step, "loss": float(np.mean(finite)) if finite else float("nan"),
            "epoch_time_s": elapsed, "train_batches": len(losses),
            **({"fill_histories_s": fill_s} if fill_s is not None else {}),
            **read_path_record(stats, elapsed, self.histories.bytes_written - written0), **ages.record()}
        if self.cfg.train.grad_clip > 0:
            rec["grad_norm_last"] = None if self.last_grad_norm is None else float(self.last_grad_norm)
        if self.dist.active:
            rec["world_size"] = self.dist.world_size
            rec["peer_lag_bound_steps"] = self.peer_lag_bound()
            if self.exchange is not None:
                rec["exchange_bytes_sent"] = self.exchange.bytes_sent
                rec["exchange_rows_received"] = self.exchange.rows_received
        rec.update(caches_epoch_metrics(self))
        rec.update(self.policy.epoch_record(self))
        return rec

    def epoch_length(self, epoch: int) -> int:
        """Passes (training steps + refreshes) of ``epoch`` from the start (progress bars)."""
        steps = self.batches_per_epoch if self.dist.active else len(self.plan(epoch))
        return self.policy.epoch_length(steps, self.state.global_step)

    def peer_lag_bound(self) -> int:
        """Steps by which a halo read may miss another rank's newest pushes (0 = exact, as one process).

        The batch of step j is gathered from the start of step j - d on (d = read-ahead
        depth).  Shared files: at the all-reduce of step i every rank's pushes up to i - 1
        have landed, so that gather sees every push up to j - d - 2 (one more step back when the
        device copies a batch ahead: :attr:`lookahead`).  All-to-all: rows
        pushed at step i land on their readers at the end of step i + 1, the same bound.
        Lockstep (deterministic, shared files): pushes land for everyone before the next read.
        """
        if not self.dist.active or self.dist.lockstep:
            return 0
        return min(self.cfg.io.prefetch, self.prefetch_depth) + 1 + self.lookahead

    def drain_exchange(self) -> None:
        """Land the halo exchange in flight (cross-host path): epoch ends and checkpoints."""
        if self.exchange is not None:
            self.exchange.drain()

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Everything resume needs besides the on-disk tables (journaled) and numpy/python RNGs.

        ``staleness``: the controller's state (VISAGNN gradient table, which rows the
        staleness loss wrote, the metrics of the epoch so far, and the loss table itself
        when it lives in RAM; see :meth:`StalenessControl.state_dict`).
        """
        return {"version": STATE_VERSION, "state": asdict(self.state), "model": copy.deepcopy(self.model.state_dict()),
                "optimizer": copy.deepcopy(self.optimizer.state_dict()), "torch_rng": torch.get_rng_state(),
                "cuda_rng": cuda_rng_state(self.device), "staleness": self.policy.state_dict()}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        if sd.get("version") != STATE_VERSION:
            raise ValueError(f"trainer state version {sd.get('version')} != {STATE_VERSION}")
        self.state = TrainState(**sd["state"])
        self.model.load_state_dict(sd["model"])
        self.optimizer.load_state_dict(sd["optimizer"])
        torch.set_rng_state(sd["torch_rng"])
        set_cuda_rng_state(self.device, sd.get("cuda_rng"))
        if sd.get("staleness") is not None:
            self.policy.load_state_dict(sd["staleness"])

    def journaled_tables(self) -> list[Any]:
        """On-disk tables besides the histories that the checkpoint undo journal must cover.

        VISAGNN's staleness-loss table (``RUN/histories/stale_out.npy``) is overwritten at
        every training step, exactly like a history table, so it is journaled like one.
        """
        return self.policy.journaled_tables()

    def attach_journal(self, journal: Any, first_index: int, steps: list[np.ndarray]) -> None:
        """Route writes of :meth:`journaled_tables` through ``journal`` (indices from ``first_index``)."""
        self.policy.attach_journal(journal, first_index, steps)

    def close(self) -> None:
        """Land pending pushes, join the writer threads, the I/O pool and the page releaser."""
        self.histories.close()
        self.policy.close()
        self.subgraphs.close()
        scratch = getattr(self, "_eval_scratch", None)
        if scratch is not None:
            scratch.close()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        if self._own_device:
            self.devops.close()
        self._stop_releaser()


def _ranges_text(ranges: list[tuple[int, int]]) -> str:
    return ", ".join(f"[{s}, {e})" for s, e in ranges)
