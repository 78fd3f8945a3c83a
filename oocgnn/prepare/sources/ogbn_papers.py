"""ogbn-papers100M as a :class:`~oocgnn.prepare.source.GraphSource`, streamed from the OGB download.

Why not OGB's loader: it decompresses every member of ``raw/data.npz`` at once
(~84 GB) and then pickles it again (users report OOM at 256 GB).  Here each
member is decompressed once, as a stream (:mod:`oocgnn.prepare.readers.npy_stream`); only
labels ([N] int64, 0.9 GB at full scale) and split ids are held in RAM.

Layout (ogb-formats.md section 1): ``raw/data.npz`` (edge_index, num_nodes_list,
num_edges_list, node_feat, node_year), ``raw/node-label.npz`` (node_label float32
(N, 1), NaN = unlabelled), ``split/time/{train,valid,test}.csv.gz`` or, if
present, ``split/time/split_dict.pt`` (OGB prefers it).

:meth:`Papers100MSource.prepare_scratch` inflates ``edge_index`` and
``node_feat`` once each into raw files in the build's scratch folder, at the
same time on two cores: the edges in the caller's thread (the CSR stage needs
them next), the features on a background thread that keeps going through the
CSR and partition stages (:mod:`oocgnn.prepare.readers.raw_spill`).  Without
``prepare_scratch`` both are streamed from the npz (a Fortran-ordered
``node_feat`` cannot be, and raises).
"""
from __future__ import annotations

import gzip
import logging
import zlib
from functools import cached_property
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from oocgnn.errors import InputError, InputNotFoundError
from oocgnn.prepare.readers.npy_stream import (iter_edge_blocks, iter_flat_blocks, iter_row_blocks,
                                  read_npy_info, read_small_array, spill_to_raw, stored_data_offset)
from oocgnn.prepare.readers.raw_spill import BackgroundSpill, iter_raw_edge_blocks, iter_raw_row_blocks
from oocgnn.prepare.readers.torch_zip import load_torch_pickle
from oocgnn.prepare.source import SourceInfo

log = logging.getLogger(__name__)

FOLDER_NAMES = ("ogbn_papers100M", "papers100M-bin")
SPLIT_NAMES = ("train", "valid", "test")
_LABEL_BLOCK = 1 << 20
_CSV_CHUNK = 8 << 20


def resolve_dataset_dir(root: str | Path, names: tuple[str, ...], marker: str) -> Path:
    """``root`` itself if it holds ``marker``, else ``root/<name>`` for the first name that does."""
    root = Path(root).expanduser()
    for cand in (root, *(root / n for n in names)):
        if (cand / marker).exists():
            return cand.resolve()
    raise InputNotFoundError(
        f"no {marker} under {root} (also looked in {', '.join(names)}); pass the dataset folder "
        f"or its parent, after downloading and extracting the dataset")


def read_id_list_gz(path: Path) -> np.ndarray:
    """Parse a gzip text file with one integer id per line, a chunk at a time."""
    parts: list[np.ndarray] = []
    rest = b""
    try:
        with gzip.open(path, "rb") as f:
            while True:
                chunk = f.read(_CSV_CHUNK)
                data = rest + chunk
                cut = data.rfind(b"\n") + 1 if chunk else len(data)
                parts.append(np.array(data[:cut].split(), dtype=np.int64))
                rest = data[cut:]
                if not chunk:
                    break
    except FileNotFoundError as exc:
        raise InputNotFoundError(f"{path} does not exist; re-download or re-extract the dataset") from exc
    except ValueError as exc:
        raise InputError(f"{path} must hold one integer node id per line ({exc}); re-download it") from exc
    except (OSError, EOFError, zlib.error) as exc:
        raise InputError(f"{path} is corrupted or truncated ({exc}); re-download or re-extract it") from exc
    return np.concatenate(parts)


def check_split_ids(ids: Any, num_nodes: int, where: str) -> np.ndarray:
    """Validate one split: 1-D integers in ``[0, num_nodes)``; returns int64."""
    arr = np.asarray(ids)
    if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu"):
        raise InputError(f"{where} must be a 1-D integer array, found {arr.dtype} {arr.shape}; re-download it")
    arr = arr.astype(np.int64)
    if arr.size and (arr.min() < 0 or arr.max() >= num_nodes):
        raise InputError(f"{where} has node ids outside [0, {num_nodes}) (min {arr.min()}, max {arr.max()}); "
                         f"the split does not belong to this graph - re-download it")
    return arr


