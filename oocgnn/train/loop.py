"""The GAS trainer: explicit state, one training step, one forward-only refresh.

Everything that decides what happens next lives in :class:`TrainState` (epoch,
position in the epoch plan, global step, best-valid bookkeeping) plus the model,
optimizer and torch RNG states, so :meth:`Trainer.state_dict` /
:meth:`Trainer.load_state_dict` capture a run exactly (crash-safe resume builds on
this).  The epoch plan is a pure function of ``(seed, epoch)`` and is recomputed,
never stored.

:meth:`Trainer.train_step` does forward + backward + Adam step + push;
:meth:`Trainer.refresh` is forward-only under ``inference_mode`` and pushes every
table (REST-style schedules call it between training steps).  Batches without
training labels still forward and push: skipping them (as the GAS reference code
does) would leave their histories stale forever.
"""
from __future__ import annotations

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
from oocgnn.batching import epoch_plan, group_ranges, partition_halo_sizes
from oocgnn.errors import ConfigError
from oocgnn.history import HistorySet
from oocgnn.models import build_model
from oocgnn.cache import begin_epoch_caches, caches_epoch_metrics
from oocgnn.prefetch import BatchLoader, IOStats, Prefetcher, Slot, advise_random, ring_rows_bound
from oocgnn.staleness.control import StalenessControl
from oocgnn.train.budget import mapped_window, plan_memory
from oocgnn.train.config import RunConfig
from oocgnn.utils.mapped import MappedPageReleaser
from oocgnn.utils.memory import format_size, resolve_budget

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
    """

    def __init__(self, ds: Any, cfg: RunConfig, run_dir: str | Path | None = None,
                 model: torch.nn.Module | None = None) -> None:
        self.ds, self.cfg = ds, cfg
        self.budget = resolve_budget(cfg.io.memory_budget)
        # memmapped store/history pages count in RSS: keep them under a window of the budget from the
        # first read on (the halo sizes below already scan the whole CSR); stopped by close() or GC
        self._releaser = MappedPageReleaser(mapped_window(self.budget)).__enter__()
        self._stop_releaser = weakref.finalize(self, self._releaser.__exit__)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.device = torch.device(cfg.io.device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError("--device cuda requested but this torch build has no CUDA device; use --device cpu")
        in_mem = cfg.io.in_memory or self.run_dir is None
        m = cfg.model
        # staleness control (REST / REST-IS / VISAGNN schedule, metrics and VISAGNN state); --method gas
        # trains exactly the plain GAS epoch.  Built before the model: it owns VISAGNN's model.
        self.staleness = StalenessControl(
            cfg.staleness, ds.num_nodes, ds.indptr, ds.indices, ds.partition_ptr, cfg.train.parts_per_batch,
            cfg.train.seed, m.layers - 1, ds.num_classes, None if in_mem else self.run_dir)
        torch.manual_seed(cfg.train.seed)
        if model is None:
            model = self.staleness.build_model(m.name, ds.num_features, m.hidden, ds.num_classes, m.layers,
                                               dropout=m.dropout, batch_norm=m.batch_norm)
        self.model = model if model is not None else build_model(
            m.name, ds.num_features, m.hidden, ds.num_classes, m.layers, dropout=m.dropout, batch_norm=m.batch_norm)
        self.model.to(self.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
        self.state = TrainState()

        hist_dir = None if in_mem else self.run_dir / "histories"
        self.histories = HistorySet(ds.num_nodes, list(self.model.history_channels), cfg.io.history_dtype, hist_dir)
        self.features = np.ascontiguousarray(ds.features) if cfg.io.in_memory else ds.features
        self.indptr = np.asarray(ds.indptr) if cfg.io.in_memory else ds.indptr
        self.indices = np.asarray(ds.indices) if cfg.io.in_memory else ds.indices
        if not cfg.io.in_memory:
            advise_random(self.features)
            for t in self.histories.tables:
                advise_random(t.array)
        self.labels = np.asarray(ds.labels).astype(np.int64)
        self.train_mask = np.zeros(ds.num_nodes, dtype=bool)
        self.train_mask[ds.split("train")] = True
        self.partition_ptr = np.asarray(ds.partition_ptr, dtype=np.int64)

        self._build_ring()
        self._pool: ThreadPoolExecutor | None = None
        self.cache = None  # feature cache, attached by oocgnn.cache when the budget allows
        self.hist_caches: list | None = None  # per-table history caches (same attach)
        self.last_stats = IOStats()

    # ------------------------------------------------------------ staging ring
    def _build_ring(self) -> None:
        halo = partition_halo_sizes(self.indptr, self.indices, self.partition_ptr)
        self.max_rows, self.max_halo = ring_rows_bound(self.partition_ptr, halo, self.cfg.train.parts_per_batch)
        width = max([self.ds.num_features, *self.model.history_channels])
        pin = self.device.type == "cuda"
        per_slot = (self.max_rows * width + self.max_halo * sum(self.model.history_channels)) * 4
        # the whole budget is planned here (ring, batch CSR, builder, activations, cache room)
        self.memory_plan = plan_memory(self, halo, per_slot)
        self.prefetch_depth = self.memory_plan["prefetch_depth"]
        n_slots = self.prefetch_depth + 1
        self.slots = [Slot(self.max_rows, self.max_halo, width, list(self.model.history_channels), pin)
                      for _ in range(n_slots)]
        self.ring_bytes = per_slot * n_slots
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
        groups = epoch_plan(len(self.partition_ptr) - 1, self.cfg.train.parts_per_batch, self.cfg.train.seed, epoch)
        return [group_ranges(self.partition_ptr, g) for g in groups]

    def prefetcher(self, plan: list, loader: BatchLoader) -> Prefetcher:
        depth = min(self.cfg.io.prefetch, self.prefetch_depth)  # the memory plan may have lowered it
        return Prefetcher(loader, plan, self.slots, depth, self.labels, self.train_mask, self.device,
                          self.cfg.io.staleness_bound, step_fn=lambda: self.state.global_step)

    # --------------------------------------------------------------- training
    def train_step(self, batch: SubgraphBatch) -> float:
        """Forward, backward and Adam step on one batch, then push its rows."""
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        logits, pushes = self.model(batch)
        mask = batch.train_mask
        loss_value = float("nan")
        if bool(mask.any()):
            loss = F.cross_entropy(logits[mask], batch.y[mask])
            loss.backward()
            self.optimizer.step()
            loss_value = float(loss.detach())
        if pushes:
            self.histories.push(pushes, step=self.state.global_step, ranges=batch.ranges)
        self.state.global_step += 1
        return loss_value

    @torch.inference_mode()
    def refresh(self, batch: SubgraphBatch, eval_semantics: bool = True) -> None:
        """Forward-only pass that pushes every table (no parameter update).

        ``eval_semantics`` (default) disables dropout and leaves BN running stats alone.
        """
        was_training = self.model.training
        self.model.train(not eval_semantics)
        try:
            _, pushes = self.model(batch)
        finally:
            self.model.train(was_training)
        if pushes:
            self.histories.push(pushes, step=self.state.global_step, ranges=batch.ranges)

    def train_epoch(self, on_batch: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Train the rest of ``state.epoch`` under the staleness controller (``cfg.staleness``).

        With ``--method gas`` (and F = 1 for REST) the action list is the GAS epoch plan and
        the result is bitwise identical to :meth:`train_epoch_gas`; the record additionally
        carries the staleness metrics (see :mod:`oocgnn.staleness.metrics`).
        """
        from oocgnn.staleness.driver import train_epoch

        return train_epoch(self, self.staleness, on_batch)

    def epoch_length(self, epoch: int) -> int:
        """Passes (training steps + REST refreshes) of ``epoch`` from the start (progress bars)."""
        return self.staleness.epoch_length(len(self.plan(epoch)), self.state.global_step)

    def train_epoch_gas(self, on_batch: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """The plain GAS epoch without the staleness controller (reference oracle for tests).

        Trains from ``state.position`` to the end of ``state.epoch``'s plan.
        """
        t0 = time.perf_counter()
        plan = self.plan(self.state.epoch)
        loader = BatchLoader(self.indptr, self.indices, self.features, self.histories,
                             list(range(len(self.histories))), self.pool, self.cfg.io.io_threads, self.cache,
                             getattr(self, "hist_caches", None), io_engine=self.cfg.io.io_engine)
        begin_epoch_caches(self, plan[self.state.position:])
        written0 = self.histories.bytes_written
        pf = self.prefetcher(plan[self.state.position:], loader)
        losses, ages_sum, ages_n, never = [], 0, 0, 0
        for batch in pf:
            for a in batch.hist_age:
                a = a.numpy()
                never += int((a < 0).sum())
                ages_sum += int(a[a >= 0].sum())
                ages_n += int((a >= 0).sum())
            losses.append(self.train_step(batch))
            self.state.position += 1
            if on_batch is not None:
                on_batch({"loss": losses[-1], "io_wait_s": pf.stats.io_wait_s})
        self.histories.flush()
        self.state.epoch += 1
        self.state.position = 0
        st = pf.stats
        self.last_stats = st
        elapsed = time.perf_counter() - t0
        finite = [v for v in losses if not math.isnan(v)]
        rec = {"epoch": self.state.epoch, "step": self.state.global_step,
               "loss": float(np.mean(finite)) if finite else float("nan"),
               "epoch_time_s": elapsed, "io_wait_s": st.io_wait_s,
               "io_wait_fraction": st.io_wait_s / elapsed if elapsed > 0 else 0.0,
               "batches": st.batches, "bytes_read": st.feature_bytes + st.history_bytes + st.csr_bytes,
               "bytes_written": self.histories.bytes_written - written0,
               "history_bytes_read": st.history_bytes, "feature_bytes_read": st.feature_bytes,
               "halo_rows": st.halo_rows, "batch_rows": st.batch_rows,
               "patched_from_pending": st.patched_pending, "patched_from_table": st.patched_table,
               "stale_rows_read": st.stale_rows,
               "hist_age_mean": ages_sum / ages_n if ages_n else None,
               "hist_never_written": never}
        rec.update(caches_epoch_metrics(self))
        return rec

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Everything resume needs besides the on-disk tables (journaled) and numpy/python RNGs.

        ``staleness``: the controller's state (VISAGNN gradient table, which rows the
        staleness loss wrote, the metrics of the epoch so far, and the loss table itself
        when it lives in RAM; see :meth:`StalenessControl.state_dict`).
        """
        return {"version": STATE_VERSION, "state": asdict(self.state), "model": copy.deepcopy(self.model.state_dict()),
                "optimizer": copy.deepcopy(self.optimizer.state_dict()), "torch_rng": torch.get_rng_state(),
                "staleness": self.staleness.state_dict()}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        if sd.get("version") != STATE_VERSION:
            raise ValueError(f"trainer state version {sd.get('version')} != {STATE_VERSION}")
        self.state = TrainState(**sd["state"])
        self.model.load_state_dict(sd["model"])
        self.optimizer.load_state_dict(sd["optimizer"])
        torch.set_rng_state(sd["torch_rng"])
        if sd.get("staleness") is not None:
            self.staleness.load_state_dict(sd["staleness"])

    def journaled_tables(self) -> list[Any]:
        """On-disk tables besides the histories that the checkpoint undo journal must cover.

        VISAGNN's staleness-loss table (``RUN/histories/stale_out.npy``) is overwritten at
        every training step, exactly like a history table, so it is journaled like one.
        """
        return self.staleness.journaled_tables()

    def attach_journal(self, journal: Any, first_index: int, steps: list[np.ndarray]) -> None:
        """Route writes of :meth:`journaled_tables` through ``journal`` (indices from ``first_index``)."""
        self.staleness.attach_journal(journal, first_index, steps)

    def close(self) -> None:
        """Land pending pushes, join the writer threads, the I/O pool and the page releaser."""
        self.histories.close()
        self.staleness.close()
        scratch = getattr(self, "_eval_scratch", None)
        if scratch is not None:
            scratch.close()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self._stop_releaser()
