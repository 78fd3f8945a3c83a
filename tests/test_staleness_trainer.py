"""REST / REST-IS / VISAGNN through the real trainer on a small store."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from oocgnn.config import IOConfig, ModelConfig, OptimConfig, RunConfig, StalenessConfig
from oocgnn.errors import ConfigError
from oocgnn.runner import make_trainer
from oocgnn.testing.stores import make_store, random_graph
from oocgnn.train.loop import Trainer


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    g = random_graph(300, 1500, 8, 4, seed=1)
    return make_store(tmp_path_factory.mktemp("st") / "s", g["edge_index"], g["x"], g["y"], g["splits"],
                      num_partitions=10)


def make(ds, scfg: StalenessConfig, model: str = "gcn", seed: int = 0, fill: bool = True):
    cfg = RunConfig(model=ModelConfig(name=model, layers=3, hidden=8, dropout=0.2),
                    train=OptimConfig(lr=0.01, epochs=2, parts_per_batch=1, seed=seed, fill_histories=fill),
                    io=IOConfig(io_threads=1, prefetch=1, cache="none", in_memory=True), staleness=scfg)
    tr = make_trainer(ds, cfg, None)
    return tr, tr.policy


def train_epoch(tr, ctl):
    return tr.train_epoch()


def params(tr):
    return [p.detach().clone() for p in tr.model.parameters()]


def test_rest_needs_refreshes():
    assert StalenessConfig(method="rest").refresh_per_step == 2.0  # REST's default F, not silently GAS
    assert StalenessConfig(method="rest-is").refresh_per_step == 2.0
    assert StalenessConfig(method="gas").refresh_per_step == 1.0
    with pytest.raises(ConfigError, match="never refreshes"):
        StalenessConfig(method="rest-is", refresh_per_step=1.0)


def reference_gas_epoch(tr: Trainer) -> list[float]:
    """An independent plain-GAS epoch (plan order, forward, loss, backward, Adam step, push): the oracle."""
    from oocgnn.prefetch import BatchLoader

    plan = tr.plan(tr.state.epoch)
    loader = BatchLoader(tr.indptr, tr.indices, tr.features, tr.histories, list(range(len(tr.histories))), None, 1)
    losses = []
    for batch in tr.prefetcher(plan, loader):
        tr.model.train()
        tr.optimizer.zero_grad(set_to_none=True)
        logits, pushes = tr.model(batch)
        loss = torch.nn.functional.cross_entropy(logits[batch.train_mask], batch.y[batch.train_mask])
        loss.backward()
        tr.optimizer.step()
        tr.histories.push(pushes, step=tr.state.global_step, ranges=batch.ranges)
        tr.state.global_step += 1
        losses.append(float(loss.detach()))
    tr.histories.flush()
    tr.state.epoch += 1
    return losses


@pytest.mark.parametrize("policy", ["bare", "staleness-control"])
def test_one_loop_gas_equals_reference_gas_bitwise(store, policy):
    """The single epoch loop, with the bare GAS policy or the staleness controller at --method gas,
    trains bitwise like an independent plain GAS loop (same options, no history fill)."""
    ref, _ = make(store, StalenessConfig(), fill=False)
    ref_losses = [reference_gas_epoch(ref) for _ in range(2)]
    if policy == "bare":
        tr = Trainer(store, ref.cfg, None)
    else:
        tr, _ = make(store, StalenessConfig(), fill=False)
    recs = [tr.train_epoch() for _ in range(2)]
    assert [r["loss"] for r in recs] == [float(np.mean(x)) for x in ref_losses]
    assert all(torch.equal(a, b) for a, b in zip(params(ref), params(tr)))
    for a, b in zip(ref.histories.tables, tr.histories.tables):
        assert np.array_equal(a.array, b.array)


def test_bare_trainer_refuses_a_method_it_cannot_run(store):
    cfg = RunConfig(staleness=StalenessConfig(method="rest-is"), io=IOConfig(in_memory=True, cache="none"))
    with pytest.raises(ConfigError, match="make_trainer"):
        Trainer(store, cfg, None)


@pytest.mark.parametrize("scfg", [StalenessConfig(method="rest", refresh_per_step=2.0),
                                  StalenessConfig(method="rest", refresh_per_step=3.0, rest_loop="interleave"),
                                  StalenessConfig(method="rest-is", refresh_per_step=2.0,
                                                  measure_true_staleness=True)])
def test_rest_refreshes_and_lowers_age(store, scfg):
    gas, gctl = make(store, StalenessConfig())
    g = [train_epoch(gas, gctl) for _ in range(2)][-1]
    tr, ctl = make(store, scfg)
    r = [train_epoch(tr, ctl) for _ in range(2)][-1]
    assert r["refresh_passes"] > 0 and r["rows_refreshed"] > 0
    assert r["age_mean_0"] < g["age_mean_0"]
    assert r["push_drift_0"] is not None and r["grad_norm_0"] > 0
    if scfg.measure_true_staleness:
        assert 0 <= r["true_staleness_0"] < 10


def test_visagnn_trains_and_records_grad_criterion(store):
    tr, ctl = make(store, StalenessConfig(method="visagnn", visagnn_drop_threshold=20), model="gat")
    recs = [train_epoch(tr, ctl) for _ in range(2)]
    assert np.isfinite(recs[-1]["loss"])
    assert float(ctl.tracker.grad_norm[0].max()) > 0
    assert ctl.stale_loss.written.all()


def test_schedule_state_resume_continues_identically(store):
    a, actl = make(store, StalenessConfig(method="rest-is", refresh_per_step=2.0))
    train_epoch(a, actl)
    plan_a = [(x.kind, x.parts) for x in actl.plan_epoch(a)]
    b, bctl = make(store, StalenessConfig(method="rest-is", refresh_per_step=2.0))
    train_epoch(b, bctl)
    assert plan_a == [(x.kind, x.parts) for x in bctl.plan_epoch(b)]
    assert a.state.refresh_cursor == b.state.refresh_cursor > 0
