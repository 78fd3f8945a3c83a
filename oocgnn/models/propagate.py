"""``adj @ x`` whose backward needs no sort: the batch brings its adjacency transposed.

Training backpropagates through ``torch.sparse.mm(adj_t, x)`` of every layer whose input
needs a gradient.  torch computes that gradient as ``adj_t.t() @ grad``, turning the
transposed (CSC) matrix back into CSR with a sort of every edge on the training thread:
2.0–2.9 s of a 6.6 M-edge batch of the billion-edge store on this box, the largest item
of a step.  The prefetcher builds the transpose while it prepares the batch
(:meth:`oocgnn.subgraph.SubgraphStructure.transpose`, one counting pass on its thread),
so the backward is one CSR ``sparse.mm``: 0.8 s there, and the same values (rows of the
transpose keep the original row order, as torch's conversion does).
"""
from __future__ import annotations

import torch
from torch import Tensor


class _PropagateCSR(torch.autograd.Function):
    """``adj @ x`` (``adj`` CSR [B, N], no grad) with gradient ``adj_T @ grad`` (``adj_T`` CSR [N, B])."""

    @staticmethod
    def forward(ctx, adj: Tensor, adj_T: Tensor, x: Tensor) -> Tensor:  # type: ignore[override]
        ctx.adj_T = adj_T
        return torch.sparse.mm(adj, x)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        return None, None, torch.sparse.mm(ctx.adj_T, grad.contiguous())


def propagate(adj: Tensor, x: Tensor, adj_T: Tensor | None = None) -> Tensor:
    """``adj @ x``; ``adj_T``, the transpose of ``adj`` when known, makes the backward a plain CSR product."""
    if adj_T is not None and x.requires_grad and torch.is_grad_enabled():
        return _PropagateCSR.apply(adj, adj_T, x)
    return torch.sparse.mm(adj, x)