def ogb_split_files(split_dir: Path) -> list[Path]:
    """OGB's split files: ``split_dict.pt`` when present (OGB's ``get_idx_split`` prefers it), else the csv.gz."""
    pt = split_dir / "split_dict.pt"
    return [pt] if pt.is_file() else [split_dir / f"{k}.csv.gz" for k in SPLIT_NAMES]


def read_ogb_splits(files: list[Path], num_nodes: int) -> dict[str, np.ndarray]:
    """train / valid / test node ids from :func:`ogb_split_files`, each checked against ``num_nodes``."""
    if files[0].name == "split_dict.pt":
        obj = load_torch_pickle(files[0])
        if not isinstance(obj, dict) or not all(k in obj for k in SPLIT_NAMES):
            raise InputError(f"{files[0]} must be a dict with keys train/valid/test; re-download it")
        return {k: check_split_ids(obj[k], num_nodes, f"{files[0]} [{k!r}]") for k in SPLIT_NAMES}
    return {k: check_split_ids(read_id_list_gz(p), num_nodes, str(p)) for k, p in zip(SPLIT_NAMES, files)}


def float_labels_to_int(block: np.ndarray, where: str) -> np.ndarray:
    """NaN and negative values -> -1; the rest must be integral class ids."""
    out = np.full(block.shape[0], -1, dtype=np.int64)
    ok = np.isfinite(block) & (block >= 0) if block.dtype.kind == "f" else block >= 0
    vals = block[ok]
    if block.dtype.kind == "f" and not np.array_equal(vals, np.floor(vals)):
        raise InputError(f"{where} holds non-integer class labels; re-download it")
    out[ok] = vals.astype(np.int64)
    return out


