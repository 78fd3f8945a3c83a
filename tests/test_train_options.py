"""Optimisation options of ``oocgnn train``: lr scaling, GAS weight decay, clipping, feature normalisation, fill."""
from __future__ import annotations

import math
import tomllib

import numpy as np
import pytest
import torch

from oocgnn.cli.main import main as cli_main
from oocgnn.config import IOConfig, ModelConfig, OptimConfig, RunConfig
from oocgnn.errors import ConfigError
from oocgnn.testing.stores import make_store, random_graph
from oocgnn.train.loop import Trainer


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    g = random_graph(num_nodes=400, num_edges=2400, num_features=10, num_classes=3, seed=2)
    g["x"] = np.abs(g["x"]) + 0.1  # non-negative rows, like bag-of-words counts
    return make_store(tmp_path_factory.mktemp("opts") / "s", g["edge_index"], g["x"], g["y"], g["splits"], 8)


def trainer(store, model: dict | None = None, **train) -> Trainer:
    train = {"epochs": 1, "parts_per_batch": 2, **train}
    cfg = RunConfig(model=ModelConfig(layers=3, hidden=8, dropout=0.0, **(model or {})), train=OptimConfig(**train),
                    io=IOConfig(cache="none", in_memory=True, io_threads=1, prefetch=0))
    return Trainer(store, cfg, None)


def test_lr_scales_with_sqrt_of_batches_per_epoch(store):
    tr = trainer(store, lr=0.01)  # 8 partitions, 2 per batch: 4 batches/epoch
    assert tr.batches_per_epoch == 4
    assert all(math.isclose(g["lr"], 0.01 / 2) for g in tr.optimizer.param_groups)
    assert trainer(store, lr=0.01, parts_per_batch=8).optimizer.param_groups[0]["lr"] == 0.01  # full batch: as given
    assert trainer(store, lr=0.01, lr_scaling="none").optimizer.param_groups[0]["lr"] == 0.01
    with pytest.raises(ConfigError, match="--lr-scaling"):
        OptimConfig(lr_scaling="linear")


def test_weight_decay_first_layer_only_as_gas(store):
    tr = trainer(store, weight_decay=5e-4, weight_decay_rest=1e-5)
    first, rest = tr.optimizer.param_groups
    first_ids = {id(p) for p in tr.model.convs[0].parameters()}
    assert {id(p) for p in first["params"]} == first_ids and first["weight_decay"] == 5e-4
    assert rest["weight_decay"] == 1e-5 and not first_ids & {id(p) for p in rest["params"]}
    assert len(first["params"]) + len(rest["params"]) == len(list(tr.model.parameters()))


def test_grad_clip_bounds_the_gradient_each_step(store):
    norms = []
    tr = trainer(store, grad_clip=1e-3)
    step = tr.optimizer.step

    def record(*args, **kwargs):
        grads = [p.grad for p in tr.model.parameters() if p.grad is not None]
        norms.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))))
        return step(*args, **kwargs)
    tr.optimizer.step = record
    rec = tr.train_epoch()
    assert norms and max(norms) <= 1e-3 * (1 + 1e-4)
    assert rec["grad_norm_last"] > 1e-3  # the unclipped norm it was clipped from


def test_normalize_features_equals_a_prenormalised_batch(store):
    """Row-normalising inside the model is the same function as feeding row-normalised features,
    and it is what the trainer trains (the flag reaches the model)."""
    from staleness_helpers import make_batch

    tr = trainer(store, model={"normalize_features": True})
    assert tr.model.normalize_features
    plain = trainer(store)
    plain.model.load_state_dict(tr.model.state_dict())
    x = torch.from_numpy(np.asarray(store.features, dtype=np.float32))
    y = torch.from_numpy(np.asarray(store.labels, dtype=np.int64))
    tables = [torch.zeros(store.num_nodes, 8) for _ in range(2)]
    ranges = [(0, int(store.partition_ptr[2]))]
    batch = make_batch(np.asarray(store.indptr), np.asarray(store.indices), ranges, x, y, tables)
    normed = make_batch(np.asarray(store.indptr), np.asarray(store.indices), ranges, x / x.sum(1, keepdim=True), y,
                        tables)
    tr.model.eval(), plain.model.eval()
    out, _ = tr.model(batch)
    ref, _ = plain.model(normed)
    assert torch.allclose(out, ref, atol=1e-6)
    raw, _ = plain.model(batch)
    assert not torch.allclose(raw, ref, atol=1e-4)  # negative control: the flag changes the function


def test_fill_sweeps_only_the_layers_that_write_tables(store):
    """Filling needs no logits: L-1 sweeps, tables bitwise those of a full inference."""
    from oocgnn.train.evaluate import layerwise_inference

    a, b = trainer(store), trainer(store)
    a.fill_histories()
    assert len(a.inference_paths) == len(a.histories) == 2
    layerwise_inference(b, refresh=True)
    assert len(b.inference_paths) == 3
    assert all(np.array_equal(x.array, y.array) for x, y in zip(a.histories.tables, b.histories.tables))


def test_fill_histories_leaves_no_zero_row_at_step_zero(store):
    filled = trainer(store).train_epoch()
    assert filled["hist_never_written"] == 0
    unfilled = trainer(store, fill_histories=False).train_epoch()
    assert unfilled["hist_never_written"] > 0  # negative control: the first batches read zeros


def test_cli_flags_reach_the_saved_config(store, tmp_path):
    run = tmp_path / "run"
    assert cli_main(["train", "--data", str(store.path), "--run-dir", str(run), "--epochs", "1", "--no-progress",
                     "--lr-scaling", "none", "--weight-decay", "5e-4", "--weight-decay-rest", "1e-6",
                     "--grad-clip", "2.5", "--no-fill-histories", "--normalize-features", "--no-checkpoints"]) == 0
    cfg = tomllib.loads((run / "config.toml").read_text())
    want = {"lr_scaling": "none", "weight_decay": 5e-4, "weight_decay_rest": 1e-6, "grad_clip": 2.5,
            "fill_histories": False}
    assert {k: cfg["train"][k] for k in want} == want
    assert cfg["model"]["normalize_features"] is True
