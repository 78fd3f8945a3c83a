"""Trainer correctness: full-batch equivalence, exact layer-wise inference, disk == RAM, real data."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch_geometric.nn import GCNConv

from oocgnn.subgraph import build_subgraph
from oocgnn.staging import Slot
from oocgnn.testing.stores import make_store, random_graph
from oocgnn.config import EvalConfig, IOConfig, ModelConfig, OptimConfig, RunConfig
from oocgnn.train.evaluate import evaluate, layerwise_inference
from oocgnn.train.loop import Trainer
from oocgnn.runner import make_trainer
from oocgnn.train.run import fit


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    g = random_graph(num_nodes=600, num_edges=4000, num_features=12, num_classes=4, seed=1)
    return make_store(tmp_path_factory.mktemp("store") / "s", g["edge_index"], g["x"], g["y"], g["splits"], 8)


def cfg_for(layers=2, hidden=16, dropout=0.0, ppb=2, epochs=2, **io) -> RunConfig:
    io.setdefault("cache", "none")
    return RunConfig(model=ModelConfig(layers=layers, hidden=hidden, dropout=dropout),
                     train=OptimConfig(epochs=epochs, parts_per_batch=ppb, lr=0.01), io=IOConfig(**io))


def store_edge_index(ds) -> torch.Tensor:
    indptr = np.asarray(ds.indptr)
    row = np.repeat(np.arange(ds.num_nodes), np.diff(indptr))
    return torch.from_numpy(np.stack([np.asarray(ds.indices, dtype=np.int64), row]))


class FullGCN(torch.nn.Module):
    def __init__(self, dims: list[int]) -> None:
        super().__init__()
        self.convs = torch.nn.ModuleList(GCNConv(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x, ei):
        for i, conv in enumerate(self.convs):
            x = conv(x, ei)
            if i < len(self.convs) - 1:
                x = x.relu()
        return x


def test_whole_graph_batch_equals_full_batch_pyg(store) -> None:
    """One batch holding every partition: loss and gradients equal PyG's GCN to 1e-5."""
    tr = Trainer(store, cfg_for(layers=3, ppb=store.num_partitions, prefetch=0, io_threads=1), None)
    ref = FullGCN([store.num_features, 16, 16, store.num_classes])
    ref.load_state_dict(tr.model.state_dict(), strict=False)
    opt = torch.optim.Adam(ref.parameters(), lr=0.01)
    x = torch.from_numpy(np.array(store.features, dtype=np.float32))
    ei, y = store_edge_index(store), torch.from_numpy(tr.labels.astype(np.int64))
    train = torch.from_numpy(store.split("train"))
    names = dict(ref.named_parameters())
    for _ in range(3):  # three steps: one single-batch epoch each
        for batch in tr.prefetcher(tr.plan(0), tr_loader(tr)):
            assert batch.num_halo == 0 and batch.batch_size == store.num_nodes
            loss = tr.train_step(batch)
            opt.zero_grad()
            ref_loss = F.cross_entropy(ref(x, ei)[train], y[train])
            ref_loss.backward()
            opt.step()
            assert abs(loss - ref_loss.item()) < 1e-5
            for n, p in tr.model.named_parameters():
                torch.testing.assert_close(p.grad, names[n].grad, atol=1e-5, rtol=1e-5)
    tr.close()


def tr_loader(tr):
    from oocgnn.prefetch import BatchLoader

    return BatchLoader(tr.indptr, tr.indices, tr.features, tr.histories, list(range(len(tr.histories))), tr.pool,
                       tr.cfg.io.io_threads)


def test_layerwise_inference_equals_full_forward(store) -> None:
    tr = Trainer(store, cfg_for(layers=3, dropout=0.5, ppb=2), None)
    fit(tr)  # non-trivial parameters and histories
    logits = torch.zeros(store.num_nodes, store.num_classes)
    preds = layerwise_inference(tr, refresh=True, logits_out=logits)
    sub = build_subgraph(np.asarray(store.indptr), np.asarray(store.indices), [(0, store.num_nodes)])
    from oocgnn.batch import SubgraphBatch

    full = SubgraphBatch(n_id=sub.n_id, batch_size=sub.batch_size, ranges=sub.ranges,
                         x=torch.from_numpy(np.array(store.features, dtype=np.float32)), adj_t=sub.adj_t(),
                         edge_index=torch.from_numpy(sub.edge_index), deg=torch.from_numpy(sub.deg),
                         y=torch.zeros(sub.batch_size, dtype=torch.long),
                         train_mask=torch.zeros(sub.batch_size, dtype=torch.bool))
    tr.model.eval()
    with torch.no_grad():
        ref, _ = tr.model(full)
    torch.testing.assert_close(logits, ref, atol=1e-5, rtol=1e-5)
    assert np.array_equal(preds, ref.argmax(-1).numpy())
    tr.close()


