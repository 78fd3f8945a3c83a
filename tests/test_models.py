"""Models on GAS batches vs plain full-batch PyG models (differential tests).

A private helper builds :class:`SubgraphBatch` objects exactly per the contract in
``oocgnn/batch.py`` (the trainer's real builder lives in ``oocgnn/subgraph.py``).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch_geometric.nn import GATConv, GCN2Conv, GCNConv, SAGEConv
from torch_geometric.utils import degree, remove_self_loops, to_undirected

from oocgnn.batch import SubgraphBatch
from oocgnn.errors import ConfigError
from oocgnn.models import GAT, MODEL_NAMES, GASModel, build_model

N, F_IN, HID, C = 40, 12, 16, 4
OPTS = {"gcn": {}, "sage": {}, "gat": {"heads": 2}, "gcnii": {"alpha": 0.2}}


# ---------------------------------------------------------------------- graph
def make_graph(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random undirected graph on N nodes (node N-1 isolated), features, labels."""
    g = torch.Generator().manual_seed(seed)
    ei = torch.randint(0, N - 1, (2, 3 * N), generator=g)
    ei = to_undirected(remove_self_loops(ei)[0], num_nodes=N)
    return ei, torch.randn(N, F_IN, generator=g), torch.randint(0, C, (N,), generator=g)


def make_batch(ei: torch.Tensor, x: torch.Tensor, y: torch.Tensor, nodes) -> SubgraphBatch:
    """SubgraphBatch of ``nodes`` (batch rows ascending, halo in first-seen order)."""
    nodes = sorted(int(v) for v in nodes)
    b = len(nodes)
    pos = {v: i for i, v in enumerate(nodes)}
    deg = degree(ei[1], N)
    in_batch = torch.tensor([int(d) in pos for d in ei[1]], dtype=torch.bool)
    src, dst = ei[0][in_batch].tolist(), ei[1][in_batch].tolist()
    order = sorted(range(len(src)), key=lambda k: (pos[dst[k]], src[k]))
    halo: list[int] = []
    rows, cols = [], []
    for k in order:
        if src[k] not in pos:
            pos[src[k]] = b + len(halo)
            halo.append(src[k])
        rows.append(pos[dst[k]])
        cols.append(pos[src[k]])
    n_id = np.array(nodes + halo, dtype=np.int64)
    glob = torch.from_numpy(n_id)
    r = torch.tensor(rows + list(range(b)), dtype=torch.long)
    c = torch.tensor(cols + list(range(b)), dtype=torch.long)
    w = ((deg[glob[r]] + 1) * (deg[glob[c]] + 1)).rsqrt()
    adj_t = torch.sparse_coo_tensor(torch.stack([r, c]), w, (b, len(n_id))).coalesce()
    ranges, start = [], nodes[0]
    for prev, cur in zip(nodes, nodes[1:] + [None]):
        if cur != prev + 1:
            ranges.append((start, prev + 1))
            start = cur
    return SubgraphBatch(
        n_id=n_id, batch_size=b, ranges=ranges, x=x[glob], adj_t=adj_t.to_sparse_csr(),
        edge_index=torch.tensor([cols, rows], dtype=torch.long).view(2, -1),
        deg=deg[glob[:b]], y=y[glob[:b]], train_mask=torch.ones(b, dtype=torch.bool))


def with_halo(batch: SubgraphBatch, tables: list[torch.Tensor]) -> SubgraphBatch:
    batch.halo_hist = [t[torch.from_numpy(batch.halo_ids)].clone() for t in tables]
    return batch


# ----------------------------------------------------------------- references
class RefNet(torch.nn.Module):
    """Plain full-batch PyG GCN / SAGE / GAT with the same parameter names."""

    def __init__(self, kind: str, num_layers: int, dropout: float, batch_norm: bool,
                 heads: int = 1) -> None:
        super().__init__()
        self.kind, self.dropout = kind, dropout
        width = HID * heads if kind == "gat" else HID
        convs = []
        for i in range(num_layers):
            a, last = F_IN if i == 0 else width, i == num_layers - 1
            b = C if last else HID
            convs.append({"gcn": lambda: GCNConv(a, b), "sage": lambda: SAGEConv(a, b),
                          "gat": lambda: GATConv(a, b, heads=1 if last else heads,
                                                 concat=not last)}[kind]())
        self.convs = torch.nn.ModuleList(convs)
        self.bns = torch.nn.ModuleList(
            torch.nn.BatchNorm1d(width) for _ in range(num_layers - 1) if batch_norm)

    def forward(self, x: torch.Tensor, ei: torch.Tensor) -> torch.Tensor:
        x = F.dropout(x, self.dropout, self.training)
        for i, conv in enumerate(self.convs):
            x = conv(x, ei)
            if i == len(self.convs) - 1:
                return x
            if len(self.bns):
                x = self.bns[i](x)
            x = F.dropout(F.elu(x) if self.kind == "gat" else F.relu(x), self.dropout,
                          self.training)


