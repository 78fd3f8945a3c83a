"""MAG240MSource on format-identical fixtures: OGB cross-check, out-of-core means, bad inputs."""
from __future__ import annotations

import functools
import os

import numpy as np
import pytest
import torch

from oocgnn.errors import InputError, InputNotFoundError
from oocgnn.prepare.readers.torch_zip import load_torch_pickle
from oocgnn.prepare.sources.mag240m import MAG240MSource
from oocgnn.testing.ogb_fixtures import make_mag240m_fixture

P, A, I = 1501, 997, 31
F = 64  # narrower than 768 for speed; the width is read from the header


@pytest.fixture(scope="module", params=[False, True], ids=["C", "F"])
def mag(request, tmp_path_factory):
    return make_mag240m_fixture(tmp_path_factory.mktemp("mag"), P, A, I, num_features=F,
                                fortran=request.param, seed=2)


def _load(d, name):
    return np.load(d / "processed" / name)


def dense_reference(d):
    """Author / institution means exactly as rgnn.py defines them, with dense numpy."""
    x = _load(d, "paper/node_feat.npy").astype(np.float32)
    w = _load(d, "author___writes___paper/edge_index.npy")
    af = _load(d, "author___affiliated_with___institution/edge_index.npy")
    sa = np.zeros((A, x.shape[1]), np.float32)
    np.add.at(sa, w[0], x[w[1]])
    ca = np.bincount(w[0], minlength=A)
    authors = (sa / np.maximum(ca, 1)[:, None]).astype(np.float16)
    si = np.zeros((I, x.shape[1]), np.float32)
    np.add.at(si, af[1], authors[af[0]].astype(np.float32))
    ci = np.bincount(af[1], minlength=I)
    assert (ca == 0).any() and (ci == 0).any()  # the fixture has isolated authors / institutions
    return authors, (si / np.maximum(ci, 1)[:, None]).astype(np.float16)


def test_meta_and_split_equal_full_torch_load(mag):
    for name in ("meta.pt", "split_dict.pt"):
        ours, ref = load_torch_pickle(mag / name), torch.load(mag / name, weights_only=False)
        assert list(ours) == list(ref)
        for k in ref:
            np.testing.assert_array_equal(ours[k], ref[k])


def test_matches_ogb_lsc_dataset(mag, monkeypatch):
    from ogb.lsc import MAG240MDataset

    # OGB calls a bare torch.load, which torch >= 2.6 refuses on numpy pickles (ogb-formats.md 2.3)
    monkeypatch.setattr(torch, "load", functools.partial(torch.load, weights_only=False))
    ds = MAG240MDataset(root=str(mag.parent))
    src = MAG240MSource(mag.parent)
    info = src.info()
    assert (info.num_nodes, info.num_classes, info.num_features) == (ds.num_papers, ds.num_classes, F)
    assert info.ogb_evaluator is None and info.extra["lsc_evaluator"] == "MAG240MEvaluator"
    assert info.feature_dtype == "float16" and info.directed
    edges = [np.concatenate(b) for b in zip(*src.iter_edges(777))]
    np.testing.assert_array_equal(np.stack(edges), ds.edge_index("paper", "cites", "paper"))
    np.testing.assert_array_equal(np.concatenate(list(src.iter_features(200))), ds.paper_feat)
    y = ds.paper_label
    np.testing.assert_array_equal(src.labels(), np.where(np.isnan(y) | (y < 0), -1, np.nan_to_num(y)))
    splits = src.splits()
    for ours, theirs in (("train", "train"), ("valid", "valid"), ("test", "test-whole")):
        np.testing.assert_array_equal(splits[ours], ds.get_idx_split(theirs))
    assert (src.labels()[splits["test"]] == -1).all() and (src.labels()[splits["train"]] >= 0).all()


