"""``oocgnn eval --run-dir RUN``: accuracy of the best-valid model of a finished run.

Rebuilds the model from ``RUN/config.toml``, loads ``RUN/best_model.pt`` and runs
exact layer-wise inference.  By default it sweeps into scratch tables, so the
run's training histories are left exactly as training wrote them.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch

from oocgnn.errors import RunDirError
from oocgnn.store.reader import open_dataset

log = logging.getLogger(__name__)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate the best model of a training run",
                       description="Exact layer-wise inference with the best-valid model of RUN.")
    p.add_argument("--run-dir", required=True, type=Path, help="run directory written by `oocgnn train`")
    p.add_argument("--data", type=Path, help="dataset store (default: the one recorded in RUN/config.toml)")
    p.add_argument("--eval-refresh", action=argparse.BooleanOptionalAction, default=False,
                   help="write the sweeps into the run's training histories (default: scratch tables)")
    p.add_argument("--predictions", type=Path,
                   help="also write predictions by original node id to this .npy file")
    p.add_argument("--device", help="cpu or cuda[:N] (default: the run's --device): a run trained on a GPU "
                   "evaluates on a CPU-only machine with --device cpu")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from oocgnn.config import RunConfig, load_config, merge
    from oocgnn.train.evaluate import evaluate, export_predictions
    from oocgnn.runner import make_trainer
    from oocgnn.train.run import BEST_MODEL, CONFIG

    run_dir: Path = args.run_dir
    if not (run_dir / CONFIG).exists():
        raise RunDirError(f"{run_dir} has no {CONFIG}; is it a run directory made by `oocgnn train`?")
    if not (run_dir / BEST_MODEL).exists():
        raise RunDirError(f"{run_dir} has no {BEST_MODEL}: training never finished an evaluation; train longer")
    cfg = load_config(run_dir / CONFIG)
    if args.device is not None:  # where to compute changes no result's meaning (weights load onto it)
        cfg = RunConfig.from_dict(merge(cfg.to_dict(), {"io": {"device": args.device}}))
    ds = open_dataset(args.data or cfg.data)
    trainer = make_trainer(ds, cfg, run_dir, caches=False)
    try:
        trainer.model.load_state_dict(torch.load(run_dir / BEST_MODEL, map_location=trainer.device))
        accs, preds = evaluate(trainer, refresh=args.eval_refresh)
        if args.predictions:
            export_predictions(ds, preds, args.predictions)
    finally:
        trainer.close()
    sys.stdout.write(json.dumps(accs, sort_keys=True) + "\n")
    return 0
