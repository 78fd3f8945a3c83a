"""A DGL GraphBolt ``OnDiskDataset`` folder as a :class:`~oocgnn.prepare.source.GraphSource`.

Why: GraphBolt's folder layout is how DGL users already keep a large graph on disk;
``oocgnn prepare ondisk --root DIR`` takes it as it is.  The folder is described by
``DIR/metadata.yaml`` (DGL's published specification, "YAML specification" of
``OnDiskDataset``); GraphBolt's own ``preprocessed/`` folder (a fused CSC graph
and a rewritten ``metadata.yaml``) is never read.

Supported, all paths relative to ``DIR``::

    graph:
      nodes: [{num: N}]                                   # one entry, no type
      edges: [{format: csv|numpy, path: ...}]             # headerless "src,dst" csv, or numpy (2, E)
    feature_data:
      - {domain: node, name: feat, format: numpy, path: ...}   # [N, F]; other features are ignored
    tasks:                                                 # exactly one node-classification task
      - name: ...                                          # num_classes optional (else max label + 1)
        train_set:      [{data: [{name: seeds, format: numpy, path: ...}, {name: labels, ...}]}]
        validation_set: [...]
        test_set:       [...]

``seed_nodes`` (GraphBolt < 2.1) is read as ``seeds``.  Labels ``[n]`` / ``[n, 1]``
are classes; ``[n, T]`` with T > 1 are 0/1 multi-label targets (NaN = unknown).
Nodes in no set are unlabelled.  Typed (heterogeneous) entries, link prediction
(``node_pairs``, 2-D ``seeds``), several tasks or ``torch`` files get one line
saying what is supported.  Edges and features are read as ``prepare arrays``
reads them (:mod:`oocgnn.prepare.sources.arrays`).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from oocgnn.errors import InputError, InputNotFoundError
from oocgnn.prepare.source import SourceInfo
from oocgnn.prepare.sources.arrays import (EdgeInput, FeatureInput, FileGraphSource, file_identity,
                                           labels_from_array, npy_header, split_ids)

log = logging.getLogger(__name__)

SUPPORTED = ("one untyped 'nodes' and 'edges' entry (edges csv or numpy (2, E)), node feature 'feat' (numpy), "
             "and one node-classification task whose train/validation/test sets hold 'seeds' and 'labels' (numpy)")
SETS = {"train": "train_set", "valid": "validation_set", "test": "test_set"}


class OnDiskSource(FileGraphSource):
    """Streams the GraphBolt ``OnDiskDataset`` folder ``root`` (see the module docstring)."""

    def __init__(self, root: str | os.PathLike, progress: bool = False) -> None:
        self.dir = Path(root).expanduser()
        self.meta_path = self.dir / "metadata.yaml"
        meta = self._read_yaml()
        graph = meta.get("graph")
        if not isinstance(graph, dict):
            hint = (" (this is GraphBolt's preprocessed metadata; point --root at the original dataset folder)"
                    if "graph_topology" in meta else "")
            self._unsupported(f"no 'graph' entry{hint}")
        nodes, edges = self._single(graph, "nodes"), self._single(graph, "edges")
        num_nodes = nodes.get("num")
        if not isinstance(num_nodes, int) or num_nodes < 1:
            self._unsupported(f"graph.nodes[0].num is {num_nodes!r}, expected a positive integer")
        fmt_ = edges.get("format")
        if fmt_ not in ("csv", "numpy") or not isinstance(edges.get("path"), str):
            self._unsupported(f"graph.edges[0] has format {fmt_!r} and path {edges.get('path')!r}")
        edge_path = self.dir / edges["path"]
        feats = FeatureInput(self._data_path(self._feat_entry(meta), "feature_data 'feat'"),
                             f"{self.meta_path} feature 'feat'")
        if feats.num_nodes != num_nodes:
            raise InputError(f"{feats.path} has {feats.num_nodes} rows but {self.meta_path} says graph.nodes num "
                             f"{num_nodes}: feature rows and node count differ")
        super().__init__(EdgeInput(edge_path, f"{self.meta_path} edges", num_nodes,
                                   f"graph.nodes num in {self.meta_path.name}", is_csv=fmt_ == "csv"), feats, progress)
        self.dataset_name = str(meta.get("dataset_name") or self.dir.name)
        self.task_meta = self._task(meta)
        self.sets = {k: self._set_files(self.task_meta, key) for k, key in SETS.items()}
        for k, files in self.sets.items():  # headers now, before the builder touches --out
            seeds = npy_header(files["seeds"], f"{self.meta_path} {SETS[k]} seeds")
            if len(seeds.shape) == 2 and seeds.shape[1] == 2:
                self._unsupported(f"{SETS[k]} seeds {files['seeds']} are node pairs {seeds.shape} (link prediction)")
            labels = npy_header(files["labels"], f"{self.meta_path} {SETS[k]} labels")
            if labels.shape[:1] != seeds.shape[:1]:
                rows = labels.shape[0] if labels.shape else 0
                raise InputError(f"{self.meta_path} {SETS[k]} labels {files['labels']} has {rows} rows for "
                                 f"{seeds.shape[0] if seeds.shape else 0} seeds; a set needs one label row per seed")

    # -- metadata.yaml -------------------------------------------------------------
    def _unsupported(self, problem: str) -> NoReturn:
        raise InputError(f"{self.meta_path}: {problem}; oocgnn prepare ondisk supports {SUPPORTED}")

    def _read_yaml(self) -> dict[str, Any]:
        import yaml

        if not self.meta_path.is_file():
            raise InputNotFoundError(f"{self.meta_path} does not exist; --root must be a GraphBolt OnDiskDataset "
                                     f"folder holding metadata.yaml")
        try:
            meta = yaml.safe_load(self.meta_path.read_text())
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            detail = " ".join(str(exc).split())
            raise InputError(f"{self.meta_path} is not valid YAML ({detail}); fix or regenerate it") from None
        if not isinstance(meta, dict):
            raise InputError(f"{self.meta_path} holds {type(meta).__name__}, expected a mapping with graph, "
                             f"feature_data and tasks")
        return meta

    def _single(self, graph: dict, key: str) -> dict[str, Any]:
        entries = graph.get(key)
        if not isinstance(entries, list) or len(entries) != 1 or not isinstance(entries[0], dict):
            n = len(entries) if isinstance(entries, list) else 0
            self._unsupported(f"graph.{key} has {n} entries (a heterogeneous graph, or none)")
        if entries[0].get("type") is not None:
            self._unsupported(f"graph.{key}[0] has type {entries[0]['type']!r} (a heterogeneous graph)")
        return entries[0]

    def _data_path(self, entry: dict, what: str) -> Path:
        if entry.get("format") != "numpy":
            self._unsupported(f"{what} has format {entry.get('format')!r}; save it with numpy.save")
        if not isinstance(entry.get("path"), str):
            self._unsupported(f"{what} has no path")
        return self.dir / entry["path"]

    def _feat_entry(self, meta: dict) -> dict:
        found = [f for f in meta.get("feature_data") or [] if isinstance(f, dict) and f.get("domain") == "node"
                 and f.get("name") == "feat"]
        if len(found) != 1:
            self._unsupported(f"{len(found)} node features named 'feat' in feature_data")
        if found[0].get("type") is not None:
            self._unsupported(f"node feature 'feat' has type {found[0]['type']!r} (a heterogeneous graph)")
        return found[0]

    def _task(self, meta: dict) -> dict:
        tasks = meta.get("tasks")
        if not isinstance(tasks, list) or len(tasks) != 1 or not isinstance(tasks[0], dict):
            self._unsupported(f"{len(tasks) if isinstance(tasks, list) else 0} tasks")
        return tasks[0]

    def _set_files(self, task: dict, key: str) -> dict[str, Path]:
        """``{"seeds": path, "labels": path}`` of one of the task's sets."""
        entries = task.get(key)
        name = f"task {task.get('name', 0)!r} {key}"
        if not isinstance(entries, list) or len(entries) != 1 or not isinstance(entries[0], dict):
            self._unsupported(f"{name} has {len(entries) if isinstance(entries, list) else 0} entries")
        if entries[0].get("type") is not None:
            self._unsupported(f"{name} has type {entries[0]['type']!r} (a heterogeneous graph)")
        data = {d.get("name"): d for d in entries[0].get("data") or [] if isinstance(d, dict)}
        if "seeds" not in data and "seed_nodes" in data:
            data["seeds"] = data.pop("seed_nodes")
        if "node_pairs" in data or "seeds" not in data or "labels" not in data:
            self._unsupported(f"{name} holds {sorted(map(str, data))} (not node classification)")
        return {k: self._data_path(data[k], f"{name} {k}") for k in ("seeds", "labels")}

    # -- labels and splits ----------------------------------------------------------
    def read_labels(self) -> tuple[np.ndarray, str, int]:
        labels, _, task, classes = self._read_sets()
        return labels, task, classes

    def _read_sets(self) -> tuple[np.ndarray, dict[str, np.ndarray], str, int]:
        """(labels of every node, seeds per split, task, num_classes), read from the task's sets."""
        n = self.feats.num_nodes
        seeds: dict[str, np.ndarray] = {}
        parts: dict[str, tuple[np.ndarray, str, int]] = {}
        for k, files in self.sets.items():
            where = f"{self.meta_path} {SETS[k]}"
            seeds[k] = split_ids(np.load(files["seeds"]), n, f"{where} seeds {files['seeds']}")
            parts[k] = labels_from_array(np.load(files["labels"]), f"{where} labels {files['labels']}")
        tasks = {(t, c if t == "multilabel" else 0) for _, t, c in parts.values()}
        if len(tasks) != 1:
            raise InputError(f"{self.meta_path}: the sets' labels disagree in kind or width ({sorted(tasks)}); "
                             f"give every set [n] classes or every set [n, T] targets")
        task = next(iter(tasks))[0]
        if task == "multilabel":
            classes = parts["train"][2]
            labels = np.full((n, classes), np.nan, dtype=np.float32)
        else:
            classes = max(c for _, _, c in parts.values())
            declared = self.task_meta.get("num_classes")
            if isinstance(declared, int) and declared < classes:
                raise InputError(f"{self.meta_path}: num_classes is {declared} but a label is {classes - 1}; "
                                 f"fix num_classes or the labels")
            classes = declared if isinstance(declared, int) else classes
            labels = np.full(n, -1, dtype=np.int64)
        for k, (lab, _, _) in parts.items():
            labels[seeds[k]] = lab
        return labels, seeds, task, classes

    # -- GraphSource -------------------------------------------------------------------
    def info(self) -> SourceInfo:
        return self._info(f"graphbolt:{self.dataset_name}", f"GraphBolt task {self.task_meta.get('name', 0)!r} train/validation/test sets",
                          {"graphbolt_dir": str(self.dir.resolve()), "task_name": self.task_meta.get("name")})

    def fingerprint(self) -> dict[str, Any]:
        return {"source": "graphbolt", "metadata": file_identity(self.meta_path),
                "edges": self.edges.identity(), "feat": self.feats.identity(),
                "sets": {k: {n: file_identity(p) for n, p in files.items()} for k, files in self.sets.items()}}

    def splits(self) -> dict[str, np.ndarray]:
        return self._read_sets()[1]
