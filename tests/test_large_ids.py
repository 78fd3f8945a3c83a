"""Paths that only large graphs take, exercised on small ones.

Billion-scale stores switch to int64 column ids (N >= 2**31) and to sort buckets
whose keys ``local_row * N + col`` must not overflow int64.  A forced threshold lets
a 600-node graph take the int64 path end to end: prepare, verify, train.
"""
from __future__ import annotations

import numpy as np
import torch

import oocgnn.prepare.csr as csr
from oocgnn.cli.main import main
from oocgnn.store.verify import verify_store
from oocgnn.testing.stores import make_store, random_graph


def _stores(tmp_path, monkeypatch):
    g = random_graph(num_nodes=600, num_edges=4000, num_features=8, num_classes=3, seed=5)
    small = make_store(tmp_path / "int32", g["edge_index"], g["x"], g["y"], g["splits"], num_partitions=6)
    monkeypatch.setattr(csr, "indices_dtype", lambda n: "int64")
    wide = make_store(tmp_path / "int64", g["edge_index"], g["x"], g["y"], g["splits"], num_partitions=6)
    return small, wide


def test_int64_indices_store_and_training_match_int32(tmp_path, monkeypatch):
    small, wide = _stores(tmp_path, monkeypatch)
    assert small.indices.dtype == np.int32 and wide.indices.dtype == np.int64
    np.testing.assert_array_equal(small.indices, wide.indices)
    np.testing.assert_array_equal(small.indptr, wide.indptr)
    assert verify_store(wide, progress=False) == []
    models = []
    for ds in (small, wide):
        run = tmp_path / f"run_{ds.path.name}"
        assert main(["train", "--data", str(ds.path), "--run-dir", str(run), "--epochs", "2",
                     "--parts-per-batch", "2", "--no-progress"]) == 0
        models.append(torch.load(run / "final" / "model.pt"))
    for key in models[0]:
        assert torch.equal(models[0][key], models[1][key]), key


def test_sort_bucket_keys_cannot_overflow_for_huge_node_counts():
    for n in (10**6, 2**31 + 7, 3 * 2**32, 10**11):
        rows = csr.max_bucket_rows(n)
        assert rows >= 1 and (rows - 1) * n + (n - 1) < 2**63
    # and the bucket cutter honours it even when the key budget would allow more rows
    counts = np.ones(1000, dtype=np.int64)
    bounds = csr._bucket_bounds(counts, max_keys=10**9, num_nodes=1000)
    assert bounds[0] == 0 and bounds[-1] == 1000 and np.diff(bounds).max() <= csr.max_bucket_rows(1000)
