"""The mini-batch a model sees: in-batch nodes first, then their 1-hop halo.

This is the contract between the subgraph builder / prefetcher (which fill it
from disk) and the models (which only compute).  Models never touch disk or
histories directly: the trainer hands them the halo rows it pulled for every
history layer and writes back the in-batch rows they return.

Local ids: rows ``0..batch_size-1`` are the in-batch nodes (store ids
``n_id[:batch_size]``, ascending, made of a few contiguous partition ranges);
rows ``batch_size..`` are the halo (out-of-batch neighbours) in first-seen order.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch


@dataclass
class SubgraphBatch:
    """One GAS mini-batch, already on the compute device.

    Attributes:
        n_id: [B+H] int64 store ids, batch first then halo (CPU numpy).
        batch_size: B.
        ranges: contiguous store-id ranges ``(start, stop)`` covering the batch rows.
        x: [B+H, F] float32 input features of batch and halo rows.
        adj_t: [B, B+H] sparse CSR float32: GCN-normalised adjacency rows of the
            batch nodes *with* self-loops, weights ``1/sqrt(deg_i deg_j)`` from
            **global** degrees (deg counts the self-loop), so a batch holding the
            whole graph equals a full-batch GCN.
        edge_index: [2, nnz] int64 local (source=col, target=row) edges into the
            batch rows, **without** self-loops; for GAT / SAGE style convolutions.
            None when the model does not read it (``GASModel.uses_edge_index``).
        deg: [B] float32 in-degree (without self-loop) of each batch row; all of a
            batch row's neighbours are present, so this is the global degree.
        y: [B] int64 labels of batch rows (-1 = none).
        train_mask: [B] bool, batch rows that belong to the training split.
        halo_hist: per history layer ``l`` (``num_layers - 1`` of them) the pulled
            rows ``[H, hidden]`` float32 for the halo, no grad; filled by the trainer.
        hist_age: per history layer, [H] int64 optimizer steps since each halo row
            was last pushed (-1 = never written); for staleness-aware models.
        adj_t_T: [B+H, B] sparse CSR, the transpose of ``adj_t`` (training batches of
            models with ``uses_adj_transpose``), else None.
        train_index: [L] int64 positions of the batch rows in the training split (the ``True``
            entries of ``train_mask``, taken on the host), or None.  ``logits[train_index]``
            selects what ``logits[train_mask]`` does without a device-to-host sync.
        num_labelled: L, counted on the host (None: count ``train_mask``).
        release_staging: ``release_staging(part, held)``, called inside
            :func:`oocgnn.staging.saved_storages`, hands the staging buffers back to the
            loader: ``"x"`` (after the input layer) those of ``x``, ``"all"`` (after the forward
            pass) also those of ``halo_hist``, unless autograd saved for backward, or
            ``held`` (tensors the pass still reads) holds, a tensor living in them.  True if
            they went back, after which they must not be read.  None: not offered.
    """

    n_id: np.ndarray
    batch_size: int
    ranges: list[tuple[int, int]]
    x: torch.Tensor
    adj_t: torch.Tensor
    edge_index: torch.Tensor | None
    deg: torch.Tensor
    y: torch.Tensor
    train_mask: torch.Tensor
    halo_hist: list[torch.Tensor] = field(default_factory=list)
    hist_age: list[torch.Tensor] = field(default_factory=list)
    adj_t_T: torch.Tensor | None = None
    train_index: torch.Tensor | None = None
    num_labelled: int | None = None
    release_staging: Callable[[str, list], bool] | None = None

    @property
    def num_halo(self) -> int:
        return int(len(self.n_id) - self.batch_size)

    @property
    def halo_ids(self) -> np.ndarray:
        return self.n_id[self.batch_size:]
