"""The contract between a dataset source and the store builder.

A source streams one graph in its *original* node ids.  The builder
(:mod:`oocgnn.prepare.pipeline`) never needs more than one block of anything in
RAM: it consumes edges and features as iterators of blocks, builds the CSR out of
core, partitions, reorders, and writes the store.  Each iterator may be called
several times (a resumed build restarts a stage), so it must yield the same data
each time.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Protocol

import numpy as np


@dataclass
class SourceInfo:
    """What the builder must know before streaming starts."""

    name: str                      #: e.g. "ogbn-papers100M", "synthetic", "pyg:Planetoid/Cora"
    num_nodes: int
    num_features: int
    num_classes: int
    feature_dtype: str             #: dtype the source yields (the store may cast)
    num_edges_hint: int = 0        #: directed edges the source will yield (for progress bars)
    directed: bool = True          #: whether the source's edge list is directed
    ogb_evaluator: str | None = None   #: name for ogb.nodeproppred.Evaluator, if any
    split_note: str = ""           #: e.g. "public split", "seeded random split (seed 0)"
    #: "multiclass": labels() is [N] int64, -1 = unlabelled, classes in [0, num_classes);
    #: "multilabel": labels() is [N, num_classes] float32 of 0/1, NaN = unknown (num_classes = T targets)
    task: str = "multiclass"
    extra: dict[str, Any] = field(default_factory=dict)  #: recorded verbatim in the manifest


class GraphSource(Protocol):
    """Streams one graph.  All ids are original (source) node ids, int64."""

    def info(self) -> SourceInfo:
        """Counts and dtypes; cheap (reads headers only)."""

    def fingerprint(self) -> dict[str, Any]:
        """Identity of the inputs (paths, sizes, mtimes, generator options).

        Two builds with equal fingerprints (and equal builder options) must produce
        identical stores; a resumed build checks it.
        """

    def iter_edges(self, block_edges: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(src, dst)`` int64 arrays of at most ``block_edges`` edges each.

        Raises :class:`oocgnn.errors.InputError` naming the file on a truncated or
        corrupted input.  Out-of-range ids are checked by the builder.
        """

    def iter_features(self, block_rows: int) -> Iterator[np.ndarray]:
        """Yield consecutive row blocks ``[b, F]`` of the features in original order."""

    def labels(self) -> np.ndarray:
        """[N] int64 labels, -1 where unlabelled (NaN / -1 in OGB files); for ``info().task ==
        "multilabel"`` a float32 ``[N, T]`` array of 0/1 with NaN where a target is unknown."""

    def splits(self) -> dict[str, np.ndarray]:
        """``{"train": ids, "valid": ids, "test": ids}`` in original ids (int64)."""

    def prepare_scratch(self, workdir: Path) -> None:
        """Optional: derive inputs into ``workdir`` (e.g. MAG240M author features).

        Called once before streaming; must be resumable (skip work already done).

        Optional extras the builder looks for with ``getattr``: a bool attribute
        ``cheap_feature_rereads`` (features re-read at file speed, so the feature
        stage may read them twice instead of writing bucket files) and ``close()``
        (stop background work such as a spill thread), and a str attribute ``feature_input``
        naming the features' file in errors (e.g. the first row holding NaN).
        """