@pytest.mark.parametrize("memory_bytes", [256 << 20, 2 * F * 4 * 5])  # one window / many (window 5 < I)
def test_author_institution_means_equal_dense_reference(mag, tmp_path, memory_bytes):
    src = MAG240MSource(mag, with_authors_institutions=True, memory_bytes=memory_bytes)
    src.prepare_scratch(tmp_path)
    info = src.info()
    assert info.num_nodes == P + A + I and info.name == "MAG240M-full"
    assert info.extra["node_type_ranges"]["institution"] == [P + A, P + A + I]
    blocks = list(src.iter_features(300))
    assert [len(b) for b in blocks[:-1]] == [300] * (len(blocks) - 1)  # exact blocks across the seams
    x = np.concatenate(blocks)
    authors, insts = dense_reference(mag)
    np.testing.assert_array_equal(x[:P], _load(mag, "paper/node_feat.npy"))
    np.testing.assert_allclose(x[P:P + A].astype(np.float32), authors.astype(np.float32), rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(x[P + A:].astype(np.float32), insts.astype(np.float32), rtol=1e-3, atol=1e-3)
    src_ids, dst_ids = (np.concatenate(b) for b in zip(*src.iter_edges(1000)))
    w = _load(mag, "author___writes___paper/edge_index.npy")
    af = _load(mag, "author___affiliated_with___institution/edge_index.npy")
    cites = _load(mag, "paper___cites___paper/edge_index.npy")
    np.testing.assert_array_equal(src_ids, np.concatenate([cites[0], w[0] + P, af[0] + P]))
    np.testing.assert_array_equal(dst_ids, np.concatenate([cites[1], w[1], af[1] + P + A]))
    labels = src.labels()
    assert len(labels) == P + A + I and (labels[P:] == -1).all()


def test_unsorted_writes_and_resume(tmp_path):
    d = make_mag240m_fixture(tmp_path, P, A, I, num_features=16, seed=4)
    wpath = d / "processed" / "author___writes___paper" / "edge_index.npy"
    w = np.load(wpath)
    np.save(wpath, w[:, np.random.default_rng(0).permutation(w.shape[1])])
    src = MAG240MSource(d, with_authors_institutions=True, memory_bytes=2 * 16 * 4 * 100)
    src.prepare_scratch(tmp_path / "w")
    out = tmp_path / "w" / "mag240m_author_feat.f16.raw"
    ref_a, _ = dense_reference(d)
    np.testing.assert_allclose(np.fromfile(out, np.float16).reshape(A, 16).astype(np.float32),
                               ref_a.astype(np.float32), rtol=1e-3, atol=1e-3)
    mtime = out.stat().st_mtime_ns
    MAG240MSource(d, with_authors_institutions=True).prepare_scratch(tmp_path / "w")
    assert out.stat().st_mtime_ns == mtime  # done marker matched: reused
    t = wpath.stat().st_mtime + 5
    os.utime(wpath, (t, t))
    MAG240MSource(d, with_authors_institutions=True).prepare_scratch(tmp_path / "w")
    assert out.stat().st_mtime_ns != mtime  # input changed: recomputed
    assert not list((tmp_path / "w").glob(".*tmp*"))


@pytest.fixture
def small(tmp_path):
    return make_mag240m_fixture(tmp_path, 301, 200, 9, num_cites=999, num_writes=500, num_affiliations=150,
                                num_features=8, seed=5)


def test_bad_inputs(small, tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("true",))

    torch.save({"train": Evil(), "valid": np.arange(2), "test": np.arange(3)}, small / "split_dict.pt")
    with pytest.raises(InputError, match=r"split_dict\.pt contains a pickled object of type \w+\.system"):
        MAG240MSource(small).splits()
    feat = small / "processed" / "paper" / "node_feat.npy"
    raw = feat.read_bytes()
    feat.write_bytes(raw[:-50])
    with pytest.raises(InputError, match=r"node_feat\.npy is truncated"):
        MAG240MSource(small).info()
    np.save(feat, np.zeros((300, 8), np.float16))
    with pytest.raises(InputError, match=r"node_feat\.npy has float16 \(300, 8\), expected float \(301, 768\)"):
        MAG240MSource(small).info()
    feat.write_bytes(raw)
    (small / "processed" / "author___writes___paper" / "edge_index.npy").unlink()
    MAG240MSource(small).info()  # the paper-only graph does not need it
    with pytest.raises(InputNotFoundError, match=r"author___writes___paper/edge_index\.npy does not exist"):
        MAG240MSource(small, with_authors_institutions=True).info()
    np.save(small / "processed" / "author___writes___paper" / "edge_index.npy", np.array([[0, 250], [1, 2]]))
    with pytest.raises(InputError, match=r"author___writes___paper/edge_index\.npy has ids outside \[0, 200\)"):
        MAG240MSource(small, with_authors_institutions=True).prepare_scratch(tmp_path / "w")
    with pytest.raises(InputNotFoundError, match=r"no meta\.pt under"):
        MAG240MSource(tmp_path / "nothing")


def test_end_to_end_store_matches_reference(mag, tmp_path):
    pipeline = pytest.importorskip("oocgnn.prepare.pipeline")
    from ogb.lsc import MAG240MEvaluator
    from torch_geometric.utils import remove_self_loops, to_undirected

    from oocgnn import open_dataset

    pipeline.prepare_store(MAG240MSource(mag, with_authors_institutions=True), tmp_path / "store",
                           pipeline.PrepareOptions(partitions=4, feature_dtype="float16"),
                           memory_budget=2 << 30, progress=False)
    ds = open_dataset(tmp_path / "store")
    n = P + A + I
    ref = MAG240MSource(mag, with_authors_institutions=True)
    ref.prepare_scratch(tmp_path / "ref")
    ei = torch.from_numpy(np.stack([np.concatenate(b) for b in zip(*ref.iter_edges(10**6))]))
    ei = to_undirected(remove_self_loops(ei)[0], num_nodes=n)
    inv = np.empty(n, dtype=np.int64)
    inv[ds.perm] = np.arange(n)
    rows, cols = inv[ei[0].numpy()], inv[ei[1].numpy()]
    order = np.lexsort((cols, rows))
    np.testing.assert_array_equal(ds.indptr, np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=n))]))
    np.testing.assert_array_equal(ds.indices, cols[order])
    np.testing.assert_array_equal(ds.features, np.concatenate(list(ref.iter_features(1000)))[ds.perm])
    labels = ref.labels()
    for k, ids in ref.splits().items():
        np.testing.assert_array_equal(np.sort(ds.perm[ds.split(k)]), np.sort(ids))
    valid = ds.split("valid")
    acc = MAG240MEvaluator().eval({"y_true": labels[ds.perm[valid]], "y_pred": np.asarray(ds.labels[valid])})
    assert acc["acc"] == 1.0


