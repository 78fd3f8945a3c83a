"""GNN models for GAS training: pure compute over a :class:`~oocgnn.batch.SubgraphBatch`.

``build_model(name, ...)`` is the single entry point the trainer and CLI use;
``name`` is one of :data:`MODEL_NAMES`.  See :mod:`oocgnn.models.base` for the
contract (forward / forward_layer / history_channels).
"""
from __future__ import annotations

import inspect
from typing import Any

from oocgnn.errors import ConfigError
from oocgnn.models.base import GASModel, batch_cache
from oocgnn.models.gat import GAT
from oocgnn.models.gcn import GCN
from oocgnn.models.gcnii import GCNII
from oocgnn.models.sage import SAGE

_REGISTRY: dict[str, type[GASModel]] = {"gcn": GCN, "sage": SAGE, "gat": GAT, "gcnii": GCNII}
MODEL_NAMES: tuple[str, ...] = tuple(_REGISTRY)


def build_model(name: str, in_channels: int, hidden_channels: int, out_channels: int,
                num_layers: int, dropout: float = 0.5, batch_norm: bool = False,
                **kwargs: Any) -> GASModel:
    """Construct model ``name`` (gcn|sage|gat|gcnii); extra options go to its constructor.

    Common extras: ``residual``, ``drop_input``; GAT: ``heads``, ``out_heads``,
    ``attn_dropout``; GCNII: ``alpha``, ``theta``, ``shared_weights``.
    """
    cls = _REGISTRY.get(str(name).lower())
    if cls is None:
        raise ConfigError(f"unknown model {name!r}: choose one of {', '.join(MODEL_NAMES)}")
    args = (in_channels, hidden_channels, out_channels, num_layers)
    options = dict(dropout=dropout, batch_norm=batch_norm, **kwargs)
    try:
        inspect.signature(cls).bind(*args, **options)
    except TypeError as exc:  # unknown keyword for this model
        raise ConfigError(f"bad option for model {name!r}: {exc}") from None
    return cls(*args, **options)


__all__ = ["GASModel", "GCN", "SAGE", "GAT", "GCNII", "MODEL_NAMES", "batch_cache",
           "build_model"]
