"""`oocgnn prepare arrays`: a user's own .npy / .csv files in each accepted form, splits, multi-label
labels, one-line refusals, and kill -9 then rerun."""
from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from oocgnn import open_dataset
from oocgnn.prepare.pipeline import PrepareOptions, prepare_store
from oocgnn.prepare.sources.arrays import ArraysSource
from oocgnn.store import format as fmt
from oocgnn.testing.stores import random_graph
from source_helpers import assert_one_line_error, assert_store_matches, cli, run_main

N, E, F = 300, 1500, 6


@pytest.fixture(scope="module")
def graph():
    g = random_graph(N, E, F, num_classes=4, seed=5)
    g["y"][::7] = -1  # some unlabelled nodes
    g["edge_index"][:, :3] = g["edge_index"][[0], :3]  # self-loops
    return g


def _save(tmp_path, g, edges_as="npy_2e", split_as="idx"):
    """Write the graph as files in the form asked for; returns the ArraysSource arguments."""
    ei = g["edge_index"]
    p = {"node_feat": tmp_path / "x.npy", "node_label": tmp_path / "y.npy"}
    np.save(p["node_feat"], g["x"])
    np.save(p["node_label"], g["y"])
    if edges_as == "npy_2e":
        p["edge_index"] = tmp_path / "e.npy"
        np.save(p["edge_index"], ei)
    elif edges_as == "npy_2e_fortran_int32":
        p["edge_index"] = tmp_path / "e.npy"
        np.save(p["edge_index"], np.asfortranarray(ei.astype(np.int32)))
    elif edges_as == "npy_e2":
        p["edge_index"] = tmp_path / "e.npy"
        np.save(p["edge_index"], np.ascontiguousarray(ei.T))
    elif edges_as == "npy_e2_fortran":
        p["edge_index"] = tmp_path / "e.npy"
        np.save(p["edge_index"], np.asfortranarray(ei.T))
    else:
        text = "".join(f"{s},{d}\n" for s, d in ei.T).encode()
        p["edge_index"] = tmp_path / ("e.csv" if edges_as == "csv" else "e.csv.gz")
        p["edge_index"].write_bytes(text if edges_as == "csv" else gzip.compress(text))
    for k, ids in g["splits"].items():
        p[f"{k}_idx"] = tmp_path / f"{k}.npy"
        if split_as == "mask":
            mask = np.zeros(N, dtype=bool)
            mask[ids] = True
            np.save(p[f"{k}_idx"], mask)
        else:
            np.save(p[f"{k}_idx"], ids)
    return p


def _build(src, out, **opts):
    return prepare_store(src, out, PrepareOptions(partitions=4, **opts), memory_budget=2 << 30, progress=False)


@pytest.mark.parametrize("edges_as, split_as", [
    ("npy_2e", "idx"), ("npy_2e_fortran_int32", "idx"), ("npy_e2", "idx"), ("npy_e2_fortran", "idx"),
    ("csv", "idx"), ("csv.gz", "idx"), ("npy_2e", "mask"), ("csv.gz", "mask"),
])
def test_each_edge_form_and_split_form_builds_the_same_graph(tmp_path, graph, edges_as, split_as):
    ds = _build(ArraysSource(**_save(tmp_path, graph, edges_as, split_as)), tmp_path / "s")
    ei = graph["edge_index"]
    assert_store_matches(ds, ei[0], ei[1], graph["x"], graph["y"], graph["splits"])
    assert ds.num_classes == 4 and ds.manifest["source"]["name"] == "arrays"


@pytest.mark.parametrize("dtype", ["float16", "float64"])
def test_feature_dtypes_and_column_labels(tmp_path, graph, dtype):
    """float16/float64 features are stored as float32; [N, 1] labels read as [N]; no undirecting."""
    p = _save(tmp_path, graph)
    x = graph["x"].astype(dtype)
    np.save(p["node_feat"], x)
    np.save(p["node_label"], graph["y"].reshape(-1, 1).astype(np.int32))
    ds = _build(ArraysSource(**p), tmp_path / "s", undirected=False)
    ei = graph["edge_index"]
    assert_store_matches(ds, ei[0], ei[1], x.astype(np.float32), graph["y"], graph["splits"], undirected=False)


