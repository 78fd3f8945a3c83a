"""A damaged store or bad numbers never pass silently and never crash (issue #27, item 7).

Each case damages a real store on disk by hand, as a bad disk or a buggy converter
would, then runs ``oocgnn train`` in a subprocess: the command must exit with a
non-zero code (not a signal), print one line naming what is wrong, and no traceback.
"""
from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest

from oocgnn.cli.main import main
from oocgnn.store import format as fmt
from oocgnn.testing.stores import make_store, random_graph


@pytest.fixture(scope="module")
def clean_store(tmp_path_factory):
    g = random_graph(num_nodes=400, num_edges=2400, num_features=8, num_classes=3, seed=5)
    path = tmp_path_factory.mktemp("store") / "s"
    make_store(path, g["edge_index"], g["x"], g["y"], g["splits"], 4)
    return path


@pytest.fixture
def store(clean_store, tmp_path):
    """A private copy the test may damage."""
    path = tmp_path / "s"
    shutil.copytree(clean_store, path)
    return path


def _train(store, run) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "oocgnn.cli.main", "train", "--data", str(store), "--run-dir", str(run),
           "--epochs", "2", "--hidden", "8", "--parts-per-batch", "2", "--memory-budget", "1GB", "--no-progress"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])  # an exit code, not a signal (-11 / 139)
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, proc.stderr
    return errors[0]


def test_neighbour_id_past_the_node_count_fails_in_one_line(store, tmp_path):
    indices = np.load(store / fmt.INDICES, mmap_mode="r+")
    indices[len(indices) // 2] = 400 + 7  # the graph has 400 nodes
    indices.flush()
    del indices
    line = _one_error_line(_train(store, tmp_path / "run"))
    assert "indices.npy is damaged" in line and "407" in line and "oocgnn inspect" in line and "--verify" in line


def test_decreasing_row_offsets_fail_in_one_line(store, tmp_path):
    indptr = np.load(store / fmt.INDPTR, mmap_mode="r+")
    indptr[10] = indptr[12] + 5  # row 9 ends after row 10 does
    indptr.flush()
    del indptr
    line = _one_error_line(_train(store, tmp_path / "run"))
    assert "indptr.npy is damaged" in line and "oocgnn inspect" in line


def test_nan_features_stop_training_at_the_step_in_one_line(store, tmp_path, capsys):
    x = np.load(store / fmt.FEATURES, mmap_mode="r+")
    x[np.arange(0, 400, 9)[:45]] = np.nan  # 45 rows, as in the report
    x.flush()
    del x
    run = tmp_path / "run"
    line = _one_error_line(_train(store, run))
    assert "the training loss became nan at step 0" in line and "inspect STORE --verify" in line
    assert not (run / "summary.json").exists()  # no finished run claims an accuracy
    # and the verify the message points to names the first bad row, and fails
    assert main(["inspect", str(store), "--verify"]) == 2
    out = capsys.readouterr().out
    assert "features.npy: row 0 (store id; original id" in out and "NaN or infinite" in out