def test_segment_mean_is_bitwise_independent_of_window_and_edge_order(tmp_path, monkeypatch):
    from oocgnn.prepare.sources import mag240m

    monkeypatch.setattr(mag240m, "_MEAN_BLOCK", 64)  # many gather blocks per key range
    rng = np.random.default_rng(7)
    feat = rng.standard_normal((500, 12)).astype(np.float16)
    e = np.stack([rng.integers(0, 40, 3000), rng.integers(0, 500, 3000)])
    e = e[:, np.lexsort((e[1], e[0]))]
    outs = []
    cases = [(e, 1 << 20), (e, 2 * 12 * 4 * 3), (e[:, rng.permutation(3000)], 1 << 20)]  # window 45 / 3 / unsorted
    for i, (edges, mem) in enumerate(cases):
        mag240m.segment_mean_to_raw(edges, 0, 45, feat, tmp_path / f"o{i}", "edges", mem)
        outs.append(np.fromfile(tmp_path / f"o{i}", dtype=np.float16).reshape(45, 12))
    assert outs[0].tobytes() == outs[1].tobytes() == outs[2].tobytes()
    ref = np.zeros((45, 12), np.float32)
    np.add.at(ref, e[0], feat[e[1]].astype(np.float32))
    ref /= np.maximum(np.bincount(e[0], minlength=45), 1)[:, None]
    np.testing.assert_allclose(outs[0].astype(np.float32), ref, rtol=1e-3, atol=1e-3)
    assert (outs[0][40:] == 0).all()
