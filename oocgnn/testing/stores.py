"""Build real stores on disk from in-memory arrays (tests, benchmarks, examples).

:class:`ArraySource` is the simplest :class:`~oocgnn.prepare.source.GraphSource`:
everything is already in RAM.  :func:`make_store` runs the real builder on it, so
tests exercise the same CSR, partitioning and reordering code as a papers100M
conversion, just small.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from oocgnn.prepare.pipeline import PrepareOptions, prepare_store
from oocgnn.prepare.source import SourceInfo
from oocgnn.store.reader import Dataset


class ArraySource:
    """A graph held in numpy arrays, exposed through the ``GraphSource`` protocol."""

    def __init__(self, edge_index: np.ndarray, x: np.ndarray, y: np.ndarray, splits: dict[str, np.ndarray],
                 num_classes: int | None = None, name: str = "arrays", evaluator: str | None = None) -> None:
        self.edge_index = np.asarray(edge_index, dtype=np.int64)
        self.x = np.asarray(x)
        self.y = np.asarray(y, dtype=np.int64).reshape(-1)
        self._splits = {k: np.asarray(v, dtype=np.int64) for k, v in splits.items()}
        self.num_classes = int(num_classes if num_classes is not None else max(int(self.y.max()) + 1, 1))
        self.name = name
        self.evaluator = evaluator

    def info(self) -> SourceInfo:
        return SourceInfo(name=self.name, num_nodes=int(self.x.shape[0]), num_features=int(self.x.shape[1]),
                          num_classes=self.num_classes, feature_dtype=str(self.x.dtype),
                          num_edges_hint=int(self.edge_index.shape[1]), ogb_evaluator=self.evaluator)

    def fingerprint(self) -> dict[str, Any]:
        h = hashlib.sha256()
        for a in (self.edge_index, self.x, self.y, *[self._splits[k] for k in sorted(self._splits)]):
            h.update(np.ascontiguousarray(a).tobytes())
        return {"kind": "arrays", "sha256": h.hexdigest()}

    def iter_edges(self, block_edges: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for s in range(0, self.edge_index.shape[1], block_edges):
            yield self.edge_index[0, s:s + block_edges], self.edge_index[1, s:s + block_edges]

    def iter_features(self, block_rows: int) -> Iterator[np.ndarray]:
        for s in range(0, self.x.shape[0], block_rows):
            yield self.x[s:s + block_rows]

    def labels(self) -> np.ndarray:
        return self.y

    def splits(self) -> dict[str, np.ndarray]:
        return self._splits

    def prepare_scratch(self, workdir: Path) -> None:
        pass


def make_store(path: str | Path, edge_index: np.ndarray, x: np.ndarray, y: np.ndarray, splits: dict[str, np.ndarray],
               num_partitions: int, *, partitioner: str = "metis", undirected: bool = True,
               feature_dtype: str = "float32", memory_budget: int = 4 << 30, num_classes: int | None = None,
               evaluator: str | None = None) -> Dataset:
    """Write a real store at ``path`` from arrays and open it.

    ``memory_budget`` defaults to 4 GiB: prepare refuses a budget the calling process
    already fills, and a whole test session's process grows past 1 GiB.
    """
    source = ArraySource(edge_index, x, y, splits, num_classes=num_classes, evaluator=evaluator)
    opts = PrepareOptions(undirected=undirected, partitions=num_partitions, partitioner=partitioner,
                          feature_dtype=feature_dtype)
    return prepare_store(source, path, opts, memory_budget=memory_budget, progress=False)


def random_graph(num_nodes: int = 500, num_edges: int = 3000, num_features: int = 16, num_classes: int = 4,
                 seed: int = 0) -> dict[str, Any]:
    """A small community graph as arrays (for :func:`make_store`)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, num_classes, num_nodes)
    src = rng.integers(0, num_nodes, num_edges)
    same = rng.random(num_edges) < 0.8
    by_class = [np.flatnonzero(y == c) for c in range(num_classes)]
    dst = rng.integers(0, num_nodes, num_edges)
    for c in range(num_classes):
        m = same & (y[src] == c)
        if by_class[c].size:
            dst[m] = rng.choice(by_class[c], m.sum())
    centers = rng.normal(size=(num_classes, num_features))
    x = (centers[y] + rng.normal(scale=2.0, size=(num_nodes, num_features))).astype(np.float32)
    perm = rng.permutation(num_nodes)
    n_tr, n_va = num_nodes // 5, num_nodes // 5
    splits = {"train": perm[:n_tr], "valid": perm[n_tr:n_tr + n_va], "test": perm[n_tr + n_va:]}
    return {"edge_index": np.stack([src, dst]), "x": x, "y": y, "splits": splits}
