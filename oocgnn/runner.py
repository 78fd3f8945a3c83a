"""Assembles a trainer for a run config: the epoch policy plugged into the one trainer.

The trainer (:mod:`oocgnn.train`) and the staleness methods (:mod:`oocgnn.staleness`)
never import each other; this module, above both, builds the policy the config
asks for (:class:`~oocgnn.staleness.control.StalenessControl`, which also measures
staleness for plain GAS) and hands it to :class:`~oocgnn.train.loop.Trainer`.  The
CLI, checkpoint resume, benchmarks and tests all build trainers through here.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from oocgnn.config import RunConfig
from oocgnn.device import Device
from oocgnn.staleness.control import StalenessControl
from oocgnn.train.dist import SINGLE, DistContext, check_supported
from oocgnn.train.loop import Trainer


def make_policy(ds: Any, cfg: RunConfig, run_dir: Path | None, dist: DistContext = SINGLE) -> StalenessControl:
    """The staleness policy of ``cfg.staleness`` for dataset ``ds`` (tables under ``run_dir``)."""
    check_supported(cfg, dist.world_size)
    in_mem = cfg.io.in_memory or run_dir is None
    return StalenessControl(cfg.staleness, ds.num_nodes, ds.indptr, ds.indices, ds.partition_ptr,
                            cfg.train.parts_per_batch, cfg.train.seed, cfg.model.layers - 1, ds.num_classes,
                            None if in_mem else Path(run_dir), split=dist.split)


def make_trainer(ds: Any, cfg: RunConfig, run_dir: str | Path | None, caches: bool = True,
                 model: torch.nn.Module | None = None, dist: DistContext = SINGLE, device: Device | None = None) -> Trainer:
    """Trainer with its policy, plus the hot-row caches when ``caches`` and the budget allow.

    ``device``: the :class:`~oocgnn.device.Device` to compute on (default: made from ``--device``).
    """
    run_dir = Path(run_dir) if run_dir is not None else None
    trainer = Trainer(ds, cfg, run_dir, model=model, policy=make_policy(ds, cfg, run_dir, dist), dist=dist,
                      device=device)
    if caches and cfg.io.cache != "none" and cfg.io.cache_fraction > 0:
        from oocgnn.train.caches import attach_row_caches

        attach_row_caches(trainer)
    return trainer
