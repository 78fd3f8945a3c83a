"""GAT (Velickovic et al. 2018) on GAS batches, with a hook for attention-logit bias.

Each layer is PyG ``GATConv`` math on the bipartite graph ``(x_all, x_all[:B])``
over ``batch.edge_index`` plus explicit self-loops ``i -> i`` (i < B).  We keep
``GATConv`` modules for the parameters (names and initialisation identical, so a
full-batch model's ``state_dict`` loads) but compute the attention ourselves:
``GATConv`` gives no way to adjust logits, and VISAGNN's dynamic staleness
attention needs ``e'_ij = e_ij - gamma(t) s_j sigma(c_j - c)`` on halo edges.
:meth:`GAT.attention_bias` is that hook (None here).  Edge-level tensors are fine:
per-batch edge counts are small.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.nn import GATConv
from torch_geometric.utils import scatter, softmax

from oocgnn.batch import SubgraphBatch
from oocgnn.models.base import GASModel, State, batch_cache


def gat_edges(batch: SubgraphBatch) -> Tensor:
    """[2, nnz + B] local edges: ``batch.edge_index`` first, then self-loops of batch rows.

    This order defines the rows of :meth:`GAT.attention_bias`.  Cached per batch.
    """
    def build() -> Tensor:
        loops = torch.arange(batch.batch_size, device=batch.edge_index.device)
        return torch.cat([batch.edge_index, torch.stack([loops, loops])], dim=1)

    return batch_cache(batch, "gat_edges", build)


def gat_attention(conv: GATConv, x_all: Tensor, num_dst: int, edges: Tensor,
                  bias: Tensor | None, training: bool) -> Tensor:
    """``GATConv`` forward (shared ``lin``, no edge features) with an additive logit bias.

    ``bias`` ([E] or [E, heads]) is added after the LeakyReLU, before the softmax
    over each target's incoming edges.
    """
    heads, channels = conv.heads, conv.out_channels
    xs = conv.lin(x_all).view(-1, heads, channels)
    a_src = (xs * conv.att_src).sum(dim=-1)
    a_dst = (xs[:num_dst] * conv.att_dst).sum(dim=-1)
    src, dst = edges[0], edges[1]
    logits = F.leaky_relu(a_src[src] + a_dst[dst], conv.negative_slope)
    if bias is not None:
        logits = logits + (bias.unsqueeze(-1) if bias.dim() == 1 else bias)
    alpha = softmax(logits, dst, num_nodes=num_dst)
    alpha = F.dropout(alpha, p=conv.dropout, training=training)
    out = scatter(alpha.unsqueeze(-1) * xs[src], dst, dim=0, dim_size=num_dst, reduce="sum")
    out = out.reshape(num_dst, heads * channels) if conv.concat else out.mean(dim=1)
    if conv.bias is not None:
        out = out + conv.bias
    return out


class GAT(GASModel):
    """GAT with ``heads`` concatenated heads in hidden layers (ELU), ``out_heads`` averaged last.

    History tables are ``hidden_channels * heads`` wide.  ``attn_dropout`` is the
    dropout on attention coefficients (GATConv's ``dropout``).
    """

    uses_edge_index = True

    def __init__(self, in_channels: int, hidden_channels: int, out_channels: int,
                 num_layers: int, dropout: float = 0.5, batch_norm: bool = False,
                 residual: bool = False, drop_input: bool = True, heads: int = 1,
                 out_heads: int = 1, attn_dropout: float = 0.0) -> None:
        super().__init__(in_channels, hidden_channels, out_channels, num_layers,
                         dropout, batch_norm, residual, drop_input)
        self.heads, self.out_heads = int(heads), int(out_heads)
        width = hidden_channels * self.heads
        self.history_channels = [width] * (num_layers - 1)
        convs = []
        for i in range(num_layers):
            last = i == num_layers - 1
            convs.append(GATConv(in_channels if i == 0 else width,
                                 out_channels if last else hidden_channels,
                                 heads=self.out_heads if last else self.heads,
                                 concat=not last, dropout=attn_dropout,
                                 add_self_loops=False))
        self.convs = torch.nn.ModuleList(convs)
        self.bns = self._make_norms(self.history_channels)

    def attention_bias(self, layer: int, batch: SubgraphBatch) -> Tensor | None:
        """Additive bias on the attention logits of layer ``layer``, or None.

        Rows follow :func:`gat_edges` (``batch.edge_index`` then B self-loops), shape
        [E] or [E, heads].  VISAGNN overrides this to return ``-gamma * s_j * ...``
        for halo sources (``src >= B``) and 0 elsewhere.
        """
        return None

    def _layer(self, layer: int, x: Tensor, batch: SubgraphBatch, state: State) -> Tensor:
        h = gat_attention(self.convs[layer], x, batch.batch_size, gat_edges(batch),
                          self.attention_bias(layer, batch), self.training)
        if layer == self.num_layers - 1:
            return h
        return self._finish_hidden(layer, h, x, act=F.elu)
