"""One epoch of staleness-controlled training on a :class:`~oocgnn.train.loop.Trainer`.

Mirrors ``Trainer.train_epoch`` but walks the controller's action list (train
steps and forward-only REST refreshes) instead of the plain epoch plan.  The
whole list goes to one :class:`~oocgnn.prefetch.Prefetcher`, so refresh batches
are read ahead exactly like training batches (the push log keeps those reads
exact).  With ``--method gas`` the action list *is* the GAS plan and the step is
the GAS step (plus metrics), so results are identical.
"""
from __future__ import annotations

import math
import time
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from oocgnn.batch import SubgraphBatch
from oocgnn.cache import begin_epoch_caches, caches_epoch_metrics
from oocgnn.prefetch import BatchLoader
from oocgnn.staleness.control import StalenessControl


def train_step(trainer: Any, control: StalenessControl, batch: SubgraphBatch) -> float:
    """Forward, backward (task + staleness loss), Adam step, push; metrics on the way."""
    model, opt, hs = trainer.model, trainer.optimizer, trainer.histories
    model.train()
    opt.zero_grad(set_to_none=True)
    control.before_train(batch, trainer.state.global_step)
    logits, pushes = model(batch)
    mask = batch.train_mask
    labelled = int(mask.sum())
    loss_value = float("nan")
    if labelled:
        loss = F.cross_entropy(logits[mask], batch.y[mask])
        extra = control.extra_loss(logits, batch)
        (loss if extra is None else loss + extra).backward()
        control.after_backward(batch, labelled)
        opt.step()
        loss_value = float(loss.detach())
    if pushes:
        control.before_push(hs, batch, pushes)
        hs.push(pushes, step=trainer.state.global_step, ranges=batch.ranges)
    control.after_train(batch, logits)
    trainer.state.global_step += 1
    return loss_value


@torch.inference_mode()
def refresh_step(trainer: Any, control: StalenessControl, batch: SubgraphBatch) -> None:
    """Forward-only REST pass pushing every table (eval semantics unless configured)."""
    model = trainer.model
    was = model.training
    model.train(bool(control.cfg.refresh_train_mode))
    try:
        _, pushes = model(batch)
    finally:
        model.train(was)
    if pushes:
        control.before_push(trainer.histories, batch, pushes)
        trainer.histories.push(pushes, step=trainer.state.global_step, ranges=batch.ranges)
    control.after_refresh(batch)


def train_epoch(trainer: Any, control: StalenessControl,
                on_batch: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run the rest of ``trainer.state.epoch``; returns the epoch record."""
    st = trainer.state
    for name in ("refresh_cursor", "refresh_pending"):
        if not hasattr(st, name):
            setattr(st, name, 0)
    t0 = time.perf_counter()
    actions = control.plan_epoch(trainer)
    loader = BatchLoader(trainer.indptr, trainer.indices, trainer.features, trainer.histories,
                         list(range(len(trainer.histories))), trainer.pool, trainer.cfg.io.io_threads, trainer.cache,
                         getattr(trainer, "hist_caches", None), io_engine=trainer.cfg.io.io_engine)
    begin_epoch_caches(trainer, [a.ranges for a in actions])
    written0 = trainer.histories.bytes_written
    pf = trainer.prefetcher([a.ranges for a in actions], loader)
    losses: list[float] = []
    ages_sum = ages_n = never = 0  # pooled over tables: the GAS trainer's hist_age_mean / hist_never_written
    for action, batch in zip(actions, pf):
        if action.kind == "train":
            for a in batch.hist_age:
                a = a.numpy()
                never += int((a < 0).sum())
                ages_sum += int(a[a >= 0].sum())
                ages_n += int((a >= 0).sum())
            losses.append(train_step(trainer, control, batch))
        else:
            refresh_step(trainer, control, batch)
        control.advance(st, action)
        if on_batch is not None:
            on_batch({"loss": losses[-1] if losses else float("nan"), "io_wait_s": pf.stats.io_wait_s})
    trainer.histories.flush()
    st.epoch += 1
    st.position = 0
    stats = pf.stats
    trainer.last_stats = stats
    elapsed = time.perf_counter() - t0
    finite = [v for v in losses if not math.isnan(v)]
    rec: dict[str, Any] = {
        "epoch": st.epoch, "step": st.global_step, "loss": float(np.mean(finite)) if finite else float("nan"),
        "epoch_time_s": elapsed, "io_wait_s": stats.io_wait_s,
        "io_wait_fraction": stats.io_wait_s / elapsed if elapsed > 0 else 0.0, "batches": stats.batches,
        "train_batches": len(losses),
        "bytes_read": stats.feature_bytes + stats.history_bytes + stats.csr_bytes,
        "bytes_written": trainer.histories.bytes_written - written0,
        "history_bytes_read": stats.history_bytes, "feature_bytes_read": stats.feature_bytes,
        "halo_rows": stats.halo_rows, "batch_rows": stats.batch_rows,
        "patched_from_pending": stats.patched_pending, "patched_from_table": stats.patched_table,
        "stale_rows_read": stats.stale_rows,
        "hist_age_mean": ages_sum / ages_n if ages_n else None, "hist_never_written": never}
    rec.update(caches_epoch_metrics(trainer))
    rec.update(control.epoch_record(trainer))
    return rec
