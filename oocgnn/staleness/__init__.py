"""Staleness control on top of the GAS trainer: REST, REST-IS, VISAGNN and metrics.

* :mod:`~oocgnn.staleness.schedule`: which batches train and which only refresh
  histories (REST ``extra`` / ``interleave`` loops), deterministic for a seed.
* :mod:`~oocgnn.staleness.importance`: REST-IS static node importance and the
  importance x age sampler of refresh batches (our design, see its docstring).
* :mod:`~oocgnn.staleness.visagnn`: staleness-aware models (attention bias, edge
  reweighting, augmented embeddings, halo-edge dropping) and the staleness loss.
* :mod:`~oocgnn.staleness.metrics`: per-history-layer staleness metrics.
* :mod:`~oocgnn.staleness.control`: the object the trainer calls at a few hooks.
"""
from __future__ import annotations

from oocgnn.config import METHODS, REST_LOOPS

__all__ = ["METHODS", "REST_LOOPS"]
