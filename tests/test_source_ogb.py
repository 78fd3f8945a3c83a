"""`oocgnn prepare ogb`: ogbn-arxiv / ogbn-products csv downloads against OGB's own loader, and refusals."""
from __future__ import annotations

import contextlib
import gzip
import io
import shutil

import numpy as np
import pytest

from oocgnn import open_dataset
from oocgnn.errors import ConfigError
from oocgnn.prepare.sources.ogb import OgbCsvSource, make_ogb_source, ogb_meta
from oocgnn.prepare.sources.ogbn_papers import Papers100MSource
from oocgnn.store import format as fmt
from oocgnn.testing.ogb_csv_fixtures import make_ogb_csv_fixture
from oocgnn.testing.ogb_fixtures import make_papers100m_fixture
from source_helpers import assert_one_line_error, assert_store_matches, cli, run_main

N, E, F = 401, 2003, 12


@pytest.fixture(scope="module", params=["ogbn-arxiv", "ogbn-products"])
def ogb_case(request, tmp_path_factory):
    """(name, fixture folder, OGB's graph dict, labels, split) with OGB's loader run once from raw on a copy."""
    from ogb.nodeproppred import NodePropPredDataset

    name = request.param
    root = tmp_path_factory.mktemp(name)
    d = make_ogb_csv_fixture(root / "in", name, N, E, num_features=F, seed=3)
    ref = root / "ogb"
    shutil.copytree(d, ref / d.name)
    (ref / d.name / "processed").mkdir()  # OGB saves there (and would reload it with torch.load: do not)
    with contextlib.redirect_stdout(io.StringIO()):
        ds = NodePropPredDataset(name, root=str(ref))
    graph, label = ds[0]
    return name, d, graph, label, ds.get_idx_split()


