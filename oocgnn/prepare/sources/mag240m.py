"""MAG240M (OGB-LSC) as a :class:`~oocgnn.prepare.source.GraphSource`.

Two graphs (ogb-formats.md section 2):

* default: the paper citation graph (P nodes, ``paper___cites___paper``), paper
  features float16 [P, 768] memory-mapped, labels float64 (NaN / -1 -> -1);
* ``with_authors_institutions=True``: OGB's ``rgnn.py`` homogeneous flattening.
  Node order papers ``[0, P)``, authors ``[P, P+A)``, institutions ``[P+A, N)``;
  edges = cites + author->paper (writes) + author->institution (affiliated),
  directed (the store builder symmetrises).  Author rows are the mean of their
  papers' features, institution rows the mean of their authors' (float16) rows,
  zero rows without neighbours, exactly like the baseline's ``full_feat.npy``.

Why out of core: the baseline materialises 375 GB of ``full_feat`` through 64
column strips of the whole paper table.  Here :meth:`MAG240MSource.prepare_scratch`
walks the edge list once per window of R target rows (R * F * 4 bytes within
``memory_bytes``); edges sorted by target (as OGB ships ``writes``) make that a
single pass overall, since each window finds its edge range by binary search.
``meta.pt``/``split_dict.pt`` are read by :mod:`oocgnn.prepare.readers.torch_zip`, never by a
full ``torch.load``.
"""
from __future__ import annotations

import bisect
import logging
from functools import cached_property
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from oocgnn.errors import InputError, InputNotFoundError
from oocgnn.prepare.readers.npy_stream import (NpyMemberInfo, iter_edge_blocks, iter_flat_blocks, open_npy_memmap,
                                  read_npy_info)
from oocgnn.prepare.readers.torch_zip import load_torch_pickle
from oocgnn.prepare.source import SourceInfo
from oocgnn.prepare.sources.ogbn_papers import (check_split_ids, float_labels_to_int,
                                                resolve_dataset_dir)
from oocgnn.utils.atomic import atomic_output, atomic_write_json, read_json

log = logging.getLogger(__name__)

_REL = {"cites": "paper___cites___paper", "writes": "author___writes___paper",
        "affiliated": "author___affiliated_with___institution"}
_SCRATCH_VERSION = 1
#: Edges per gather block (~F * 4 * 2 bytes each).  Fixed, and blocks are aligned to absolute
#: multiples of it, so float32 sums (hence the float16 rows) do not depend on memory_bytes.
_MEAN_BLOCK = 1 << 14