class RefGCNII(torch.nn.Module):
    def __init__(self, kind: str, num_layers: int, dropout: float, batch_norm: bool,
                 alpha: float = 0.1) -> None:
        super().__init__()
        self.dropout = dropout
        self.lins = torch.nn.ModuleList([torch.nn.Linear(F_IN, HID), torch.nn.Linear(HID, C)])
        self.convs = torch.nn.ModuleList(GCN2Conv(HID, alpha, 0.5, layer=i + 1)
                                         for i in range(num_layers))
        self.bns = torch.nn.ModuleList(
            torch.nn.BatchNorm1d(HID) for _ in range(num_layers) if batch_norm)

    def forward(self, x: torch.Tensor, ei: torch.Tensor) -> torch.Tensor:
        x = F.dropout(x, self.dropout, self.training)
        x = x0 = F.relu(self.lins[0](x))
        x = F.dropout(x, self.dropout, self.training)
        for i, conv in enumerate(self.convs):
            x = conv(x, x0, ei)
            if len(self.bns):
                x = self.bns[i](x)
            x = F.dropout(F.relu(x), self.dropout, self.training)
        return self.lins[1](x)


def pair(name: str, num_layers: int = 3, dropout: float = 0.0, batch_norm: bool = False,
         **extra) -> tuple[GASModel, torch.nn.Module]:
    torch.manual_seed(0)
    model = build_model(name, F_IN, HID, C, num_layers, dropout=dropout,
                        batch_norm=batch_norm, **OPTS[name], **extra)
    ref = (RefGCNII if name == "gcnii" else RefNet)(name, num_layers, dropout, batch_norm,
                                                   **OPTS[name])
    ref.load_state_dict(model.state_dict())
    return model, ref


