#!/usr/bin/env python
"""Your own graph as .npy arrays -> an oocgnn store -> a trained GCN.

What a user with their own data does, end to end:

1. save the graph as numpy arrays (here a generated one: communities with class signal in
   the features; with real data, write your arrays instead):
     edge_index.npy  int64 (2, E)  source and target node ids (E, 2) and .csv / .csv.gz work too
     node_feat.npy   float32 [N, F] (float16/64 too; read in blocks, never loaded whole)
     node_label.npy  int64 [N]     class ids, -1 = unlabelled ([N, T] 0/1 + NaN = multi-label)
2. ``oocgnn prepare arrays --edge-index ... --node-feat ... --node-label ... --out STORE``
   (no split files given: a seeded 80/10/10 split of the labelled nodes);
3. ``oocgnn train --data STORE --run-dir RUN``, then read ``RUN/summary.json``.

    python examples/own_arrays.py                       # 20k nodes, ~1 min on 2 cores
    python examples/own_arrays.py --nodes 2000 --epochs 5 --workdir /tmp/demo
"""
from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

import numpy as np

from oocgnn.cli.main import main as oocgnn


def write_arrays(folder: Path, nodes: int, edges: int, features: int, classes: int, seed: int) -> dict[str, Path]:
    """A homophilous random graph saved as the three arrays; returns their paths."""
    rng = np.random.default_rng(seed)
    label = rng.integers(0, classes, nodes)
    src = rng.integers(0, nodes, edges)
    by_class = [np.flatnonzero(label == c) for c in range(classes)]
    dst = rng.integers(0, nodes, edges)
    same = rng.random(edges) < 0.6  # 60 % of edges stay inside the source's class
    for c in range(classes):
        pick = same & (label[src] == c)
        dst[pick] = rng.choice(by_class[c], pick.sum())
    centers = rng.normal(size=(classes, features))
    feat = (centers[label] + rng.normal(scale=4.0, size=(nodes, features))).astype(np.float32)
    label[rng.random(nodes) < 0.05] = -1  # a few unlabelled nodes
    folder.mkdir(parents=True, exist_ok=True)
    paths = {name: folder / f"{name}.npy" for name in ("edge_index", "node_feat", "node_label")}
    np.save(paths["edge_index"], np.stack([src, dst]).astype(np.int64))
    np.save(paths["node_feat"], feat)
    np.save(paths["node_label"], label.astype(np.int64))
    return paths


def run(argv: list[str]) -> None:
    print("$ oocgnn " + shlex.join(argv))
    code = oocgnn(argv)
    if code != 0:
        raise SystemExit(code)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=20000)
    ap.add_argument("--edges", type=int, default=None, help="default 10 per node")
    ap.add_argument("--features", type=int, default=32)
    ap.add_argument("--classes", type=int, default=6)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--workdir", type=Path, default=Path("own_arrays_demo"))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    arrays = write_arrays(args.workdir / "arrays", args.nodes, args.edges or 10 * args.nodes, args.features,
                          args.classes, args.seed)
    store, run_dir = args.workdir / "store", args.workdir / "run"
    run(["prepare", "arrays", "--edge-index", str(arrays["edge_index"]), "--node-feat", str(arrays["node_feat"]),
         "--node-label", str(arrays["node_label"]), "--split-ratio", "0.8,0.1,0.1", "--out", str(store),
         "--overwrite", "--no-progress"])
    run(["train", "--data", str(store), "--run-dir", str(run_dir), "--epochs", str(args.epochs), "--overwrite",
         "--no-progress"])
    summary = json.loads((run_dir / "summary.json").read_text())
    scores = {k: v for k, v in summary.items() if isinstance(v, (int, float)) and ("valid" in k or "test" in k)}
    print("summary:", json.dumps(scores, sort_keys=True))


if __name__ == "__main__":
    main()
