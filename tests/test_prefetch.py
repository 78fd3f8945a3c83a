"""Prefetching changes timing, never results; it hides I/O latency; failures surface."""
from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from oocgnn.prefetch import BatchLoader, Prefetcher
from oocgnn.testing.stores import make_store, random_graph
from oocgnn.config import IOConfig, ModelConfig, OptimConfig, RunConfig
from oocgnn.train.loop import Trainer
from oocgnn.train.metrics import MetricsLog
from oocgnn.runner import make_trainer
from oocgnn.staging import saved_storages
from oocgnn.train.run import fit


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    g = random_graph(num_nodes=800, num_edges=6000, num_features=12, num_classes=4, seed=2)
    return make_store(tmp_path_factory.mktemp("store") / "s", g["edge_index"], g["x"], g["y"], g["splits"], 12)


def train(store, tmp_path, **io) -> tuple[list[torch.Tensor], dict]:
    cfg = RunConfig(model=ModelConfig(layers=3, hidden=16, dropout=0.5),
                    train=OptimConfig(epochs=2, parts_per_batch=2), io=IOConfig(**io))
    tr = make_trainer(store, cfg, tmp_path)
    s = fit(tr)
    tr.close()
    return [p.detach().clone() for p in tr.model.parameters()], s


@pytest.mark.parametrize("io", [dict(prefetch=3, io_threads=4), dict(prefetch=1, io_threads=1),
                                dict(prefetch=2, io_threads=4, cache="belady", memory_budget="1GB"),
                                dict(prefetch=2, io_threads=2, cache="lru", memory_budget="1GB")])
def test_prefetch_and_threads_do_not_change_results(store, tmp_path, io) -> None:
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    ref, s_ref = train(store, tmp_path / "a", prefetch=0, io_threads=1, cache="none")
    io.setdefault("cache", "none")
    got, s = train(store, tmp_path / "b", **io)
    assert all(torch.equal(a, b) for a, b in zip(ref, got))
    assert s["best_valid_acc"] == s_ref["best_valid_acc"]