def _edge_multiset(ei: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.unique(ei[0].astype(np.int64) * 10**6 + ei[1], return_counts=True)


@pytest.mark.parametrize("undirected", [True, False])
def test_source_matches_ogb_loader(ogb_case, tmp_path, undirected):
    name, d, graph, label, split = ogb_case
    src = make_ogb_source(name, d.parent, undirected=undirected)
    assert isinstance(src, OgbCsvSource)
    src.prepare_scratch(tmp_path / "scratch")
    try:
        info = src.info()
        meta = ogb_meta(name)
        assert (info.num_nodes, info.num_features, info.num_classes) == (N, F, int(meta["num classes"]))
        assert info.ogb_evaluator == name and info.task == "multiclass"
        assert info.directed == (name == "ogbn-arxiv")  # products: add_inverse_edge in master.csv
        blocks = list(src.iter_edges(500))
        assert max(len(s) for s, _ in blocks) <= 500
        ours = np.stack([np.concatenate(b) for b in zip(*blocks)])
        if name == "ogbn-products" and undirected:  # the file's edges; the builder adds the reverses
            halves = graph["edge_index"][:, ::2]
            np.testing.assert_array_equal(ours, halves)
        else:  # OGB's graph, every edge as many times as OGB has it
            for a, b in zip(_edge_multiset(ours), _edge_multiset(graph["edge_index"])):
                np.testing.assert_array_equal(a, b)
        feats = list(src.iter_features(100))
        np.testing.assert_array_equal(np.concatenate(feats), graph["node_feat"])  # bit-equal float32
        np.testing.assert_array_equal(src.labels(), label[:, 0])
        for k, v in src.splits().items():
            np.testing.assert_array_equal(v, split[k])
    finally:
        src.close()


def test_prepare_ogb_through_cli_equals_ogb(ogb_case, tmp_path):
    name, d, graph, label, split = ogb_case
    out = tmp_path / "store"
    r = cli("prepare", "ogb", "--name", name, "--root", str(d.parent), "--out", str(out), "--partitions", "4",
            "--no-progress")
    assert r.returncode == 0, r.stderr
    ds = open_dataset(out)
    assert ds.evaluator_name == name and ds.num_classes == int(ogb_meta(name)["num classes"])
    ei = graph["edge_index"]
    assert_store_matches(ds, ei[0], ei[1], graph["node_feat"], label[:, 0], split)
    assert not (out / fmt.WORK).exists()  # the scratch spills are gone


def test_unzipped_folder_name_and_resume_reuses_the_parsed_files(tmp_path):
    """ROOT may hold `products/` (the zip's own name); a build killed after the scratch stage
    resumes from the parsed raw files instead of parsing the csv again."""
    d = make_ogb_csv_fixture(tmp_path / "in", "ogbn-products", 203, 801, num_features=4, folder_name="products")
    src = OgbCsvSource("ogbn-products", tmp_path / "in")
    assert src.dir == d.resolve()
    src.prepare_scratch(tmp_path / "scratch")
    src.close()
    raw = tmp_path / "scratch" / "ogb_edges.int64"
    before = raw.stat().st_mtime_ns
    again = OgbCsvSource("ogbn-products", d)
    again.prepare_scratch(tmp_path / "scratch")
    assert raw.stat().st_mtime_ns == before
    assert sum(len(b) for b in again.iter_features(50)) == 203
    again.close()


def test_papers100m_by_name_uses_the_npz_source(tmp_path):
    make_papers100m_fixture(tmp_path, 301, 999, num_features=8)
    src = make_ogb_source("ogbn-papers100M", tmp_path)
    assert isinstance(src, Papers100MSource) and src.info().num_nodes == 301


@pytest.mark.parametrize("name, needle", [
    ("ogbn-mag", "heterogeneous"),
    ("ogbn-proteins", "no node features"),
    ("ogbn-nope", "not an OGB node-property dataset"),
])
def test_unsupported_names_are_refused(name, needle):
    with pytest.raises(ConfigError, match=needle):
        ogb_meta(name)


def _gz(path, text: str) -> None:
    with gzip.open(path, "wb") as f:
        f.write(text.encode())


@pytest.fixture
def small(tmp_path):
    return make_ogb_csv_fixture(tmp_path / "in", "ogbn-arxiv", 101, 403, num_features=3)


@pytest.mark.parametrize("damage, needles", [
    (lambda d: None, ["ogbn-mag", "heterogeneous"]),                       # name refused (damage unused)
    (lambda d: (d / "raw" / "node-feat.csv.gz").unlink(), ["node-feat.csv.gz", "does not exist"]),
    (lambda d: _gz(d / "raw" / "edge.csv.gz", "0,1\n2,5000\n"), ["edge.csv.gz", "line 2", "5000"]),
    (lambda d: _gz(d / "raw" / "edge.csv.gz", "0,1\n2,x\n"), ["edge.csv.gz", "line 2 field 2", "not an integer"]),
    (lambda d: (d / "raw" / "node-label.csv.gz").write_bytes(b"\x1f\x8b\x08garbage"), ["node-label.csv.gz"]),
    (lambda d: _gz(d / "raw" / "node-feat.csv.gz", "0.5,1,2\n" * 100), ["node-feat.csv.gz", "100 rows", "101"]),
    (lambda d: _gz(d / "raw" / "node-label.csv.gz", "3\n" * 100 + "45\n"), ["node-label.csv.gz", "line 101", "40"]),
    (lambda d: _gz(d / "split" / "time" / "valid.csv.gz", "7\n999\n"), ["valid.csv.gz", "999"]),
])
def test_bad_downloads_give_one_line_and_no_store(small, tmp_path, damage, needles, capsys):
    damage(small)
    name = "ogbn-mag" if needles[0] == "ogbn-mag" else "ogbn-arxiv"
    out = tmp_path / "store"
    args = ("prepare", "ogb", "--name", name, "--root", str(small.parent), "--out", str(out), "--no-progress")
    r = cli(*args) if "line 2" in needles else run_main(capsys, *args)  # one in a fresh process, as a user runs it
    assert_one_line_error(r, *needles)
    assert not (out / fmt.COMPLETE).exists() and not (out / fmt.FEATURES).exists()
