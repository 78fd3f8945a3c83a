"""A whole training run: epochs, evaluation, best-valid model, metrics and summary.

Files in ``RUN/``: ``config.toml`` (resolved), ``histories/`` (tables),
``metrics.jsonl`` (one line per epoch), ``best_model.pt`` (state of the best-valid
model), ``predictions.npy`` (its predictions by original node id), and
``summary.json`` at the end.  Progress is reported through callbacks so the
library never writes to the terminal.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable

import torch

from oocgnn.config import save_config
from oocgnn.train.evaluate import evaluate, export_predictions
from oocgnn.train.loop import Trainer
from oocgnn.train.metrics import MetricsLog, write_summary
from oocgnn.utils.atomic import atomic_output
from oocgnn.utils.memory import PeakRSSMonitor, current_anon_rss, current_rss

log = logging.getLogger(__name__)

CONFIG = "config.toml"
BEST_MODEL = "best_model.pt"
PREDICTIONS = "predictions.npy"

#: ``progress(epoch, num_batches)`` returns a per-batch callback and a closer.
ProgressFactory = Callable[[int, int], tuple[Callable[[dict[str, Any]], None], Callable[[], None]]]


def save_torch(obj: Any, path: Path) -> None:
    """``torch.save`` atomically (temp, fsync, rename): a crash never leaves half a model."""
    with atomic_output(path) as tmp:
        torch.save(obj, tmp)


def fit(trainer: Trainer, progress: ProgressFactory | None = None, session: Any = None) -> dict[str, Any]:
    """Train ``cfg.train.epochs`` epochs, evaluating every ``eval_every``; returns the summary.

    ``session`` (an :class:`oocgnn.checkpoint.RunSession`, already attached) gets
    the step/epoch boundary hooks: checkpoints, stop on SIGTERM, final model.
    With several ranks every rank trains; rank 0 alone evaluates and writes the run's
    files (config, metrics, best model, predictions, summary).
    """
    cfg = trainer.cfg
    preds = None
    main = trainer.dist.is_main
    run_dir = trainer.run_dir if main else None
    metrics = MetricsLog(run_dir) if run_dir is not None else None
    if run_dir is not None:
        save_config(cfg, run_dir / CONFIG)
    log.info("eval refresh: %s", "on (evaluation sweeps refresh the training histories)" if cfg.eval.eval_refresh
             else "off (evaluation uses scratch tables)")
    t_start = time.perf_counter()
    records = []
    with PeakRSSMonitor() as rss:
        while trainer.state.epoch < cfg.train.epochs:
            epoch = trainer.state.epoch
            total = trainer.epoch_length(epoch)
            cb, close = progress(epoch, total) if progress else (None, lambda: None)
            if session is not None:
                cb = _with_step_hook(cb, session, trainer)
            try:
                rec = trainer.train_epoch(cb)
            finally:
                close()
            if main and (trainer.state.epoch % cfg.eval.eval_every == 0 or trainer.state.epoch == cfg.train.epochs):
                t_eval = time.perf_counter()
                accs, preds = evaluate(trainer, refresh=cfg.eval.eval_refresh)
                rec.update(accs)
                rec["eval_time_s"] = time.perf_counter() - t_eval
                rec["inference_paths"] = list(getattr(trainer, "inference_paths", []))  # stream / gather per layer
                if accs["valid_acc"] > trainer.state.best_valid_acc:
                    trainer.state.best_valid_acc = accs["valid_acc"]
                    trainer.state.best_epoch = trainer.state.epoch
                    trainer.state.test_acc_at_best_valid = accs["test_acc"]
                    trainer.best_model_state = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
                    if run_dir is not None:
                        save_torch(trainer.best_model_state, run_dir / BEST_MODEL)
                        export_predictions(trainer.ds, preds, run_dir / PREDICTIONS)
            trainer.dist.barrier()  # shared tables: rank 0's evaluation sweep wrote them; train on after it
            rss.sample()
            rec["rss_bytes"] = current_rss()
            rec["peak_rss_bytes"] = rss.peak  # includes file-backed memmap pages (reclaimable page cache)
            rec["anon_rss_bytes"] = current_anon_rss()
            rec["peak_anon_rss_bytes"] = rss.peak_anon  # what --memory-budget bounds
            rec["eval_refresh"] = cfg.eval.eval_refresh
            records.append(rec)
            if metrics is not None:
                metrics.append(rec)
            log.debug("epoch %d: %s", rec["epoch"], rec)
            if session is not None:
                session.after_epoch(trainer)
    if session is not None:
        session.finish(trainer, preds)
    summary = {
        "best_valid_acc": trainer.state.best_valid_acc, "test_acc_at_best_valid": trainer.state.test_acc_at_best_valid,
        "best_epoch": trainer.state.best_epoch, "epochs": trainer.state.epoch, "steps": trainer.state.global_step,
        "time_s": time.perf_counter() - t_start, "peak_rss_bytes": rss.peak, "peak_anon_rss_bytes": rss.peak_anon,
        "memory_budget_bytes": trainer.budget, "memory_plan": getattr(trainer, "memory_plan", None),
        "staging_ring_bytes": trainer.ring_bytes, "eval_refresh": cfg.eval.eval_refresh,
        "io_wait_s": sum(r["io_wait_s"] for r in records),
        "train_time_s": sum(r["epoch_time_s"] for r in records),
        "store_checksum": getattr(trainer.ds, "checksum", None), "world_size": trainer.dist.world_size,
    }
    if run_dir is not None:
        write_summary(run_dir, summary)
    return summary


def _with_step_hook(cb: Callable[[dict[str, Any]], None] | None, session: Any, trainer: Trainer):
    def on_batch(info: dict[str, Any]) -> None:
        if cb is not None:
            cb(info)
        session.after_step(trainer)
    return on_batch