class CountingLoader(BatchLoader):
    """Counts ``load`` calls and signals once ``target`` of them have started (no timing involved)."""

    def __init__(self, *args, target: int = 0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.calls, self.target, self.reached = 0, target, threading.Event()

    def load(self, ranges, slot):
        self.calls += 1
        if self.calls >= self.target:
            self.reached.set()
        return super().load(ranges, slot)


def test_prefetch_reads_ahead_while_a_batch_is_in_use(store) -> None:
    """Depth d: while the consumer still holds batch 0, the worker loads d more batches on its own;
    depth 0: a batch is loaded only when asked for (synchronous)."""
    cfg = RunConfig(model=ModelConfig(layers=2, hidden=8), train=OptimConfig(parts_per_batch=1),
                    io=IOConfig(prefetch=3, io_threads=1, cache="none"))
    tr = Trainer(store, cfg, None)
    plan = tr.plan(0)
    args = (tr.indptr, tr.indices, tr.features, tr.histories, [0], tr.pool, 1)
    ahead = CountingLoader(*args, target=1 + 3)
    it = iter(tr.prefetcher(plan, ahead))
    next(it)                                          # batch 0 is "computing" from here on
    assert ahead.reached.wait(timeout=60), ahead.calls  # batches 1..3 loaded without being asked for
    assert len(list(it)) == len(plan) - 1
    tr.cfg.io.prefetch = 0
    sync = CountingLoader(*args)
    for consumed, _ in enumerate(tr.prefetcher(plan, sync), start=1):
        assert sync.calls == consumed                 # nothing read ahead
    tr.close()


def test_worker_exception_surfaces_and_threads_join(store) -> None:
    ours = ("oocgnn-prefetch", "oocgnn-io", "oocgnn-history")
    before = {t for t in threading.enumerate() if t.name.startswith(ours)}
    cfg = RunConfig(train=OptimConfig(parts_per_batch=1), io=IOConfig(prefetch=2, io_threads=2, cache="none"))
    tr = Trainer(store, cfg, None)

    class Broken(BatchLoader):
        calls = 0

        def load(self, ranges, slot):
            Broken.calls += 1
            if Broken.calls == 3:
                raise OSError("simulated read error")
            return super().load(ranges, slot)

    loader = Broken(tr.indptr, tr.indices, tr.features, tr.histories, [0], tr.pool, 2)
    # an OSError (or OocgnnError) comes through as itself, so the CLI can say it in one line
    with pytest.raises(OSError, match="simulated read error"):
        for _ in tr.prefetcher(tr.plan(0), loader):
            pass
    tr.close()
    assert not {t for t in threading.enumerate() if t.name.startswith(ours)} - before


def test_cpu_build_never_pins(store) -> None:
    tr = Trainer(store, RunConfig(io=IOConfig(cache="none")), None)
    assert not tr.slots[0].flat.is_pinned()
    tr.close()


def test_slot_goes_back_during_forward_unless_still_needed(store) -> None:
    """Early release with one slot (depth 0): after the input layer the loader reads the next batch's
    feature rows, after the forward pass its halo history rows, while this batch still computes;
    never while a tensor saved for backward (or held by the pass) lives in what would be freed."""
    cfg = RunConfig(model=ModelConfig(layers=2, hidden=8), train=OptimConfig(parts_per_batch=1),
                    io=IOConfig(prefetch=1, io_threads=1, cache="none"))
    tr = Trainer(store, cfg, None)
    table = tr.histories.tables[0]
    table.array[:] = np.random.default_rng(0).normal(size=table.array.shape)
    plan = tr.plan(0)
    loader = CountingLoader(tr.indptr, tr.indices, tr.features, tr.histories, [0], tr.pool, 1, target=2)
    pf = Prefetcher(loader, plan, tr.slots[:1], 0, tr.labels, tr.train_mask, tr.device, early_release=True)
    it = iter(pf)
    b0 = next(it)
    assert not b0.release_staging("x", [])                 # outside a tracked forward pass: never
    with saved_storages():
        assert not b0.release_staging("x", [b0.x[:3]])     # the pass still holds input rows
        assert not b0.release_staging("all", [b0.x])       # nor all of it
        assert loader.calls == 1                           # no free slot, nothing read
        assert b0.release_staging("x", [])
        assert loader.reached.wait(timeout=60)             # batch 1's read started during this forward
        assert not b0.release_staging("all", [b0.halo_hist[0]])  # its halo rows are still held
        assert b0.release_staging("all", [])
    b1 = next(it)
    assert torch.equal(b1.x, torch.from_numpy(np.asarray(tr.features[b1.n_id], dtype=np.float32)))
    assert torch.equal(b1.halo_hist[0], torch.from_numpy(np.asarray(table.array[b1.halo_ids], dtype=np.float32)))
    assert len(list(it)) == len(plan) - 2
    assert pf.stats.early_releases == 1
    tr.close()


@pytest.mark.parametrize("model,dropout,released", [("gcn", 0.5, True), ("gcnii", 0.5, True), ("gcn", 0.0, False)])
def test_early_release_trains_bitwise_and_only_when_safe(store, tmp_path, model, dropout, released) -> None:
    """Reading the next batch during backward (one slot) gives the synchronous run's parameters bit
    for bit.  With input dropout the forward copies everything out of the slot, so the slot goes back
    every step; without it the first linear layer keeps the input rows for backward, so it never does."""
    runs = {}
    for name, prefetch in (("sync", 0), ("early", 1)):
        cfg = RunConfig(model=ModelConfig(name=model, layers=3, hidden=16, dropout=dropout),
                        train=OptimConfig(epochs=2, parts_per_batch=2), io=IOConfig(prefetch=prefetch, cache="none"))
        tr = make_trainer(store, cfg, tmp_path / name)
        tr.prefetch_depth = 0  # one slot: any read-ahead comes from early release
        fit(tr)
        tr.close()
        releases = sum(r.get("early_releases", 0) for r in MetricsLog(tmp_path / name).read())
        runs[name] = ([p.detach().clone() for p in tr.model.parameters()], releases)
    assert all(torch.equal(a, b) for a, b in zip(runs["sync"][0], runs["early"][0]))
    assert runs["sync"][1] == 0
    assert (runs["early"][1] > 0) == released