def exact_tables(model: GASModel, ei, x, y) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Eval-mode logits and history tables of the whole graph as one batch."""
    model.eval()
    with torch.no_grad():
        return model(make_batch(ei, x, y, range(N)))


# ---------------------------------------------------------------------- tests
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_whole_graph_equals_pyg_over_adam_steps(name: str) -> None:
    ei, x, y = make_graph()
    model, ref = pair(name, dropout=0.5)
    batch = make_batch(ei, x, y, range(N))
    assert batch.num_halo == 0
    opt_m = torch.optim.Adam(model.parameters(), lr=0.01)
    opt_r = torch.optim.Adam(ref.parameters(), lr=0.01)
    for step in range(3):
        torch.manual_seed(100 + step)  # same dropout masks: same RNG calls, same shapes
        out, pushes = model(batch)
        torch.manual_seed(100 + step)
        expected = ref(x, ei)
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
        assert len(pushes) == 2 and all(not p.requires_grad for p in pushes)
        for opt, o in ((opt_m, out), (opt_r, expected)):
            opt.zero_grad()
            F.cross_entropy(o, y).backward()
        for (k, p), q in zip(model.named_parameters(), ref.parameters()):
            torch.testing.assert_close(p.grad, q.grad, atol=1e-5, rtol=1e-4, msg=k)
        opt_m.step()
        opt_r.step()


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_whole_graph_batch_norm_train_and_eval(name: str) -> None:
    ei, x, y = make_graph()
    model, ref = pair(name, batch_norm=True)
    batch = make_batch(ei, x, y, range(N))
    out, expected = model(batch)[0], ref(x, ei)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    F.cross_entropy(out, y).backward()
    F.cross_entropy(expected, y).backward()
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-5, rtol=1e-4)
    model.eval(), ref.eval()  # running statistics now
    torch.testing.assert_close(model(batch)[0], ref(x, ei), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("residual", [False, True])
def test_exact_halo_gives_exact_rows(name: str, residual: bool) -> None:
    """GAS exactness: halo rows holding exact embeddings => exact batch logits/pushes."""
    ei, x, y = make_graph()
    torch.manual_seed(0)
    model = build_model(name, F_IN, HID, C, 3, batch_norm=True, residual=residual,
                        **OPTS[name])
    logits, tables = exact_tables(model, ei, x, y)
    for nodes in (range(5, 20), [0, 1, 2, 30, 31, 32, 33, 39]):
        batch = with_halo(make_batch(ei, x, y, nodes), tables)
        assert batch.num_halo > 0
        with torch.no_grad():
            out, pushes = model(batch)
        ids = torch.from_numpy(batch.n_id[: batch.batch_size])
        torch.testing.assert_close(out, logits[ids], atol=1e-5, rtol=1e-5)
        for p, t in zip(pushes, tables):
            torch.testing.assert_close(p, t[ids], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_layerwise_sweeps_equal_forward(name: str) -> None:
    ei, x, y = make_graph(seed=1)
    torch.manual_seed(0)
    model = build_model(name, F_IN, HID, C, 3, batch_norm=True, **OPTS[name])
    logits, _ = exact_tables(model, ei, x, y)
    batches = [make_batch(ei, x, y, r) for r in (range(0, 13), range(13, 27), range(27, N))]
    tables = [torch.full((N, c), float("nan")) for c in model.history_channels]
    out = torch.full((N, C), float("nan"))
    with torch.inference_mode():
        for layer in range(model.num_inference_layers):
            dest = tables[layer] if layer < len(tables) else out
            for batch in batches:
                ids = torch.from_numpy(batch.n_id)
                x_all = batch.x if layer == 0 else tables[layer - 1][ids]
                dest[ids[: batch.batch_size]] = model.forward_layer(layer, x_all, batch)
        for batch in batches:  # forward on fresh histories == the sweeps
            ids = torch.from_numpy(batch.n_id[: batch.batch_size])
            torch.testing.assert_close(model(with_halo(batch, tables))[0], out[ids])
    torch.testing.assert_close(out, logits, atol=1e-5, rtol=1e-5)
    assert model.needs_features_every_layer == (name == "gcnii")


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_gradients_reach_halo_only_when_requested(name: str) -> None:
    ei, x, y = make_graph()
    torch.manual_seed(0)
    model = build_model(name, F_IN, HID, C, 3, **OPTS[name])
    tables = [torch.randn(N, c) for c in model.history_channels]
    batch = with_halo(make_batch(ei, x, y, range(0, 20)), tables)
    out, pushes = model(batch)
    assert out.requires_grad and not any(p.requires_grad for p in pushes)
    assert not any(h.requires_grad for h in batch.halo_hist)
    batch.halo_hist = [h.requires_grad_() for h in batch.halo_hist]
    out, _ = model(batch)
    F.cross_entropy(out, batch.y).backward()
    assert all(h.grad is not None and h.grad.abs().sum() > 0 for h in batch.halo_hist)


def test_attention_bias_hook_can_mask_halo_edges() -> None:
    """A -1e9 bias on halo-source edges == the same GAT on the batch without halo edges."""
    class NoHalo(GAT):
        def attention_bias(self, layer, batch):
            from oocgnn.models.gat import gat_edges
            return (gat_edges(batch)[0] >= batch.batch_size).float() * -1e9

    ei, x, y = make_graph()
    torch.manual_seed(0)
    masked = NoHalo(F_IN, HID, C, 3, heads=2).eval()
    batch = with_halo(make_batch(ei, x, y, range(0, 20)),
                      [torch.randn(N, c) for c in masked.history_channels])
    plain = GAT(F_IN, HID, C, 3, heads=2).eval()
    plain.load_state_dict(masked.state_dict())
    keep = batch.edge_index[0] < batch.batch_size
    inner = make_batch(ei, x, y, range(0, 20))
    inner.edge_index = batch.edge_index[:, keep]
    inner.halo_hist = batch.halo_hist
    with torch.no_grad():
        torch.testing.assert_close(masked(batch)[0], plain(inner)[0])
        assert not torch.allclose(plain(batch)[0], plain(inner)[0])


def test_build_model_errors_and_determinism() -> None:
    with pytest.raises(ConfigError) as err:
        build_model("gin", F_IN, HID, C, 2)
    assert "\n" not in str(err.value) and "gcn" in str(err.value)
    with pytest.raises(ConfigError):
        build_model("gcn", F_IN, HID, C, 2, heads=4)
    with pytest.raises(ConfigError):
        build_model("gcn", F_IN, HID, C, 0)
    states = []
    for _ in range(2):
        torch.manual_seed(7)
        states.append(build_model("gat", F_IN, HID, C, 2, heads=2).state_dict())
    for k, v in states[0].items():
        assert torch.equal(v, states[1][k]), k
    model = build_model("gat", F_IN, HID, C, 3, heads=2)
    assert model.history_channels == [2 * HID, 2 * HID] and model.num_inference_layers == 3
    ei, x, y = make_graph()
    batch = make_batch(ei, x, y, range(10))
    with pytest.raises(ValueError, match="halo_hist"):
        model(batch)


@pytest.mark.parametrize("name", ["sage", "gat"])
def test_cache_built_in_inference_mode_serves_training(name: str) -> None:
    """A REST forward-only pass under inference_mode, then a training step on that batch."""
    ei, x, y = make_graph()
    torch.manual_seed(0)
    model = build_model(name, F_IN, HID, C, 2, **OPTS[name])
    batch = with_halo(make_batch(ei, x, y, range(0, 20)),
                      [torch.randn(N, c) for c in model.history_channels])
    with torch.inference_mode():
        model(batch)
    F.cross_entropy(model(batch)[0], batch.y).backward()


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("chunk", [1 << 20, 50])
def test_reused_buffer_dropout_is_bitwise_f_dropout(fast, chunk, monkeypatch) -> None:
    """Masks, outputs, gradients and the generator state afterwards equal ``F.dropout``'s.

    Batches grow and shrink (buffers regrow and are reused), the first use is inside
    ``inference_mode`` (a REST refresh) and later ones train; ``fast=False`` is the
    fallback that draws with ``bernoulli_`` into the reused buffer.  The mask kept for
    backward is one byte per element, scaled a chunk at a time (``chunk`` 50 elements:
    many chunks per batch).
    """
    from oocgnn.models import dropout as d

    monkeypatch.setattr(d, "_CHUNK", chunk)
    if fast:
        assert d.fast_mask_ok(), "the MT19937 kernel should match this torch build's generator"
    else:
        monkeypatch.setattr(d, "fast_mask_ok", lambda: False)
    bufs = d.DropoutBuffers()
    w = torch.randn(24, 5)
    with torch.inference_mode():
        torch.manual_seed(3)
        ref = torch.nn.functional.dropout(torch.ones(50, 24), 0.5, True)
        torch.manual_seed(3)
        assert torch.equal(d.dropout([torch.ones(50, 24)], 0.5, True, bufs, "s"), ref)
    for rows, halo, p in ((40, 30, 0.5), (300, 200, 0.3), (10, 0, 0.5), (120, 7, 0.7)):
        h = torch.randn(rows, 24, requires_grad=True)
        hh = torch.randn(halo, 24, requires_grad=True)
        torch.manual_seed(rows)
        y = torch.nn.functional.dropout(torch.cat([h, hh]), p, True)
        (y @ w).square().sum().backward()
        g_h, g_hh, state = h.grad.clone(), hh.grad.clone(), torch.get_rng_state()
        h.grad = hh.grad = None
        torch.manual_seed(rows)
        y2 = d.dropout([h, hh], p, True, bufs, "s")
        (y2 @ w).square().sum().backward()
        assert torch.equal(y, y2) and torch.equal(g_h, h.grad) and torch.equal(g_hh, hh.grad)
        assert torch.equal(state, torch.get_rng_state())
        assert bufs._bufs[("s", "mask")].dtype == torch.uint8  # a byte per element kept for backward
    x = torch.randn(9, 24)
    assert d.dropout([x], 0.5, False, bufs, "s") is x  # evaluation: no dropout, no copy


def test_fast_mask_continues_torch_generator_at_block_edges() -> None:
    """Mask lengths around MT19937's 624-word block (odd/even offsets) leave torch's generator
    exactly where ``bernoulli_`` leaves it, with the same mask."""
    from oocgnn.models import dropout as d

    if not d.fast_mask_ok():
        pytest.skip("this torch build's generator differs; dropout uses bernoulli_")
    for seed in range(2):
        for n in (1, 2, 311, 312, 313, 623, 624, 625, 1248, 1249, 5000):
            torch.manual_seed(seed)
            torch.rand(seed * 7 + 1)  # start at an odd or even word of a block
            start = torch.get_rng_state()
            ref = torch.empty(n).bernoulli_(0.3).div_(0.3)
            ref_state = torch.get_rng_state()
            torch.set_rng_state(start)
            mine = torch.empty(n)
            d._fast_mask(mine, 0.3, float(torch.ones(1).div_(0.3)))
            assert torch.equal(mine, ref) and torch.equal(torch.get_rng_state(), ref_state), (seed, n)
