"""`oocgnn prepare ondisk`: DGL GraphBolt OnDiskDataset folders (metadata.yaml), and what is refused."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import yaml

from oocgnn import open_dataset
from oocgnn.prepare.pipeline import PrepareOptions, prepare_store
from oocgnn.prepare.sources.ondisk import OnDiskSource
from oocgnn.store import format as fmt
from oocgnn.testing.stores import random_graph
from source_helpers import assert_one_line_error, assert_store_matches, cli, run_main

N, E, F = 260, 1300, 5
SET_KEYS = {"train": "train_set", "valid": "validation_set", "test": "test_set"}


@pytest.fixture(scope="module")
def graph():
    return random_graph(N, E, F, num_classes=3, seed=8)


def write_graphbolt(d, g, *, edges="csv", seed_name="seeds", labels=None, num_classes=3):
    """A GraphBolt folder as DGL's OnDiskDataset tutorial writes it; returns the metadata dict."""
    (d / "edges").mkdir(parents=True)
    (d / "data").mkdir()
    (d / "set").mkdir()
    ei = g["edge_index"]
    if edges == "csv":  # np.savetxt of (E, 2), as in the tutorial
        np.savetxt(d / "edges" / "edge.csv", ei.T, delimiter=",", fmt="%d")
        edge_entry = {"format": "csv", "path": "edges/edge.csv"}
    else:
        np.save(d / "edges" / "edge.npy", ei)
        edge_entry = {"format": "numpy", "path": "edges/edge.npy"}
    np.save(d / "data" / "feat.npy", g["x"])
    np.save(d / "data" / "year.npy", np.arange(N))  # another node feature: ignored
    labels = g["y"] if labels is None else labels
    task = {"name": "node_classification", "num_classes": num_classes}
    for k, key in SET_KEYS.items():
        ids = g["splits"][k]
        np.save(d / "set" / f"{k}_seeds.npy", ids)
        np.save(d / "set" / f"{k}_labels.npy", labels[ids])
        task[key] = [{"data": [{"name": seed_name, "format": "numpy", "path": f"set/{k}_seeds.npy"},
                               {"name": "labels", "format": "numpy", "in_memory": True,
                                "path": f"set/{k}_labels.npy"}]}]
    meta = {"dataset_name": "tiny", "graph": {"nodes": [{"num": N}], "edges": [edge_entry]},
            "feature_data": [{"domain": "node", "name": "feat", "format": "numpy", "in_memory": False,
                              "path": "data/feat.npy"},
                             {"domain": "node", "name": "year", "format": "numpy", "path": "data/year.npy"}],
            "tasks": [task]}
    (d / "metadata.yaml").write_text(yaml.safe_dump(meta))
    return meta


def _labels_of_sets(g):
    y = np.full(N, -1)
    for ids in g["splits"].values():
        y[ids] = g["y"][ids]
    return y


@pytest.mark.parametrize("edges, seed_name", [("csv", "seeds"), ("numpy", "seeds"), ("numpy", "seed_nodes")])
def test_graphbolt_folder_builds_the_graph(tmp_path, graph, edges, seed_name):
    d = tmp_path / "gb"
    write_graphbolt(d, graph, edges=edges, seed_name=seed_name)
    (d / "preprocessed").mkdir()  # GraphBolt's own output: never read
    (d / "preprocessed" / "metadata.yaml").write_text("graph_topology: {type: FusedCSCSamplingGraph}\n")
    src = OnDiskSource(d)
    info = src.info()
    assert (info.task, info.num_classes, info.name) == ("multiclass", 3, "graphbolt:tiny")
    ds = prepare_store(src, tmp_path / "s", PrepareOptions(partitions=4), memory_budget=2 << 30, progress=False)
    ei = graph["edge_index"]
    assert_store_matches(ds, ei[0], ei[1], graph["x"], _labels_of_sets(graph), graph["splits"])


def test_prepare_ondisk_through_cli(tmp_path, graph):
    write_graphbolt(tmp_path / "gb", graph, num_classes=7)  # declared classes beyond the largest label
    r = cli("prepare", "ondisk", "--root", str(tmp_path / "gb"), "--out", str(tmp_path / "s"), "--partitions", "4",
            "--no-progress")
    assert r.returncode == 0, r.stderr
    ds = open_dataset(tmp_path / "s")
    assert ds.num_classes == 7
    ei = graph["edge_index"]
    assert_store_matches(ds, ei[0], ei[1], graph["x"], _labels_of_sets(graph), graph["splits"])