def _file_id(path: Path) -> dict[str, Any]:
    st = path.stat()
    return {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _scan_keys(keys: np.ndarray, block: int, where: str, num_keys: int) -> bool:
    """One sequential pass: are the keys sorted, and all in ``[0, num_keys)``?"""
    is_sorted, prev = True, None
    for s in range(0, keys.shape[0], block):
        k = np.asarray(keys[s:s + block])
        if k.min() < 0 or k.max() >= num_keys:
            raise InputError(f"{where} has ids outside [0, {num_keys}) (min {k.min()}, max {k.max()}); "
                             f"it does not match meta.pt - re-download the dataset")
        if is_sorted and ((prev is not None and k[0] < prev) or np.any(k[1:] < k[:-1])):
            is_sorted = False
        prev = k[-1]
    return is_sorted


def segment_mean_to_raw(edges: np.ndarray, key_row: int, num_keys: int, feat: np.ndarray,
                        dest: Path, where: str, memory_bytes: int = 256 << 20) -> None:
    """Write ``out[k] = mean(feat[v] for edge (k, v))`` as a raw float16 [num_keys, F] file.

    ``edges`` is a (2, E) memmap with keys in row ``key_row``; accumulation is
    float32 over windows of R keys (accumulator ~``memory_bytes``) plus one
    gather block of :data:`_MEAN_BLOCK` edges, whatever the table size.  Rows
    without edges are zero.  Sorted or not, and for any ``memory_bytes``, each
    key sees the same edge chunks in the same order, so the output is identical.
    Written to ``dest`` directly; the caller renames.
    """
    num_edges, width = edges.shape[1], feat.shape[1]
    keys, vals = edges[key_row], edges[1 - key_row]
    window = max(1, memory_bytes // (2 * width * 4))
    block = _MEAN_BLOCK
    is_sorted = _scan_keys(keys, 1 << 22, where, num_keys) if num_edges else True
    if not is_sorted and num_keys > window:
        log.warning("%s is not sorted by its %s row: %d passes over its edges", where,
                    "first" if key_row == 0 else "second", -(-num_keys // window))
    out = np.memmap(dest, dtype=np.float16, mode="w+", shape=(num_keys, width))
    acc = np.zeros((min(window, num_keys), width), dtype=np.float32)
    cnt = np.zeros(acc.shape[0], dtype=np.int64)
    for w0 in range(0, num_keys, window):
        w1 = min(w0 + window, num_keys)
        acc.fill(0)
        cnt.fill(0)
        # bisect on the memmap touches ~log2(E) pages; np.searchsorted would copy a strided row
        lo, hi = ((bisect.bisect_left(keys, w0), bisect.bisect_left(keys, w1))
                  if is_sorted else (0, num_edges))
        for s in range(lo - lo % block, hi, block):
            a, b = max(s, lo), min(s + block, hi)
            k, v = np.asarray(keys[a:b]), np.asarray(vals[a:b])
            if not is_sorted:
                sel = (k >= w0) & (k < w1)
                k, v = k[sel], v[sel]
                order = np.argsort(k, kind="stable")
                k, v = k[order], v[order]
            if k.size == 0:
                continue
            if v.min() < 0 or v.max() >= feat.shape[0]:
                raise InputError(f"{where} has ids outside [0, {feat.shape[0]}) (min {v.min()}, max "
                                 f"{v.max()}); it does not match meta.pt - re-download the dataset")
            uv, inv = np.unique(v, return_inverse=True)  # sorted reads, each row once
            x = np.asarray(feat[uv], dtype=np.float32)[inv]
            uk, starts = np.unique(k, return_index=True)
            acc[uk - w0] += np.add.reduceat(x, starts, axis=0)
            cnt[uk - w0] += np.diff(np.append(starts, k.size))
        c = cnt[: w1 - w0]
        rows = np.zeros((w1 - w0, width), dtype=np.float32)
        np.divide(acc[: w1 - w0], c[:, None], out=rows, where=c[:, None] > 0)
        out[w0:w1] = rows.astype(np.float16)
    out.flush()
    del out


def _rechunk(blocks: Iterable[np.ndarray], block_rows: int) -> Iterator[np.ndarray]:
    """Re-cut row blocks from several arrays into blocks of exactly ``block_rows`` (last may be short)."""
    pending: list[np.ndarray] = []
    have = 0
    for b in blocks:
        while b.shape[0]:
            take = min(block_rows - have, b.shape[0])
            pending.append(b[:take])
            have += take
            b = b[take:]
            if have == block_rows:
                yield pending[0] if len(pending) == 1 else np.concatenate(pending)
                pending, have = [], 0
    if have:
        yield pending[0] if len(pending) == 1 else np.concatenate(pending)


def _memmap_rows(arr: np.ndarray, block_rows: int) -> Iterator[np.ndarray]:
    for s in range(0, arr.shape[0], block_rows):
        yield np.ascontiguousarray(arr[s:s + block_rows])


class MAG240MSource:
    """Streams MAG240M from ``root`` (``mag240m_kddcup2021/`` or its parent)."""

    def __init__(self, root: str | Path, with_authors_institutions: bool = False,
                 memory_bytes: int = 256 << 20) -> None:
        self.dir = resolve_dataset_dir(root, ("mag240m_kddcup2021",), "meta.pt")
        self.hetero = bool(with_authors_institutions)
        self.memory_bytes = int(memory_bytes)
        proc = self.dir / "processed"
        self.meta_path, self.split_path = self.dir / "meta.pt", self.dir / "split_dict.pt"
        self.feat_path = proc / "paper" / "node_feat.npy"
        self.feature_input = str(self.feat_path)  #: named in errors (author/institution rows are its means)
        self.label_path = proc / "paper" / "node_label.npy"
        self.edge_paths = {k: proc / v / "edge_index.npy" for k, v in _REL.items()}
        self._scratch: dict[str, Path] | None = None

    # -- headers and validation ------------------------------------------------
    @cached_property
    def meta(self) -> dict[str, int]:
        obj = load_torch_pickle(self.meta_path)
        keys = ("paper", "author", "institution", "num_classes")
        try:
            meta = {k: int(obj[k]) for k in keys}
        except (TypeError, KeyError, ValueError):
            raise InputError(f"{self.meta_path} must be a dict with integer {', '.join(keys)}; "
                             f"re-download the dataset") from None
        if min(meta.values()) < 0:
            raise InputError(f"{self.meta_path} has negative counts {meta}; re-download the dataset")
        return meta

    @cached_property
    def _headers(self) -> dict[str, NpyMemberInfo]:
        p = self.meta["paper"]
        feat, label = read_npy_info(self.feat_path), read_npy_info(self.label_path)
        if len(feat.shape) != 2 or feat.shape[0] != p or feat.dtype.kind != "f":
            raise InputError(f"{self.feat_path} has {feat.dtype} {feat.shape}, expected float ({p}, 768) "
                             f"per meta.pt; re-download the dataset")
        if label.shape not in ((p,), (p, 1)) or label.dtype.kind not in "fiu":
            raise InputError(f"{self.label_path} has {label.dtype} {label.shape}, expected float64 ({p},); "
                             f"re-download the dataset")
        out = {"feat": feat, "label": label}
        for rel in ("cites", "writes", "affiliated") if self.hetero else ("cites",):
            info = read_npy_info(self.edge_paths[rel])
            if len(info.shape) != 2 or info.shape[0] != 2 or info.dtype.kind not in "iu":
                raise InputError(f"{self.edge_paths[rel]} has {info.dtype} {info.shape}, expected int64 "
                                 f"(2, E); re-download the dataset")
            out[rel] = info
        return out

    @property
    def num_nodes(self) -> int:
        m = self.meta
        return m["paper"] + (m["author"] + m["institution"] if self.hetero else 0)

    def info(self) -> SourceInfo:
        h, m = self._headers, self.meta
        rels = ("cites", "writes", "affiliated") if self.hetero else ("cites",)
        extra: dict[str, Any] = {"lsc_evaluator": "MAG240MEvaluator", "source_dir": str(self.dir),
                                 "with_authors_institutions": self.hetero,
                                 "edges_per_relation": {r: int(h[r].shape[1]) for r in rels}}
        if self.hetero:
            p, a = m["paper"], m["author"]
            extra["node_type_ranges"] = {"paper": [0, p], "author": [p, p + a],
                                         "institution": [p + a, self.num_nodes]}
        return SourceInfo(
            name="MAG240M" + ("-full" if self.hetero else ""), num_nodes=self.num_nodes,
            num_features=int(h["feat"].shape[1]), num_classes=m["num_classes"],
            feature_dtype=h["feat"].dtype.name, num_edges_hint=sum(int(h[r].shape[1]) for r in rels),
            directed=True, ogb_evaluator=None,
            split_note="OGB-LSC split_dict.pt; 'test' = test-whole (labels hidden, -1)", extra=extra)

    def fingerprint(self) -> dict[str, Any]:
        paths = [self.meta_path, self.split_path, self.feat_path, self.label_path, self.edge_paths["cites"]]
        if self.hetero:
            paths += [self.edge_paths["writes"], self.edge_paths["affiliated"]]
        files = {}
        for p in paths:
            if not p.is_file():
                raise InputNotFoundError(f"{p} does not exist; re-download or re-extract the dataset")
            f = _file_id(p)
            files[str(p.relative_to(self.dir))] = {"size": f["size"], "mtime_ns": f["mtime_ns"]}
        return {"source": "MAG240M", "dir": str(self.dir), "with_authors_institutions": self.hetero,
                "files": files}

    # -- derived author / institution features ---------------------------------
    def _derive(self, dest: Path, ident: dict[str, Any], edges_rel: str, key_row: int,
                num_keys: int, feat: np.ndarray) -> None:
        marker = dest.with_name(dest.name + ".done")
        width = feat.shape[1]
        if marker.is_file() and dest.is_file() and dest.stat().st_size == num_keys * width * 2:
            try:
                if read_json(marker) == ident:
                    log.info("reusing %s", dest)
                    return
            except (OSError, ValueError):
                pass
        marker.unlink(missing_ok=True)
        log.info("computing %s (%d rows x %d)", dest.name, num_keys, width)
        with atomic_output(dest) as tmp:
            segment_mean_to_raw(open_npy_memmap(self.edge_paths[edges_rel]), key_row, num_keys, feat, tmp,
                                str(self.edge_paths[edges_rel]), self.memory_bytes)
        atomic_write_json(marker, ident)

    def prepare_scratch(self, workdir: Path) -> None:
        """With authors/institutions: derive their mean features (resumable, marker per table)."""
        if not self.hetero:
            return
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        m, width = self.meta, int(self._headers["feat"].shape[1])
        paths = {"author": workdir / "mag240m_author_feat.f16.raw",
                 "institution": workdir / "mag240m_institution_feat.f16.raw"}
        ident = {"version": _SCRATCH_VERSION, "features": _file_id(self.feat_path),
                 "writes": _file_id(self.edge_paths["writes"]), "shape": [m["author"], width]}
        self._derive(paths["author"], ident, "writes", 0, m["author"], open_npy_memmap(self.feat_path))
        authors = np.memmap(paths["author"], dtype=np.float16, mode="r", shape=(m["author"], width))
        ident = {"version": _SCRATCH_VERSION, "authors": ident,
                 "affiliated": _file_id(self.edge_paths["affiliated"]), "shape": [m["institution"], width]}
        self._derive(paths["institution"], ident, "affiliated", 1, m["institution"], authors)
        self._scratch = paths

    # -- streaming ---------------------------------------------------------------
    def iter_edges(self, block_edges: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        self._headers  # validate shapes before streaming
        yield from iter_edge_blocks(self.edge_paths["cites"], None, block_edges)
        if self.hetero:
            p, a = self.meta["paper"], self.meta["author"]
            for src, dst in iter_edge_blocks(self.edge_paths["writes"], None, block_edges):
                yield src + p, dst
            for src, dst in iter_edge_blocks(self.edge_paths["affiliated"], None, block_edges):
                yield src + p, dst + p + a

    def iter_features(self, block_rows: int) -> Iterator[np.ndarray]:
        papers = open_npy_memmap(self.feat_path)
        if not self.hetero:
            yield from _memmap_rows(papers, block_rows)
            return
        if self._scratch is None:
            raise RuntimeError("author/institution features: call prepare_scratch(workdir) first")
        width, m = papers.shape[1], self.meta
        tables = [papers] + [np.memmap(self._scratch[t], dtype=np.float16, mode="r", shape=(m[t], width))
                             for t in ("author", "institution")]
        yield from _rechunk((b for t in tables for b in _memmap_rows(t, block_rows)), block_rows)

    def labels(self) -> np.ndarray:
        """[N] int64: paper labels with NaN and -1 (hidden test labels) -> -1; -1 for other types."""
        out = np.full(self.num_nodes, -1, dtype=np.int64)
        pos = 0
        self._headers
        for block in iter_flat_blocks(self.label_path, None, 1 << 20):
            out[pos:pos + len(block)] = float_labels_to_int(block, str(self.label_path))
            pos += len(block)
        return out

    def splits(self) -> dict[str, np.ndarray]:
        """train / valid / test paper ids; 'test' is OGB's test-whole (hidden labels)."""
        obj = load_torch_pickle(self.split_path)
        if not isinstance(obj, dict):
            raise InputError(f"{self.split_path} must hold a dict of id arrays; re-download the dataset")
        test_key = "test" if "test" in obj else "test-whole"
        if "train" not in obj or "valid" not in obj or test_key not in obj:
            raise InputError(f"{self.split_path} has keys {sorted(obj)}, expected train/valid/test; "
                             f"re-download the dataset")
        p = self.meta["paper"]
        return {k: check_split_ids(obj[src], p, f"{self.split_path} [{src!r}]")
                for k, src in (("train", "train"), ("valid", "valid"), ("test", test_key))}