def test_split_ratio_is_seeded_and_covers_labelled_nodes_only(tmp_path, graph):
    p = {k: v for k, v in _save(tmp_path, graph).items() if not k.endswith("_idx")}
    a = ArraysSource(**p, split_ratio=(0.6, 0.2, 0.2), split_seed=3).splits()
    again = ArraysSource(**p, split_ratio=(0.6, 0.2, 0.2), split_seed=3).splits()
    other = ArraysSource(**p, split_ratio=(0.6, 0.2, 0.2), split_seed=4).splits()
    labelled = np.flatnonzero(graph["y"] >= 0)
    assert all(np.array_equal(a[k], again[k]) for k in a)
    assert not np.array_equal(a["train"], other["train"])
    np.testing.assert_array_equal(np.sort(np.concatenate(list(a.values()))), labelled)
    assert [len(a[k]) for k in ("train", "valid", "test")] == [int(0.6 * len(labelled)), int(0.8 * len(labelled))
                                                               - int(0.6 * len(labelled)),
                                                               len(labelled) - int(0.8 * len(labelled))]
    default = ArraysSource(**p)  # no split files: 0.8 / 0.1 / 0.1, seed 0
    assert default.split_ratio == (0.8, 0.1, 0.1) and "seed 0" in default.info().split_note


def test_multilabel_targets(tmp_path, graph):
    """[N, T] 0/1 with NaN: a multi-label task of T targets; the ratio split takes nodes with any known target."""
    rng = np.random.default_rng(0)
    y = (rng.random((N, 5)) < 0.3).astype(np.float32)
    y[5, 2] = np.nan
    y[9] = np.nan  # no target known
    p = {k: v for k, v in _save(tmp_path, graph).items() if not k.endswith("_idx")}
    np.save(p["node_label"], y)
    src = ArraysSource(**p)
    info = src.info()
    assert (info.task, info.num_classes) == ("multilabel", 5)
    labels = src.labels()
    assert labels.dtype == np.float32 and labels.shape == (N, 5)
    np.testing.assert_array_equal(labels, y)  # NaN where unknown (array_equal treats NaN == NaN)
    covered = np.concatenate(list(src.splits().values()))
    assert 9 not in covered and 5 in covered and len(covered) == N - 1
    np.save(p["node_label"], np.nan_to_num(y[:, :1], nan=-1).astype(np.int64))  # one column: classes again
    assert ArraysSource(**p).info().task == "multiclass"


def test_prepare_arrays_through_cli(tmp_path, graph):
    p = _save(tmp_path, graph, "csv.gz", "mask")
    out = tmp_path / "s"
    r = cli("prepare", "arrays", "--edge-index", str(p["edge_index"]), "--node-feat", str(p["node_feat"]),
            "--node-label", str(p["node_label"]), "--train-idx", str(p["train_idx"]), "--valid-idx",
            str(p["valid_idx"]), "--test-idx", str(p["test_idx"]), "--out", str(out), "--partitions", "4",
            "--no-progress")
    assert r.returncode == 0, r.stderr
    ei = graph["edge_index"]
    assert_store_matches(open_dataset(out), ei[0], ei[1], graph["x"], graph["y"], graph["splits"])


def _args(p: dict, **override) -> list[str]:
    p = {**p, **override}
    out = ["prepare", "arrays"]
    for k, v in p.items():
        if v is not None and k != "out":
            out += [f"--{k.replace('_', '-')}", str(v)]
    return out + ["--out", str(p["out"]), "--no-progress", "--partitions", "4"]


