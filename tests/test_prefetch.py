"""Prefetching changes timing, never results; it hides I/O latency; failures surface."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from oocgnn.prefetch import BatchLoader, Prefetcher
from oocgnn.testing.stores import make_store, random_graph
from oocgnn.train.config import IOConfig, ModelConfig, OptimConfig, RunConfig
from oocgnn.train.loop import Trainer
from oocgnn.runner import make_trainer
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


class SlowLoader(BatchLoader):
    """Adds a fixed delay per gather, like zarr's LatencyStore, to stand in for a slow disk."""

    delay = 0.02

    def _gather(self, src, ids, out):
        time.sleep(self.delay)
        super()._gather(src, ids, out)


def _wait_fraction(tr: Trainer, depth: int) -> float:
    tr.cfg.io.prefetch = depth
    loader = SlowLoader(tr.indptr, tr.indices, tr.features, tr.histories, [0], tr.pool, tr.cfg.io.io_threads)
    pf = tr.prefetcher(tr.plan(0), loader)
    t0 = time.perf_counter()
    for _ in pf:
        time.sleep(0.1)  # simulated compute, 2.5x the I/O of one batch (margin for a loaded box)
    return pf.stats.io_wait_s / (time.perf_counter() - t0)


def test_prefetch_hides_latency(store) -> None:
    cfg = RunConfig(model=ModelConfig(layers=2, hidden=8), train=OptimConfig(parts_per_batch=1),
                    io=IOConfig(prefetch=3, io_threads=1, cache="none"))
    tr = Trainer(store, cfg, None)
    sync = _wait_fraction(tr, 0)
    ahead = _wait_fraction(tr, 3)
    tr.close()
    assert sync > 0.2           # two delayed gathers (features, history) per 100 ms of compute
    assert ahead < sync / 3     # the read-ahead overlaps them with compute


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
    with pytest.raises(RuntimeError, match="prefetch worker failed") as err:
        for _ in tr.prefetcher(tr.plan(0), loader):
            pass
    assert isinstance(err.value.__cause__, OSError)
    tr.close()
    assert not {t for t in threading.enumerate() if t.name.startswith(ours)} - before


def test_cpu_build_never_pins(store) -> None:
    tr = Trainer(store, RunConfig(io=IOConfig(cache="none")), None)
    assert not tr.slots[0].flat.is_pinned()
    tr.close()