class Papers100MSource:
    """Streams ogbn-papers100M from ``root`` (the dataset folder or its parent)."""

    def __init__(self, root: str | Path) -> None:
        self.dir = resolve_dataset_dir(root, FOLDER_NAMES, "raw/data.npz")
        self.data_path = self.dir / "raw" / "data.npz"
        self.label_path = self.dir / "raw" / "node-label.npz"
        self.feature_input = f"{self.data_path} member node_feat.npy"  #: named in errors
        self.split_dir = self.dir / "split" / "time"
        self._spill_path: Path | None = None          #: node_feat's raw spill
        self._feat_spill: BackgroundSpill | None = None
        #: (file, offset) of each raw array: a spill at 0, or a stored member of data.npz in place
        self._raw_at: dict[str, tuple[Path, int]] = {}
        #: features are re-read at disk speed once spilled: the feature stage may then make two passes
        self.cheap_feature_rereads = False

    # -- headers and validation ------------------------------------------------
    @cached_property
    def _shapes(self) -> dict[str, Any]:
        """Header-level facts, checked against each other once."""
        if not self.label_path.is_file():
            raise InputNotFoundError(f"{self.label_path} does not exist; re-download or re-extract the dataset")
        nn = read_small_array(self.data_path, "num_nodes_list")
        ne = read_small_array(self.data_path, "num_edges_list")
        if nn.shape != (1,) or ne.shape != (1,):
            raise InputError(f"{self.data_path} describes {nn.size} graphs; ogbn-papers100M has exactly one "
                             f"- re-download it")
        n, e = int(nn[0]), int(ne[0])
        edges = read_npy_info(self.data_path, "edge_index")
        feat = read_npy_info(self.data_path, "node_feat")
        label = read_npy_info(self.label_path, "node_label")
        if len(edges.shape) != 2 or edges.shape[0] != 2 or edges.dtype.kind not in "iu" or edges.shape[1] != e:
            raise InputError(f"{edges.label} has {edges.dtype} {edges.shape} but num_edges_list says (2, {e}) "
                             f"integers; re-download the dataset")
        if len(feat.shape) != 2 or feat.shape[0] != n or feat.dtype.kind != "f":
            raise InputError(f"{feat.label} has {feat.dtype} {feat.shape} but num_nodes_list says ({n}, F) "
                             f"floats; re-download the dataset")
        if label.shape not in ((n,), (n, 1)) or label.dtype.kind not in "fiu":
            raise InputError(f"{label.label} has {label.dtype} {label.shape}, expected ({n}, 1) floats; "
                             f"re-download the dataset")
        return {"num_nodes": n, "num_edges": e, "feat": feat, "edges": edges}

    @cached_property
    def _max_label(self) -> int:
        return int(self.labels().max(initial=-1))

    def info(self) -> SourceInfo:
        """Counts from the headers; num_classes = max label + 1 (streams the label member once)."""
        s = self._shapes
        feat = s["feat"]
        return SourceInfo(
            name="ogbn-papers100M", num_nodes=s["num_nodes"], num_features=int(feat.shape[1]),
            num_classes=max(self._max_label + 1, 1), feature_dtype=feat.dtype.name,
            num_edges_hint=s["num_edges"], directed=True, ogb_evaluator="ogbn-papers100M",
            split_note="OGB time split (split/time)",
            extra={"source_dir": str(self.dir), "ogb_num_classes": 172,
                   "edge_index_fortran_order": s["edges"].fortran_order,
                   "node_feat_fortran_order": feat.fortran_order},
        )

    def _split_files(self) -> list[Path]:
        return ogb_split_files(self.split_dir)

    def fingerprint(self) -> dict[str, Any]:
        files = {}
        for p in (self.data_path, self.label_path, *self._split_files()):
            try:
                st = p.stat()
            except FileNotFoundError as exc:
                raise InputNotFoundError(f"{p} does not exist; re-download or re-extract the dataset") from exc
            files[str(p.relative_to(self.dir))] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
        return {"source": "ogbn-papers100M", "dir": str(self.dir), "files": files}

    # -- streaming ---------------------------------------------------------------
    def prepare_scratch(self, workdir: Path) -> None:
        """Spill ``node_feat`` (background thread) and ``edge_index`` (this thread) to raw files,
        unless a member is stored uncompressed (``np.savez``): that one is read in place.

        Resumable: a spill whose ``.done`` marker matches the input is reused.
        """
        shapes = self._shapes
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        self.close()
        self._raw_at = {}
        for member in ("node_feat", "edge_index"):  # an np.savez archive: read in place, no copy
            _, offset = stored_data_offset(self.data_path, member)
            if offset is not None and not (member == "node_feat" and shapes["feat"].fortran_order):
                self._raw_at[member] = (self.data_path, offset)
        if "node_feat" not in self._raw_at:
            order = "F" if shapes["feat"].fortran_order else "C"
            self._spill_path = workdir / f"papers100M_node_feat.{order}.raw"
            self._feat_spill = BackgroundSpill(self.data_path, "node_feat", self._spill_path)
            if order == "C":
                self._raw_at["node_feat"] = (self._spill_path, 0)
        if "edge_index" not in self._raw_at:
            try:
                edge_path = workdir / "papers100M_edge_index.raw"
                spill_to_raw(self.data_path, "edge_index", edge_path)
            except BaseException:
                self.close()
                raise
            self._raw_at["edge_index"] = (edge_path, 0)
        self.cheap_feature_rereads = True

    def close(self) -> None:
        """Stop a feature spill still running (a failed build must not leave a busy thread)."""
        if self._feat_spill is not None:
            self._feat_spill.close()
            self._feat_spill = None
        self.cheap_feature_rereads = False

    def iter_edges(self, block_edges: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        edges = self._shapes["edges"]  # validate before streaming
        if "edge_index" in self._raw_at:
            path, base = self._raw_at["edge_index"]
            for block in iter_raw_edge_blocks(path, edges, block_edges, base):
                if self._feat_spill is not None:  # a corrupt node_feat stops the build now, not after the CSR
                    self._feat_spill.raise_if_failed()
                yield block
        else:
            yield from iter_edge_blocks(self.data_path, "edge_index", block_edges)

    def iter_features(self, block_rows: int) -> Iterator[np.ndarray]:
        feat = self._shapes["feat"]
        if self._feat_spill is not None:
            self._feat_spill.wait()
        if "node_feat" in self._raw_at:
            path, base = self._raw_at["node_feat"]
            yield from iter_raw_row_blocks(path, feat, block_rows, base)
        elif self._feat_spill is not None:  # Fortran-ordered: transposed from its spill
            yield from iter_row_blocks(self.data_path, "node_feat", block_rows, spill_path=self._spill_path)
        elif feat.fortran_order:
            raise RuntimeError("node_feat is Fortran-ordered: call prepare_scratch(workdir) first")
        else:
            yield from iter_row_blocks(self.data_path, "node_feat", block_rows)

    def labels(self) -> np.ndarray:
        """[N] int64, -1 for NaN rows; the float column is streamed, never held whole."""
        n = self._shapes["num_nodes"]
        out = np.empty(n, dtype=np.int64)
        pos = 0
        where = f"{self.label_path} member node_label.npy"
        for block in iter_flat_blocks(self.label_path, "node_label", _LABEL_BLOCK):
            out[pos:pos + len(block)] = float_labels_to_int(block, where)
            pos += len(block)
        return out

    def splits(self) -> dict[str, np.ndarray]:
        return read_ogb_splits(self._split_files(), self._shapes["num_nodes"])
