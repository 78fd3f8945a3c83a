"""PygSource on copies of the real raw files in ../shared/datasets (skipped if absent)."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from oocgnn.errors import ConfigError, InputError, InputNotFoundError
from oocgnn.prepare.sources.pyg import PygSource


def _copy_raw(shared: Path, tmp: Path, cls: str, name: str) -> Path:
    """A private copy of ``<cls>/<name>/raw`` under ``tmp``; returns the PyG root."""
    src = shared / cls / name / "raw"
    if not src.is_dir():
        pytest.skip(f"{src} not found")
    shutil.copytree(src, tmp / "user" / cls / name / "raw")
    return tmp / "user" / cls


def _tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


#: Same location as conftest.SHARED_DATASETS (a module fixture cannot use the function one).
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"


@pytest.fixture(scope="module")
def cora(tmp_path_factory) -> tuple[PygSource, Path]:
    shared = SHARED
    tmp = tmp_path_factory.mktemp("cora")
    root = _copy_raw(shared, tmp, "Planetoid", "Cora")
    before = _tree(root)
    src = PygSource("Planetoid", "Cora", root)
    src.prepare_scratch(tmp / "work")
    src.info()  # loads
    assert _tree(root) == before, "PygSource wrote into the user's dataset folder"
    return src, tmp


def test_cora_counts_and_public_split(cora):
    src, tmp = cora
    info = src.info()
    assert (info.num_nodes, info.num_edges_hint, info.num_features, info.num_classes) == (2708, 10556, 1433, 7)
    assert info.name == "pyg:Planetoid/Cora" and not info.directed and info.feature_dtype == "float32"
    assert info.split_note == "public split"
    sp = src.splits()
    assert {k: len(v) for k, v in sp.items()} == {"train": 140, "valid": 500, "test": 1000}
    assert all(v.dtype == np.int64 for v in sp.values())
    assert (tmp / "work" / "pyg" / "Cora" / "processed").is_dir()


def test_cora_blocks(cora):
    src, _ = cora
    blocks = list(src.iter_edges(3000))
    assert [len(s) for s, _ in blocks] == [3000, 3000, 3000, 1556]
    s, d = np.concatenate([b[0] for b in blocks]), np.concatenate([b[1] for b in blocks])
    assert s.dtype == np.int64 and 0 <= s.min() and max(s.max(), d.max()) < 2708
    rows = list(src.iter_features(1000))
    x = np.concatenate(rows)
    assert x.shape == (2708, 1433) and x.dtype == np.float32 and [len(r) for r in rows] == [1000, 1000, 708]
    assert set(np.unique(x)) <= {0.0, 1.0}  # raw binary bag of words, not row-normalised
    y = src.labels()
    assert y.shape == (2708,) and y.min() == 0 and y.max() == 6


def test_root_may_be_the_collection_folder_and_scratch_is_resumable(cora, tmp_path):
    _, tmp = cora
    src = PygSource("Planetoid", "Cora", tmp / "user")  # parent of the PyG root
    assert src.raw_folder() == tmp / "user" / "Planetoid" / "Cora" / "raw"
    src.prepare_scratch(tmp_path)
    stamp = (tmp_path / "pyg" / "Cora" / "raw" / "ind.cora.x").stat().st_mtime_ns
    src.prepare_scratch(tmp_path)  # second call copies nothing
    assert (tmp_path / "pyg" / "Cora" / "raw" / "ind.cora.x").stat().st_mtime_ns == stamp
    fp = src.fingerprint()
    assert fp["class"] == "Planetoid" and len(fp["files"]) == 8


def test_amazon_photo_seeded_split(shared_datasets, tmp_path):
    root = _copy_raw(shared_datasets, tmp_path, "Amazon", "Photo")
    src = PygSource("Amazon", "Photo", root, split_seed=1)
    src.prepare_scratch(tmp_path / "work")
    info = src.info()
    assert (info.num_nodes, info.num_edges_hint, info.num_features, info.num_classes) == (7650, 238162, 745, 8)
    assert "seeded split (seed 1)" in info.split_note
    sp, y = src.splits(), src.labels()
    assert {k: len(v) for k, v in sp.items()} == {"train": 160, "valid": 240, "test": 7650 - 400}
    assert np.all(np.bincount(y[sp["train"]], minlength=8) == 20)
    assert np.all(np.bincount(y[sp["valid"]], minlength=8) == 30)
    other = PygSource("Amazon", "Photo", root, split_seed=2)
    other.prepare_scratch(tmp_path / "work")
    assert not np.array_equal(other.splits()["train"], sp["train"])


def test_unknown_class_lists_valid_ones(tmp_path):
    with pytest.raises(ConfigError, match="Planetoid, Amazon"):
        PygSource("NoSuchDataset", "Cora", tmp_path)
    with pytest.raises(ConfigError, match="takes no dataset name"):
        PygSource("KarateClub", "x", tmp_path)


def test_bad_name_or_missing_raw_files(tmp_path):
    with pytest.raises(ConfigError, match="no dataset named 'Shoes'"):
        PygSource("Amazon", "Shoes", tmp_path).raw_folder()
    src = PygSource("Planetoid", "Cora", tmp_path)
    with pytest.raises(InputNotFoundError, match=str(tmp_path / "Cora" / "raw")):
        src.prepare_scratch(tmp_path / "work")
    assert not (tmp_path / "Cora").exists()  # nothing created in the user's folder


def test_non_node_classification_datasets_are_rejected(tmp_path):
    import torch
    from torch_geometric.data import Data

    src = PygSource("Planetoid", "Cora", tmp_path)
    ei = torch.tensor([[0, 1], [1, 0]])
    multi = Data(x=torch.ones(2, 3), y=torch.zeros(2, 4), edge_index=ei)
    with pytest.raises(ConfigError, match="multi-label"):
        src._convert([multi])
    single = Data(x=torch.ones(2, 3), y=torch.tensor([0, 1]), edge_index=ei)
    with pytest.raises(ConfigError, match="holds 2 graphs"):
        src._convert([single, single])
    assert src._convert([single])["num_classes"] == 2


def test_corrupt_raw_file_is_an_input_error(tmp_path):
    if not (SHARED / "Planetoid" / "Cora" / "raw").is_dir():
        pytest.skip(f"real datasets not found at {SHARED}")
    root = _copy_raw(SHARED, tmp_path, "Planetoid", "Cora")
    (root / "Cora" / "raw" / "ind.cora.graph").write_bytes(b"not a pickle")
    src = PygSource("Planetoid", "Cora", root)
    src.prepare_scratch(tmp_path / "work")
    with pytest.raises(InputError, match="cannot read the raw files of Planetoid/Cora"):
        src.info()


def test_end_to_end_store_matches_pyg(cora, tmp_path):
    """Cora -> store -> open_dataset: the CSR equals PyG's coalesced graph mapped through perm."""
    import torch
    from torch_geometric.utils import coalesce, remove_self_loops, to_undirected

    import oocgnn
    from oocgnn.prepare import pipeline
    from oocgnn.utils.memory import default_budget

    src, _ = cora
    out = tmp_path / "store"
    options = pipeline.PrepareOptions(partitions=4)
    pipeline.prepare_store(src, out, options, memory_budget=default_budget(), progress=False)
    ds = oocgnn.open_dataset(out)
    perm = np.asarray(ds.perm)
    inv = np.empty_like(perm)
    inv[perm] = np.arange(len(perm))
    ei = torch.from_numpy(np.stack([np.concatenate(a) for a in zip(*src.iter_edges(10**6))]))
    ei, _ = remove_self_loops(coalesce(to_undirected(ei, num_nodes=2708), num_nodes=2708))
    row, col = inv[ei[0].numpy()], inv[ei[1].numpy()]
    order = np.lexsort((col, row))
    expected_indptr = np.concatenate([[0], np.cumsum(np.bincount(row, minlength=2708))])
    np.testing.assert_array_equal(np.asarray(ds.indptr), expected_indptr)
    np.testing.assert_array_equal(np.asarray(ds.indices).astype(np.int64), col[order])
    np.testing.assert_array_equal(np.asarray(ds.features), np.concatenate(list(src.iter_features(10**6)))[perm])
    np.testing.assert_array_equal(np.asarray(ds.labels), src.labels()[perm])
