"""OGB node-property datasets by name: ``oocgnn prepare ogb --name NAME --root ROOT``.

Why: ogbn-arxiv and ogbn-products are the graphs GAS, REST and VISAGNN report on,
and their download is csv text (``raw/edge.csv.gz``, ``raw/node-feat.csv.gz``,
``raw/node-label.csv.gz``, ``raw/num-node-list.csv.gz``, ``raw/num-edge-list.csv.gz``,
``split/<split>/{train,valid,test}.csv.gz``), which OGB's own loader reads whole
with pandas.  Here every file is parsed in blocks, once
(:mod:`oocgnn.prepare.readers.csv_blocks`): :meth:`OgbCsvSource.prepare_scratch`
parses the edges into a raw scratch file in this thread (the CSR stage reads them
twice) and the features on a second core while the CSR and partition stages run,
as the papers100M source does with its npz members; both spills are reused by a
resumed build.  Values are parsed as OGB parses them (float64 text cast to
float32), so our rows equal ``NodePropPredDataset``'s.

What a dataset is comes from OGB's own ``ogb/nodeproppred/master.csv`` (installed
with ``ogb``; read as a file, ``ogb`` is not imported): number of classes, split
folder, ``add_inverse_edge``, binary (npz) or csv, heterogeneous or not.  Binary
``ogbn-papers100M`` goes to :class:`~oocgnn.prepare.sources.ogbn_papers.Papers100MSource`.
Refused with one line: ``ogbn-proteins`` (no node features; 112 binary tasks),
``ogbn-mag`` (heterogeneous), names that are not in ``master.csv``.

``add_inverse_edge`` (products): OGB's loader adds every edge's reverse.  With
``--undirected`` (the default) the builder symmetrises anyway; with
``--no-undirected`` this source yields both directions itself, so the store holds
the graph OGB's loader builds.
"""
from __future__ import annotations

import importlib.util
import logging
import time
from functools import cache
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from tqdm.auto import tqdm

from oocgnn.errors import ConfigError, InputError, InputNotFoundError
from oocgnn.prepare.readers.csv_blocks import csv_width, iter_csv_blocks, read_csv_column, spill_csv
from oocgnn.prepare.readers.npy_stream import NpyMemberInfo
from oocgnn.prepare.readers.raw_spill import BackgroundSpill, iter_raw_edge_blocks, iter_raw_row_blocks
from oocgnn.prepare.source import SourceInfo
from oocgnn.prepare.sources.arrays import check_ids
from oocgnn.prepare.sources.ogbn_papers import (float_labels_to_int, ogb_split_files, read_ogb_splits,
                                                resolve_dataset_dir)

log = logging.getLogger(__name__)

#: Names this source handles (others in master.csv are refused with the reason).
SUPPORTED = ("ogbn-arxiv", "ogbn-products", "ogbn-papers100M")
RAW_FILES = ("edge.csv.gz", "node-feat.csv.gz", "node-label.csv.gz", "num-node-list.csv.gz", "num-edge-list.csv.gz")
_EDGE_TEXT = "lines 'src,dst' of node ids"


@cache
def _master() -> dict[str, dict[str, str]]:
    """OGB's ``nodeproppred/master.csv``: dataset name -> its meta information (all strings)."""
    import pandas as pd

    spec = importlib.util.find_spec("ogb")
    path = Path(spec.submodule_search_locations[0]) / "nodeproppred" / "master.csv" if spec else None
    if path is None or not path.is_file():
        raise ConfigError("prepare ogb reads dataset metadata from ogb's nodeproppred/master.csv, which is not "
                          "installed; pip install ogb")
    table = pd.read_csv(path, index_col=0, keep_default_na=False)  # as ogb reads it
    return {name: {k: str(v) for k, v in table[name].items()} for name in table.columns}


def ogb_meta(name: str) -> dict[str, str]:
    """master.csv's entry of ``name``, or one line saying why ``prepare ogb`` cannot take it."""
    master = _master()
    supported = ", ".join(SUPPORTED)
    if name not in master:
        raise ConfigError(f"--name {name!r} is not an OGB node-property dataset; prepare ogb supports {supported}")
    meta = master[name]
    if meta["is hetero"] == "True":
        raise ConfigError(f"--name {name} is heterogeneous (several node and edge types); prepare ogb supports the "
                          f"homogeneous datasets with node features: {supported}")
    if meta["has_node_attr"] != "True":
        raise ConfigError(f"--name {name} has no node features; prepare ogb supports the homogeneous datasets with "
                          f"node features: {supported}")
    if meta["num tasks"] != "1" or meta["task type"] != "multiclass classification":
        raise ConfigError(f"--name {name} is a {meta['task type']} task with {meta['num tasks']} targets; prepare ogb "
                          f"supports single-task multiclass datasets: {supported}")
    if meta["binary"] == "True" and name != "ogbn-papers100M":
        raise ConfigError(f"--name {name} ships npz files, read only for ogbn-papers100M; supported: {supported}")
    return meta