def _bad_inputs(tmp_path, p):
    """(override of the arguments or a file to write, needles of the one error line)."""
    t = tmp_path
    nan_x = np.load(p["node_feat"])
    nan_x[37, 2] = np.nan
    inf_x = np.load(p["node_feat"])
    inf_x[41, 0] = np.inf
    ei = np.load(p["edge_index"])
    far = ei.copy()
    far[1, 123] = N + 5
    y = np.load(p["node_label"])
    mask = np.zeros(N + 1, dtype=bool)
    return [
        ({"edge_index": far}, ["e.npy", "edge 123", str(N + 5), f"[0, {N})"]),
        ({"edge_index": ("csv", "0,1\n1,2\n2,999\n")}, ["e.csv", "line 3", "999"]),
        ({"edge_index": ("csv", "src,dst\n0,1\n")}, ["e.csv", "line 1", "'src'"]),
        ({"edge_index": np.zeros((3, 10), dtype=np.int64)}, ["e.npy", "(3, 10)", "(2, E) or (E, 2)"]),
        ({"edge_index": ei.astype(np.float32)}, ["e.npy", "float32", "integer"]),
        ({"node_feat": nan_x}, ["x.npy", "row 37", "NaN"]),
        ({"node_feat": inf_x}, ["x.npy", "row 41", "infinity"]),
        ({"node_feat": np.zeros(N, dtype=np.float32)}, ["x.npy", f"({N},)", "[N, F]"]),
        ({"node_feat": np.zeros((N, 3), dtype=np.int64)}, ["x.npy", "int64", "float16, float32, float64"]),
        ({"node_label": y[:-1]}, ["y.npy", f"{N - 1} rows", f"{N}", "row counts differ"]),
        ({"node_label": np.where(np.arange(N) == 8, -5, y)}, ["y.npy", "row 8", "-5"]),
        ({"node_label": np.full((N, 3), 2.0, dtype=np.float32)}, ["y.npy", "row 0", "0, 1 or NaN"]),
        ({"node_label": np.full(N, -1)}, ["y.npy", "labels no node"]),
        ({"train_idx": np.array([0, N])}, ["train.npy", f"node id {N}"]),
        ({"valid_idx": mask}, ["valid.npy", "mask", str(N)]),
        ({"test_idx": None}, ["--test-idx"]),
        ({"test_idx": t / "nowhere.npy"}, ["nowhere.npy", "does not exist"]),
        ({"node_feat": t / "missing.npy"}, ["missing.npy", "does not exist"]),
        ({"split_ratio": "0.5,0.6"}, ["--split-ratio"]),
    ]


def test_bad_inputs_give_one_line_and_no_store(tmp_path, graph, capsys):
    """Every bad input: one error line naming the file (and row or line), non-zero exit, no
    traceback, no finished store and no features file.  The first case runs in a fresh
    process as a user would; the others in this one (an interpreter start-up each is seconds)."""
    base = _save(tmp_path, graph)
    cases = _bad_inputs(tmp_path, base)
    for i, (override, needles) in enumerate(cases):
        case = tmp_path / f"case{i}"
        case.mkdir()
        p = {**base, "out": case / "store"}
        for k, v in override.items():
            if isinstance(v, np.ndarray):  # a damaged copy of one file, same name
                p[k] = case / base[k].name
                np.save(p[k], v)
            elif isinstance(v, tuple):
                p[k] = case / f"e.{v[0]}"
                p[k].write_text(v[1])
            else:
                p[k] = v
        if "split_ratio" in override:
            p = {k: v for k, v in p.items() if not k.endswith("_idx")}
        r = cli(*_args(p)) if i == 0 else run_main(capsys, *_args(p))
        assert_one_line_error(r, *needles)
        assert not (p["out"] / fmt.COMPLETE).exists() and not (p["out"] / fmt.FEATURES).exists(), needles


_SLOW_CLI = """
import sys, time
from oocgnn.prepare.sources.arrays import FileGraphSource
plain = FileGraphSource.iter_features
def slow(self, block_rows):
    time.sleep(60)  # the test kills the build here, after the CSR and partition stages
    yield from plain(self, block_rows)
FileGraphSource.iter_features = slow
from oocgnn.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def test_kill9_during_prepare_arrays_then_rerun_gives_the_identical_store(tmp_path, graph, capsys):
    p = _save(tmp_path, graph, "csv.gz")
    script = tmp_path / "slow_cli.py"
    script.write_text(textwrap.dedent(_SLOW_CLI))
    store = tmp_path / "s"
    proc = subprocess.Popen([sys.executable, str(script), *_args({**p, "out": store})],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = store / fmt.WORK / "stages" / "csr.json"
    deadline = time.monotonic() + 120
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)  # polling the marker file
    assert marker.exists(), "the build did not reach the features stage"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (store / fmt.COMPLETE).exists()
    r = cli(*_args({**p, "out": store}))  # the same command, without the slow hook
    assert r.returncode == 0, r.stderr
    report = json.loads((store / "prepare_report.json").read_text())["stages"]
    assert all(report[s].get("resumed") for s in ("csr_orig", "partition", "csr"))
    clean = tmp_path / "clean"
    assert run_main(capsys, *_args({**p, "out": clean})).returncode == 0
    resumed, fresh = open_dataset(store), open_dataset(clean)
    assert resumed.manifest["checksums"] == fresh.manifest["checksums"]
    assert resumed.manifest["partition"] == fresh.manifest["partition"]
