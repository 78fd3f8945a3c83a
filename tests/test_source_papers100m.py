"""Papers100MSource on format-identical fixtures, cross-checked against OGB's own loader."""
from __future__ import annotations

import os
import shutil
import time

import numpy as np
import pytest
import torch

from oocgnn.errors import InputError, InputNotFoundError
from oocgnn.prepare.sources.ogbn_papers import Papers100MSource
from oocgnn.testing.ogb_fixtures import make_papers100m_fixture
from test_npy_stream import corrupt_member

N, E = 2003, 9001


@pytest.fixture(scope="module", params=[False, True], ids=["C", "F"])
def fixture_dir(request, tmp_path_factory):
    root = tmp_path_factory.mktemp("papers")
    return make_papers100m_fixture(root, N, E, fortran=request.param, with_split_dict=request.param, seed=1)


@pytest.fixture(scope="module")
def ogb_data(fixture_dir):
    """OGB's NodePropPredDataset on a copy (it writes processed/ into the folder)."""
    from ogb.nodeproppred import NodePropPredDataset

    root = fixture_dir.parent.parent / (fixture_dir.parent.name + "_ogb")
    shutil.copytree(fixture_dir, root / "ogbn_papers100M")
    (root / "ogbn_papers100M" / "processed").mkdir()
    (root / "ogbn_papers100M" / "split" / "time" / "split_dict.pt").unlink(missing_ok=True)  # torch>=2.6
    ds = NodePropPredDataset("ogbn-papers100M", root=str(root))
    graph, label = ds[0]
    return graph, label, ds.get_idx_split()


def _source(fixture_dir, tmp_path):
    src = Papers100MSource(fixture_dir.parent)
    src.prepare_scratch(tmp_path / "scratch")
    return src


def test_matches_ogb_loader(fixture_dir, ogb_data, tmp_path):
    graph, label, split = ogb_data
    src = _source(fixture_dir, tmp_path)
    info = src.info()
    assert (info.num_nodes, info.num_features, info.num_edges_hint) == (N, 128, E)
    assert info.ogb_evaluator == "ogbn-papers100M" and info.directed and info.num_classes == 172
    assert info.feature_dtype == "float32"
    blocks = list(src.iter_edges(1000))
    assert max(len(s) for s, _ in blocks) <= 1000
    np.testing.assert_array_equal(np.stack([np.concatenate(b) for b in zip(*blocks)]), graph["edge_index"])
    feats = list(src.iter_features(333))
    np.testing.assert_array_equal(np.concatenate(feats), graph["node_feat"])
    ref = np.where(np.isnan(label[:, 0]), -1, np.nan_to_num(label[:, 0])).astype(np.int64)
    np.testing.assert_array_equal(src.labels(), ref)
    ours = src.splits()
    for k in ("train", "valid", "test"):
        np.testing.assert_array_equal(ours[k], split[k])
        assert (ref[ours[k]] >= 0).all()
    # year-consistent splits, as in the real data
    year = graph["node_year"][:, 0]
    assert year[ours["train"]].max() <= 2017 and (year[ours["valid"]] == 2018).all()
    assert year[ours["test"]].min() >= 2019


def test_root_forms_and_fingerprint(tmp_path):
    d = make_papers100m_fixture(tmp_path, 301, 999, num_features=8, folder_name="papers100M-bin")
    a, b = Papers100MSource(tmp_path), Papers100MSource(d)
    assert a.dir == b.dir == d.resolve()
    fp = a.fingerprint()
    assert set(fp["files"]) == {"raw/data.npz", "raw/node-label.npz", "split/time/train.csv.gz",
                                "split/time/valid.csv.gz", "split/time/test.csv.gz"}
    assert Papers100MSource(tmp_path).fingerprint() == fp
    t = time.time() + 5
    os.utime(d / "raw" / "node-label.npz", (t, t))
    assert Papers100MSource(tmp_path).fingerprint() != fp
    with pytest.raises(InputNotFoundError, match=r"no raw/data\.npz under .*ogbn_papers100M"):
        Papers100MSource(tmp_path / "elsewhere")


def test_fortran_features_spill_once(tmp_path):
    d = make_papers100m_fixture(tmp_path, 301, 999, num_features=8, fortran=True)
    src = Papers100MSource(d)
    with pytest.raises(RuntimeError, match="prepare_scratch"):
        next(src.iter_features(100))
    src.prepare_scratch(tmp_path / "w")
    np.testing.assert_array_equal(np.concatenate(list(src.iter_features(64))),  # waits for the spill thread
                                  np.load(d / "raw" / "data.npz")["node_feat"])
    spill = tmp_path / "w" / "papers100M_node_feat.F.raw"
    mtime = spill.stat().st_mtime_ns
    again = Papers100MSource(d)
    again.prepare_scratch(tmp_path / "w")
    next(again.iter_features(64))
    assert spill.stat().st_mtime_ns == mtime


@pytest.mark.parametrize("fortran", [False, True])
def test_uncompressed_npz_is_read_in_place_without_spills(tmp_path, fortran):
    """``np.savez`` (stored members): edges and C-ordered features are read at their offset in
    data.npz, so no scratch copy is written; Fortran-ordered features still need their spill."""
    d = make_papers100m_fixture(tmp_path, 301, 999, num_features=8, fortran=fortran, compressed=False)
    src = Papers100MSource(d)
    src.prepare_scratch(tmp_path / "w")
    want = np.load(d / "raw" / "data.npz")
    np.testing.assert_array_equal(np.concatenate(list(src.iter_features(64))), want["node_feat"])
    np.testing.assert_array_equal(np.stack([np.concatenate(b) for b in zip(*src.iter_edges(100))]),
                                  want["edge_index"])
    spills = sorted(p.name for p in (tmp_path / "w").glob("*.raw"))
    assert spills == (["papers100M_node_feat.F.raw"] if fortran else [])


