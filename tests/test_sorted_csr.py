"""Every CSR the code builds satisfies torch's invariants: sorted, distinct columns in each row.

cuSPARSE (``torch.sparse.mm`` on CUDA) assumes sorted rows; CPU kernels do not care, so a
CPU-only suite would never notice unsorted ones.  ``tests/conftest.py`` turns torch's
checks on for every sparse tensor the suite builds; these tests also check each builder
explicitly (training batches, their transposes, inference sweeps of every kind, the SAGE
and VISAGNN matrices), with rows long enough to take the sort's quicksort branch.
"""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from oocgnn.batching import group_ranges
from oocgnn.config import IOConfig, ModelConfig, OptimConfig, RunConfig, StalenessConfig
from oocgnn.runner import make_trainer
from oocgnn.subgraph import SubgraphBuilder, build_subgraph
from oocgnn.testing.stores import make_store, random_graph


def assert_valid_csr(t: torch.Tensor) -> None:
    """torch's own validation (check_invariants=True), plus sorted distinct columns per row by numpy."""
    crow, col = t.crow_indices().cpu().numpy(), t.col_indices().cpu().numpy()
    torch._validate_sparse_csr_tensor_args(t.crow_indices(), t.col_indices(), t.values(), t.shape)
    for i in range(len(crow) - 1):
        row = col[crow[i]:crow[i + 1]]
        assert np.all(np.diff(row) > 0), f"row {i} not sorted/distinct: {row}"


def _hub_csr(n: int = 400, hub_degree: int = 150, m: int = 2000, seed: int = 0):
    """Symmetric CSR without self-loops whose hub rows exceed the insertion-sort length (32)."""
    rng = np.random.default_rng(seed)
    src, dst = rng.integers(0, n, m), rng.integers(0, n, m)
    hubs = np.repeat([3, 250], hub_degree)
    src = np.concatenate([src, hubs])
    dst = np.concatenate([dst, rng.integers(0, n, len(hubs))])
    a = sp.coo_matrix((np.ones(len(src)), (src, dst)), shape=(n, n)).tocsr()
    a = ((a + a.T) > 0).astype(np.float64).tolil()
    a.setdiag(0)
    a = a.tocsr()
    a.eliminate_zeros()
    a.sort_indices()
    return a.indptr.astype(np.int64), a.indices.astype(np.int32), a


@pytest.mark.parametrize("ranges", [[(0, 400)], [(0, 10), (200, 260)], [(240, 260)], [(3, 4)], [(100, 300)]])
def test_builder_rows_are_sorted_and_equal_the_dense_reference(ranges) -> None:
    indptr, indices, a = _hub_csr()
    assert np.diff(indptr).max() > 32  # the long-row branch runs
    sub = build_subgraph(indptr, indices, ranges)
    sub.transpose()
    adj, adj_T = sub.adj_t(), sub.adj_t_transposed()
    assert_valid_csr(adj)
    assert_valid_csr(adj_T)
    deg = np.asarray(a.sum(1)).ravel() + 1
    full = (a + sp.eye(a.shape[0])).toarray() / np.sqrt(np.outer(deg, deg))
    batch = sub.n_id[:sub.batch_size]
    np.testing.assert_allclose(adj.to_dense().numpy(), full[np.ix_(batch, sub.n_id)], rtol=1e-6)
    assert torch.equal(adj_T.to_dense(), adj.to_dense().t())
    # edge_index: every entry but the self-loops, in CSR order
    src, dst = sub.edge_index
    assert not np.any(src == dst) and len(src) == len(sub.col) - sub.batch_size
    dense = np.zeros((sub.batch_size, len(sub.n_id)), dtype=bool)
    dense[dst, src] = True
    np.testing.assert_array_equal(dense | np.eye(*dense.shape, dtype=bool), adj.to_dense().numpy() != 0)


def test_a_reused_builder_keeps_rows_sorted_batch_after_batch() -> None:
    """The node -> local id map is reused across batches (halo ids in first-seen order): rows sorted every time."""
    indptr, indices, _ = _hub_csr(seed=3)
    builder = SubgraphBuilder(indptr, indices, "mmap")
    parts = np.linspace(0, 400, 17).astype(np.int64)
    rng = np.random.default_rng(1)
    for k in (1, 3, 2, 16, 5, 1):
        sub = builder(group_ranges(parts, rng.choice(16, size=k, replace=False)))
        sub.transpose()
        assert_valid_csr(sub.adj_t())
        assert_valid_csr(sub.adj_t_transposed())
    builder.close()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    g = random_graph(num_nodes=600, num_edges=5000, num_features=8, num_classes=3, seed=5)
    return make_store(tmp_path_factory.mktemp("store") / "s", g["edge_index"], g["x"], g["y"], g["splits"], 8)


@pytest.mark.parametrize("model", ["gcn", "sage"])
def test_training_batches_and_every_inference_sweep_build_valid_csr(store, tmp_path, model) -> None:
    """The batches a training epoch and each inference path (stream, scan, gather) hand to the model."""
    from oocgnn.models.sage import mean_adjacency
    from oocgnn.train.evaluate import layerwise_inference

    cfg = RunConfig(model=ModelConfig(name=model, layers=2, hidden=8), train=OptimConfig(parts_per_batch=2),
                    io=IOConfig(prefetch=1, cache="none"))
    tr = make_trainer(store, cfg, tmp_path)
    seen = []
    for batch in tr.prefetcher(tr.plan(0), tr.epoch_loader()):
        assert_valid_csr(batch.adj_t)
        if batch.adj_t_T is not None:
            assert_valid_csr(batch.adj_t_T)
        if model == "sage":
            assert_valid_csr(mean_adjacency(batch))
        seen.append(batch.batch_size)
    assert sum(seen) == store.num_nodes
    preds = [layerwise_inference(tr, refresh=False, stream=mode) for mode in ("on", "scan", "off")]
    assert all(np.array_equal(preds[0], p) for p in preds[1:])
    tr.close()


def test_visagnn_reweighted_adjacency_is_valid(store, tmp_path) -> None:
    """VISAGNN reweights a batch's adjacency on its own index arrays: still valid, step after step."""
    cfg = RunConfig(model=ModelConfig(name="gcn", layers=2, hidden=8), train=OptimConfig(parts_per_batch=2),
                    io=IOConfig(prefetch=0, cache="none"),
                    staleness=StalenessConfig(method="visagnn", visagnn_drop_threshold=1))
    tr = make_trainer(store, cfg, tmp_path)
    for batch in tr.prefetcher(tr.plan(0), tr.epoch_loader()):
        assert_valid_csr(tr.model.adjacency(1, batch))
        tr.train_step(batch)
    tr.close()
