"""The store builder end to end on real files: differential, resume, bad input."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
from torch_geometric.utils import remove_self_loops, to_undirected

from oocgnn import open_dataset
from oocgnn.errors import InputError, OutputExistsError, StoreError
from oocgnn.prepare.pipeline import PrepareOptions, prepare_store
from oocgnn.store import format as fmt
from oocgnn.store.verify import verify_store
from oocgnn.testing.stores import ArraySource, make_store, random_graph


@pytest.fixture(scope="module")
def graph():
    return random_graph(num_nodes=777, num_edges=6000, num_features=12, num_classes=5, seed=3)


def _store(tmp_path, g, **kw):
    return make_store(tmp_path / "store", g["edge_index"], g["x"], g["y"], g["splits"], num_partitions=7, **kw)


@pytest.mark.parametrize("working", [1 << 30, 40_000])  # in-RAM paths / bucketed paths
def test_store_matches_in_memory_reference(tmp_path, graph, working, monkeypatch):
    import oocgnn.prepare.pipeline as pipeline

    monkeypatch.setattr(pipeline, "working_budget", lambda budget, n: working)
    ds = _store(tmp_path, graph)
    n = 777
    ei = torch.tensor(graph["edge_index"])
    ei, _ = remove_self_loops(ei)
    ei = to_undirected(ei, num_nodes=n)
    inv = np.empty(n, dtype=np.int64)
    inv[ds.perm] = np.arange(n)
    rows, cols = inv[ei[0].numpy()], inv[ei[1].numpy()]
    order = np.lexsort((cols, rows))
    np.testing.assert_array_equal(ds.indptr, np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=n))]))
    np.testing.assert_array_equal(ds.indices, cols[order])
    np.testing.assert_array_equal(ds.features, graph["x"][ds.perm])
    np.testing.assert_array_equal(ds.labels, graph["y"][ds.perm])
    for name, ids in graph["splits"].items():
        np.testing.assert_array_equal(np.sort(ds.perm[ds.split(name)]), np.sort(ids))
    # partitions are contiguous ranges of store ids, and METIS was used
    assert ds.partition_ptr[0] == 0 and ds.partition_ptr[-1] == n and ds.num_partitions == 7
    assert ds.manifest["partition"]["method"] == "metis"
    assert verify_store(ds, progress=False) == []


def test_float16_and_directed_options(tmp_path, graph):
    ds = _store(tmp_path, graph, feature_dtype="float16", undirected=False)
    assert ds.features.dtype == np.float16
    np.testing.assert_allclose(ds.features, graph["x"][ds.perm].astype(np.float16))
    src, dst = graph["edge_index"]
    keep = src != dst
    assert ds.num_edges == len({(a, b) for a, b in zip(src[keep], dst[keep])})


def test_existing_store_reused_and_other_inputs_refused(tmp_path, graph):
    ds = _store(tmp_path, graph)
    again = _store(tmp_path, graph)
    assert again.checksum == ds.checksum
    other = dict(graph, x=graph["x"] + 1)
    with pytest.raises(OutputExistsError, match="--overwrite"):
        _store(tmp_path, other)
    src = ArraySource(other["edge_index"], other["x"], other["y"], other["splits"])
    ds2 = prepare_store(src, tmp_path / "store", PrepareOptions(partitions=7), memory_budget=1 << 30,
                        overwrite=True, progress=False)
    assert ds2.checksum != ds.checksum


def test_refuses_foreign_directory(tmp_path, graph):
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "precious.txt").write_text("keep me")
    with pytest.raises(OutputExistsError, match="not an oocgnn store"):
        _store(tmp_path, graph)
    assert (tmp_path / "store" / "precious.txt").exists()


class _Crash(Exception):
    pass


class _CrashingSource(ArraySource):
    """Fails while streaming features: a crash in the middle of a late stage."""

    def iter_features(self, block_rows):
        yield from super().iter_features(10)
        raise _Crash("simulated crash")


def test_crash_then_resume_gives_identical_store(tmp_path, graph):
    clean = make_store(tmp_path / "clean", graph["edge_index"], graph["x"], graph["y"], graph["splits"], num_partitions=7)
    args = (graph["edge_index"], graph["x"], graph["y"], graph["splits"])
    opts = PrepareOptions(partitions=7, partitioner="metis")
    with pytest.raises(_Crash):
        prepare_store(_CrashingSource(*args), tmp_path / "s", opts, memory_budget=1 << 30, progress=False)
    assert not (tmp_path / "s" / fmt.COMPLETE).exists()
    with pytest.raises(StoreError, match="not a finished store"):
        open_dataset(tmp_path / "s")
    stages = sorted(p.stem for p in (tmp_path / "s" / fmt.WORK / "stages").glob("*.json"))
    assert stages == ["csr", "csr_orig", "partition"]
    ds = prepare_store(ArraySource(*args), tmp_path / "s", opts, memory_budget=1 << 30, progress=False)
    assert ds.manifest["checksums"] == clean.manifest["checksums"]
    assert not (tmp_path / "s" / fmt.WORK).exists()


def test_kill9_then_resume(tmp_path, graph):
    """SIGKILL a real build process mid-way; the same command then resumes."""
    np.savez(tmp_path / "g.npz", edge_index=graph["edge_index"], x=graph["x"], y=graph["y"],
             **{f"split_{k}": v for k, v in graph["splits"].items()})
    script = tmp_path / "build.py"
    script.write_text(textwrap.dedent(f"""
        import sys, time, numpy as np
        from oocgnn.prepare.pipeline import PrepareOptions, prepare_store
        from oocgnn.testing.stores import ArraySource
        g = np.load({str(tmp_path / 'g.npz')!r})
        class Slow(ArraySource):
            def iter_features(self, block_rows):
                for b in super().iter_features(50):
                    time.sleep(float(sys.argv[1]))
                    yield b
        src = Slow(g["edge_index"], g["x"], g["y"], {{k[6:]: g[k] for k in g.files if k.startswith("split_")}})
        prepare_store(src, {str(tmp_path / 's')!r}, PrepareOptions(partitions=7), memory_budget=1 << 30, progress=False)
    """))
    proc = subprocess.Popen([sys.executable, str(script), "0.5"])
    marker = tmp_path / "s" / fmt.WORK / "stages" / "csr.json"
    deadline = time.monotonic() + 60
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists(), "build did not reach the features stage"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "s" / fmt.COMPLETE).exists()
    subprocess.run([sys.executable, str(script), "0"], check=True)
    clean = make_store(tmp_path / "clean", graph["edge_index"], graph["x"], graph["y"], graph["splits"], num_partitions=7)
    assert open_dataset(tmp_path / "s").manifest["checksums"] == clean.manifest["checksums"]


@pytest.mark.parametrize("mutate, message", [
    (lambda g: g.update(y=g["y"][:-1]), "labels for"),
    (lambda g: g.update(y=np.where(np.arange(len(g["y"])) == 3, 99, g["y"])), "labels outside"),
    (lambda g: g.update(splits={**g["splits"], "valid": g["splits"]["train"][:3]}), "overlaps"),
    (lambda g: g.update(edge_index=np.concatenate([g["edge_index"], [[0], [10**6]]], axis=1)), "outside"),
])
def test_bad_input_is_one_clear_error_and_no_complete_store(tmp_path, graph, mutate, message):
    g = {k: (dict(v) if isinstance(v, dict) else v.copy()) for k, v in graph.items()}
    mutate(g)
    src = ArraySource(g["edge_index"], g["x"], g["y"], g["splits"], num_classes=5)
    with pytest.raises(InputError, match=message) as info:
        prepare_store(src, tmp_path / "s", PrepareOptions(partitions=7), memory_budget=1 << 30, progress=False)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "s" / fmt.COMPLETE).exists()


class _ShortFeatures(ArraySource):
    def iter_features(self, block_rows):
        yield self.x[:-5]


def test_truncated_features_are_reported(tmp_path, graph):
    src = _ShortFeatures(graph["edge_index"], graph["x"], graph["y"], graph["splits"])
    with pytest.raises(InputError, match="only 772 of 777 feature rows"):
        prepare_store(src, tmp_path / "s", PrepareOptions(partitions=7), memory_budget=1 << 30, progress=False)
    assert not (tmp_path / "s" / fmt.FEATURES).exists()


def test_budget_below_process_size_is_refused(tmp_path, graph):
    from oocgnn.errors import ConfigError

    with pytest.raises(ConfigError, match="--memory-budget .* is too small"):
        _store(tmp_path, graph, memory_budget=10 << 20)
