"""Streaming layer-wise inference (input table loaded into RAM) equals batched gathers bitwise, within the budget."""
from __future__ import annotations

import logging
import os

import numpy as np
import pytest
import torch

from oocgnn.cli.main import main
from oocgnn.cli.train import add_parser, resolve_config
from oocgnn.config import IOConfig
from oocgnn.errors import ConfigError, ReadError
from oocgnn.cache import row_caches
from oocgnn.checkpoint.compat import config_differences
from oocgnn.runner import make_trainer
from oocgnn.store.npyfile import create_npy_memmap
from oocgnn.testing.stores import make_store, random_graph
from oocgnn.train import stream as stream_mod
from oocgnn.config import ModelConfig, OptimConfig, RunConfig
from oocgnn.train.evaluate import layerwise_inference
from oocgnn.train.stream import STREAM_MAX_SHARE, load_table, stream_room
from oocgnn.utils.memory import PeakRSSMonitor, current_anon_rss


@pytest.fixture(scope="module", params=["float32", "float16"])
def store(request, tmp_path_factory):
    g = random_graph(num_nodes=700, num_edges=5000, num_features=20, num_classes=4, seed=7)
    return make_store(tmp_path_factory.mktemp("store") / "s", g["edge_index"], g["x"], g["y"], g["splits"], 8,
                      feature_dtype=request.param)


def _cfg(model: str = "gcn", history_dtype: str = "float32", **io) -> RunConfig:
    io.setdefault("cache", "none")
    return RunConfig(model=ModelConfig(name=model, layers=3, hidden=16, dropout=0.5),
                     train=OptimConfig(epochs=1, parts_per_batch=2, lr=0.01),
                     io=IOConfig(history_dtype=history_dtype, memory_budget="2GB", **io))


def _sweep(tr, refresh: bool, mode: str) -> tuple[np.ndarray, torch.Tensor, list[np.ndarray]]:
    logits = torch.zeros(tr.ds.num_nodes, tr.ds.num_classes)
    preds = layerwise_inference(tr, refresh=refresh, logits_out=logits, stream=mode)
    tables = (tr.histories if refresh else tr._eval_scratch).tables
    return preds, logits, [np.asarray(t.array).copy() for t in tables]


@pytest.mark.parametrize("model,history_dtype", [("gcn", "float32"), ("gcn", "float16"), ("gcnii", "float32"),
                                                 ("sage", "float16")])
@pytest.mark.parametrize("refresh", [False, True])
def test_streaming_equals_gathers_bitwise(store, tmp_path, model, history_dtype, refresh) -> None:
    tr = make_trainer(store, _cfg(model, history_dtype), tmp_path / "run")
    try:
        tr.train_epoch()  # non-trivial parameters
        out = {}
        for mode in ("off", "on", "off"):  # off twice: the sweep itself is deterministic
            out.setdefault(mode, []).append(_sweep(tr, refresh, mode))
            assert tr.inference_paths == (["gather"] * 3 if mode == "off" else ["stream"] * 3)
    finally:
        tr.close()
    ref = out["off"][0]
    for preds, logits, tables in (out["on"][0], out["off"][1]):
        assert np.array_equal(preds, ref[0]) and preds.min() >= 0
        assert logits.numpy().tobytes() == ref[1].numpy().tobytes()
        assert len(tables) == 2 and all(a.tobytes() == b.tobytes() for a, b in zip(tables, ref[2]))
    assert any(t.any() for t in ref[2])


def test_auto_streams_when_it_fits_and_gathers_when_not(store, tmp_path, monkeypatch, caplog) -> None:
    tr = make_trainer(store, _cfg(), tmp_path / "run")
    try:
        with caplog.at_level(logging.INFO, logger="oocgnn.train.stream"):
            a = layerwise_inference(tr, refresh=False)
        assert tr.inference_paths == ["stream"] * 3
        assert "inference layer 0: features" in caplog.text and "streamed" in caplog.text
        monkeypatch.setattr(stream_mod, "stream_room", lambda trainer, without_caches=False: 100)  # no room: batched gathers
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="oocgnn.train.stream"), \
                caplog.at_level(logging.INFO, logger="oocgnn.train.scan"):
            b = layerwise_inference(tr, refresh=False)
        assert tr.inference_paths == ["gather"] * 3 and "batched gathers from disk" in caplog.text
        assert np.array_equal(a, b)
        tr.cfg.io.stream_inference = "off"
        layerwise_inference(tr, refresh=False)
        assert tr.inference_paths == ["gather"] * 3
    finally:
        tr.close()


