"""Small synthetic graphs with known structure for tests and benchmarks of partitioners."""
from __future__ import annotations

import numpy as np


def community_edges(n: int = 20_000, e: int = 150_000, k: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``k`` planted communities with scattered ids; 10 % of edges random."""
    rng = np.random.default_rng(seed)
    comm = rng.integers(0, k, n)
    order = np.argsort(comm)
    starts = np.searchsorted(comm[order], np.arange(k + 1))
    src = rng.integers(0, n, e)
    c = comm[src]
    dst = order[starts[c] + (rng.random(e) * (starts[c + 1] - starts[c])).astype(np.int64)]
    mix = rng.random(e) < 0.1
    dst[mix] = rng.integers(0, n, mix.sum())
    return src, dst
