"""Out-of-core CSR builder against torch_geometric's in-memory reference."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch_geometric.utils import coalesce, remove_self_loops, to_undirected

from oocgnn.errors import InputError
from oocgnn.prepare import csr as csr_module
from oocgnn.prepare.csr import build_csr, relabel_csr, relabel_passes
from oocgnn.store.csr import iter_csr_edges


def _reference(src, dst, n, symmetric):
    ei = torch.tensor(np.stack([src, dst]))
    ei, _ = remove_self_loops(ei)
    ei = to_undirected(ei, num_nodes=n) if symmetric else coalesce(ei, num_nodes=n)
    indptr = np.concatenate([[0], np.cumsum(np.bincount(ei[0].numpy(), minlength=n))])
    return indptr, ei[1].numpy()


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("budget", [1 << 30, 24 * 3000])  # one bucket / many buckets
def test_csr_matches_pyg(tmp_path, symmetric, budget):
    rng = np.random.default_rng(1)
    n, e = 1237, 25_000
    src, dst = rng.integers(0, n, e), rng.integers(0, n, e)
    src[:50] = dst[:50]  # self-loops
    src[50:100], dst[50:100] = src[100:150], dst[100:150]  # duplicates

    def blocks():
        for s in range(0, e, 4099):
            yield src[s:s + 4099], dst[s:s + 4099]

    r = build_csr(blocks, n, tmp_path / "ip.npy", tmp_path / "ix.npy", tmp_path / "w",
                  symmetric=symmetric, memory_budget=budget, progress=False)
    ip, ix = np.load(tmp_path / "ip.npy"), np.load(tmp_path / "ix.npy")
    ref_ip, ref_ix = _reference(src, dst, n, symmetric)
    assert ix.dtype == np.int32 and ip.dtype == np.int64
    np.testing.assert_array_equal(ip, ref_ip)
    np.testing.assert_array_equal(ix, ref_ix)
    assert r.num_entries == len(ref_ix) and r.self_loops_dropped == int((src == dst).sum()) and r.input_edges == e
    rows, cols = map(np.concatenate, zip(*iter_csr_edges(ip, ix, 1000)))
    assert rows.size == ix.size and np.array_equal(cols, ix)


def test_relabel_applies_to_both_ends(tmp_path):
    src, dst = np.array([0, 1, 2]), np.array([1, 2, 3])
    relabel = np.array([3, 2, 1, 0])
    build_csr(lambda: [(src, dst)], 4, tmp_path / "ip.npy", tmp_path / "ix.npy", tmp_path,
              symmetric=False, memory_budget=1 << 20, relabel=relabel, progress=False)
    ip, ix = np.load(tmp_path / "ip.npy"), np.load(tmp_path / "ix.npy")
    pairs = {(r, int(c)) for r in range(4) for c in ix[ip[r]:ip[r + 1]]}
    assert pairs == {(3, 2), (2, 1), (1, 0)}


@pytest.mark.parametrize("passes", [1, 2, 5])
def test_row_scatter_relabel_equals_the_bucketed_build_byte_for_byte(tmp_path, monkeypatch, passes):
    """``prepare``'s store-order CSR: scattering old rows under new ids (in one or more passes over
    the old ids, read in small windows) gives the same files as relabelling every entry through
    sort buckets, short rows and a hub row alike."""
    monkeypatch.setattr(csr_module, "_RELABEL_READ_ENTRIES", 2500)
    rng = np.random.default_rng(3)
    n, e = 1500, 20_000
    src, dst = rng.integers(0, n, e), rng.integers(0, n, e)
    src[:900] = 7  # a hub with ~900 neighbours (sorted by np.sort, short rows by insertion)
    build_csr(lambda: [(src, dst)], n, tmp_path / "oip.npy", tmp_path / "oix.npy", tmp_path / "w", symmetric=True,
              memory_budget=1 << 24, progress=False)
    perm = rng.permutation(n)
    inv = np.empty(n, np.int64)
    inv[perm] = np.arange(n)
    oip, oix = np.load(tmp_path / "oip.npy"), np.load(tmp_path / "oix.npy")
    ref = build_csr(lambda: iter_csr_edges(oip, oix, 3000), n, tmp_path / "rip.npy", tmp_path / "rix.npy",
                    tmp_path / "w", symmetric=False, memory_budget=24 * 5000, relabel=inv, progress=False)
    got = relabel_csr(tmp_path / "oip.npy", tmp_path / "oix.npy", inv, tmp_path / "ip.npy", tmp_path / "ix.npy",
                      passes=passes, progress=False)
    for a, b in (("ip", "rip"), ("ix", "rix")):
        assert (tmp_path / f"{a}.npy").read_bytes() == (tmp_path / f"{b}.npy").read_bytes()
    assert (got.num_entries, got.indptr_checksum, got.indices_checksum) == \
        (ref.num_entries, ref.indptr_checksum, ref.indices_checksum)


@pytest.mark.parametrize("bad", [-1, 10])
def test_out_of_range_edge_is_a_clear_error(tmp_path, bad):
    with pytest.raises(InputError, match=f"edge endpoint {bad} is outside"):
        build_csr(lambda: [(np.array([0, bad]), np.array([1, 2]))], 10, tmp_path / "ip.npy", tmp_path / "ix.npy",
                  tmp_path, symmetric=True, memory_budget=1 << 20, what="mygraph", progress=False)
    assert not (tmp_path / "ix.npy").exists()


def test_relabel_passes_follow_the_budget():
    n, e = 1_000_000, 20_000_000  # int32 ids: 80 MB of them
    fixed = 28 * (n + 1) + csr_module._RELABEL_READ_ENTRIES * 4
    assert relabel_passes(n, e, fixed + 4 * e) == 1
    assert relabel_passes(n, e, fixed + 2 * e) == 2
    assert relabel_passes(n, e, fixed + e) == 0  # 4 passes: sort buckets instead
    assert relabel_passes(n, e, fixed // 2) == 0