def test_sources_in_ram_are_not_copied(store) -> None:
    tr = make_trainer(store, _cfg(), None)  # no run dir: history tables in RAM, features a memmap
    try:
        a = layerwise_inference(tr, refresh=True, stream="on")
        assert tr.inference_paths == ["stream", "ram", "ram"]
        b = layerwise_inference(tr, refresh=True, stream="off")
        assert tr.inference_paths == ["gather", "ram", "ram"] and np.array_equal(a, b)
    finally:
        tr.close()


def test_stream_room_respects_budget_and_plan(store, tmp_path) -> None:
    tr = make_trainer(store, _cfg(), tmp_path / "run")
    try:
        plan = tr.memory_plan
        room = stream_room(tr)
        assert 0 < room <= int(tr.budget * STREAM_MAX_SHARE)
        assert room + current_anon_rss() + plan["mapped_window_bytes"] <= tr.budget
        # a sweep's working set (the plan's, with one layer's forward activations, and no transposed
        # adjacency: sweep batches carry none) takes it all
        tr.budget = (plan["planned_peak_anon_bytes"] - plan["activation_bytes"] + plan["sweep_activation_bytes"]
                     - plan["transpose_bytes"] + plan["mapped_window_bytes"])
        assert stream_room(tr) == 0
    finally:
        tr.close()


def test_streaming_peak_stays_under_budget(tmp_path) -> None:
    g = random_graph(num_nodes=40_000, num_edges=400_000, num_features=64, num_classes=4, seed=5)
    ds = make_store(tmp_path / "s", g["edge_index"], g["x"], g["y"], g["splits"], 8)
    budget = current_anon_rss() + (640 << 20)
    cfg = RunConfig.from_dict({"io": {"memory_budget": budget, "prefetch": 2, "io_threads": 2},
                               "model": {"hidden": 64, "layers": 3}, "train": {"epochs": 1, "parts_per_batch": 2}})
    tr = make_trainer(ds, cfg, tmp_path / "run")
    try:
        tr.train_epoch()  # fills the caches and the staging ring first: they stay resident
        with PeakRSSMonitor(interval=0.005) as mon:
            layerwise_inference(tr, refresh=True)
        assert tr.inference_paths == ["stream"] * 3  # 10 MB tables fit
    finally:
        tr.close()
    assert mon.peak_anon <= budget, (mon.peak_anon - budget) / 2**20


def test_auto_frees_the_row_caches_to_stream_and_the_next_epoch_refills_them(tmp_path, monkeypatch, caplog) -> None:
    """A table that fits only once the caches are freed: auto frees them, streams, and the next epoch
    allocates them again; caches are exact, so every number equals a run that gathered instead."""
    g = random_graph(num_nodes=20_000, num_edges=200_000, num_features=32, num_classes=4, seed=5)
    ds = make_store(tmp_path / "s", g["edge_index"], g["x"], g["y"], g["splits"], 8)
    real_room = stream_mod.stream_room

    def room_only_without_caches(tr, without_caches: bool = False) -> int:
        freed = without_caches or all(c.released for c in row_caches(tr))
        return real_room(tr, without_caches) if freed else 0

    monkeypatch.setattr(stream_mod, "stream_room", room_only_without_caches)
    out = {}
    for stream in ("auto", "off"):
        cfg = RunConfig.from_dict({"io": {"memory_budget": "2GB", "io_threads": 2, "stream_inference": stream},
                                   "model": {"hidden": 32, "layers": 3}, "train": {"epochs": 2, "parts_per_batch": 2}})
        tr = make_trainer(ds, cfg, tmp_path / stream)
        try:
            caches = [tr.cache, *tr.hist_caches]
            tr.train_epoch()
            assert all(c.policy.size > 0 for c in caches)  # filled by the epoch
            ring = sum(s.nbytes for s in tr.slots)
            with caplog.at_level(logging.INFO, logger="oocgnn.train.stream"):
                preds = layerwise_inference(tr, refresh=True)
            # a sweep reads no halo history rows: the ring's history buffers are freed and not counted
            assert all(s.hist == [] for s in tr.slots) and sum(s.nbytes for s in tr.slots) < ring
            if stream == "auto":
                assert tr.inference_paths == ["stream"] * 3
                assert "once the row caches" in caplog.text and all(c.released for c in caches)
                assert all(c.buf.numel() == 0 for c in caches)
            else:
                assert tr.inference_paths == ["gather"] * 3 and not any(c.released for c in caches)
            rec = tr.train_epoch()  # allocates the buffers again
            assert not any(c.released for c in caches) and all(c.policy.size > 0 for c in caches)
            assert sum(s.nbytes for s in tr.slots) == ring
            out[stream] = (preds, rec["loss"], [p.detach().clone() for p in tr.model.parameters()],
                           [np.asarray(t.array).copy() for t in tr.histories.tables])
        finally:
            tr.close()
    a, b = out["auto"], out["off"]
    assert np.array_equal(a[0], b[0]) and a[1] == b[1]
    assert all(torch.equal(x, y) for x, y in zip(a[2], b[2]))
    assert all(x.tobytes() == y.tobytes() for x, y in zip(a[3], b[3]))


