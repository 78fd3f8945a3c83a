"""History-row cache: coherent with pushes, invisible in results, Belady >= LRU on the real plan."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from oocgnn.belady import next_uses
from oocgnn.cache import FeatureCache, HistoryCache
from oocgnn.history import HistorySet
from oocgnn.testing.stores import make_store, random_graph
from oocgnn.config import IOConfig, ModelConfig, OptimConfig, RunConfig
from oocgnn.runner import make_trainer
from oocgnn.train.run import fit


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    g = random_graph(num_nodes=800, num_edges=6000, num_features=12, num_classes=4, seed=3)
    return make_store(tmp_path_factory.mktemp("store") / "s", g["edge_index"], g["x"], g["y"], g["splits"], 12)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_cached_row_updated_by_push_is_served_new(tmp_path, dtype) -> None:
    hs = HistorySet(50, [4], dtype, tmp_path / "h")
    hs.push([torch.randn(50, 4)], step=0, ranges=[(0, 50)], sync=True)
    cache = HistoryCache(capacity=50, width=4, row_bytes=hs.tables[0].row_bytes)
    hs.caches[0] = cache
    acc = [np.arange(10, 30), np.arange(10, 30), np.arange(10, 30)]
    cache.accesses, cache.nus, cache.t = acc, next_uses(acc), 0
    miss = lambda ids, out: hs.tables[0].pull(ids, out)  # noqa: E731
    halo = np.arange(29, 9, -1)
    out = torch.empty(20, 4)
    cache.gather(halo, out, miss)
    assert cache.last_misses == 20
    new = torch.randn(10, 4)
    hs.push([new], step=1, ranges=[(15, 25)])  # write-behind: lands on the writer thread
    hs.flush()
    out2 = torch.empty(20, 4)
    cache.gather(halo, out2, miss)
    assert cache.last_misses == 0  # every row served from the cache ...
    ref = torch.empty(20, 4)
    hs.tables[0].pull(halo, ref)
    assert torch.equal(out2, ref)  # ... with the pushed values
    assert torch.equal(out2[5:15].flip(0), new.to(getattr(torch, dtype)).float())
    hs.push([torch.randn(3, 4)], step=2, ids=np.array([11, 12, 40]), sync=True)  # by ids, partly uncached
    cache.gather(halo, out2, miss)
    hs.tables[0].pull(halo, ref)
    assert cache.last_misses == 0 and torch.equal(out2, ref) and cache.updated_rows == 12
    hs.close()


def _cfg(**io) -> RunConfig:
    io.setdefault("memory_budget", "1GB")
    return RunConfig(model=ModelConfig(layers=3, hidden=16, dropout=0.5),
                     train=OptimConfig(epochs=3, parts_per_batch=2), io=IOConfig(prefetch=2, io_threads=2, **io))


def _shrink(tr, rows: int) -> None:
    """Small caches so rows are evicted and re-inserted while pushes land."""
    kind = tr.cfg.io.cache
    tr.cache = FeatureCache(rows, tr.cache.width, tr.cache.row_bytes, kind)
    tr.hist_caches = [HistoryCache(rows, t.channels, t.row_bytes, kind) for t in tr.histories.tables]
    tr.histories.caches = list(tr.hist_caches)


def _run(store, run_dir, rows: int | None = None, **io):
    tr = make_trainer(store, _cfg(**io), run_dir)
    if rows is not None:
        _shrink(tr, rows)
    s = fit(tr)
    tr.close()
    recs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [p.detach().clone() for p in tr.model.parameters()], [t.array.copy() for t in tr.histories.tables], s, recs


@pytest.mark.parametrize("io", [dict(cache="belady"), dict(cache="lru"), dict(cache="belady", history_dtype="float16")])
def test_history_cache_on_off_bitwise(store, tmp_path, io) -> None:
    dtype = io.get("history_dtype", "float32")
    ref = _run(store, tmp_path / "off", cache="none", history_dtype=dtype)
    for name, rows in (("small", 60), ("plan", None)):
        got = _run(store, tmp_path / name, rows, **io)
        assert all(torch.equal(a, b) for a, b in zip(ref[0], got[0]))
        assert all(np.array_equal(a, b) for a, b in zip(ref[1], got[1]))
        assert got[2]["best_valid_acc"] == ref[2]["best_valid_acc"]
        recs = [r for r in got[3] if "hist_cache_hit_rate" in r]
        assert len(recs) == 3 and recs[-1]["hist_cache_hit_rate"] > 0 and recs[-1]["hist_cache_push_updates"] > 0
        assert recs[-1]["history_bytes_read"] < ref[3][-1]["history_bytes_read"]
        assert recs[-1]["hist_cache_bytes_saved"] == ref[3][-1]["history_bytes_read"] - recs[-1]["history_bytes_read"]


def test_history_cache_belady_not_worse_than_lru_on_real_plan(store, tmp_path) -> None:
    tr = make_trainer(store, _cfg(cache="belady"), tmp_path / "run")
    _shrink(tr, 80)
    try:
        for _ in range(3):
            rec = tr.train_epoch()
            assert rec["hist_cache_hit_rate"] >= rec["hist_cache_hit_rate_lru_same_size"]
            assert rec["hist_cache_bytes_saved"] >= rec["hist_cache_bytes_saved_lru_same_size"]
            assert rec["cache_hit_rate"] >= rec["cache_hit_rate_lru_same_size"]
        assert rec["hist_cache_hit_rate"] > 0
    finally:
        tr.close()


def test_caches_without_access_stream_are_lru_and_bitwise(store, tmp_path, monkeypatch) -> None:
    """When the epoch's access stream would not fit the budget (billion scale), --cache belady falls back to
    LRU caches with no Belady shadow: still coherent, still bitwise equal to no cache, and fewer bytes read."""
    from oocgnn.train import budget

    monkeypatch.setattr(budget, "ACCESS_STREAM_MAX_SHARE", 0.0)
    ref = _run(store, tmp_path / "off", cache="none")
    got = _run(store, tmp_path / "lru", cache="belady")
    assert all(torch.equal(a, b) for a, b in zip(ref[0], got[0]))
    assert all(np.array_equal(a, b) for a, b in zip(ref[1], got[1]))
    plan = got[2]["memory_plan"]
    assert plan["cache_policy"] == "lru" and not plan["cache_shadow"] and plan["belady_bytes"] == 0
    last = got[3][-1]
    assert last["hist_cache_policy"] == "lru" and last["cache_policy"] == "lru"
    assert not any("same_size" in k for k in last)
    assert last["hist_cache_push_updates"] > 0
    assert last["history_bytes_read"] < ref[3][-1]["history_bytes_read"]
    # the next batches' halos were read with the misses (oocgnn.read_ahead), and served later, exactly
    assert plan["read_ahead_rows"] > 0 and plan["read_ahead_bytes"] > 0
    first = got[3][0]  # later epochs find every row cached: nothing left to read ahead
    assert first["cache_read_ahead_rows"] > 0 and first["hist_cache_read_ahead_rows"] > 0


def test_read_ahead_serves_the_next_batches_halos_from_one_read(store) -> None:
    """Batch 0's miss read fetches the halos of batches 1..3 too; they then read nothing, and every row is exact."""
    from oocgnn.batching import group_ranges
    from oocgnn.subgraph import batch_halo
    from oocgnn.read_ahead import ReadAhead

    indptr, indices = np.asarray(store.indptr), np.asarray(store.indices)
    parts = np.asarray(store.partition_ptr)
    plan = [group_ranges(parts, [2 * i, 2 * i + 1]) for i in range(6)]
    feats = torch.randn(store.num_nodes, 3)
    cache = FeatureCache(capacity=store.num_nodes, width=3, row_bytes=12, policy="lru", shadow=False)
    cache.begin_epoch(None, plan)
    cache.read_ahead = ReadAhead(indptr, indices, plan, max_rows=10 * store.num_nodes, batches=4)
    reads = []

    def miss(ids, out):
        reads.append(len(ids))
        out.copy_(feats[torch.from_numpy(ids)])

    for r in plan:
        halo = np.random.default_rng(len(reads)).permutation(batch_halo(indptr, indices, r))
        out = torch.empty(len(halo), 3)
        cache.gather(halo, out, miss)
        assert torch.equal(out, feats[torch.from_numpy(halo)])
    halos = [batch_halo(indptr, indices, r) for r in plan]
    assert reads[0] == len(np.unique(np.concatenate(halos[:4])))  # batch 0 read its halo and the next three
    assert reads[1] == reads[2] == reads[3] == 0 and reads[4] > 0  # a new group starts at batch 4
    assert cache.read_ahead_rows == sum(reads) - len(halos[0]) - len(np.setdiff1d(halos[4], np.concatenate(halos[:4])))
    assert cache.epoch_metrics()["cache_read_ahead_rows"] == cache.read_ahead_rows


def test_lru_insert_never_evicts_rows_of_the_current_batch() -> None:
    from oocgnn.lru import LRUPolicy

    lru = LRUPolicy(10)
    lru.step(np.arange(4), None, 0)
    lru.step(np.arange(4, 10), None, 1)  # full: 0-3 from batch 0, 4-9 from batch 1
    pos, slots = lru.insert(np.arange(20, 30), 1)  # only batch 0's four rows may go
    assert len(pos) == 4 and lru.size == 10
    hit, _ = lru.cached_slots(np.arange(30))
    assert np.array_equal(np.flatnonzero(hit), np.r_[4:10, 20:24])
