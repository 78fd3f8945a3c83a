"""The out-of-core multilevel partitioner: quality, balance, contraction, resume, auto choice."""
from __future__ import annotations

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
from oocgnn.errors import ConfigError
from oocgnn.prepare import multilevel
from oocgnn.prepare.csr import build_csr
from oocgnn.prepare.metis import METIS_BYTES_PER_ENTRY
from oocgnn.prepare.partition import choose_method, partition_graph
from oocgnn.store import format as fmt
from oocgnn.testing.graphs import community_edges

#: METIS needs ~100 MB for the test graph (300 k entries), so at this budget it
#: does not fit and multilevel must coarsen on disk first.
SMALL_BUDGET = 16 << 20




def _csr(d, n, src, dst):
    build_csr(lambda: [(src, dst)], n, d / "ip.npy", d / "ix.npy", d, symmetric=True, memory_budget=1 << 28,
              progress=False)
    return np.load(d / "ip.npy", mmap_mode="r"), np.load(d / "ix.npy", mmap_mode="r")


@pytest.fixture(scope="module")
def community_csr(tmp_path_factory):
    return _csr(tmp_path_factory.mktemp("csr"), 20_000, *community_edges())


def test_many_parts_from_a_heavy_coarse_graph_none_empty_and_balanced(tmp_path) -> None:
    """250 parts of 50 k nodes in 20 MB: METIS on the coarsest graph left 81 parts empty (max/mean 4.1);
    every empty part now takes half of the largest, and refinement keeps parts above half the mean."""
    ip, ix = _csr(tmp_path, 50_000, *community_edges(50_000, 500_000, 200, seed=1))
    part = multilevel.multilevel_partition(ip, ix, 250, memory_budget=20_000_000, workdir=tmp_path / "w",
                                           progress=False)
    sizes = np.bincount(part, minlength=250)
    assert sizes.min() >= multilevel.MIN_SHARE * sizes.mean() - 1
    assert sizes.max() <= multilevel.IMBALANCE * sizes.mean()


@pytest.mark.parametrize("k", [16, 5])
def test_valid_balanced_below_ldg_near_metis(community_csr, tmp_path, k):
    ip, ix = community_csr
    n = len(ip) - 1
    assert not multilevel.metis_fits(n, len(ix), SMALL_BUDGET)
    r = partition_graph(ip, ix, k, "multilevel", memory_budget=SMALL_BUDGET, progress=False, workdir=tmp_path)
    assert r.method == "multilevel" and r.part.shape == (n,) and r.part.dtype == np.int32
    sizes = np.bincount(r.part, minlength=k)
    assert r.part.min() >= 0 and r.part.max() < k and sizes.min() > 0
    assert sizes.max() <= multilevel.IMBALANCE * sizes.mean()
    # it did coarsen, down to a graph METIS fits in the budget
    top = max(int(p.name[5:]) for p in tmp_path.glob("level*"))
    coarse = json.loads((tmp_path / f"level{top}" / "DONE").read_text())
    assert coarse["num_nodes"] < n / 4 and coarse["num_entries"] * METIS_BYTES_PER_ENTRY < SMALL_BUDGET
    ldg = partition_graph(ip, ix, k, "ldg", memory_budget=1 << 30, progress=False)
    metis = partition_graph(ip, ix, k, "metis", memory_budget=1 << 30, progress=False)
    assert r.edge_cut_fraction < ldg.edge_cut_fraction
    assert r.edge_cut_fraction <= 1.15 * metis.edge_cut_fraction
    again = partition_graph(ip, ix, k, "multilevel", memory_budget=SMALL_BUDGET, progress=False)
    assert np.array_equal(again.part, r.part)  # deterministic (and the levels of a finished run are reused)


def test_isolated_nodes_and_tiny_parts(tmp_path):
    src, dst = community_edges(3000, 20_000, 6, seed=1)
    ip, ix = _csr(tmp_path, 4000, src, dst)  # nodes 3000..3999 have no edges
    r = partition_graph(ip, ix, 50, "multilevel", memory_budget=8 << 20, progress=False)
    sizes = np.bincount(r.part, minlength=50)
    assert sizes.sum() == 4000 and sizes.max() <= multilevel.IMBALANCE * sizes.mean()