def test_two_dimensional_labels_are_a_multilabel_task(tmp_path, graph):
    targets = (np.random.default_rng(1).random((N, 4)) < 0.4).astype(np.float32)
    targets[graph["splits"]["train"][0], 1] = np.nan
    write_graphbolt(tmp_path / "gb", graph, labels=targets)
    src = OnDiskSource(tmp_path / "gb")
    info = src.info()
    assert (info.task, info.num_classes) == ("multilabel", 4)
    want = np.full((N, 4), np.nan, dtype=np.float32)
    for ids in graph["splits"].values():
        want[ids] = targets[ids]
    got = src.labels()
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, want)


def _edit(meta, path, value):
    """Set ``meta[path...] = value`` (a tuple path; ``value`` None deletes)."""
    *head, last = path
    node = meta
    for k in head:
        node = node[k]
    if value is None:
        del node[last]
    else:
        node[last] = value


@pytest.mark.parametrize("path, value, needles", [
    (("graph", "nodes"), [{"type": "paper", "num": N}, {"type": "author", "num": 3}], ["graph.nodes has 2 entries"]),
    (("graph", "edges", 0, "type"), "paper:cites:paper", ["type 'paper:cites:paper'", "heterogeneous"]),
    (("tasks",), "two", ["0 tasks"]),
    (("tasks", 0, "train_set", 0, "data", 0, "name"), "node_pairs", ["not node classification"]),
    (("tasks", 0, "validation_set", 0, "data", 1), None, ["validation_set", "not node classification"]),
    (("feature_data", 0, "format"), "torch", ["format 'torch'", "numpy.save"]),
    (("feature_data", 0, "name"), "x", ["0 node features named 'feat'"]),
    (("graph", "nodes", 0, "num"), N + 1, ["feat.npy", f"{N} rows", f"num {N + 1}"]),
    (("graph",), None, ["no 'graph' entry"]),
])
def test_unsupported_metadata_gives_one_line_and_no_store(tmp_path, graph, capsys, path, value, needles):
    meta = write_graphbolt(tmp_path / "gb", graph)
    meta = copy.deepcopy(meta)
    _edit(meta, path, value)
    (tmp_path / "gb" / "metadata.yaml").write_text(yaml.safe_dump(meta))
    r = run_main(capsys, "prepare", "ondisk", "--root", str(tmp_path / "gb"), "--out", str(tmp_path / "s"))
    line = assert_one_line_error(r, "metadata.yaml", *needles)
    assert "supports" in line or "differ" in line
    assert not (tmp_path / "s").exists()


def test_link_prediction_seeds_and_broken_files_are_refused(tmp_path, graph, capsys):
    d = tmp_path / "gb"
    write_graphbolt(d, graph)
    np.save(d / "set" / "train_seeds.npy", graph["edge_index"][:, :10].T)  # node pairs: link prediction
    r = run_main(capsys, "prepare", "ondisk", "--root", str(d), "--out", str(tmp_path / "s"))
    assert_one_line_error(r, "train_seeds.npy", "link prediction")
    np.save(d / "set" / "train_seeds.npy", graph["splits"]["train"])
    np.save(d / "set" / "train_labels.npy", graph["y"][graph["splits"]["train"]][:-1])
    r = run_main(capsys, "prepare", "ondisk", "--root", str(d), "--out", str(tmp_path / "s"))
    assert_one_line_error(r, "train_labels.npy", "one label row per seed")
    (d / "metadata.yaml").write_text("graph: [unclosed\n")
    assert_one_line_error(run_main(capsys, "prepare", "ondisk", "--root", str(d), "--out", str(tmp_path / "s")),
                          "metadata.yaml", "not valid YAML")
    (d / "metadata.yaml").unlink()
    assert_one_line_error(run_main(capsys, "prepare", "ondisk", "--root", str(d), "--out", str(tmp_path / "s")),
                          "metadata.yaml", "does not exist")
    assert not (tmp_path / "s").exists()


def test_out_of_range_edge_in_csv_names_the_line(tmp_path, graph, capsys):
    d = tmp_path / "gb"
    write_graphbolt(d, graph)
    with open(d / "edges" / "edge.csv", "a") as f:
        f.write(f"3,{N}\n")
    r = run_main(capsys, "prepare", "ondisk", "--root", str(d), "--out", str(tmp_path / "s"), "--no-progress")
    assert_one_line_error(r, "edge.csv", f"line {E + 1}", f"node id {N}", "graph.nodes num")
    assert not (tmp_path / "s" / fmt.COMPLETE).exists()
