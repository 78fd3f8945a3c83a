"""VISAGNN components and staleness metrics on small in-memory batches."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from oocgnn.errors import ConfigError
from oocgnn.models import build_model
from oocgnn.staleness.metrics import StalenessMeter, enable_halo_grads, halo_grad_norms
from oocgnn.staleness.visagnn import StaleLoss, StalenessTracker, VisaOptions, build_visagnn
from staleness_helpers import make_batch, ring_csr

N, F_IN, HID, C = 60, 8, 6, 3


@pytest.fixture
def setup():
    indptr, indices = ring_csr(N)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(N, F_IN, generator=g), torch.randint(0, C, (N,), generator=g)
    tables = [torch.randn(N, HID * 2, generator=g) for _ in range(2)]
    batch = make_batch(indptr, indices, [(0, 15), (30, 40)], x, y, tables)
    tracker = StalenessTracker.from_store(indptr, 2, "grad")
    tracker.grad_norm = [torch.rand(N, generator=g) * 5 for _ in range(2)]
    return indptr, batch, tracker


def models(name, visa, tracker, **kw):
    hidden = HID if name == "gat" else 2 * HID  # history width 12 either way
    torch.manual_seed(0)
    base = build_model(name, F_IN, hidden, C, 3, dropout=0.0, **kw)
    torch.manual_seed(0)
    return base, build_visagnn(name, F_IN, hidden, C, 3, visa, tracker, dropout=0.0, **kw)


def test_all_off_equals_gat_backbone(setup):
    _, batch, tracker = setup
    base, visa = models("gat", VisaOptions.all_off(), tracker, heads=2)
    assert list(base.state_dict()) == list(visa.state_dict())
    for a, b in zip(base.state_dict().values(), visa.state_dict().values()):
        assert torch.equal(a, b)
    la, pa = base(batch)
    lb, pb = visa(batch)
    assert torch.equal(la, lb) and all(torch.equal(u, v) for u, v in zip(pa, pb))


@pytest.mark.parametrize("name", ["gat", "gcn", "sage"])
@pytest.mark.parametrize("augment", ["none", "sum", "concat"])
def test_components_change_output_and_train_beta(setup, name, augment):
    _, batch, tracker = setup
    kw = {"heads": 2} if name == "gat" else {}
    base, visa = models(name, VisaOptions(augment=augment, drop_threshold=5), tracker, **kw)
    if augment == "sum":  # W_s starts random; make the effect visible anyway
        for p in visa.stale_proj.parameters():
            torch.nn.init.constant_(p, 0.5)
    logits, _ = visa(batch)
    if augment != "concat":
        assert not torch.allclose(logits, base(batch)[0])
    F.cross_entropy(logits, batch.y).backward()
    assert visa.stale_beta[0].grad is not None and visa.stale_beta[0].grad.abs().sum() > 0
    # evaluation batches carry no staleness info: the model is then the plain backbone function
    batch.hist_age = []
    if augment == "none":
        visa.load_state_dict({**base.state_dict(), **{k: v for k, v in visa.state_dict().items() if "stale" in k}})
        assert torch.allclose(visa(batch)[0], base(batch)[0])


def test_drop_threshold_removes_old_halo_edges(setup):
    _, batch, tracker = setup
    visa = build_visagnn("gcn", F_IN, 2 * HID, C, 3, VisaOptions(attention=False, augment="none", drop_threshold=3),
                         tracker, dropout=0.0)
    adj = visa.adjacency(1, batch)
    col, val = adj.col_indices(), adj.values()
    old = torch.zeros(len(batch.n_id), dtype=torch.bool)
    old[batch.batch_size:] = batch.hist_age[0] > 3
    assert (val[old[col]] == 0).all() and (val[~old[col]] > 0).all()
    rows = torch.repeat_interleave(torch.arange(batch.batch_size), adj.crow_indices().diff())
    base = batch.adj_t
    assert torch.allclose(torch.zeros(batch.batch_size).index_add(0, rows, val),
                          torch.zeros(batch.batch_size).index_add(0, rows, base.values()), atol=1e-6)


def test_halo_grad_norms_match_manual_autograd(setup):
    _, batch, _ = setup
    torch.manual_seed(0)
    model = build_model("gat", F_IN, HID, C, 3, dropout=0.0, heads=2)
    enable_halo_grads(batch)
    logits, _ = model(batch)
    F.cross_entropy(logits, batch.y).backward()
    norms = halo_grad_norms(batch)
    halo = [h.detach().clone().requires_grad_(True) for h in batch.halo_hist]
    batch.halo_hist = halo
    manual = torch.autograd.grad(F.cross_entropy(model(batch)[0], batch.y), halo)
    for n, g in zip(norms, manual):
        assert n.abs().sum() > 0
        assert torch.allclose(n, g.norm(dim=1), atol=1e-7)
    meter = StalenessMeter(2)
    meter.observe_grads(norms)
    meter.observe_ages(batch)
    rec = meter.record()
    assert rec["grad_norm_0"] == pytest.approx(float(norms[0].mean()), rel=1e-5)
    assert rec["age_max_0"] == 6 and rec["never_frac_0"] == 0


def test_tracker_persistence_and_stale_loss(setup):
    indptr, batch, _ = setup
    tr = StalenessTracker.from_store(indptr, 2, "persistence")
    tr.step = 41
    batch.hist_age[0][0] = -1
    raw = tr.raw(0, batch)
    assert raw[0] == 42 and torch.equal(raw[1:], batch.hist_age[0][1:].float())
    loss = StaleLoss(N, C, 0.5)
    logits = torch.randn(batch.batch_size, C, requires_grad=True)
    assert float(loss(logits, batch)) == 0.0  # nothing recorded yet
    loss.record(logits, batch)
    assert float(loss(logits + 1.0, batch)) == pytest.approx(0.5 * C)
    with pytest.raises(ConfigError):
        VisaOptions(augment="product")