def test_contract_matches_in_memory_reference(community_csr, tmp_path, monkeypatch):
    """Two contraction levels built in many on-disk buckets equal a direct in-RAM aggregation."""
    monkeypatch.setattr(multilevel, "_MIN_BUCKET_KEYS", 5000)
    ip, ix = community_csr
    g = multilevel.Graph(ip, ix)
    rows = np.repeat(np.arange(len(ip) - 1), np.diff(ip))
    cols = np.asarray(ix, dtype=np.int64)
    w = np.ones(rows.size, np.int64)
    vw = np.ones(len(ip) - 1, np.int64)
    for level, max_weight in ((1, 30), (2, 400)):
        cmap, c = multilevel.cluster(g, max_weight, False, "test")
        assert c < g.num_nodes and np.array_equal(np.unique(cmap), np.arange(c))
        assert np.bincount(cmap, weights=g.node_weights()).max() <= max_weight
        g = multilevel.contract(g, cmap, c, tmp_path / f"l{level}", budget=0, progress=False, desc="test")
        cu, cv = cmap[rows].astype(np.int64), cmap[cols].astype(np.int64)
        keep = cu != cv
        keys, inv = np.unique(cu[keep] * c + cv[keep], return_inverse=True)
        ref_w = np.bincount(inv, weights=w[keep]).astype(np.int64)
        ref_ip = np.concatenate([[0], np.cumsum(np.bincount(keys // c, minlength=c))])
        assert np.array_equal(g.indptr, ref_ip)
        assert np.array_equal(g.indices, keys % c)
        assert np.array_equal(g.eweights, ref_w)
        vw = np.bincount(cmap, weights=vw, minlength=c).astype(np.int64)
        assert np.array_equal(g.vweights, vw)
        rows, cols, w = np.repeat(np.arange(c), np.diff(g.indptr)), np.asarray(g.indices, np.int64), ref_w


def test_auto_picks_multilevel_when_metis_does_not_fit(community_csr, tmp_path):
    ip, ix = community_csr
    n, entries = len(ip) - 1, len(ix)
    assert choose_method("auto", n, entries, 1 << 30) == "metis"
    assert choose_method("auto", n, entries, SMALL_BUDGET) == "multilevel"
    assert choose_method("auto", 10**9, 2 * 10**10, 12 * 10**9) == "ldg"  # not even its per-node arrays fit
    r = partition_graph(ip, ix, 8, "auto", memory_budget=SMALL_BUDGET, progress=False, workdir=tmp_path)
    sizes = np.bincount(r.part, minlength=8)
    assert r.method == "multilevel" and sizes.max() <= multilevel.IMBALANCE * sizes.mean()
    assert (tmp_path / "level1" / "DONE").exists()


def test_budget_below_per_node_arrays_is_one_clear_error(community_csr):
    ip, ix = community_csr
    with pytest.raises(ConfigError, match="--memory-budget .* multilevel"):
        partition_graph(ip, ix, 8, "multilevel", memory_budget=100_000, progress=False)


_BUILD = """
import sys, time, numpy as np
from oocgnn.prepare import multilevel
from oocgnn.prepare.pipeline import PrepareOptions, prepare_store
from oocgnn.testing.stores import ArraySource
g = np.load({npz!r})
slow, calls = float(sys.argv[1]), []
cluster, refine = multilevel.cluster, multilevel.refine
def counted_cluster(*a, **k):
    calls.append(1)
    return cluster(*a, **k)
def slow_refine(*a, **k):
    if len(sys.argv) > 4:
        open(sys.argv[4], "w").close()  # every level is saved: the partitioner is refining now
    time.sleep(slow)
    return refine(*a, **k)
multilevel.cluster, multilevel.refine = counted_cluster, slow_refine
src = ArraySource(g["edge_index"], g["x"], g["y"], {{"train": g["train"]}})
prepare_store(src, sys.argv[2], PrepareOptions(partitions=12, partitioner="multilevel"), memory_budget=1 << 30,
              progress=False)
open(sys.argv[3], "w").write(str(len(calls)))
"""


def test_kill9_during_partitioning_then_rerun_gives_identical_partition(tmp_path):
    """SIGKILL ``prepare`` inside the multilevel partitioner (levels done, refinement
    running); the same command resumes from the saved levels to the same store."""
    src, dst = community_edges(8000, 60_000, 12, seed=2)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "g.npz", edge_index=np.stack([src, dst]), x=rng.standard_normal((8000, 4)).astype(np.float32),
             y=rng.integers(0, 3, 8000), train=np.arange(0, 8000, 3))
    script = tmp_path / "build.py"
    script.write_text(textwrap.dedent(_BUILD.format(npz=str(tmp_path / "g.npz"))))
    store = tmp_path / "s"
    refining = tmp_path / "refining"
    proc = subprocess.Popen([sys.executable, str(script), "30", str(store), str(tmp_path / "calls1"), str(refining)])
    deadline = time.monotonic() + 120
    while not refining.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)  # polling the marker file, not waiting for something to happen
    assert refining.exists(), "the build did not reach the multilevel refinement"
    assert (store / fmt.WORK / "multilevel" / "level1" / "DONE").exists()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (store / fmt.COMPLETE).exists()
    assert not (store / fmt.WORK / "stages" / "partition.json").exists()
    subprocess.run([sys.executable, str(script), "0", str(store), str(tmp_path / "calls2")], check=True)
    assert (tmp_path / "calls2").read_text() == "0", "the rerun clustered again instead of resuming the levels"
    subprocess.run([sys.executable, str(script), "0", str(tmp_path / "clean"), str(tmp_path / "calls3")], check=True)
    resumed, clean = open_dataset(store), open_dataset(tmp_path / "clean")
    assert resumed.manifest["partition"]["method"] == "multilevel"
    assert resumed.manifest["checksums"] == clean.manifest["checksums"]  # perm and partition pointer included


def test_half_written_level_is_redone_and_finished_levels_reused(community_csr, tmp_path, monkeypatch):
    """A crash while the last level was being written (no DONE marker, a truncated
    file) and before any refined partition was saved: the rerun rebuilds only that
    level and returns the same partition."""
    ip, ix = community_csr
    first = partition_graph(ip, ix, 16, "multilevel", memory_budget=SMALL_BUDGET, progress=False, workdir=tmp_path)
    top = max(int(p.name[5:]) for p in tmp_path.glob("level*"))
    (tmp_path / f"level{top}" / "DONE").unlink()
    with open(tmp_path / f"level{top}" / "indices.npy", "r+b") as f:
        f.truncate(1000)
    for p in tmp_path.glob("part*.npy"):
        p.unlink()
    calls = []
    cluster = multilevel.cluster
    monkeypatch.setattr(multilevel, "cluster", lambda *a, **k: calls.append(1) or cluster(*a, **k))
    again = partition_graph(ip, ix, 16, "multilevel", memory_budget=SMALL_BUDGET, progress=False, workdir=tmp_path)
    assert len(calls) == 1 and np.array_equal(again.part, first.part)


def test_levels_of_another_run_are_not_reused(community_csr, tmp_path):
    ip, ix = community_csr
    partition_graph(ip, ix, 16, "multilevel", memory_budget=SMALL_BUDGET, progress=False, workdir=tmp_path / "w")
    reused = partition_graph(ip, ix, 8, "multilevel", memory_budget=SMALL_BUDGET, progress=False, workdir=tmp_path / "w")
    fresh = partition_graph(ip, ix, 8, "multilevel", memory_budget=SMALL_BUDGET, progress=False)
    assert np.array_equal(reused.part, fresh.part)
    assert json.loads((tmp_path / "w" / "meta.json").read_text())["num_parts"] == 8
