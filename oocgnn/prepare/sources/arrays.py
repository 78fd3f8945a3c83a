"""A user's own graph as files: ``oocgnn prepare arrays`` (and the file readers ``prepare ondisk`` shares).

Why: most users of an out-of-core trainer bring their own graph, as large ``.npy``
arrays (named as OGB's raw arrays: ``edge_index``, ``node_feat``, ``node_label``)
or a headerless ``src,dst`` csv.  Nothing is loaded whole but the labels and the
split ids (O(N)):

* edges: a ``.npy`` of shape (2, E) or (E, 2), any integer dtype, either memory
  order, read with ``pread`` in blocks (an (E, 2) C-ordered array is the interleaved
  layout of a Fortran-ordered (2, E) one); or ``.csv`` / ``.csv.gz`` lines
  ``src,dst``, parsed once into a raw scratch file
  (:func:`~oocgnn.prepare.readers.csv_blocks.spill_csv`), checking every id on the
  way so an error names the line;
* features: a ``.npy`` ``[N, F]`` of float16/32/64 read in row blocks with ``pread``
  (no page of it stays mapped, so RSS stays at one block), ``N`` = its rows;
* labels: ``[N]`` / ``[N, 1]`` integer classes (-1 = unlabelled; classes = max + 1)
  or ``[N, T]`` (T > 1) 0/1 values with NaN = unknown, a multi-label task
  (:attr:`~oocgnn.prepare.source.SourceInfo.task`);
* splits: three ``.npy`` files of node ids or boolean masks, or a seeded random
  split of the labelled nodes by ratios.

Every header is read and checked when the source is made, before the builder
touches ``--out``: a wrong shape, a missing file or label/feature row counts that
differ fail with one line naming the file and leave nothing behind.
"""
from __future__ import annotations

import logging
import os
from functools import cached_property
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from tqdm.auto import tqdm

from oocgnn.errors import ConfigError, InputError, InputNotFoundError
from oocgnn.prepare.readers.csv_blocks import iter_csv_blocks, spill_csv
from oocgnn.prepare.readers.npy_stream import NpyMemberInfo, open_npy_memmap, read_npy_info
from oocgnn.prepare.readers.raw_spill import iter_raw_edge_blocks, iter_raw_row_blocks
from oocgnn.prepare.source import SourceInfo
from oocgnn.utils.mapped import release_pages

log = logging.getLogger(__name__)

SPLIT_NAMES = ("train", "valid", "test")
FEATURE_DTYPES = ("float16", "float32", "float64")
_CSV_EDGE = "headerless lines 'src,dst' of integer node ids"


def file_identity(path: Path) -> list:
    """``[resolved path, size, mtime_ns]``: what a fingerprint records of one input file."""
    try:
        st = path.stat()
    except FileNotFoundError as exc:
        raise InputNotFoundError(f"{path} does not exist; check the path") from exc
    return [str(path.resolve()), st.st_size, st.st_mtime_ns]


def npy_header(path: Path, flag: str) -> NpyMemberInfo:
    """The header of a plain ``.npy`` file, or one line naming ``flag`` and the file."""
    if not path.name.endswith(".npy"):
        raise ConfigError(f"{flag} {path}: expected a .npy file (numpy.save)")
    if not path.is_file():
        raise InputNotFoundError(f"{flag} {path} does not exist; check the path")
    return read_npy_info(path)


def check_ids(src: np.ndarray, dst: np.ndarray, first: int, num_nodes: int, where: str, unit: str,
              nodes_from: str) -> None:
    """Raise one line naming the first edge (``unit`` ``first + i``) with an id outside ``[0, num_nodes)``."""
    if not src.size:
        return
    lo, hi = min(int(src.min()), int(dst.min())), max(int(src.max()), int(dst.max()))
    if lo >= 0 and hi < num_nodes:
        return
    bad = (src < 0) | (src >= num_nodes) | (dst < 0) | (dst >= num_nodes)
    i = int(np.flatnonzero(bad)[0])
    value = int(src[i]) if not 0 <= src[i] < num_nodes else int(dst[i])
    pos = f"line {first + i + 1}" if unit == "line" else f"edge {first + i} (0-based)"
    raise InputError(f"{where}: {pos} has node id {value} outside [0, {num_nodes}) ({num_nodes} nodes: "
                     f"{nodes_from}); fix the edge list or the node count")