def make_ogb_source(name: str, root: str | Path, *, undirected: bool = True, progress: bool = False):
    """The source of OGB dataset ``name`` under ``root`` (csv download, or papers100M's npz)."""
    meta = ogb_meta(name)
    if meta["binary"] == "True":
        from oocgnn.prepare.sources.ogbn_papers import Papers100MSource
        return Papers100MSource(root)
    return OgbCsvSource(name, root, meta, undirected=undirected, progress=progress)


class OgbCsvSource:
    """Streams a homogeneous OGB node-property dataset in its csv download layout (module docstring)."""

    def __init__(self, name: str, root: str | Path, meta: dict[str, str] | None = None, *, undirected: bool = True,
                 progress: bool = False) -> None:
        self.name, self.meta = name, meta or ogb_meta(name)
        names = (name.replace("-", "_"), self.meta["download_name"])  # ogb renames arxiv/ to ogbn_arxiv/
        self.dir = resolve_dataset_dir(root, names, "raw/edge.csv.gz")
        self.paths = {f: self.dir / "raw" / f for f in RAW_FILES}
        for p in self.paths.values():
            if not p.is_file():
                raise InputNotFoundError(f"{p} does not exist; re-download or re-extract {name}")
        self.split_dir = self.dir / "split" / self.meta["split"]
        self.add_inverse = self.meta["add_inverse_edge"] == "True"
        self.inverse_edges = self.add_inverse and not undirected  #: yield reverse edges too (as OGB's loader)
        self.progress = progress
        self.num_nodes = self._count("num-node-list.csv.gz", "graph")
        self.num_edges = self._count("num-edge-list.csv.gz", "edge count")
        self.num_features = csv_width(self.paths["node-feat.csv.gz"])
        self.feature_input = str(self.paths["node-feat.csv.gz"])
        self._edges_raw: Path | None = None
        self._feat_raw: Path | None = None
        self._feat_spill: BackgroundSpill | None = None
        self.cheap_feature_rereads = False

    def _count(self, file: str, what: str) -> int:
        values = read_csv_column(self.paths[file], np.int64, expect="one integer per line (one graph)")
        if values.shape != (1,) or values[0] < (1 if file.startswith("num-node") else 0):
            raise InputError(f"{self.paths[file]} holds {values.size} values {values[:3].tolist()}; a node-property "
                             f"dataset has one {what} - re-download {self.name}")
        return int(values[0])

    def _split_files(self) -> list[Path]:
        return ogb_split_files(self.split_dir)

    # -- GraphSource -----------------------------------------------------------------
    def info(self) -> SourceInfo:
        split = self.meta["split"]
        return SourceInfo(
            name=self.name, num_nodes=self.num_nodes, num_features=self.num_features,
            num_classes=int(self.meta["num classes"]), feature_dtype="float32",
            num_edges_hint=self.num_edges * (2 if self.inverse_edges else 1), directed=not self.add_inverse,
            ogb_evaluator=self.name, split_note=f"OGB {split} split (split/{split})",
            extra={"source_dir": str(self.dir), "ogb_add_inverse_edge": self.add_inverse,
                   "inverse_edges_added": self.inverse_edges},
        )

    def fingerprint(self) -> dict[str, Any]:
        files = {}
        for p in (*self.paths.values(), *self._split_files()):
            try:
                st = p.stat()
            except FileNotFoundError as exc:
                raise InputNotFoundError(f"{p} does not exist; re-download or re-extract {self.name}") from exc
            files[str(p.relative_to(self.dir))] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
        return {"source": self.name, "dir": str(self.dir), "files": files, "inverse_edges": self.inverse_edges}

    def _check_edges(self, first: int, block: np.ndarray) -> None:
        check_ids(block[:, 0], block[:, 1], first, self.num_nodes, str(self.paths["edge.csv.gz"]), "line",
                  str(self.paths["num-node-list.csv.gz"].name))

    def prepare_scratch(self, workdir: Path) -> None:
        """Parse the edges here and the features on a background thread, each into a raw file (resumable)."""
        workdir = Path(workdir)
        self.close()
        feat_raw = workdir / "ogb_node_feat.float32"
        self._feat_spill = BackgroundSpill(self.paths["node-feat.csv.gz"], "node-feat", feat_raw,
                                           spill=lambda stop: self._spill_features(feat_raw, stop))
        edges_raw = workdir / "ogb_edges.int64"
        try:
            with tqdm(total=self.num_edges, unit="edge", unit_scale=True, desc="parse edge.csv.gz",
                      disable=not self.progress) as bar:
                rows = spill_csv(self.paths["edge.csv.gz"], edges_raw, np.int64, 2, block_rows=1 << 20,
                                 check=self._check_edges, expect=_EDGE_TEXT, progress=bar.update)
        except BaseException:
            self.close()
            raise
        if rows != self.num_edges:
            self.close()
            raise InputError(f"{self.paths['edge.csv.gz']} has {rows} edges but num-edge-list.csv.gz says "
                             f"{self.num_edges}; re-download {self.name}")
        self._edges_raw, self._feat_raw = edges_raw, feat_raw
        self.cheap_feature_rereads = True
        try:  # fail in seconds on a bad label or split file, not after the CSR and partition stages
            self.labels()
            self.splits()
        except BaseException:
            self.close()
            raise

    def _spill_features(self, dest: Path, stop) -> int:
        t0 = time.perf_counter()
        rows = spill_csv(self.paths["node-feat.csv.gz"], dest, np.float32, self.num_features, block_rows=1 << 16,
                         expect=f"{self.num_features} comma-separated numbers per line", stop=stop)
        log.info("node-feat.csv.gz: %d rows ready in %.1f s (parsed beside the CSR stage)", rows,
                 time.perf_counter() - t0)
        if rows != self.num_nodes:
            raise InputError(f"{self.paths['node-feat.csv.gz']} has {rows} rows but num-node-list.csv.gz says "
                             f"{self.num_nodes} nodes; re-download {self.name}")
        return rows

    def close(self) -> None:
        """Stop a feature parse still running (a failed build must not leave a busy thread)."""
        if self._feat_spill is not None:
            self._feat_spill.close()
            self._feat_spill = None
        self.cheap_feature_rereads = False

    def _edge_blocks(self, block_edges: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        if self._edges_raw is None:  # outside a build: parse as we go
            for first, b in iter_csv_blocks(self.paths["edge.csv.gz"], np.int64, block_edges, columns=2,
                                            expect=_EDGE_TEXT):
                self._check_edges(first, b)
                yield b[:, 0].copy(), b[:, 1].copy()
            return
        info = NpyMemberInfo((2, self.num_edges), np.dtype(np.int64), True, 0, str(self._edges_raw))
        for block in iter_raw_edge_blocks(self._edges_raw, info, block_edges):
            if self._feat_spill is not None:  # a corrupt feature file stops the build now, not stages later
                self._feat_spill.raise_if_failed()
            yield block

    def iter_edges(self, block_edges: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for src, dst in self._edge_blocks(block_edges):
            yield src, dst
            if self.inverse_edges:
                yield dst, src

    def iter_features(self, block_rows: int) -> Iterator[np.ndarray]:
        if self._feat_raw is None:
            for _, block in iter_csv_blocks(self.paths["node-feat.csv.gz"], np.float32, block_rows,
                                            columns=self.num_features):
                yield block
            return
        if self._feat_spill is not None:
            self._feat_spill.wait()
        info = NpyMemberInfo((self.num_nodes, self.num_features), np.dtype(np.float32), False, 0, str(self._feat_raw))
        yield from iter_raw_row_blocks(self._feat_raw, info, block_rows)

    def labels(self) -> np.ndarray:
        """[N] int64 classes, -1 for NaN (unlabelled) rows."""
        path = self.paths["node-label.csv.gz"]
        raw = read_csv_column(path, np.float64, missing_is_nan=True, expect="one class id per line")
        if raw.size != self.num_nodes:
            raise InputError(f"{path} has {raw.size} lines for {self.num_nodes} nodes; re-download {self.name}")
        labels = float_labels_to_int(raw, str(path))
        classes = int(self.meta["num classes"])
        if labels.max(initial=-1) >= classes:
            row = int(np.flatnonzero(labels >= classes)[0])
            raise InputError(f"{path}: line {row + 1} holds class {labels[row]}, but {self.name} has {classes} "
                             f"classes; re-download it")
        return labels

    def splits(self) -> dict[str, np.ndarray]:
        return read_ogb_splits(self._split_files(), self.num_nodes)