@pytest.mark.parametrize("refresh", [True, False])
def test_gathered_sweeps_read_through_the_caches_with_read_ahead_bitwise(tmp_path, monkeypatch, refresh) -> None:
    """Tables that do not stream are gathered through the training caches, which read the next batches'
    halos with each miss read; every number equals a sweep without caches."""
    from oocgnn.train import budget

    monkeypatch.setattr(budget, "ACCESS_STREAM_MAX_SHARE", 0.0)  # LRU without the access stream, as at scale
    g = random_graph(num_nodes=3000, num_edges=30_000, num_features=16, num_classes=4, seed=9)
    ds = make_store(tmp_path / "s", g["edge_index"], g["x"], g["y"], g["splits"], 16)
    out = {}
    for cache in ("lru", "none"):
        cfg = RunConfig.from_dict({"io": {"memory_budget": "2GB", "io_threads": 2, "stream_inference": "off",
                                          "cache": cache},
                                   "model": {"hidden": 16, "layers": 3}, "train": {"epochs": 1, "parts_per_batch": 2}})
        tr = make_trainer(ds, cfg, tmp_path / cache)
        try:
            tr.train_epoch()
            if cache == "lru":
                assert tr.memory_plan["read_ahead_rows"] > 0
                for c in [tr.cache, *tr.hist_caches]:  # start the sweep cold: every row is read, some ahead
                    c.release()
            out[cache] = _sweep(tr, refresh, "off")
            if cache == "lru":
                assert tr.cache.read_ahead_rows > 0  # layer 0 read the features through the cache
                assert (tr.hist_caches[0].read_ahead_rows > 0) == refresh  # training table 0 feeds layer 1
        finally:
            tr.close()
    (pa, la, ta), (pb, lb, tb) = out["lru"], out["none"]
    assert np.array_equal(pa, pb) and la.numpy().tobytes() == lb.numpy().tobytes()
    assert all(a.tobytes() == b.tobytes() for a, b in zip(ta, tb))


@pytest.mark.parametrize("layout", ["aligned", "numpy"])
def test_load_table_reads_both_layouts_in_odd_chunks(tmp_path, layout) -> None:
    a = np.random.default_rng(0).standard_normal((999, 37)).astype(np.float16)
    path = tmp_path / "t.npy"
    if layout == "numpy":
        np.save(path, a)
        mm = np.load(path, mmap_mode="r")
    else:
        mm = create_npy_memmap(path, a.dtype, a.shape)
        mm[:] = a  # dirty pages of a shared memmap, not written back yet: pread sees them
    assert load_table(mm, chunk_bytes=1000).tobytes() == a.tobytes()
    assert load_table(mm[100:400]).tobytes() == a[100:400].tobytes()  # a view starts at its own offset


def test_load_table_short_file_is_one_line(tmp_path) -> None:
    mm = create_npy_memmap(tmp_path / "t.npy", np.float32, (1000, 16))
    os.truncate(tmp_path / "t.npy", 4096 + 500 * 64)
    with pytest.raises(ReadError, match="short read of .*t.npy") as err:
        load_table(mm)
    assert "\n" not in str(err.value)


def test_config_flag_and_compat() -> None:
    with pytest.raises(ConfigError, match="--stream-inference 'sometimes'"):
        IOConfig(stream_inference="sometimes")
    import argparse

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    args = parser.parse_args(["train", "--data", "d", "--run-dir", "r", "--stream-inference", "off"])
    assert resolve_config(args).io.stream_inference == "off"
    d = RunConfig().to_dict()
    new = RunConfig(io=IOConfig(stream_inference="on")).to_dict()
    assert config_differences(d, new, d) == []  # speed only: a resume may change it
    with pytest.raises(SystemExit):
        main(["train", "--help"])
