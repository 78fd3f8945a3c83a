"""The device transfer schedule, asserted on a CPU-only build with a recording fake device.

:class:`oocgnn.testing.device.RecordingDevice` logs every call of the schedule, owns its
"page-locked" memory and runs a copy only once an event after it is waited on or
synchronised (a lagging copy stream).  So: batch i+1's copies are queued before batch i
computes, every tensor of a batch is copied from memory the device pinned, a slot is
refilled only after the host synchronised the event of the copies out of it, pushes come
back through pinned buffers whose event the write-behind thread waits for, and training
through all of it gives the CPU run's numbers bitwise.
"""
from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from oocgnn.config import IOConfig, ModelConfig, OptimConfig, RunConfig
from oocgnn.prefetch import BatchLoader
from oocgnn.runner import make_trainer
from oocgnn.testing.device import RecordingDevice
from oocgnn.testing.stores import make_store, random_graph
from oocgnn.train.run import fit


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    g = random_graph(num_nodes=700, num_edges=5000, num_features=10, num_classes=4, seed=3)
    return make_store(tmp_path_factory.mktemp("store") / "s", g["edge_index"], g["x"], g["y"], g["splits"], 10)


def config(model: str = "gcn", epochs: int = 2, prefetch: int = 2) -> RunConfig:
    return RunConfig(model=ModelConfig(name=model, layers=3, hidden=8, dropout=0.5),
                     train=OptimConfig(epochs=epochs, parts_per_batch=2), io=IOConfig(prefetch=prefetch, cache="none"))


def run(store, run_dir, cfg, device=None) -> tuple[list[torch.Tensor], list[np.ndarray], dict]:
    tr = make_trainer(store, cfg, run_dir, device=device)
    try:
        summary = fit(tr)
        tables = [np.array(t.array) for t in tr.histories.tables]
        return [p.detach().clone() for p in tr.model.parameters()], tables, summary
    finally:
        tr.close()


@pytest.mark.parametrize("model", ["gcn", "sage"])
def test_training_through_a_lagging_fake_device_equals_the_cpu_run_bitwise(store, tmp_path, model) -> None:
    """Copies deferred to their events, patches and pushes through pinned buffers: same weights, tables, accuracy."""
    ref, ref_tables, s_ref = run(store, tmp_path / "cpu", config(model))
    dev = RecordingDevice(defer=True)
    got, tables, s = run(store, tmp_path / "fake", config(model), dev)
    assert all(torch.equal(a, b) for a, b in zip(ref, got))
    assert all(np.array_equal(a, b) for a, b in zip(ref_tables, tables))
    assert s["best_valid_acc"] == s_ref["best_valid_acc"] and s["test_acc_at_best_valid"] == s_ref["test_acc_at_best_valid"]
    assert any(e[0] == "d2h" for e in dev.log) and any(e[0] == "copy" and e[1] == "patch_values" for e in dev.log)


class NotingLoader(BatchLoader):
    """Notes every slot refill in the device log, after checking the slot's guard was synchronised by this thread."""

    device: RecordingDevice
    refills: list

    def load(self, ranges, slot):
        guard = slot.guard
        slot.wait_guard()
        if guard is not None:
            self.refills.append(guard.id)
            assert ("sync", guard.id, threading.current_thread().name) in self.device.log
        self.device.note("fill", id(slot))
        return super().load(ranges, slot)


@pytest.mark.parametrize("model", ["gcn", "sage"])
def test_schedule_copies_next_batch_before_this_one_computes_from_pinned_memory(store, tmp_path, model) -> None:
    dev = RecordingDevice(defer=True)
    tr = make_trainer(store, config(model, prefetch=1), tmp_path, device=dev)
    step = [0]
    forward = tr.model.forward

    def noted_forward(batch):
        dev.note("compute", step[0])
        step[0] += 1
        assert batch.num_labelled == int(batch.train_mask.sum()) and len(batch.train_index) == batch.num_labelled
        return forward(batch)

    tr.model.forward = noted_forward
    loader = tr.epoch_loader()
    noting = NotingLoader.__new__(NotingLoader)
    noting.__dict__.update(loader.__dict__)
    noting.device, noting.refills = dev, []
    plan = tr.plan(0)
    for batch in tr.prefetcher(plan, noting):
        tr.train_step(batch)
    tr.histories.flush()
    log = dev.log
    n = len(plan)
    assert step[0] == n

    # each batch's copies end with one event (patch copies have their own, named so)
    batch_events = []
    for e in log:
        if e[0] == "copy" and not e[1].startswith("patch") and (not batch_events or batch_events[-1] != e[4]):
            batch_events.append(e[4])
    assert len(batch_events) == n
    computes = [log.index(("compute", i)) for i in range(n)]
    waits = [log.index(("wait", ev)) for ev in batch_events]
    queued = [log.index(("record", ev)) for ev in batch_events]
    for i in range(n):
        assert waits[i] < computes[i]                          # batch i's copies waited for before it computes
        if i + 1 < n:
            assert queued[i + 1] < computes[i]                 # batch i+1's copies queued before that

    # every tensor of every batch was copied from memory the device pinned, and all of them were copied
    names = {e[1] for e in log if e[0] == "copy"}
    expected = {"x", "deg", "y", "train_mask", "train_index", "halo_hist", "adj_t.crow", "adj_t.col", "adj_t.values"}
    expected |= {"adj_t_T.crow", "adj_t_T.col", "adj_t_T.values"} if tr.model.uses_adj_transpose else {"edge_index"}
    assert expected <= names
    assert all(e[3] for e in log if e[0] == "copy"), [e for e in log if e[0] == "copy" and not e[3]]
    assert all(e[2] for e in log if e[0] == "d2h")           # pushes come back into pinned buffers
    assert sum(1 for e in log if e[0] == "record_stream") >= n * len(expected & names)

    # slots are refilled only after the host synchronised the event of the copies out of them
    fills = [i for i, e in enumerate(log) if e[0] == "fill"]
    assert len(fills) == n and len(noting.refills) == n - len(tr.slots[:2])
    for ev in noting.refills:
        assert ev in batch_events
    tr.close()


def test_cpu_device_copies_nothing_and_reads_no_batch_ahead(store, tmp_path) -> None:
    """The CPU path is the prefetcher's own: batches are the staging tensors, no lookahead, no pinned buffers."""
    tr = make_trainer(store, config(), tmp_path)
    assert not tr.devops.asynchronous and tr.lookahead == 0 and tr.pushes is None and tr.patches is None
    assert all(s.arena is None for s in tr.slots)
    feed = tr.prefetcher(tr.plan(0), tr.epoch_loader())
    for batch in feed:
        assert any(batch.x.data_ptr() == s.flat.data_ptr() for s in tr.slots)
        tr.train_step(batch)
    tr.close()
