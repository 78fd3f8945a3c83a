"""Why many-batch GAS collapses: stale histories, or the optimizer?

Amazon Photo (80 METIS parts, 40 batches/epoch), GCN; each variant changes one thing:

* ``gas lr 0.01`` - the old default: Adam at lr 0.01 on every one of the 40 steps;
* ``exact halos lr 0.01`` - the same, but before every step one exact layer-wise
  inference refreshes every history, so each halo row the step reads is exact for the
  current parameters (staleness removed; an epoch policy plugged into the one loop);
* ``clip 1 + wd 5e-4, lr 0.01`` - GAS's clipping and first-layer weight decay;
* ``no fill, sqrt lr`` / ``sqrt lr`` - the new default rate lr / sqrt(40), without and
  with the history fill before the first step;
* ``full batch lr 0.01`` - the ceiling.

Reports test accuracy at the best validation epoch, the share of hidden units that
are dead on every node (history table 0 all <= 0 in that column) and how many
classes the model predicts at the end.  If exact halos collapse too, staleness is
not the cause.  Example (2 cores, ~15 min)::

    python benchmarks/bench_collapse.py --seeds 5 --epochs 30
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_staleness import prepare  # noqa: E402
from common import OUT_DIR, machine  # noqa: E402

#: variant -> (parts per batch of 80, [train] options, exact halos before every step)
VARIANTS: dict[str, tuple[int, dict[str, Any], bool]] = {
    "gas lr 0.01": (2, {"lr_scaling": "none"}, False),
    "exact halos lr 0.01": (2, {"lr_scaling": "none"}, True),
    "clip 1 + wd 5e-4, lr 0.01": (2, {"lr_scaling": "none", "grad_clip": 1.0, "weight_decay": 5e-4}, False),
    "no fill, sqrt lr": (2, {"fill_histories": False}, False),
    "sqrt lr (default)": (2, {}, False),
    "full batch lr 0.01": (80, {}, False),
}


def run_one(job: dict[str, Any]) -> dict[str, Any]:
    import torch

    from oocgnn.config import EvalConfig, IOConfig, ModelConfig, OptimConfig, RunConfig
    from oocgnn.store.reader import open_dataset
    from oocgnn.train.evaluate import evaluate, layerwise_inference
    from oocgnn.train.loop import Trainer
    from oocgnn.train.policy import GASPolicy

    class ExactHalos(GASPolicy):
        """GAS, but every halo row a step reads is recomputed exactly first (an oracle, not a method)."""

        def __init__(self) -> None:
            self.trainer: Any = None

        def before_train(self, batch, step):
            x = batch.x.clone()  # the sweep reuses the staging slots this batch's rows live in
            layerwise_inference(self.trainer, refresh=True)
            batch.x = x
            halo = batch.n_id[batch.batch_size:]
            batch.halo_hist = [torch.from_numpy(np.asarray(table.array[halo], dtype=np.float32))
                               for table in self.trainer.histories.tables]

    torch.set_num_threads(1)
    ppb, train, exact = VARIANTS[job["variant"]]
    ds = open_dataset(job["store"])
    cfg = RunConfig(model=ModelConfig(name="gcn", layers=job["layers"], hidden=64),
                    train=OptimConfig(epochs=job["epochs"], parts_per_batch=ppb, seed=job["seed"], **train),
                    io=IOConfig(io_threads=1, prefetch=0, cache="none", in_memory=True),
                    eval=EvalConfig(eval_refresh=False))
    policy = ExactHalos() if exact else None
    tr = Trainer(ds, cfg, None, policy=policy)
    if policy is not None:
        policy.trainer = tr
    best, preds = (-1.0, float("nan")), None
    for epoch in range(job["epochs"]):
        tr.train_epoch()
        if (epoch + 1) % 5 == 0 or epoch + 1 == job["epochs"]:
            accs, preds = evaluate(tr, refresh=False)
            if accs["valid_acc"] > best[0]:
                best = (accs["valid_acc"], accs["test_acc"])
    h0 = np.asarray(tr._eval_scratch.tables[0].array)
    tr.close()
    return {**job, "test_acc": best[1], "dead_units": float((h0.max(0) <= 0).mean()),
            "classes_predicted": int(len(np.unique(preds)))}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--layers", default="2,3")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--workdir", type=Path, default=Path("/tmp/bench_collapse"))
    p.add_argument("--out", default="bench_collapse")
    args = p.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    store = str(prepare(args.workdir, "photo", 80))
    jobs = [{"store": store, "variant": v, "layers": int(layers), "seed": s, "epochs": args.epochs}
            for layers in args.layers.split(",") for v in VARIANTS for s in range(args.seeds)]
    t0 = time.perf_counter()
    with mp.get_context("spawn").Pool(args.jobs) as pool:
        rows = list(pool.imap(run_one, jobs))
    lines = ["| GCN layers | variant (40 batches/epoch unless full batch) | test acc (mean ± std) | worst seed | "
             "dead hidden units | classes predicted (of 8) |", "|---|---|---|---|---|---|"]
    for layers in args.layers.split(","):
        for v in VARIANTS:
            rs = [r for r in rows if r["variant"] == v and r["layers"] == int(layers)]
            acc = np.array([r["test_acc"] for r in rs]) * 100
            lines.append(f"| {layers} | {v} | {acc.mean():.2f} ± {acc.std():.2f} ({len(rs)}) | {acc.min():.2f} | "
                         f"{np.mean([r['dead_units'] for r in rs]):.2f} | "
                         f"{np.mean([r['classes_predicted'] for r in rs]):.1f} |")
    print("\n".join(lines))
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    (OUT_DIR / f"{args.out}.json").write_text(json.dumps(
        {"machine": machine(), "command": " ".join(sys.argv), "rows": rows, "table": lines,
         "total_s": time.perf_counter() - t0}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