def _params(tr):
    return [p.detach().clone() for p in tr.model.parameters()]


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_disk_histories_equal_memory_histories(store, tmp_path, dtype) -> None:
    out = []
    for run_dir in (tmp_path / "run", None):
        if run_dir is not None:
            run_dir.mkdir()
        tr = Trainer(store, cfg_for(layers=3, dropout=0.5, history_dtype=dtype), run_dir)
        s = fit(tr)
        tr.close()
        out.append((_params(tr), s["best_valid_acc"], tr.histories.tables[0].array.copy()))
    assert all(torch.equal(a, b) for a, b in zip(out[0][0], out[1][0]))
    assert out[0][1] == out[1][1] and np.array_equal(out[0][2], out[1][2])
    assert (tmp_path / "run" / "histories" / "layer_0.npy").exists()


@pytest.mark.parametrize("model", ["gcn", "gcnii"])
def test_transposed_adjacency_trains_bitwise_like_torchs_backward(store, monkeypatch, model) -> None:
    """Training batches carry adj_t transposed for the backward (oocgnn.models.propagate): same run, bit for bit."""
    from oocgnn.models.gcn import GCN
    from oocgnn.models.gcnii import GCNII

    import oocgnn.models.propagate as propagate_mod

    backward = propagate_mod._PropagateCSR.backward
    calls: list[int] = []
    monkeypatch.setattr(propagate_mod._PropagateCSR, "backward",
                        staticmethod(lambda ctx, grad: (calls.append(1), backward(ctx, grad))[1]))
    out = []
    for transpose in (True, False):
        monkeypatch.setattr(GCN, "uses_adj_transpose", transpose)
        monkeypatch.setattr(GCNII, "uses_adj_transpose", transpose)
        calls.clear()
        cfg = cfg_for(layers=3, dropout=0.5, epochs=2)
        cfg.model.name = model
        tr = Trainer(store, cfg, None)
        assert tr.model.uses_adj_transpose == transpose
        fit(tr)
        tr.close()
        assert bool(calls) == transpose  # the transposed backward ran exactly when the batches carried it
        out.append((_params(tr), tr.histories.tables[0].array.copy()))
    assert all(torch.equal(a, b) for a, b in zip(out[0][0], out[1][0]))
    assert np.array_equal(out[0][1], out[1][1])


def test_no_eval_refresh_leaves_training_histories(store, tmp_path) -> None:
    tr = Trainer(store, cfg_for(layers=3, dropout=0.5, epochs=1), tmp_path)
    tr.train_epoch()
    before = [t.array.copy() for t in tr.histories.tables], [s.copy() for s in tr.histories.last_step]
    accs, _ = evaluate(tr, refresh=False)
    assert all(np.array_equal(a, t.array) for a, t in zip(before[0], tr.histories.tables))
    assert all(np.array_equal(a, s) for a, s in zip(before[1], tr.histories.last_step))
    accs2, _ = evaluate(tr, refresh=True)
    assert accs == accs2  # same exact inference either way
    assert not all(np.array_equal(a, t.array) for a, t in zip(before[0], tr.histories.tables))
    tr.close()


def test_state_dict_round_trip(store) -> None:
    tr = Trainer(store, cfg_for(epochs=1), None)
    tr.train_epoch()
    sd = tr.state_dict()
    other = Trainer(store, cfg_for(epochs=1, io_threads=1), None)
    other.load_state_dict(sd)
    assert other.state == tr.state and other.state.epoch == 1 and other.state.global_step == 4
    assert all(torch.equal(a, b) for a, b in zip(_params(tr), _params(other)))
    tr.close(), other.close()


# ---------------------------------------------------------------- real datasets
def planetoid_store(shared: Path, tmp: Path, name: str, parts: int):
    import shutil

    from torch_geometric.datasets import Planetoid

    root = tmp / "pyg"
    shutil.copytree(shared / "Planetoid" / name, root / name)
    d = Planetoid(str(root), name)[0]
    x = d.x / d.x.sum(1, keepdim=True).clamp(min=1)  # row-normalised, as Kipf & Welling
    splits = {k: np.flatnonzero(getattr(d, m).numpy()) for k, m in
              (("train", "train_mask"), ("valid", "val_mask"), ("test", "test_mask"))}
    return make_store(tmp / f"{name}.store", d.edge_index.numpy(), x.numpy(), d.y.numpy(), splits, parts)


def run_planetoid(ds, epochs: int, seed: int = 0) -> dict:
    cfg = RunConfig(model=ModelConfig(layers=2, hidden=64, dropout=0.5),
                    train=OptimConfig(epochs=epochs, parts_per_batch=2, lr=0.01, weight_decay=5e-4, seed=seed),
                    io=IOConfig(cache="none", io_threads=1, prefetch=1), eval=EvalConfig(eval_every=1))
    tr = make_trainer(ds, cfg, None)
    summary = fit(tr)
    tr.close()
    return summary


@pytest.mark.parametrize("name,target", [("Cora", 0.80), pytest.param("CiteSeer", 0.69, marks=pytest.mark.slow)])
def test_planetoid_short(shared_datasets, tmp_path, name, target) -> None:
    """GCN in 10 batches per epoch (20 METIS parts, 2 per batch), public split, 30 epochs.

    CiteSeer (3,703 features) takes ~60 s here, so it is marked slow; the 100-epoch,
    several-seed version lives in benchmarks/bench_epoch.py --planetoid.
    """
    ds = planetoid_store(shared_datasets, tmp_path, name, parts=20)
    s = run_planetoid(ds, epochs=30)
    assert s["test_acc_at_best_valid"] >= target, s
