"""GCN (Kipf & Welling 2017) on GAS batches, propagated with CSR ``torch.sparse.mm``.

Parameters live in PyG ``GCNConv`` modules (``convs.{i}.lin.weight``,
``convs.{i}.bias``) so a full-batch PyG model's ``state_dict`` loads unchanged and
the initialisation is GCNConv's.  We do not call ``GCNConv.forward``: the batch
already carries the normalised bipartite adjacency ``adj_t`` [B, B+H] (global
degrees, self-loops), and one ``torch.sparse.mm`` never materialises E x C
messages (see shared/design/machine-facts.md).
"""
from __future__ import annotations

import torch
from torch import Tensor
from torch_geometric.nn import GCNConv

from oocgnn.batch import SubgraphBatch
from oocgnn.models.base import GASModel, State
from oocgnn.models.propagate import propagate


def linear_then_propagate(adj: Tensor, x: Tensor, lin: torch.nn.Module, adj_T: Tensor | None = None) -> Tensor:
    """``adj @ lin(x)`` computed in the cheaper order (lin is linear, bias-free).

    Propagating first is cheaper unless the layer grows the width: the product then
    runs on the B batch rows, not on all B+H rows (at equal widths, ~4x fewer rows on
    the billion-edge store); both are the same function.
    """
    if lin.in_channels >= lin.out_channels:
        return lin(propagate(adj, x, adj_T))
    return propagate(adj, lin(x), adj_T)


class GCN(GASModel):
    """``num_layers`` GCN convolutions; hidden layers: conv -> [BN] -> [+x] -> ReLU."""

    uses_adj_transpose = True

    def __init__(self, in_channels: int, hidden_channels: int, out_channels: int,
                 num_layers: int, dropout: float = 0.5, batch_norm: bool = False,
                 residual: bool = False, drop_input: bool = True) -> None:
        super().__init__(in_channels, hidden_channels, out_channels, num_layers,
                         dropout, batch_norm, residual, drop_input)
        dims = [in_channels] + [hidden_channels] * (num_layers - 1) + [out_channels]
        self.convs = torch.nn.ModuleList(
            GCNConv(dims[i], dims[i + 1], normalize=False) for i in range(num_layers))
        self.bns = self._make_norms(self.history_channels)

    def adjacency(self, layer: int, batch: SubgraphBatch) -> Tensor:
        """Sparse [B, B+H] propagation matrix of ``layer``.

        Hook for staleness-aware variants (VISAGNN on a GCN backbone reweights halo
        edges and renormalises rows); the default is the batch's GCN ``adj_t``.
        """
        return batch.adj_t

    def _layer(self, layer: int, x: Tensor, batch: SubgraphBatch, state: State) -> Tensor:
        conv = self.convs[layer]
        adj = self.adjacency(layer, batch)
        h = linear_then_propagate(adj, x, conv.lin, batch.adj_t_T if adj is batch.adj_t else None)
        if conv.bias is not None:
            h = h + conv.bias
        if layer == self.num_layers - 1:
            return h
        return self._finish_hidden(layer, h, x)
