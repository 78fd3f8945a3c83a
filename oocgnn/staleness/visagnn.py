"""VISAGNN (Xue et al., "Versatile Staleness-Aware GNN") on the GAS model template.

Every component is switchable (:class:`VisaOptions`) so ablations are one flag:

1. **Dynamic staleness attention** (paper Sec. 3.2): for an edge from halo node
   ``j`` at layer ``l >= 1`` (which reads history table ``l-1``) the GAT logit
   becomes ``e_ij - gamma(t) s_j sigma(c_j - c_avg)`` with ``s_j = log(1 + S_j)``,
   ``c`` the global degree, ``gamma(t) = softplus(beta_l) / t`` (t = epoch,
   1-based; ``beta_l`` learnable per layer and head; softplus keeps it >= 0 --
   the paper only says "learnable").  Layer 0 reads real features: no bias.
   For GCN / SAGE / GCNII backbones (**our reconstruction**, the paper is
   GAT-only) the halo edge weights of the layer's sparse matrix are multiplied by
   ``exp(-gamma s_j sigma(c_j - c_avg))`` and each row is rescaled to its
   original sum, so fresh in-batch neighbours gain what stale ones lose.
2. **Staleness criterion** ``S_j``: ``grad`` (the paper's choice) = the norm of
   the loss gradient w.r.t. ``j``'s pulled history row, recorded the last time
   ``j`` was pulled by a training step (rows never observed: 0).  **Our
   detail**: the gradient of the *summed* (not mean) loss over the batch's
   labelled rows, so the scale does not shrink with batch size.  ``persistence``
   = optimizer steps since the row was last pushed (never written = current
   step + 1).  In-batch rows have ``S = 0``.
3. **Staleness-augmented embeddings** (Sec. 3.4): ``concat`` appends ``s_j`` as an
   extra input channel of layers >= 1 (in-batch rows 0); ``sum`` adds
   ``tanh(W_s s_j)`` to the halo rows (``phi = tanh`` and a bias-free ``W_s`` are
   our choices, so in-batch rows stay unchanged).
4. **Halo-edge dropping** (Sec. 3.4, after Refresh): halo rows whose persistence
   exceeds ``drop_threshold`` steps (or were never written) lose their edges.
5. **Staleness-aware loss** (Sec. 3.3): ``lambda * mean_{i in B} ||h_i^(L) -
   h_i,prev^(L)||^2`` against an extra final-layer table of each node's previous
   output (:class:`StaleLoss`).  **Our detail**: mean over batch rows instead of
   the paper's sum so ``lambda`` does not scale with batch size; rows never
   written are skipped.

With every component off a ``Visa*`` model has the backbone's parameters, in the
same order and initialisation, and computes exactly the backbone's function.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.nn import GATConv, GCNConv, SAGEConv

from oocgnn.batch import SubgraphBatch
from oocgnn.config import check_visagnn_options
from oocgnn.errors import ConfigError
from oocgnn.history import HistoryTable
from oocgnn.models import GAT, GCN, GCNII, SAGE, GASModel
from oocgnn.models.base import State
from oocgnn.models.gat import gat_edges

#: logit / weight used for dropped halo edges (self-loops keep every softmax finite)
_DROPPED_LOGIT = -1e4


@dataclass
class VisaOptions:
    attention: bool = True
    criterion: str = "grad"          #: grad | persistence
    augment: str = "sum"             #: none | concat | sum
    drop_threshold: int = 0          #: persistence (steps) above which halo edges drop; 0 = off
    stale_loss_weight: float = 0.3   #: lambda; 0 = off

    def __post_init__(self) -> None:
        check_visagnn_options(self.criterion, self.augment, self.drop_threshold, self.stale_loss_weight)

    @classmethod
    def all_off(cls) -> "VisaOptions":
        return cls(attention=False, augment="none", drop_threshold=0, stale_loss_weight=0.0)


class StalenessTracker:
    """Per-node staleness inputs shared by model and trainer (not parameters).

    Holds the global degree (float32[N]), the last observed gradient norm of every
    history row (float32[N] per table, ``grad`` criterion only), the epoch ``t``
    and the current optimizer step (for never-written rows).
    """

    def __init__(self, degree: np.ndarray, num_tables: int, criterion: str = "grad") -> None:
        self.degree = torch.from_numpy(np.asarray(degree, dtype=np.float32))
        self.mean_degree = float(self.degree.mean()) if len(self.degree) else 0.0
        self.criterion = criterion
        n = len(self.degree)
        self.grad_norm = [torch.zeros(n) for _ in range(num_tables)] if criterion == "grad" else []
        self.epoch = 1
        self.step = 0

    @classmethod
    def from_store(cls, indptr: np.ndarray, num_tables: int, criterion: str = "grad") -> "StalenessTracker":
        return cls(np.diff(np.asarray(indptr)).astype(np.float32), num_tables, criterion)

    def raw(self, table: int, batch: SubgraphBatch) -> Tensor | None:
        """Criterion ``S_j`` of the halo rows of ``table`` ([H]); None without staleness info."""
        if table >= len(batch.hist_age):
            return None
        if self.criterion == "grad":
            return self.grad_norm[table][torch.from_numpy(np.ascontiguousarray(batch.halo_ids))]
        age = batch.hist_age[table].to(torch.float32)
        return torch.where(age < 0, torch.full_like(age, float(self.step + 1)), age)

    def observe(self, batch: SubgraphBatch, norms: list[Tensor], scale: float = 1.0) -> None:
        """Record the gradient norms of a batch's pulled rows (``grad`` criterion)."""
        if self.criterion != "grad":
            return
        ids = torch.from_numpy(np.ascontiguousarray(batch.halo_ids))
        for t, g in enumerate(norms):
            if g is not None and t < len(self.grad_norm):
                self.grad_norm[t][ids] = g.detach().float().cpu() * scale

    def state_dict(self) -> dict[str, Any]:
        return {"grad_norm": [g.clone() for g in self.grad_norm], "epoch": self.epoch, "step": self.step}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        self.grad_norm = [g.clone() for g in sd["grad_norm"]]
        self.epoch, self.step = int(sd["epoch"]), int(sd["step"])


