"""GCNII (Chen et al. 2020) on GAS batches: initial residual + identity mapping.

Layout as in GNNAutoScale's GCNII: ``lin_in`` -> ReLU (x_0) -> ``num_layers``
``GCN2Conv`` layers (each: conv -> [BN] -> [+x] -> ReLU) -> ``lin_out``.  History
tables follow every conv except the last.  Each conv reads ``x_0`` of the batch
rows, so layer-wise inference recomputes it from ``batch.x`` at every sweep
(``needs_features_every_layer``).  Parameters live in PyG ``GCN2Conv`` modules;
propagation is one CSR ``torch.sparse.mm`` with the batch's GCN ``adj_t``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.nn import GCN2Conv

from oocgnn.batch import SubgraphBatch
from oocgnn.models.base import GASModel, State
from oocgnn.models.propagate import propagate


class GCNII(GASModel):
    """GCNII with ``alpha`` (initial residual) and ``theta`` (identity-mapping decay)."""

    needs_features_every_layer = True
    uses_adj_transpose = True

    def __init__(self, in_channels: int, hidden_channels: int, out_channels: int,
                 num_layers: int, dropout: float = 0.5, batch_norm: bool = False,
                 residual: bool = False, drop_input: bool = True, alpha: float = 0.1,
                 theta: float = 0.5, shared_weights: bool = True) -> None:
        super().__init__(in_channels, hidden_channels, out_channels, num_layers,
                         dropout, batch_norm, residual, drop_input)
        self.lins = torch.nn.ModuleList([torch.nn.Linear(in_channels, hidden_channels),
                                         torch.nn.Linear(hidden_channels, out_channels)])
        self.convs = torch.nn.ModuleList(
            GCN2Conv(hidden_channels, alpha, theta, layer=i + 1,
                     shared_weights=shared_weights, normalize=False)
            for i in range(num_layers))
        self.bns = self._make_norms([hidden_channels] * num_layers)

    def adjacency(self, layer: int, batch: SubgraphBatch) -> Tensor:
        """Sparse [B, B+H] propagation matrix of conv ``layer`` (hook, default ``adj_t``)."""
        return batch.adj_t

    def _prepare(self, x: Tensor, batch: SubgraphBatch) -> tuple[Tensor, State]:
        x = F.dropout(self.input_features(x), self.dropout, self.training and self.drop_input)
        x0 = F.relu(self.lins[0](x))
        return F.dropout(x0, self.dropout, self.training), {"x_0": x0[: batch.batch_size]}

    def _inference_state(self, batch: SubgraphBatch) -> State:
        b = batch.batch_size
        return {"x_0": F.relu(self.lins[0](self.input_features(batch.x[:b])))}

    def _layer(self, layer: int, x: Tensor, batch: SubgraphBatch, state: State) -> Tensor:
        conv = self.convs[layer]
        adj = self.adjacency(layer, batch)
        h = propagate(adj, x, batch.adj_t_T if adj is batch.adj_t else None) * (1.0 - conv.alpha)
        x0 = conv.alpha * state["x_0"]
        beta = float(conv.beta)  # log(theta / layer + 1), set by GCN2Conv
        if conv.weight2 is None:
            h = h + x0
            h = (1.0 - beta) * h + beta * (h @ conv.weight1)
        else:
            h = (1.0 - beta) * h + beta * (h @ conv.weight1)
            h = h + (1.0 - beta) * x0 + beta * (x0 @ conv.weight2)
        h = self._finish_hidden(layer, h, x)
        if layer < self.num_layers - 1:
            return h
        return self.lins[1](F.dropout(h, self.dropout, self.training))

