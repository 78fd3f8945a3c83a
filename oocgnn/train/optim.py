"""Adam for many batches per epoch: the step's learning rate and GAS's weight-decay groups."""
from __future__ import annotations

import math

import torch

from oocgnn.config import RunConfig


def step_lr(cfg: RunConfig, batches_per_epoch: int) -> float:
    """Adam's learning rate for ``batches_per_epoch`` optimizer steps per epoch.

    ``--lr`` is the full-batch rate.  With ``--lr-scaling sqrt`` (default) it is divided
    by sqrt(batches per epoch): Adam's square-root scaling rule for a batch that is
    1/B of the data (Malladi et al. 2022, "On the SDEs and Scaling Rules for Adaptive
    Gradient Algorithms").  Measured here (``benchmarks/bench_collapse.py``): at
    40 batches/epoch the unscaled rate kills most ReLUs and sends a GCN towards the
    majority class even when every halo row is exact, so the collapse is the
    optimizer's, not the histories'.
    """
    if cfg.train.lr_scaling == "none":
        return cfg.train.lr
    return cfg.train.lr / math.sqrt(max(1, batches_per_epoch))


def make_optimizer(model: torch.nn.Module, cfg: RunConfig, batches_per_epoch: int = 1) -> torch.optim.Optimizer:
    """Adam with GAS's two weight-decay groups: ``--weight-decay`` on the first layer, ``--weight-decay-rest`` after.

    The GAS reference regularises only the first layer's modules (its
    ``reg_weight_decay``); the wide first layer is where bag-of-words inputs overfit.
    The rate is :func:`step_lr`.
    """
    tr = cfg.train
    first = model.first_layer_parameters() if hasattr(model, "first_layer_parameters") else []
    first_ids = {id(p) for p in first}
    rest = [p for p in model.parameters() if id(p) not in first_ids]
    groups = [{"params": first, "weight_decay": tr.weight_decay}, {"params": rest, "weight_decay": tr.weight_decay_rest}]
    return torch.optim.Adam([g for g in groups if g["params"]], lr=step_lr(cfg, batches_per_epoch))
