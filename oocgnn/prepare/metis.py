"""METIS through pymetis: the in-RAM partitioner, and what it costs in RAM.

Why a module of its own: both the partitioner front end
(:mod:`oocgnn.prepare.partition`, which decides whether METIS fits the budget) and
the multilevel partitioner (:mod:`oocgnn.prepare.multilevel`, which runs METIS on
its coarsest graph) need it; keeping it below both keeps the imports one-way.
"""
from __future__ import annotations

import numpy as np

#: RAM METIS takes per CSR entry (measured here: 3.2 GB for 1 M nodes / 10 M edges).
METIS_BYTES_PER_ENTRY = 320
#: RAM METIS takes per node beyond its entries.
METIS_BYTES_PER_NODE = 64


def metis_bytes(num_nodes: int, num_entries: int) -> int:
    """Estimated peak RAM of METIS on a graph of this size."""
    return num_entries * METIS_BYTES_PER_ENTRY + num_nodes * METIS_BYTES_PER_NODE


def metis_fits(num_nodes: int, num_entries: int, budget: int) -> bool:
    return metis_bytes(num_nodes, num_entries) <= budget


def metis_partition(indptr: np.ndarray, indices: np.ndarray, num_parts: int, seed: int,
                    vweights: np.ndarray | None = None, eweights: np.ndarray | None = None,
                    ufactor: int | None = None) -> np.ndarray:
    """``[N]`` int32 parts of a symmetric CSR (weights optional), seeded."""
    import pymetis

    opts = pymetis.Options(seed=int(seed)) if ufactor is None else pymetis.Options(seed=int(seed), ufactor=ufactor)
    adjacency = pymetis.CSRAdjacency(np.asarray(indptr, np.int64), np.asarray(indices, np.int64))
    kwargs = {}
    if vweights is not None:
        kwargs["vweights"] = vweights
    if eweights is not None:
        kwargs["eweights"] = np.asarray(eweights, np.int64)
    _, membership = pymetis.part_graph(num_parts, adjacency=adjacency, options=opts, **kwargs)
    return np.asarray(membership, dtype=np.int32)
