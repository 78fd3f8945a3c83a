"""Small in-memory GAS batches for the staleness tests (no store on disk)."""
from __future__ import annotations

import numpy as np
import torch

from oocgnn.batch import SubgraphBatch
from oocgnn.subgraph import build_subgraph


def ring_csr(n: int = 60, extra: int = 120, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric CSR without self-loops: a ring plus random chords."""
    rng = np.random.default_rng(seed)
    src = np.concatenate([np.arange(n), rng.integers(0, n, extra)])
    dst = np.concatenate([(np.arange(n) + 1) % n, rng.integers(0, n, extra)])
    keep = src != dst
    pairs = np.unique(np.stack([np.concatenate([src[keep], dst[keep]]),
                                np.concatenate([dst[keep], src[keep]])], 1), axis=0)
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.add.at(indptr, pairs[:, 0] + 1, 1)
    return np.cumsum(indptr), pairs[:, 1].astype(np.int64)


def make_batch(indptr: np.ndarray, indices: np.ndarray, ranges: list[tuple[int, int]], x: torch.Tensor,
               y: torch.Tensor, tables: list[torch.Tensor], ages: list[np.ndarray] | None = None) -> SubgraphBatch:
    sub = build_subgraph(indptr, indices, ranges)
    b = sub.batch_size
    halo = torch.from_numpy(sub.n_id[b:])
    ages = ages if ages is not None else [np.arange(len(halo)) % 7 for _ in tables]
    return SubgraphBatch(
        n_id=sub.n_id, batch_size=b, ranges=sub.ranges, x=x[torch.from_numpy(sub.n_id)], adj_t=sub.adj_t(),
        edge_index=torch.from_numpy(sub.edge_index), deg=torch.from_numpy(sub.deg),
        y=y[torch.from_numpy(sub.n_id[:b])], train_mask=torch.ones(b, dtype=torch.bool),
        halo_hist=[t[halo].clone() for t in tables],
        hist_age=[torch.from_numpy(np.asarray(a[: len(halo)], dtype=np.int64)) for a in ages])