class EdgeInput:
    """An edge list file: ``.npy`` (2, E) / (E, 2), or a headerless ``src,dst`` ``.csv`` / ``.csv.gz``."""

    def __init__(self, path: str | os.PathLike, flag: str, num_nodes: int, nodes_from: str,
                 is_csv: bool | None = None) -> None:
        """``is_csv``: the file's kind when it is known (GraphBolt's ``format``), else from its suffix."""
        self.path, self.flag = Path(path), flag
        self.num_nodes, self.nodes_from = int(num_nodes), nodes_from
        name = self.path.name
        self.is_csv = name.endswith((".csv", ".csv.gz")) if is_csv is None else is_csv
        if not self.is_csv and not name.endswith(".npy"):
            raise ConfigError(f"{flag} {self.path}: expected a .npy array of shape (2, E) or (E, 2), or a .csv / "
                              f".csv.gz file of {_CSV_EDGE}")
        self._spill: Path | None = None
        self._spill_rows = 0
        if self.is_csv:
            if not self.path.is_file():
                raise InputNotFoundError(f"{flag} {self.path} does not exist; check the path")
            self.pairs: NpyMemberInfo | None = None
            return
        h = npy_header(self.path, flag)
        if len(h.shape) != 2 or 2 not in h.shape or h.dtype.kind not in "iu":
            raise InputError(f"{flag} {self.path} has {h.dtype} {h.shape}; expected an integer array of shape "
                             f"(2, E) or (E, 2)")
        if h.shape[0] == 2:
            self.pairs = h
        else:  # (E, 2) is the transposed layout of (2, E): C order interleaves (src, dst) pairs
            self.pairs = NpyMemberInfo((2, h.shape[0]), h.dtype, not h.fortran_order, h.data_offset, h.label)

    @property
    def num_edges(self) -> int:
        """Edges in the file (a csv file's count is known once it was parsed)."""
        return self.pairs.shape[1] if self.pairs is not None else self._spill_rows

    def identity(self) -> list:
        return file_identity(self.path)

    def _check(self, first: int, src: np.ndarray, dst: np.ndarray) -> None:
        check_ids(src, dst, first, self.num_nodes, str(self.path), "line" if self.is_csv else "edge",
                  self.nodes_from)

    def prepare(self, workdir: Path, progress: bool = False) -> None:
        """Parse a csv edge list once into ``workdir`` (resumable); a no-op for ``.npy``."""
        if not self.is_csv:
            return
        dest = Path(workdir) / "edges.int64"
        with tqdm(unit="edge", unit_scale=True, desc=f"parse {self.path.name}", disable=not progress) as bar:
            self._spill_rows = spill_csv(self.path, dest, np.int64, 2, block_rows=1 << 20, expect=_CSV_EDGE,
                                         check=lambda first, b: self._check(first, b[:, 0], b[:, 1]),
                                         progress=bar.update)
        self._spill = dest

    def blocks(self, block_edges: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(src, dst)`` int64 blocks; every id is checked against the node count."""
        if self.is_csv and self._spill is None:  # outside a build: parse as we go
            for first, b in iter_csv_blocks(self.path, np.int64, block_edges, columns=2, expect=_CSV_EDGE):
                self._check(first, b[:, 0], b[:, 1])
                yield b[:, 0].copy(), b[:, 1].copy()
            return
        if self.is_csv:  # ids were checked while parsing
            info = NpyMemberInfo((2, self._spill_rows), np.dtype(np.int64), True, 0, str(self._spill))
            yield from iter_raw_edge_blocks(self._spill, info, block_edges)
            return
        first = 0
        for src, dst in iter_raw_edge_blocks(self.path, self.pairs, block_edges, self.pairs.data_offset):
            self._check(first, src, dst)
            first += len(src)
            yield src, dst


class FeatureInput:
    """A ``.npy`` ``[N, F]`` float16/32/64 feature matrix, read in row blocks with ``pread``."""

    def __init__(self, path: str | os.PathLike, flag: str) -> None:
        self.path, self.flag = Path(path), flag
        h = self.header = npy_header(self.path, flag)
        if len(h.shape) != 2 or h.dtype.name not in FEATURE_DTYPES:
            raise InputError(f"{flag} {self.path} has {h.dtype} {h.shape}; expected a 2-D [N, F] array of "
                             f"{', '.join(FEATURE_DTYPES)}")
        if h.shape[0] < 1 or h.shape[1] < 1:
            raise InputError(f"{flag} {self.path} has shape {h.shape}; expected at least one node and one feature")
        self.num_nodes, self.num_features = h.shape

    def identity(self) -> list:
        return file_identity(self.path)

    def blocks(self, block_rows: int) -> Iterator[np.ndarray]:
        if not self.header.fortran_order:
            yield from iter_raw_row_blocks(self.path, self.header, block_rows, self.header.data_offset)
            return
        arr = open_npy_memmap(self.path)  # column-major: rows are strided, read through the mapping
        for s in range(0, self.num_nodes, block_rows):
            yield np.ascontiguousarray(arr[s:s + block_rows])
            release_pages(arr)  # the mapped pages must not pile up in RSS


def labels_from_array(arr: np.ndarray, where: str) -> tuple[np.ndarray, str, int]:
    """``(labels, task, num_classes)`` from a user's label array (see the module docstring).

    Multi-class: ``[n]`` int64, -1 = unlabelled, classes = max + 1.  Multi-label: ``[n, T]``
    float32 of 0/1, NaN = unknown.  One line naming ``where`` and the first bad row otherwise.
    """
    arr = np.asarray(arr)
    if arr.dtype.kind not in "biuf" or arr.ndim not in (1, 2) or (arr.ndim == 2 and arr.shape[1] < 1):
        raise InputError(f"{where} has {arr.dtype} {arr.shape}; expected integer classes [N] or [N, 1], or "
                         f"0/1 multi-label targets [N, T] with NaN = unknown")
    if arr.ndim == 2 and arr.shape[1] > 1:
        out = arr.astype(np.float32)
        with np.errstate(invalid="ignore"):
            bad = ~((out == 0) | (out == 1) | np.isnan(out))
        if bad.any():
            row = int(np.flatnonzero(bad.any(axis=1))[0])
            raise InputError(f"{where}: row {row} holds {float(out[row][bad[row]][0]):g}; multi-label targets [N, T] "
                             f"must be 0, 1 or NaN (unknown)")
        return out, "multilabel", int(arr.shape[1])
    flat = arr.reshape(-1)
    if flat.dtype.kind == "f":
        with np.errstate(invalid="ignore"):
            bad = ~(np.isnan(flat) | ((flat >= -1) & (flat == np.floor(flat))))
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise InputError(f"{where}: row {row} holds {float(flat[row]):g}; class labels must be integers >= 0, "
                             f"-1 or NaN for unlabelled")
        out = np.nan_to_num(flat, nan=-1.0).astype(np.int64)
    else:
        out = flat.astype(np.int64)
        if out.size and out.min() < -1:
            row = int(np.flatnonzero(out < -1)[0])
            raise InputError(f"{where}: row {row} holds {out[row]}; class labels must be >= 0, or -1 for unlabelled")
    if not (out >= 0).any():
        raise InputError(f"{where} labels no node (every entry is -1 / NaN); at least one class label is needed")
    return out, "multiclass", int(out.max()) + 1


def labelled_mask(labels: np.ndarray) -> np.ndarray:
    """Nodes with a label: class >= 0, or at least one known target of a multi-label row."""
    return labels >= 0 if labels.ndim == 1 else ~np.isnan(labels).all(axis=1)


def split_ids(arr: np.ndarray, num_nodes: int, where: str) -> np.ndarray:
    """Node ids of one split from an index array or a boolean mask of length ``num_nodes``."""
    arr = np.asarray(arr)
    if arr.dtype.kind == "b":
        if arr.shape not in ((num_nodes,), (num_nodes, 1)):
            raise InputError(f"{where} is a boolean mask of shape {arr.shape}; a mask needs one entry per node "
                             f"({num_nodes})")
        return np.flatnonzero(arr.reshape(-1)).astype(np.int64)
    if arr.dtype.kind not in "iu" or arr.ndim != 1 and arr.shape[1:] != (1,):
        raise InputError(f"{where} has {arr.dtype} {arr.shape}; expected a 1-D array of node ids or a boolean mask")
    ids = arr.reshape(-1).astype(np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= num_nodes):
        bad = int(np.flatnonzero((ids < 0) | (ids >= num_nodes))[0])
        raise InputError(f"{where}: entry {bad} is node id {ids[bad]}, outside [0, {num_nodes}); the split does not "
                         f"belong to this graph")
    return ids


def parse_split_ratio(text: str) -> tuple[float, float, float]:
    """``"0.8,0.1,0.1"`` -> fractions of the labelled nodes for train, valid, test."""
    try:
        parts = tuple(float(p) for p in text.split(","))
    except ValueError:
        parts = ()
    if len(parts) != 3 or min(parts) < 0 or not 0 < sum(parts) <= 1 + 1e-9 or parts[0] == 0:
        raise ConfigError(f"--split-ratio {text!r}: give three fractions TRAIN,VALID,TEST >= 0 with a positive "
                          f"train fraction and a sum of at most 1, e.g. 0.8,0.1,0.1")
    return parts  # type: ignore[return-value]


def ratio_split(labelled: np.ndarray, ratios: tuple[float, float, float], seed: int) -> dict[str, np.ndarray]:
    """A seeded random split of the labelled nodes: consecutive slices of one permutation."""
    ids = np.flatnonzero(labelled).astype(np.int64)
    perm = np.random.default_rng(seed).permutation(ids)
    cuts = np.floor(np.cumsum(ratios) * len(ids) + 1e-9).astype(np.int64)
    cuts = np.minimum(cuts, len(ids))
    bounds = [0, *cuts.tolist()]
    return {k: np.sort(perm[bounds[i]:bounds[i + 1]]) for i, k in enumerate(SPLIT_NAMES)}


class FileGraphSource:
    """Edges and features from files (:class:`EdgeInput`, :class:`FeatureInput`); subclasses add
    labels and splits.  Edges of a csv file are parsed once into the build's scratch folder."""

    cheap_feature_rereads = True  #: features are read with pread: a second pass costs a file read

    def __init__(self, edges: EdgeInput, feats: FeatureInput, progress: bool = False) -> None:
        self.edges, self.feats, self.progress = edges, feats, progress
        self.feature_input = str(feats.path)

    def prepare_scratch(self, workdir: Path) -> None:
        """Parse a csv edge list once; check labels and splits now, so a bad label or split file
        fails in seconds rather than after the CSR and partition stages."""
        self.edges.prepare(Path(workdir), self.progress)
        self.info()
        self.splits()

    def iter_edges(self, block_edges: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        yield from self.edges.blocks(block_edges)

    def iter_features(self, block_rows: int) -> Iterator[np.ndarray]:
        yield from self.feats.blocks(block_rows)

    def read_labels(self) -> tuple[np.ndarray, str, int]:
        """``(labels, task, num_classes)``, read and checked (subclasses)."""
        raise NotImplementedError

    @cached_property
    def _label_facts(self) -> tuple[str, int, int]:
        """(task, num_classes, labelled nodes): what info() needs, without keeping O(N) labels for the build."""
        labels, task, classes = self.read_labels()
        return task, classes, int(labelled_mask(labels).sum())

    def labels(self) -> np.ndarray:
        return self.read_labels()[0]

    def _info(self, name: str, split_note: str, extra: dict[str, Any]) -> SourceInfo:
        task, num_classes, labelled = self._label_facts
        return SourceInfo(name=name, num_nodes=self.feats.num_nodes, num_features=self.feats.num_features,
                          num_classes=num_classes, feature_dtype=self.feats.header.dtype.name,
                          num_edges_hint=self.edges.num_edges, directed=True, split_note=split_note, task=task,
                          extra={"edges": str(self.edges.path), "features": str(self.feats.path),
                                 "labelled_nodes": labelled, **extra})


class ArraysSource(FileGraphSource):
    """``oocgnn prepare arrays``: edges, features, labels and splits from the user's files."""

    def __init__(self, edge_index: str | os.PathLike, node_feat: str | os.PathLike, node_label: str | os.PathLike, *,
                 train_idx: str | os.PathLike | None = None, valid_idx: str | os.PathLike | None = None,
                 test_idx: str | os.PathLike | None = None, split_ratio: tuple[float, float, float] | None = None,
                 split_seed: int = 0, progress: bool = False) -> None:
        files = {"--train-idx": train_idx, "--valid-idx": valid_idx, "--test-idx": test_idx}
        given = [k for k, v in files.items() if v is not None]
        if given and split_ratio is not None:
            raise ConfigError(f"{', '.join(given)} and --split-ratio both choose the split; give one of them")
        if given and len(given) != 3:
            raise ConfigError(f"only {', '.join(given)} given: split files need all of --train-idx, --valid-idx and "
                              f"--test-idx (or leave them out for --split-ratio, default 0.8,0.1,0.1)")
        feats = FeatureInput(node_feat, "--node-feat")
        n = feats.num_nodes
        super().__init__(EdgeInput(edge_index, "--edge-index", n, f"rows of {feats.path.name}"), feats, progress)
        self.label_path = Path(node_label)
        h = npy_header(self.label_path, "--node-label")
        if not h.shape or h.shape[0] != n:
            raise InputError(f"--node-label {self.label_path} has {h.shape[0] if h.shape else 0} rows but "
                             f"--node-feat {feats.path} has {n}: label and feature row counts differ")
        self.split_files = {k: Path(v) for k, v in zip(SPLIT_NAMES, files.values()) if v is not None}
        for flag, path in zip(files, self.split_files.values()):
            npy_header(path, flag)
        self.split_ratio = None if self.split_files else tuple(split_ratio or (0.8, 0.1, 0.1))
        self.split_seed = int(split_seed)

    def read_labels(self) -> tuple[np.ndarray, str, int]:
        return labels_from_array(np.load(self.label_path, mmap_mode="r"), f"--node-label {self.label_path}")

    def info(self) -> SourceInfo:
        if self.split_files:
            note = "splits from " + ", ".join(str(p) for p in self.split_files.values())
        else:
            note = (f"seeded random split {','.join(f'{r:g}' for r in self.split_ratio)} of the labelled nodes "
                    f"(seed {self.split_seed})")
        return self._info("arrays", note, {"labels": str(self.label_path)})

    def fingerprint(self) -> dict[str, Any]:
        return {"source": "arrays", "edge_index": self.edges.identity(), "node_feat": self.feats.identity(),
                "node_label": file_identity(self.label_path),
                "splits": {k: file_identity(p) for k, p in self.split_files.items()},
                "split_ratio": self.split_ratio, "split_seed": self.split_seed}

    def splits(self) -> dict[str, np.ndarray]:
        n = self.feats.num_nodes
        if self.split_files:
            return {k: split_ids(np.load(p), n, f"--{k}-idx {p}") for k, p in self.split_files.items()}
        return ratio_split(labelled_mask(self.labels()), self.split_ratio, self.split_seed)
