"""Shared by the source tests: a store checked against the graph it was built from, CLI runs."""
from __future__ import annotations

import subprocess
import sys

import numpy as np

from oocgnn.store.reader import Dataset


def stored_edges(ds: Dataset) -> set[tuple[int, int]]:
    """The store's CSR as a set of (original src, original dst) pairs."""
    ip, ix, perm = np.asarray(ds.indptr), np.asarray(ds.indices), ds.perm
    rows = np.repeat(np.arange(ds.num_nodes), np.diff(ip))
    return set(zip(perm[rows].tolist(), perm[ix].tolist()))


def expected_edges(src: np.ndarray, dst: np.ndarray, undirected: bool = True) -> set[tuple[int, int]]:
    """What the builder must keep of an edge list: no self-loops, no duplicates, reverses if undirected."""
    keep = src != dst
    pairs = set(zip(src[keep].tolist(), dst[keep].tolist()))
    return pairs | {(d, s) for s, d in pairs} if undirected else pairs


def assert_store_matches(ds: Dataset, src: np.ndarray, dst: np.ndarray, x: np.ndarray, labels: np.ndarray,
                         splits: dict[str, np.ndarray], undirected: bool = True) -> None:
    """Every array of the store equals the ground truth, row by row through the store's permutation."""
    perm = ds.perm
    assert ds.num_nodes == len(x) and ds.num_features == x.shape[1]
    np.testing.assert_array_equal(np.asarray(ds.features), x[perm].astype(ds.features.dtype))
    np.testing.assert_array_equal(ds.labels, labels[perm])
    for k, ids in splits.items():
        np.testing.assert_array_equal(np.sort(perm[ds.split(k)]), np.sort(ids))
    assert stored_edges(ds) == expected_edges(np.asarray(src), np.asarray(dst), undirected)


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m oocgnn.cli.main ARGS`` in a fresh process (what a user runs)."""
    return subprocess.run([sys.executable, "-m", "oocgnn.cli.main", *args], capture_output=True, text=True, env=env)


def run_main(capsys, *args: str) -> subprocess.CompletedProcess:
    """``oocgnn ARGS`` in this process (no interpreter start-up): exit code and what it printed.
    An exception other than the typed user errors propagates and fails the test (a traceback)."""
    from oocgnn.cli.main import main

    capsys.readouterr()
    rc = main(list(args))
    out = capsys.readouterr()
    return subprocess.CompletedProcess(list(args), rc, out.out, out.err)


def assert_one_line_error(r: subprocess.CompletedProcess, *needles: str) -> str:
    """Non-zero exit, no traceback, exactly one ``error:`` line on stderr holding every needle (INFO
    lines of stages that ran before the error may precede it); returns the line."""
    assert r.returncode != 0, r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if "error:" in ln]
    assert len(lines) == 1, r.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]
