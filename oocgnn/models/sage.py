"""GraphSAGE (Hamilton et al. 2017, mean aggregator) on GAS batches.

Parameters live in PyG ``SAGEConv`` modules (``lin_l`` on the neighbour mean, with
bias; ``lin_r`` on the root, without) so a full-batch ``SAGEConv(aggr='mean')``
model's ``state_dict`` loads unchanged.  The mean over ``batch.edge_index`` (no
self-loops) is one CSR ``torch.sparse.mm`` with weights ``1/in-degree``; the
matrix is built once per batch and cached on it (:func:`mean_adjacency`).
"""
from __future__ import annotations

import torch
from torch import Tensor
from torch_geometric.nn import SAGEConv

from oocgnn.batch import SubgraphBatch
from oocgnn.models.base import GASModel, State, batch_cache


def mean_adjacency(batch: SubgraphBatch) -> Tensor:
    """Row-normalised CSR [B, B+H] of ``batch.edge_index`` (cached per batch).

    Degrees are counted from ``edge_index`` itself (duplicates counted twice, as
    PyG's mean aggregation does); rows without neighbours stay all-zero.
    """
    def build() -> Tensor:
        src, dst = batch.edge_index
        b, n = batch.batch_size, len(batch.n_id)
        count = torch.bincount(dst, minlength=b).clamp_(min=1).to(batch.x.dtype)
        values = count.reciprocal()[dst]
        coo = torch.sparse_coo_tensor(torch.stack([dst, src]), values, (b, n))
        return coo.coalesce().to_sparse_csr()

    return batch_cache(batch, "sage_mean_adj", build)


class SAGE(GASModel):
    """``num_layers`` mean-SAGE convolutions; hidden: conv -> [BN] -> [+x] -> ReLU."""

    uses_edge_index = True

    def __init__(self, in_channels: int, hidden_channels: int, out_channels: int,
                 num_layers: int, dropout: float = 0.5, batch_norm: bool = False,
                 residual: bool = False, drop_input: bool = True) -> None:
        super().__init__(in_channels, hidden_channels, out_channels, num_layers,
                         dropout, batch_norm, residual, drop_input)
        dims = [in_channels] + [hidden_channels] * (num_layers - 1) + [out_channels]
        self.convs = torch.nn.ModuleList(
            SAGEConv(dims[i], dims[i + 1], aggr="mean") for i in range(num_layers))
        self.bns = self._make_norms(self.history_channels)

    def adjacency(self, layer: int, batch: SubgraphBatch) -> Tensor:
        """Sparse [B, B+H] aggregation matrix of ``layer`` (hook for staleness reweighting)."""
        return mean_adjacency(batch)

    def _layer(self, layer: int, x: Tensor, batch: SubgraphBatch, state: State) -> Tensor:
        conv = self.convs[layer]
        b = batch.batch_size
        h = conv.lin_l(torch.sparse.mm(self.adjacency(layer, batch), x))
        if conv.root_weight:
            h = h + conv.lin_r(x[:b])
        if layer == self.num_layers - 1:
            return h
        return self._finish_hidden(layer, h, x)
