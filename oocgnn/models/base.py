"""The GAS model contract: pure compute over one :class:`SubgraphBatch`.

Models never touch disk or history tables.  The trainer pulls the halo rows of
every history table into ``batch.halo_hist[l]`` and writes back ``pushes[l]``.
Every model here follows the same layer template (GNNAutoScale, Fey et al. 2021)::

    x = dropout(batch.x)                              # rows B+H, real features
    for l in 0..L-1:
        h = layer_l(x, batch)                         # rows B only, after norm/act
        if l is last: return h, pushes                # h = logits
        pushes[l] = h.detach()                        # table l <- h (before dropout)
        x = dropout(cat([h, batch.halo_hist[l]]))     # rows B+H again

so a batch holding the whole graph (H = 0) is exactly a full-batch model, and a
batch whose halo rows hold exact embeddings gives exact logits.  Halo tensors are
*not* detached: the trainer may hand leaf tensors with ``requires_grad=True`` to
measure the gradient norm of pulled rows (staleness metrics).

Subclasses implement :meth:`_layer` (and optionally :meth:`_prepare` /
:meth:`_inference_state` when layers need more than the previous layer, e.g.
GCNII's initial residual).
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from oocgnn.batch import SubgraphBatch
from oocgnn.errors import ConfigError
from oocgnn.models.dropout import DropoutBuffers, dropout

State = dict[str, Tensor]


def batch_cache(batch: SubgraphBatch, key: str, build: Callable[[], Any]) -> Any:
    """Return ``build()`` memoised on ``batch`` (per key, invalidated if ``edge_index`` changes).

    Derived per-batch structures (row-normalised CSR for SAGE, edges with self-loops
    for GAT) are built once per batch rather than once per layer or per REST
    refresh pass.  Stored in the instance ``__dict__`` so it is not a dataclass
    field: ``dataclasses.replace`` / ``fields`` never see it.  Built outside
    inference mode so a structure first made by a forward-only (REST) pass can
    still be saved for backward by a later training step on the same batch.
    """
    cache = batch.__dict__.setdefault("_oocgnn_model_cache", {})
    hit = cache.get(key)
    if hit is not None and hit[0] is batch.edge_index:
        return hit[1]
    with torch.inference_mode(False):  # usable by a later training step on the same batch
        value = build()
    cache[key] = (batch.edge_index, value)
    return value


class GASModel(torch.nn.Module):
    """Base of all oocgnn GNNs: the GAS forward template and layer-wise inference.

    Attributes:
        num_layers: message-passing layers (history tables: ``num_layers - 1``).
        history_channels: width of each history table.
        needs_features_every_layer: True when every layer reads ``batch.x`` (GCNII's
            initial residual), so layer-wise inference must load features at every sweep.
        uses_edge_index: True when the layers read ``batch.edge_index`` (GAT, SAGE); the
            prefetcher builds it only then (None otherwise).
    """

    needs_features_every_layer: bool = False
    #: the layers read ``batch.edge_index`` (16 bytes per edge, built per batch only when True)
    uses_edge_index: bool = False
    #: the layers propagate with ``batch.adj_t`` and take its transpose for the backward
    #: (:mod:`oocgnn.models.propagate`; 8 bytes per edge, built by the prefetcher only when True)
    uses_adj_transpose: bool = False

    def __init__(self, in_channels: int, hidden_channels: int, out_channels: int,
                 num_layers: int, dropout: float = 0.5, batch_norm: bool = False,
                 residual: bool = False, drop_input: bool = True) -> None:
        super().__init__()
        for name, value in (("in_channels", in_channels), ("hidden_channels", hidden_channels),
                            ("out_channels", out_channels), ("num_layers", num_layers)):
            if int(value) < 1:
                raise ConfigError(f"model option {name}={value} must be >= 1")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"model option dropout={dropout} must be in [0, 1)")
        self.in_channels = int(in_channels)
        self.hidden_channels = int(hidden_channels)
        self.out_channels = int(out_channels)
        self.num_layers = int(num_layers)
        self.dropout = float(dropout)
        self.batch_norm = bool(batch_norm)
        self.residual = bool(residual)
        self.drop_input = bool(drop_input)
        #: row-normalise input features (set by the trainer from ``--normalize-features``)
        self.normalize_features = False
        self.history_channels: list[int] = [self.hidden_channels] * (self.num_layers - 1)
        #: reused dropout mask/output buffers (oocgnn.models.dropout): not parameters, not state
        self._drop_bufs = DropoutBuffers()

    @property
    def num_inference_layers(self) -> int:
        """How many :meth:`forward_layer` sweeps make a full inference."""
        return self.num_layers

    # ----------------------------------------------------------------- public API
    def forward(self, batch: SubgraphBatch) -> tuple[Tensor, list[Tensor]]:
        """Training/eval forward on one batch.

        Returns ``(logits [B, out], pushes)`` where ``pushes[l]`` is table ``l``'s new
        value for the batch rows ``[B, history_channels[l]]`` (detached).
        """
        halo = self._halo_inputs(batch)
        x, state = self._prepare(batch.x, batch)
        if batch.release_staging is not None:  # the input rows are read: the loader may refill them
            batch.release_staging("x", [x, *state.values()])
        pushes: list[Tensor] = []
        for layer in range(self.num_layers):
            h = self._layer(layer, x, batch, state)
            if layer == self.num_layers - 1:
                return h, pushes
            pushes.append(h.detach())
            x = dropout([h, halo[layer]], self.dropout, self.training, self._drop_bufs, f"hidden{layer}")
        raise AssertionError("unreachable")

    def forward_layer(self, layer: int, x_all: Tensor, batch: SubgraphBatch) -> Tensor:
        """One layer-wise inference step (call in eval/inference mode).

        ``x_all`` [B+H, in] holds the inputs of ``layer`` for batch and halo rows:
        features for layer 0, table ``layer-1`` rows otherwise.  Returns [B, out]:
        table ``layer``'s value for the batch rows, or logits for the last layer.
        """
        if not 0 <= layer < self.num_inference_layers:
            raise ValueError(f"layer {layer} out of range [0, {self.num_inference_layers})")
        if x_all.size(0) != len(batch.n_id):
            raise ValueError(f"x_all has {x_all.size(0)} rows, batch has {len(batch.n_id)} (B+H)")
        if layer == 0:
            x, state = self._prepare(x_all, batch)
        else:
            x = F.dropout(x_all, self.dropout, self.training)
            state = self._inference_state(batch)
        return self._layer(layer, x, batch, state)

    def release_buffers(self) -> None:
        """Free the dropout buffers training keeps between steps (the next training step allocates them)."""
        self._drop_bufs.clear()

    def first_layer_parameters(self) -> list[torch.nn.Parameter]:
        """Parameters of the first layer (its conv or input linear, and its norm).

        GAS applies its regularising weight decay to these only (``--weight-decay``);
        the rest get ``--weight-decay-rest``.
        """
        first = self.lins if isinstance(getattr(self, "lins", None), torch.nn.ModuleList) else self.convs
        modules = [first[0]] + ([self.bns[0]] if self.batch_norm and len(self.bns) else [])
        return [p for m in modules for p in m.parameters()]

    def reset_parameters(self) -> None:
        """Re-initialise every submodule that knows how (convs, linears, norms)."""
        for module in self.modules():
            if module is not self and hasattr(module, "reset_parameters"):
                module.reset_parameters()

    # ------------------------------------------------------------ subclass hooks
    def _prepare(self, x: Tensor, batch: SubgraphBatch) -> tuple[Tensor, State]:
        """Layer-0 input from the features of all B+H rows (and any cross-layer state).

        The last reader of ``batch.x`` in a training forward: :meth:`forward` then hands the
        input rows back to the loader (unless its output or state lives in them).
        """
        return dropout([self.input_features(x)], self.dropout, self.training and self.drop_input, self._drop_bufs,
                       "input"), {}

    def input_features(self, x: Tensor) -> Tensor:
        """Feature rows as the first layer sees them: row-normalised (sum 1) with ``normalize_features``.

        A row's normalisation depends on that row alone, so doing it per batch equals
        normalising the stored matrix once (Kipf & Welling and GAS do it on Planetoid).
        """
        if not self.normalize_features:
            return x
        return x / x.sum(dim=-1, keepdim=True).clamp_(min=1e-12)

    def _inference_state(self, batch: SubgraphBatch) -> State:
        """Cross-layer state for :meth:`forward_layer` at layers > 0 (none by default)."""
        return {}

    def _layer(self, layer: int, x: Tensor, batch: SubgraphBatch, state: State) -> Tensor:
        """Compute layer ``layer`` for the B batch rows from inputs ``x`` of B+H rows."""
        raise NotImplementedError

    # ------------------------------------------------------------------- helpers
    def _make_norms(self, channels: list[int]) -> torch.nn.ModuleList:
        """BatchNorm1d per entry when ``batch_norm`` (statistics over batch rows only)."""
        if not self.batch_norm:
            return torch.nn.ModuleList()
        return torch.nn.ModuleList(torch.nn.BatchNorm1d(c) for c in channels)

    def _finish_hidden(self, layer: int, h: Tensor, x: Tensor,
                       act: Callable[[Tensor], Tensor] = F.relu) -> Tensor:
        """Norm, optional residual (when widths match) and activation of a hidden layer."""
        if self.batch_norm:
            h = self.bns[layer](h)
        if self.residual and h.size(-1) == x.size(-1):
            h = h + x[: h.size(0)]
        return act(h)

    def _halo_inputs(self, batch: SubgraphBatch) -> list[Tensor]:
        """Validated halo rows per table, cast to the feature dtype/device (grad kept)."""
        num_halo = batch.num_halo
        tables = len(self.history_channels)
        hist = list(batch.halo_hist)
        if not hist and num_halo == 0:
            hist = [batch.x.new_zeros(0, c) for c in self.history_channels]
        if len(hist) != tables:
            raise ValueError(f"batch.halo_hist has {len(hist)} tables, model needs {tables}")
        out = []
        for layer, (t, c) in enumerate(zip(hist, self.history_channels)):
            if tuple(t.shape) != (num_halo, c):
                raise ValueError(f"batch.halo_hist[{layer}] has shape {tuple(t.shape)}, "
                                 f"expected ({num_halo}, {c})")
            out.append(t.to(device=batch.x.device, dtype=batch.x.dtype))
        return out