class StalenessAwareMixin:
    """Adds VISAGNN's components to a :class:`GASModel` backbone (see module doc)."""

    def __init__(self, *args: Any, visa: VisaOptions | None = None,
                 tracker: StalenessTracker | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.visa = visa if visa is not None else VisaOptions()
        self.tracker = tracker
        if self.visa.attention:  # one beta per layer >= 1 (and head for GAT); softplus(0.5413) = 1.0
            heads = [self.convs[i].heads if isinstance(self, GAT) else 1 for i in range(1, self.num_layers)]
            self.stale_beta = torch.nn.ParameterList(torch.nn.Parameter(torch.full((h,), 0.5413)) for h in heads)
        if self.visa.augment == "sum":
            self.stale_proj = torch.nn.ModuleList(
                torch.nn.Linear(1, c, bias=False) for c in self.history_channels)
        elif self.visa.augment == "concat":
            self._widen_convs()

    # ----------------------------------------------------------------- helpers
    def _widen_convs(self) -> None:
        """Rebuild convs of layers >= 1 with one extra input channel (concat variant)."""
        for i in range(1, self.num_layers):
            c = self.convs[i]
            if isinstance(c, GATConv):
                self.convs[i] = GATConv(c.in_channels + 1, c.out_channels, heads=c.heads, concat=c.concat,
                                        dropout=c.dropout, add_self_loops=False)
            elif isinstance(c, GCNConv):
                self.convs[i] = GCNConv(c.in_channels + 1, c.out_channels, normalize=False)
            elif isinstance(c, SAGEConv):
                self.convs[i] = SAGEConv(c.in_channels + 1, c.out_channels, aggr="mean")
            else:
                raise ConfigError(f"--visagnn-augment concat is not supported for {type(self).__name__}; use sum")

    def _terms(self, layer: int, batch: SubgraphBatch) -> tuple[Tensor, Tensor] | None:
        """(``s_j = log(1+S_j)`` [H], dropped-row mask [H]) for layer ``layer``'s halo, or None."""
        if layer < 1 or self.tracker is None or batch.num_halo == 0:
            return None
        raw = self.tracker.raw(layer - 1, batch)
        if raw is None:
            return None
        s = torch.log1p(raw.clamp(min=0)).to(batch.x.device)
        if self.visa.drop_threshold > 0 and layer - 1 < len(batch.hist_age):
            age = batch.hist_age[layer - 1].to(batch.x.device)
            drop = (age < 0) | (age > self.visa.drop_threshold)
        else:
            drop = torch.zeros_like(s, dtype=torch.bool)
        return s, drop

    def _penalty(self, layer: int, batch: SubgraphBatch, s: Tensor) -> Tensor:
        """``gamma(t) s_j sigma(c_j - c_avg)`` per halo row, [H, heads]."""
        tr = self.tracker
        deg = tr.degree[torch.from_numpy(np.ascontiguousarray(batch.halo_ids))].to(s.device)
        gamma = F.softplus(self.stale_beta[layer - 1]) / max(1, tr.epoch)
        return (s * torch.sigmoid(deg - tr.mean_degree)).unsqueeze(-1) * gamma

    # ------------------------------------------------------------ model hooks
    def attention_bias(self, layer: int, batch: SubgraphBatch) -> Tensor | None:
        terms = self._terms(layer, batch)
        if terms is None or not (self.visa.attention or self.visa.drop_threshold > 0):
            return None
        s, drop = terms
        edges = gat_edges(batch)
        src = edges[0]
        halo = src >= batch.batch_size
        idx = src[halo] - batch.batch_size
        heads = self.convs[layer].heads
        per_row = self._penalty(layer, batch, s) if self.visa.attention else s.new_zeros(len(s), 1)
        per_row = per_row.expand(len(s), heads)
        per_row = torch.where(drop.unsqueeze(-1), torch.full_like(per_row, -_DROPPED_LOGIT), per_row)
        bias = s.new_zeros(edges.size(1), heads)
        bias = bias.index_put((halo.nonzero().squeeze(-1),), -per_row[idx])
        return bias

    def adjacency(self, layer: int, batch: SubgraphBatch) -> Tensor:
        base = super().adjacency(layer, batch)
        terms = self._terms(layer, batch)
        if terms is None or not (self.visa.attention or self.visa.drop_threshold > 0):
            return base
        s, drop = terms
        b = batch.batch_size
        crow, col, val = base.crow_indices(), base.col_indices(), base.values()
        row = torch.repeat_interleave(torch.arange(b, device=val.device), crow[1:] - crow[:-1])
        halo = col >= b
        factor = torch.ones_like(val)
        hidx = col[halo] - b
        if self.visa.attention:
            factor = factor.index_put((halo.nonzero().squeeze(-1),),
                                      torch.exp(-self._penalty(layer, batch, s)[:, 0])[hidx])
        edge_drop = torch.zeros_like(halo).index_put((halo.nonzero().squeeze(-1),), drop[hidx])
        factor = factor.masked_fill(edge_drop, 0.0)
        new = val * factor
        old_sum = torch.zeros(b, dtype=val.dtype, device=val.device).index_add(0, row, val)
        new_sum = torch.zeros(b, dtype=val.dtype, device=val.device).index_add(0, row, new)
        scale = torch.where(new_sum > 0, old_sum / new_sum.clamp(min=1e-30), torch.zeros_like(new_sum))
        return torch.sparse_csr_tensor(crow, col, new * scale[row], size=base.shape, check_invariants=None)

    def _layer(self, layer: int, x: Tensor, batch: SubgraphBatch, state: State) -> Tensor:
        aug = self.visa.augment
        if layer >= 1 and aug != "none":
            b = batch.batch_size
            terms = self._terms(layer, batch)
            if aug == "concat":
                col = x.new_zeros(x.size(0), 1)
                if terms is not None:
                    col = torch.cat([col[:b], terms[0].unsqueeze(-1).to(x.dtype)], dim=0)
                x = torch.cat([x, col], dim=1)
            elif terms is not None:
                extra = torch.tanh(self.stale_proj[layer - 1](terms[0].unsqueeze(-1).to(x.dtype)))
                x = torch.cat([x[:b], x[b:] + extra], dim=0)
        return super()._layer(layer, x, batch, state)


class VisaGAT(StalenessAwareMixin, GAT):
    """GAT backbone + VISAGNN components (the paper's setting)."""


class VisaGCN(StalenessAwareMixin, GCN):
    """GCN backbone + VISAGNN components via edge reweighting (our reconstruction)."""


class VisaSAGE(StalenessAwareMixin, SAGE):
    """SAGE backbone + VISAGNN components via edge reweighting (our reconstruction)."""


class VisaGCNII(StalenessAwareMixin, GCNII):
    """GCNII backbone + VISAGNN components via edge reweighting (no concat variant)."""


_VISA: dict[str, type[GASModel]] = {"gat": VisaGAT, "gcn": VisaGCN, "sage": VisaSAGE, "gcnii": VisaGCNII}


def build_visagnn(name: str, in_channels: int, hidden_channels: int, out_channels: int, num_layers: int,
                  visa: VisaOptions, tracker: StalenessTracker | None, **kwargs: Any) -> GASModel:
    """``--method visagnn --model NAME``: the staleness-aware subclass of backbone ``NAME``."""
    cls = _VISA.get(str(name).lower())
    if cls is None:
        raise ConfigError(f"--method visagnn: unknown model {name!r}; choose one of {', '.join(_VISA)}")
    return cls(in_channels, hidden_channels, out_channels, num_layers, visa=visa, tracker=tracker, **kwargs)


class StaleLoss:
    """``lambda * mean ||h_i^(L) - h_i,prev^(L)||^2`` with an extra final-layer table.

    ``path=None`` keeps the ``[N, out]`` table in RAM; otherwise a ``.npy`` memmap
    (out-of-core, same as the history tables).  ``written`` marks rows ever stored.
    The table is overwritten at every training step, so a checkpointed run routes
    the writes through the history undo journal (:meth:`attach_journal`): the old
    rows are journaled before they are overwritten and resume rolls them back.
    """

    def __init__(self, num_nodes: int, out_channels: int, weight: float, path: str | None = None) -> None:
        self.weight = float(weight)
        self.table = HistoryTable(num_nodes, out_channels, "float32", path)
        self.written = np.zeros(num_nodes, dtype=bool)
        self.journal: Any = None
        self.journal_index = -1

    def attach_journal(self, journal: Any, index: int) -> None:
        """Journal writes as table ``index`` of ``journal`` (an :class:`UndoJournal`)."""
        self.journal, self.journal_index = journal, int(index)

    def __call__(self, logits: Tensor, batch: SubgraphBatch) -> Tensor:
        rows = batch.n_id[: batch.batch_size]
        have = self.written[rows]
        if self.weight == 0 or not have.any():
            return logits.new_zeros(())
        prev = torch.empty(batch.batch_size, logits.size(1))
        self.table.read_ranges(batch.ranges, prev)
        mask = torch.from_numpy(have).to(logits.device)
        diff = logits[mask] - prev.to(logits.device)[mask]
        return self.weight * diff.pow(2).sum(dim=1).mean()

    def record(self, logits: Tensor, batch: SubgraphBatch, step: int = 0) -> None:
        rows = np.ascontiguousarray(batch.n_id[: batch.batch_size], dtype=np.int64)
        if self.journal is not None:
            self.journal.before_land([self.journal_index], rows)
        self.table.write(batch.ranges, None, logits.detach().float().cpu().numpy())
        if self.journal is not None:
            self.journal.after_land([self.journal_index], rows, step)
        self.written[rows] = True
