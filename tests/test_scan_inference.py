"""Scanned sweeps: rows read by ordered passes equal gathers bitwise, group by group, within the room."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from oocgnn.config import IOConfig
from oocgnn.errors import ReadError
from oocgnn.io import file_region
from oocgnn.io.scan import scan_rows
from oocgnn.runner import make_trainer
from oocgnn.store.npyfile import create_npy_memmap
from oocgnn.testing.stores import make_store, random_graph
from oocgnn.train import scan as scan_mod
from oocgnn.train import stream as stream_mod
from oocgnn.config import ModelConfig, OptimConfig, RunConfig
from oocgnn.train.evaluate import layerwise_inference


@pytest.mark.parametrize("dtype,width", [(np.float32, 1433), (np.float32, 100), (np.float16, 64), (np.int64, 3)])
def test_scan_rows_equals_numpy_gather(tmp_path, dtype, width) -> None:
    rows = 3000
    table = create_npy_memmap(tmp_path / "t.npy", dtype, (rows, width))
    rng = np.random.default_rng(0)
    table[:] = rng.integers(-1000, 1000, size=(rows, width)).astype(dtype)
    table.flush()
    row_bytes = width * np.dtype(dtype).itemsize
    picks = [np.array([0]), np.array([rows - 1]), np.array([0, rows - 1]), np.arange(rows),
             np.unique(rng.integers(0, rows, 400)), np.unique(rng.integers(0, 50, 30)), np.array([], dtype=np.int64)]
    for ids in picks:
        for chunk in (row_bytes, 7 * row_bytes + 5, 1 << 20):  # one row per read, odd spans, large spans
            out = np.full((len(ids), width), 7, dtype=dtype)
            nbytes = scan_rows(table, ids.astype(np.int64), out, chunk_bytes=chunk)
            assert out.tobytes() == np.asarray(table)[ids].tobytes()
            assert nbytes >= len(ids) * row_bytes
    sparse = np.array([5, rows - 5], dtype=np.int64)  # a gap longer than a read is skipped, not read through
    assert scan_rows(table, sparse, np.empty((2, width), dtype), chunk_bytes=4 * row_bytes) == 2 * row_bytes
    with pytest.raises(ValueError):
        scan_rows(table, np.array([3, 2]), np.empty((2, width), dtype))
    with pytest.raises(IndexError):
        scan_rows(table, np.array([rows]), np.empty((1, width), dtype))


def test_scan_rows_of_a_truncated_file_fails_with_one_line(tmp_path) -> None:
    table = create_npy_memmap(tmp_path / "t.npy", np.float32, (1000, 16))
    table.flush()
    offset = file_region(table)[1]
    with open(tmp_path / "t.npy", "r+b") as f:
        f.truncate(offset + 500 * 64)  # rows 500.. are gone
    out = np.empty((2, 16), np.float32)
    assert scan_rows(table, np.array([10, 20], dtype=np.int64), out) == 11 * 64  # rows before the end still read
    with pytest.raises(ReadError) as err:
        scan_rows(table, np.array([10, 900], dtype=np.int64), out)
    assert "t.npy" in str(err.value) and "truncated" in str(err.value) and "\n" not in str(err.value)


@pytest.fixture(scope="module", params=["float32", "float16"])
def store(request, tmp_path_factory):
    g = random_graph(num_nodes=700, num_edges=5000, num_features=20, num_classes=4, seed=7)
    return make_store(tmp_path_factory.mktemp("store") / "s", g["edge_index"], g["x"], g["y"], g["splits"], 8,
                      feature_dtype=request.param)


def _cfg(model: str = "gcn", history_dtype: str = "float32", cache: str = "none") -> RunConfig:
    return RunConfig(model=ModelConfig(name=model, layers=3, hidden=16, dropout=0.5),
                     train=OptimConfig(epochs=1, parts_per_batch=2, lr=0.01),
                     io=IOConfig(history_dtype=history_dtype, memory_budget="2GB", cache=cache))


def _sweep(tr, refresh: bool, mode: str) -> tuple[np.ndarray, bytes, list[bytes]]:
    logits = torch.zeros(tr.ds.num_nodes, tr.ds.num_classes)
    preds = layerwise_inference(tr, refresh=refresh, logits_out=logits, stream=mode)
    tables = (tr.histories if refresh else tr._eval_scratch).tables
    return preds, logits.numpy().tobytes(), [np.asarray(t.array).tobytes() for t in tables]


@pytest.mark.parametrize("model,history_dtype", [("gcn", "float32"), ("sage", "float16"), ("gat", "float32")])
@pytest.mark.parametrize("refresh", [False, True])
def test_scanned_sweep_equals_gathers_bitwise(store, tmp_path, monkeypatch, model, history_dtype, refresh) -> None:
    groups: list[int] = []
    real_iter = scan_mod.ScanSweep.__iter__

    def counting_iter(self):
        for part, staged, index in real_iter(self):
            groups.append(len(part))
            assert len(staged) == int((index >= 0).sum()) and (len(staged) <= 250 or len(part) == 1)
            yield part, staged, index

    monkeypatch.setattr(scan_mod, "scan_room_rows", lambda trainer, row_bytes: 250)  # ~1-2 batches a group
    monkeypatch.setattr(scan_mod.ScanSweep, "__iter__", counting_iter)
    tr = make_trainer(store, _cfg(model, history_dtype), tmp_path / "run")
    try:
        tr.train_epoch()
        ref = _sweep(tr, refresh, "off")
        assert tr.inference_paths == ["gather"] * 3
        got = _sweep(tr, refresh, "scan")
        assert tr.inference_paths == ["scan"] * 3
    finally:
        tr.close()
    assert len(groups) > 3 * 2 and sum(groups) == 3 * 4  # 4 batches a layer, in several groups each
    assert np.array_equal(got[0], ref[0]) and got[0].min() >= 0
    assert got[1] == ref[1] and got[2] == ref[2]


def test_gcnii_reads_features_every_layer_and_gathers(store, tmp_path) -> None:
    tr = make_trainer(store, _cfg("gcnii"), tmp_path / "run")
    try:
        a = layerwise_inference(tr, refresh=False, stream="off")
        b = layerwise_inference(tr, refresh=False, stream="scan")
        assert tr.inference_paths == ["gather"] * 3 and np.array_equal(a, b)
    finally:
        tr.close()


def test_auto_scans_a_table_that_cannot_stream_when_it_reads_less(store, tmp_path, monkeypatch, caplog) -> None:
    monkeypatch.setattr(stream_mod, "stream_room", lambda trainer, without_caches=False: 100)  # nothing streams
    tr = make_trainer(store, _cfg(cache="lru"), tmp_path / "run")
    try:
        tr.train_epoch()
        ref = layerwise_inference(tr, refresh=False, stream="off")
        monkeypatch.setattr(scan_mod, "scan_room_rows", lambda trainer, row_bytes: 10_000)
        assert not tr.cache.released
        with caplog.at_level(logging.INFO, logger="oocgnn.train.scan"):
            a = layerwise_inference(tr, refresh=False)
        assert tr.inference_paths == ["scan"] * 3 and np.array_equal(a, ref)
        assert "scanned" in caplog.text and "row caches" in caplog.text and tr.cache.released
        tr.train_epoch()  # the next epoch allocates the caches again (and changes the parameters)
        assert not tr.cache.released
        ref = layerwise_inference(tr, refresh=False, stream="off")
        monkeypatch.setattr(scan_mod, "scan_room_rows", lambda trainer, row_bytes: 5)  # not even one batch fits
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="oocgnn.train.scan"):
            b = layerwise_inference(tr, refresh=False)
        assert tr.inference_paths == ["gather"] * 3 and "batched gathers from disk" in caplog.text
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="oocgnn.train.scan"):
            assert np.array_equal(layerwise_inference(tr, refresh=False, stream="scan"), ref)  # forced: warned
        assert tr.inference_paths == ["scan"] * 3 and "may exceed --memory-budget" in caplog.text
        monkeypatch.setattr(scan_mod, "RANDOM_READS_PER_S", 10**15)  # gathers estimated free: auto gathers
        c = layerwise_inference(tr, refresh=False)
        assert tr.inference_paths == ["gather"] * 3
        assert np.array_equal(b, ref) and np.array_equal(c, ref)
    finally:
        tr.close()


def test_a_layer_starts_after_the_last_layers_staged_rows_are_freed(store, tmp_path, monkeypatch) -> None:
    """The last batch of a group holds its prefetcher, loader and staged rows: a sweep must let go of
    them before the next layer measures its room and stages its own (at 50 M nodes two 6 GB buffers
    coexisted, 15 GB under a 12 GB budget, and the next layer found no room)."""
    import gc
    import weakref

    buffers: list[weakref.ref] = []
    real_staging, real_init = scan_mod.ScanSweep._staging, scan_mod.ScanSweep.__init__

    def staging(self, rows):
        out = real_staging(self, rows)
        buffers.append(weakref.ref(self._buf))
        return out

    def init(self, *a, **k):
        gc.collect()
        assert all(ref() is None for ref in buffers), "a previous layer's staged rows are still alive"
        real_init(self, *a, **k)

    monkeypatch.setattr(scan_mod, "scan_room_rows", lambda trainer, row_bytes: 400)
    monkeypatch.setattr(scan_mod.ScanSweep, "_staging", staging)
    monkeypatch.setattr(scan_mod.ScanSweep, "__init__", init)
    tr = make_trainer(store, _cfg(), tmp_path / "run")
    try:
        layerwise_inference(tr, refresh=False, stream="scan")
        assert tr.inference_paths == ["scan"] * 3 and len(buffers) >= 3
        gc.collect()
        assert all(ref() is None for ref in buffers)
    finally:
        tr.close()
