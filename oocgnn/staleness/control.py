"""The staleness controller: what the trainer calls, at a handful of hooks.

The trainer owns batches, histories and the optimizer; this object owns every
staleness decision so the loop stays GAS-shaped:

* :meth:`plan_epoch` - the epoch's actions (train / forward-only refresh), simulated
  from the trainer state, so the prefetcher reads refresh batches ahead too;
* :meth:`advance` - update ``TrainState`` (position, refresh cursor, refreshes owed)
  after an action ran; these fields are what resume needs;
* :meth:`before_train` / :meth:`extra_loss` / :meth:`after_backward` /
  :meth:`before_push` / :meth:`after_train` / :meth:`after_refresh` - metrics,
  VISAGNN's gradient criterion and staleness loss;
* :meth:`epoch_record` - metrics of the epoch (plus true staleness when asked).
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import torch

from oocgnn.batch import SubgraphBatch
from oocgnn.batching import RankSplit
from oocgnn.config import StalenessConfig
from oocgnn.staleness.importance import node_importance, partition_importance
from oocgnn.staleness.metrics import (StalenessMeter, enable_halo_grads, halo_grad_norms, read_rows_exact,
                                      true_staleness)
from oocgnn.staleness.schedule import (Action, RefreshSchedule, ScheduleState, partition_last_step,
                                       refreshes_after_step)
from oocgnn.staleness.visagnn import StaleLoss, StalenessTracker, VisaOptions, build_visagnn


class StalenessControl:
    """Schedule, metrics and VISAGNN state for one run (see module docstring)."""

    def __init__(self, cfg: StalenessConfig, num_nodes: int, indptr: np.ndarray, indices: np.ndarray,
                 partition_ptr: np.ndarray, parts_per_batch: int, seed: int, num_tables: int,
                 out_channels: int, run_dir: Path | None = None, split: RankSplit = RankSplit()) -> None:
        self.cfg = cfg
        self.refresh_train_mode = bool(cfg.refresh_train_mode)
        self.partition_ptr = np.asarray(partition_ptr, dtype=np.int64)
        num_parts = len(self.partition_ptr) - 1
        imp = None
        if cfg.method == "rest-is":
            self.node_importance = node_importance(indptr, indices, self.partition_ptr)
            imp = partition_importance(self.node_importance, self.partition_ptr)
        self.schedule = RefreshSchedule(num_parts, parts_per_batch, seed, cfg.method, cfg.refresh_per_step,
                                        cfg.rest_loop, imp, cfg.rest_is_uniform, split)
        self.meter = StalenessMeter(num_tables)
        self.visagnn = cfg.method == "visagnn"
        self.tracker = StalenessTracker.from_store(indptr, num_tables, cfg.visagnn_criterion) if self.visagnn else None
        self.stale_loss = None
        if self.visagnn and cfg.stale_loss_weight > 0:
            path = None if run_dir is None else str(Path(run_dir) / "histories" / "stale_out.npy")
            self.stale_loss = StaleLoss(num_nodes, out_channels, cfg.stale_loss_weight, path)
        self.want_grads = num_tables > 0
        self._step = 0  #: optimizer step of the training step in progress (journal step of the loss table)

    # ------------------------------------------------------------------ model
    def build_model(self, name: str, in_channels: int, hidden: int, out_channels: int, layers: int,
                    **kwargs: Any) -> torch.nn.Module | None:
        """The VISAGNN model for ``--method visagnn``; None = use the plain backbone."""
        if not self.visagnn:
            return None
        c = self.cfg
        options = VisaOptions(attention=c.visagnn_attention, criterion=c.visagnn_criterion, augment=c.visagnn_augment,
                              drop_threshold=c.visagnn_drop_threshold, stale_loss_weight=c.stale_loss_weight)
        return build_visagnn(name, in_channels, hidden, out_channels, layers, options,
                             self.tracker, **kwargs)

    # --------------------------------------------------------------- schedule
    def plan_epoch(self, trainer: Any) -> list[Action]:
        st = trainer.state
        hs = trainer.histories
        last = (partition_last_step(hs.last_step[0], self.partition_ptr) if len(hs)
                else np.full(len(self.partition_ptr) - 1, -1, dtype=np.int64))
        sched = ScheduleState(position=st.position, pending=getattr(st, "refresh_pending", 0),
                              cursor=getattr(st, "refresh_cursor", 0), global_step=st.global_step)
        if self.tracker is not None:
            self.tracker.epoch = st.epoch + 1
        return self.schedule.plan(st.epoch, sched, last, self.partition_ptr)

    def advance(self, state: Any, action: Action) -> None:
        """After ``action`` ran (``train_step`` already advanced ``global_step``)."""
        if self.schedule.loop == "interleave" or action.kind == "train":
            state.position += 1
            if self.schedule.loop == "extra":
                state.refresh_pending = refreshes_after_step(state.global_step - 1, self.schedule.f)
        else:
            state.refresh_cursor += 1
            state.refresh_pending -= 1

    # ------------------------------------------------------------------ hooks
    def epoch_length(self, num_batches: int, start_step: int) -> int:
        """Passes of a whole epoch of ``num_batches`` plan batches starting at ``start_step``."""
        if self.schedule.loop == "interleave":
            return num_batches
        return num_batches + sum(refreshes_after_step(g, self.schedule.f)
                                 for g in range(start_step, start_step + num_batches))

    def before_train(self, batch: SubgraphBatch, step: int) -> None:
        self._step = step
        self.meter.observe_ages(batch)
        if self.tracker is not None:
            self.tracker.step = step
        if self.want_grads and batch.halo_hist and batch.num_halo:
            enable_halo_grads(batch)

    def extra_loss(self, logits: torch.Tensor, batch: SubgraphBatch) -> torch.Tensor | None:
        return None if self.stale_loss is None else self.stale_loss(logits, batch)

    def after_backward(self, batch: SubgraphBatch, num_labelled: int) -> None:
        if not (self.want_grads and batch.halo_hist and batch.num_halo):
            return
        norms = halo_grad_norms(batch)
        self.meter.observe_grads(norms)
        if self.tracker is not None:
            self.tracker.observe(batch, norms, scale=float(max(1, num_labelled)))

    def before_push(self, histories: Any, batch: SubgraphBatch, pushes: list[torch.Tensor]) -> None:
        if not self.cfg.push_drift:
            return
        for t, new in enumerate(pushes):
            old = read_rows_exact(histories, t, batch.ranges, batch.batch_size)
            self.meter.observe_drift(t, new, old)

    def after_train(self, batch: SubgraphBatch, logits: torch.Tensor) -> None:
        if self.stale_loss is not None:
            self.stale_loss.record(logits, batch, self._step)

    def after_refresh(self, batch: SubgraphBatch) -> None:
        self.meter.observe_refresh(batch.batch_size)

    def epoch_record(self, trainer: Any) -> dict[str, Any]:
        rec = self.meter.record()
        rec["method"] = self.cfg.method
        if self.cfg.measure_true_staleness and len(trainer.histories):
            rec.update(true_staleness(trainer))
        return rec

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """What resume needs besides ``TrainState`` (which holds the schedule position / cursor).

        * ``tracker``: VISAGNN's gradient-criterion table ([N] float32 per history table);
        * ``stale_written``: rows the staleness loss has written ([N] bool);
        * ``stale_table``: the loss table itself, only when it lives in RAM (in-memory runs);
          on disk (``RUN/histories/stale_out.npy``) it is rolled back by the undo journal;
        * ``meter``: the metrics accumulated so far this epoch (metrics only).
        """
        sl = self.stale_loss
        return {"tracker": None if self.tracker is None else self.tracker.state_dict(),
                "stale_written": None if sl is None else sl.written.copy(),
                "stale_table": None if sl is None or sl.table.path is not None else sl.table.array.copy(),
                "meter": copy.deepcopy(vars(self.meter))}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        if self.tracker is not None and sd.get("tracker") is not None:
            self.tracker.load_state_dict(sd["tracker"])
        if self.stale_loss is not None and sd.get("stale_written") is not None:
            self.stale_loss.written[:] = sd["stale_written"]
        if self.stale_loss is not None and sd.get("stale_table") is not None:
            self.stale_loss.table.array[:] = sd["stale_table"]
        if sd.get("meter") is not None and sd["meter"].get("num_tables") == self.meter.num_tables:
            vars(self.meter).update(copy.deepcopy(sd["meter"]))

    # ------------------------------------------------------- journal (resume)
    def journaled_tables(self) -> list[Any]:
        """Extra on-disk tables overwritten during training (VISAGNN's staleness-loss table)."""
        if self.stale_loss is None or self.stale_loss.table.path is None:
            return []
        return [self.stale_loss.table]

    def attach_journal(self, journal: Any, first_index: int, steps: list[np.ndarray]) -> None:
        if self.stale_loss is not None and steps:
            self.stale_loss.attach_journal(journal, first_index)

    def close(self) -> None:
        if self.stale_loss is not None:
            self.stale_loss.table.flush()