def _rewrite_npz(path, **changes):
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    arrays.update(changes)
    np.savez_compressed(path, **arrays)


@pytest.fixture
def small(tmp_path):
    return make_papers100m_fixture(tmp_path, 301, 999, num_features=8, seed=3)


def test_truncated_and_corrupted_npz(small):
    data = small / "raw" / "data.npz"
    raw = data.read_bytes()
    corrupt_member(data, "edge_index.npy")
    src = Papers100MSource(small)
    with pytest.raises(InputError, match=r"data\.npz member edge_index\.npy is corrupted"):
        list(src.iter_edges(100))
    data.write_bytes(raw[: len(raw) - 2000])
    with pytest.raises(InputError, match=r"raw/data\.npz member num_nodes_list\.npy is corrupted or "
                                         r"truncated.*re-download"):
        Papers100MSource(small).info()


def test_counts_and_dtypes_must_agree(small):
    data = small / "raw" / "data.npz"
    _rewrite_npz(data, num_edges_list=np.array([998]))
    with pytest.raises(InputError, match=r"edge_index\.npy has int64 \(2, 999\) but num_edges_list"):
        Papers100MSource(small).info()
    _rewrite_npz(data, num_edges_list=np.array([999]), node_feat=np.zeros((301, 8), dtype=np.int32))
    with pytest.raises(InputError, match=r"node_feat\.npy has int32"):
        Papers100MSource(small).info()
    _rewrite_npz(data, node_feat=np.zeros((301, 8), dtype=np.float32), num_nodes_list=np.array([300, 1]))
    with pytest.raises(InputError, match="exactly one"):
        Papers100MSource(small).info()


def test_bad_labels_and_splits(small):
    _rewrite_npz(small / "raw" / "node-label.npz", node_label=np.full((301, 1), 0.5, dtype=np.float32))
    with pytest.raises(InputError, match=r"node-label\.npz member node_label\.npy holds non-integer"):
        Papers100MSource(small).labels()
    (small / "split" / "time" / "valid.csv.gz").unlink()
    with pytest.raises(InputNotFoundError, match=r"split/time/valid\.csv\.gz does not exist"):
        Papers100MSource(small).splits()
    import gzip

    with gzip.open(small / "split" / "time" / "valid.csv.gz", "wb") as f:
        f.write(b"1\n5000\n")
    with pytest.raises(InputError, match=r"valid\.csv\.gz has node ids outside \[0, 301\)"):
        Papers100MSource(small).splits()
    with gzip.open(small / "split" / "time" / "valid.csv.gz", "wb") as f:
        f.write(b"node idx\n1\n")
    with pytest.raises(InputError, match="one integer node id per line"):
        Papers100MSource(small).splits()


def test_split_dict_preferred_and_malicious_one_refused(small):
    sd = small / "split" / "time" / "split_dict.pt"
    torch.save({"train": np.array([1, 2]), "valid": np.array([3]), "test": np.array([4, 5])}, sd)
    assert Papers100MSource(small).splits()["test"].tolist() == [4, 5]

    class Evil:
        def __reduce__(self):
            return (os.system, ("true",))

    torch.save({"train": Evil(), "valid": np.array([3]), "test": np.array([4])}, sd)
    with pytest.raises(InputError, match=r"split_dict\.pt contains a pickled object of type \w+\.system"):
        Papers100MSource(small).splits()


def test_end_to_end_store_matches_reference(fixture_dir, ogb_data, tmp_path):
    pipeline = pytest.importorskip("oocgnn.prepare.pipeline")
    from ogb.nodeproppred import Evaluator
    from torch_geometric.utils import remove_self_loops, to_undirected

    from oocgnn import open_dataset

    graph, label, split = ogb_data
    pipeline.prepare_store(Papers100MSource(fixture_dir), tmp_path / "store",
                           pipeline.PrepareOptions(partitions=4), memory_budget=2 << 30, progress=False)
    ds = open_dataset(tmp_path / "store")
    assert ds.evaluator_name == "ogbn-papers100M"
    inv = np.empty(N, dtype=np.int64)
    inv[ds.perm] = np.arange(N)
    ei, _ = remove_self_loops(torch.from_numpy(graph["edge_index"]))
    ei = to_undirected(ei, num_nodes=N)  # coalesced: sorted, duplicates removed
    rows, cols = inv[ei[0].numpy()], inv[ei[1].numpy()]
    order = np.lexsort((cols, rows))
    np.testing.assert_array_equal(ds.indptr, np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=N))]))
    np.testing.assert_array_equal(ds.indices, cols[order])
    np.testing.assert_array_equal(ds.features, graph["node_feat"][ds.perm])
    evaluator = Evaluator("ogbn-papers100M")
    for k in ("train", "valid", "test"):
        ids = ds.split(k)
        np.testing.assert_array_equal(np.sort(ds.perm[ids]), np.sort(split[k]))
        y_true = label[ds.perm[ids]]
        y_pred = np.asarray(ds.labels[ids], dtype=np.int64).reshape(-1, 1)
        assert evaluator.eval({"y_true": y_true, "y_pred": y_pred})["acc"] == 1.0
