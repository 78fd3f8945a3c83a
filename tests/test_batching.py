"""Epoch plans are pure functions of (seed, epoch); subgraphs match a dense reference."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from oocgnn.batching import epoch_plan, group_ranges, ranges_to_ids
from oocgnn.subgraph import build_subgraph


def _csr(n: int, m: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, sp.csr_matrix]:
    rng = np.random.default_rng(seed)
    a = sp.coo_matrix((np.ones(m), (rng.integers(0, n, m), rng.integers(0, n, m))), shape=(n, n)).tocsr()
    a = ((a + a.T) > 0).astype(np.float64).tolil()
    a.setdiag(0)
    a = a.tocsr()
    a.eliminate_zeros()
    a.sort_indices()
    return a.indptr.astype(np.int64), a.indices.astype(np.int32), a


def test_plan_is_pure_and_covers_all_partitions() -> None:
    a = epoch_plan(10, 3, seed=5, epoch=2)
    b = epoch_plan(10, 3, seed=5, epoch=2)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert sorted(np.concatenate(a).tolist()) == list(range(10))
    assert [len(g) for g in a] == [3, 3, 3, 1]
    c = epoch_plan(10, 3, seed=5, epoch=3)
    assert any(not np.array_equal(x, y) for x, y in zip(a, c))


def test_group_ranges_merge_and_ids() -> None:
    ptr = np.array([0, 3, 5, 9, 12])
    assert group_ranges(ptr, np.array([2, 0, 1])) == [(0, 9)]
    r = group_ranges(ptr, np.array([3, 0]))
    assert r == [(0, 3), (9, 12)]
    assert ranges_to_ids(r).tolist() == [0, 1, 2, 9, 10, 11]


@pytest.mark.parametrize("ranges", [[(0, 40)], [(5, 20), (60, 75)], [(0, 100)]])
def test_subgraph_matches_dense_reference(ranges: list) -> None:
    indptr, indices, a = _csr(100, 300)
    sub = build_subgraph(indptr, indices, ranges)
    batch = ranges_to_ids(ranges)
    B = sub.batch_size
    assert B == len(batch) and np.array_equal(sub.n_id[:B], batch)
    # halo = out-of-batch neighbours in first-seen order (row by row, column order)
    cols = np.concatenate([indices[indptr[i]:indptr[i + 1]] for i in batch]) if B else np.empty(0)
    seen: list[int] = []
    for c in cols:
        if c not in set(batch.tolist()) and c not in seen:
            seen.append(int(c))
    assert sub.n_id[B:].tolist() == seen
    # adjacency rows equal the globally normalised A + I restricted to batch rows
    deg = np.asarray(a.sum(1)).ravel() + 1
    full = (a + sp.eye(100)).toarray() / np.sqrt(np.outer(deg, deg))
    got = sub.adj_t().to_dense().numpy()
    np.testing.assert_allclose(got, full[np.ix_(batch, sub.n_id)], rtol=1e-6)
    # edge_index: local (src=col, dst=row), no self-loops; deg = global degree
    src, dst = sub.edge_index
    assert not np.any(src == dst)
    assert np.array_equal(np.bincount(dst, minlength=B), deg[batch].astype(int) - 1)
    np.testing.assert_array_equal(sub.deg, deg[batch] - 1)
    assert sub.crow.dtype == sub.col.dtype and sub.crow.dtype in (np.int32, np.int64)  # int32 when ids fit


def test_partition_halo_sizes_and_halo_finder_equal_the_unique_reference() -> None:
    from oocgnn.subgraph import HaloFinder, batch_halo, partition_halo_sizes

    rng = np.random.default_rng(4)
    n, m = 500, 4000
    src, dst = rng.integers(0, n, m), rng.integers(0, n, m)
    order = np.argsort(src, kind="stable")
    indptr = np.concatenate(([0], np.cumsum(np.bincount(src, minlength=n)))).astype(np.int64)
    indices = dst[order].astype(np.int64)
    parts = np.array([0, 37, 120, 121, 300, 450, 500], dtype=np.int64)
    ref = [len(np.unique(indices[indptr[s]:indptr[e]][(indices[indptr[s]:indptr[e]] < s) |
                                                      (indices[indptr[s]:indptr[e]] >= e)]))
           for s, e in zip(parts[:-1], parts[1:])]
    assert partition_halo_sizes(indptr, indices, parts).tolist() == ref
    find = HaloFinder(indptr, indices)
    for ranges in ([(0, 37)], [(37, 120), (300, 450)], [(120, 121)], [(0, 500)], [(450, 500), (0, 37), (121, 300)]):
        assert np.array_equal(find(ranges), batch_halo(indptr, indices, ranges))
    find.mark = np.iinfo(np.int32).max - 1  # the stamp wraps: cleared, still exact
    for _ in range(3):
        assert np.array_equal(find([(37, 120)]), batch_halo(indptr, indices, [(37, 120)]))


@pytest.mark.parametrize("engine", ["auto", "pread", "mmap"])
def test_builder_reads_csr_files_and_reuses_its_map_across_batches(tmp_path, engine: str) -> None:
    """One builder over .npy files (read as ranges, O_DIRECT where allowed) equals a fresh build on RAM arrays,
    bitwise, batch after batch: the node -> local id map is never cleared between batches."""
    from oocgnn.subgraph import SubgraphBuilder

    indptr, indices, _ = _csr(3000, 20000, seed=7)
    np.save(tmp_path / "indptr.npy", indptr)
    np.save(tmp_path / "indices.npy", indices)
    ptr_m, idx_m = np.load(tmp_path / "indptr.npy", mmap_mode="r"), np.load(tmp_path / "indices.npy", mmap_mode="r")
    builder = SubgraphBuilder(ptr_m, idx_m, engine)
    assert builder.reader.reads_files == (engine != "mmap")
    parts = np.linspace(0, 3000, 31).astype(np.int64)
    rng = np.random.default_rng(0)
    groups = [rng.choice(30, size=k, replace=False) for k in (1, 3, 2, 30, 1, 5)] + [np.array([29]), np.array([0])]
    for g in groups:
        ranges = group_ranges(parts, g)
        got, ref = builder(ranges), build_subgraph(indptr, indices, ranges)
        for name in ("n_id", "crow", "col", "weight", "deg"):
            a, b = getattr(got, name), getattr(ref, name)
            assert a.dtype == b.dtype and np.array_equal(a, b), name
    builder.close()


def test_transposed_adjacency_gives_torchs_gradient_bitwise() -> None:
    """The prefetcher's transpose of adj_t is adj_t^T, and propagating with it gives torch's own gradient, bitwise."""
    import torch

    from oocgnn.models.propagate import propagate

    indptr, indices, _ = _csr(3000, 30000, seed=2)
    for ranges in ([(0, 3000)], [(100, 900), (2000, 2600)], [(5, 6)]):
        sub = build_subgraph(indptr, indices, ranges)
        assert sub.adj_t_transposed() is None
        sub.transpose()
        adj, adj_T = sub.adj_t(), sub.adj_t_transposed()
        assert adj_T.crow_indices().dtype == adj.crow_indices().dtype
        assert torch.equal(adj_T.to_dense(), adj.to_dense().t())
        x = torch.randn(len(sub.n_id), 8, requires_grad=True)
        g = torch.randn(sub.batch_size, 8)
        torch.sparse.mm(adj, x).backward(g)
        ref, x.grad = x.grad.clone(), None
        out = propagate(adj, x, adj_T)
        out.backward(g)
        assert torch.equal(out, torch.sparse.mm(adj, x.detach())) and torch.equal(x.grad, ref)
