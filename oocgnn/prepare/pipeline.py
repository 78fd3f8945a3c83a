"""Build a dataset store from a :class:`~oocgnn.prepare.source.GraphSource`.

Stages (each leaves a marker in ``STORE/.work/stages`` when its outputs are
complete, so a killed build re-run with the same command resumes after the last
finished stage and produces an identical store):

``scratch``   source-specific derivations (spills, MAG240M author features), run on
              every start because sources track their own done-markers;
``csr_orig``  symmetric CSR in original ids, out of core (for partitioning);
``partition`` METIS, multilevel or streaming LDG; records the edge-cut fraction
              (multilevel keeps its own level markers in ``.work/multilevel``);
``csr``       final CSR in store ids (partitions are contiguous id ranges);
``features``  features permuted into store order (two sequential passes if big);
``meta``      labels, splits, perm, partition pointer as zarr arrays, manifest.

The store is marked finished by ``COMPLETE``, written last.  While building,
``.building.json`` holds the fingerprint of inputs and options, so a different
command pointed at the same ``--out`` is refused instead of mixing outputs.
"""
from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import zarr

from oocgnn.errors import ConfigError, InputError, OutputExistsError
from oocgnn.prepare.csr import build_csr, relabel_csr, relabel_passes
from oocgnn.store.csr import iter_csr_edges
from oocgnn.prepare.features import write_permuted_features
from oocgnn.prepare.partition import default_num_partitions, partition_graph
from oocgnn.prepare.source import GraphSource
from oocgnn.store import format as fmt
from oocgnn.store.checksum import checksum_array
from oocgnn.store.reader import Dataset, open_dataset
from oocgnn.utils.atomic import atomic_write_json, read_json
from oocgnn.utils.memory import PeakRSSMonitor, current_rss, format_size

log = logging.getLogger(__name__)


@dataclass
class PrepareOptions:
    """Options of ``oocgnn prepare`` that shape the store (all but the budget and UI)."""

    undirected: bool = True
    partitions: int | None = None       #: None = a default from the graph size
    partitioner: str = "auto"
    feature_dtype: str = "float32"
    seed: int = 0

    def result_affecting(self) -> dict[str, Any]:
        return asdict(self)


#: RAM one streamed input edge costs while a block is validated, symmetrised and
#: scattered (ids, reversed copies, bucket ids, argsort, keys).
_BYTES_PER_BLOCK_EDGE = 256
#: RAM per node held across stages: degree counts, perm and inverse perm (int64).
_BYTES_PER_NODE = 24
#: Smallest block/sort working space worth running with.
_MIN_WORKING = 64 << 20


def working_budget(memory_budget: int, num_nodes: int) -> int:
    """What is left for block and sort buffers once the interpreter's own RSS and
    the O(N) bookkeeping arrays are paid for; stages size their buffers from it so
    the *process* stays under ``--memory-budget``."""
    fixed = current_rss() + _BYTES_PER_NODE * num_nodes
    if memory_budget < fixed + _MIN_WORKING:
        raise ConfigError(
            f"--memory-budget {format_size(memory_budget)} is too small for {num_nodes:,} nodes: the process and its "
            f"per-node arrays already need {format_size(fixed)}; use at least {format_size(fixed + _MIN_WORKING)}")
    return memory_budget - fixed


class _Stages:
    """Stage markers of one build: ``done(name)`` / ``finish(name, info)``."""

    def __init__(self, work: Path) -> None:
        self.dir = work / "stages"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.report: dict[str, Any] = {}

    def done(self, name: str) -> dict[str, Any] | None:
        path = self.dir / f"{name}.json"
        return read_json(path) if path.exists() else None

    @staticmethod
    def timed(fn: Callable[[], Any]) -> dict[str, Any]:
        t0, c0 = time.perf_counter(), time.process_time()
        with PeakRSSMonitor() as mon:
            fn()
        return {"time_s": round(time.perf_counter() - t0, 3), "peak_rss_bytes": mon.peak,
                "cpu_s": round(time.process_time() - c0, 3)}

    def run(self, name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        info = self.done(name)
        if info is not None:
            log.info("stage %s: already done, skipping", name)
            self.report[name] = {**info.get("_report", {}), "resumed": True}
            return info
        t0, c0 = time.perf_counter(), time.process_time()
        with PeakRSSMonitor() as mon:
            info = fn()
        elapsed = time.perf_counter() - t0
        info["_report"] = {"time_s": round(elapsed, 3), "peak_rss_bytes": mon.peak,
                           "cpu_s": round(time.process_time() - c0, 3)}  # all threads: > time_s when overlapped
        self.report[name] = info["_report"]
        log.info("stage %s: %.1f s, peak RSS %s", name, elapsed, format_size(mon.peak))
        atomic_write_json(self.dir / f"{name}.json", info)
        return info


def _fingerprint(source: GraphSource, options: PrepareOptions) -> dict[str, Any]:
    return json.loads(json.dumps({
        "schema_version": fmt.SCHEMA_VERSION,
        "source": source.fingerprint(),
        "options": options.result_affecting(),
    }, default=str))


def _claim_output(out: Path, fingerprint: dict[str, Any], overwrite: bool) -> bool:
    """Decide what to do with ``out``; returns True when a finished store can be reused."""
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"--out {out} is a file; choose a directory path for the store")
    complete, building = out / fmt.COMPLETE, out / fmt.BUILDING
    if out.is_dir() and any(out.iterdir()):
        if complete.exists():
            same = _stored_fingerprint(out) == fingerprint
            if same and not overwrite:
                return True
            if not overwrite:
                raise OutputExistsError(
                    f"{out} holds a finished store made from other inputs or options; pass --overwrite to replace it "
                    f"or choose another --out")
        elif building.exists():
            if read_json(building).get("fingerprint") != fingerprint and not overwrite:
                raise OutputExistsError(
                    f"{out} holds an unfinished store of other inputs or options; re-run the original command to "
                    f"resume it, or pass --overwrite to start over")
            if not overwrite:
                return False
        else:
            raise OutputExistsError(f"{out} exists and is not an oocgnn store; choose an empty or new --out")
        log.info("--overwrite: removing %s", out)
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(building, {"fingerprint": fingerprint})
    return False


def _stored_fingerprint(out: Path) -> Any:
    try:
        return json.loads((out / "zarr.json").read_text())["attributes"]["oocgnn"]["fingerprint"]
    except (OSError, KeyError, ValueError):
        return None


def prepare_store(source: GraphSource, out: str | Path, options: PrepareOptions | None = None, *,
                  memory_budget: int, overwrite: bool = False, progress: bool = True) -> Dataset:
    """Build (or resume, or reuse) the store at ``out`` from ``source``."""
    options = options or PrepareOptions()
    out = Path(out)
    fingerprint = _fingerprint(source, options)
    if _claim_output(out, fingerprint, overwrite):
        log.info("%s is already a finished store of the same inputs; reusing it (--overwrite rebuilds)", out)
        return open_dataset(out)
    work = out / fmt.WORK
    stages = _Stages(work)
    t_start = time.perf_counter()

    # Always called, even when resuming: sources keep their own done-markers and
    # need the call to locate their scratch files (spills, derived features).
    stages.report["scratch"] = stages.timed(lambda: source.prepare_scratch(work / "source"))
    info = source.info()
    n, what = info.num_nodes, info.name
    if n < 1:
        raise InputError(f"{what}: the graph has no nodes")
    memory_budget = working = working_budget(memory_budget, n)  # what stages may size buffers from
    block_edges = int(max(1 << 16, min(1 << 26, working // _BYTES_PER_BLOCK_EDGE)))

    def source_edges():
        return source.iter_edges(block_edges)

    def csr_orig() -> dict[str, Any]:
        r = build_csr(source_edges, n, work / "orig_indptr.npy", work / "orig_indices.npy", work,
                      symmetric=True, memory_budget=memory_budget, edges_hint=info.num_edges_hint,
                      what=what, progress=progress)
        return asdict(r)

    orig = stages.run("csr_orig", csr_orig)

    def partition() -> dict[str, Any]:
        ip = np.load(work / "orig_indptr.npy", mmap_mode="r")
        ix = np.load(work / "orig_indices.npy", mmap_mode="r")
        num_parts = options.partitions or default_num_partitions(n)
        r = partition_graph(ip, ix, num_parts, options.partitioner, memory_budget=memory_budget,
                            seed=options.seed, progress=progress, workdir=work / "multilevel")
        perm = np.argsort(r.part, kind="stable").astype(np.int64)
        ptr = np.concatenate([[0], np.cumsum(np.bincount(r.part, minlength=num_parts))]).astype(np.int64)
        np.save(work / "perm.npy", perm)
        np.save(work / "partition_ptr.npy", ptr)
        sizes = np.diff(ptr)
        return {"method": r.method, "num_partitions": num_parts, "edge_cut_fraction": r.edge_cut_fraction,
                "min_size": int(sizes.min()), "max_size": int(sizes.max())}

    part = stages.run("partition", partition)
    perm = np.load(work / "perm.npy")
    inv_perm = np.empty_like(perm)
    inv_perm[perm] = np.arange(n, dtype=np.int64)

    def csr_final() -> dict[str, Any]:
        passes = relabel_passes(n, int(orig["num_entries"]), memory_budget) if options.undirected else 0
        if passes:  # the symmetric CSR holds every entry: copy its rows under the new ids
            r = relabel_csr(work / "orig_indptr.npy", work / "orig_indices.npy", inv_perm, out / fmt.INDPTR,
                            out / fmt.INDICES, passes=passes, progress=progress)
        else:
            if options.undirected:  # relabel the symmetric CSR's entries through sort buckets
                ip = np.load(work / "orig_indptr.npy", mmap_mode="r")
                ix = np.load(work / "orig_indices.npy", mmap_mode="r")
                edges = lambda: iter_csr_edges(ip, ix, block_edges)  # noqa: E731
                hint = int(orig["num_entries"])
            else:
                edges, hint = source_edges, info.num_edges_hint
            r = build_csr(edges, n, out / fmt.INDPTR, out / fmt.INDICES, work, symmetric=False,
                          memory_budget=memory_budget, relabel=inv_perm, edges_hint=hint, what=what, progress=progress)
        return {"num_entries": r.num_entries, "checksums": {fmt.INDPTR: r.indptr_checksum, fmt.INDICES: r.indices_checksum}}

    csr = stages.run("csr", csr_final)

    def features() -> dict[str, Any]:
        rows = max(1, (64 << 20) // max(1, info.num_features * 4))
        again = (lambda: source.iter_features(rows)) if getattr(source, "cheap_feature_rereads", False) else None
        c = write_permuted_features(source.iter_features(rows),
                                    inv_perm, out / fmt.FEATURES, work, num_features=info.num_features,
                                    dtype=options.feature_dtype, memory_budget=memory_budget,
                                    what=getattr(source, "feature_input", None) or what,
                                    progress=progress, blocks_again=again)
        return {"checksums": {fmt.FEATURES: c}}

    feats = stages.run("features", features)

    def meta() -> dict[str, Any]:
        return _write_meta(out, source, info, perm, inv_perm, work, fingerprint, options, orig, part, csr, feats)

    stages.run("meta", meta)
    report = {"stages": stages.report, "total_time_s": round(time.perf_counter() - t_start, 3)}
    atomic_write_json(out / "prepare_report.json", report)
    atomic_write_json(out / fmt.COMPLETE, {"schema_version": fmt.SCHEMA_VERSION})
    (out / fmt.BUILDING).unlink(missing_ok=True)
    getattr(source, "close", lambda: None)()  # a source's background spill must not write into a deleted folder
    shutil.rmtree(work, ignore_errors=True)
    return open_dataset(out)


def _write_meta(out: Path, source: GraphSource, info, perm: np.ndarray, inv_perm: np.ndarray, work: Path,
                fingerprint: dict, options: PrepareOptions, orig: dict, part: dict, csr: dict, feats: dict) -> dict:
    n, what = info.num_nodes, info.name
    labels = np.asarray(source.labels(), dtype=np.int64).reshape(-1)
    if labels.shape[0] != n:
        raise InputError(f"{what}: {labels.shape[0]} labels for {n} nodes; the label file does not match the graph")
    if labels.size and (labels.min() < -1 or labels.max() >= info.num_classes):
        raise InputError(f"{what}: labels outside [-1, {info.num_classes}); the label file is corrupted")
    ldt = fmt.label_dtype(info.num_classes)
    group = zarr.open_group(str(out), mode="a")
    checksums: dict[str, str] = {**csr["checksums"], **feats["checksums"]}

    def put(name: str, arr: np.ndarray) -> None:
        z = group.create_array(name, shape=arr.shape, dtype=arr.dtype, chunks=(min(fmt.NODE_CHUNK, max(1, arr.shape[0])),),
                               compressors=None, overwrite=True)
        z[:] = arr
        checksums[name] = checksum_array(arr)

    put(fmt.LABELS, labels[perm].astype(ldt))
    put(fmt.PERM, perm)
    put(fmt.PARTITION_PTR, np.load(work / "partition_ptr.npy"))
    split_counts: dict[str, int] = {}
    seen = np.zeros(n, dtype=bool)
    for name, ids in source.splits().items():
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() >= n):
            raise InputError(f"{what}: split {name!r} has node ids outside [0, {n}); the split file is corrupted")
        if seen[ids].any() or np.unique(ids).size != ids.size:
            raise InputError(f"{what}: split {name!r} overlaps another split or repeats ids; the split files are inconsistent")
        seen[ids] = True
        put(f"{fmt.SPLITS}/{name}", np.sort(inv_perm[ids]))
        split_counts[name] = int(ids.size)
    manifest = {
        "schema_version": fmt.SCHEMA_VERSION,
        "num_nodes": n,
        "num_edges": int(csr["num_entries"]),
        "num_features": info.num_features,
        "num_classes": info.num_classes,
        "feature_dtype": options.feature_dtype,
        "indices_dtype": fmt.indices_dtype(n),
        "label_dtype": ldt,
        "source": {"name": what, "ogb_evaluator": info.ogb_evaluator, "split_note": info.split_note,
                   "directed_input": info.directed, "extra": info.extra},
        "options": options.result_affecting(),
        "graph": {"input_edges": int(orig["input_edges"]), "self_loops_dropped": int(orig["self_loops_dropped"]),
                  "symmetrised": options.undirected},
        "partition": {k: part[k] for k in ("method", "num_partitions", "edge_cut_fraction", "min_size", "max_size")},
        "splits": split_counts,
        "checksums": checksums,
        "fingerprint": fingerprint,
    }
    group.attrs["oocgnn"] = json.loads(json.dumps(manifest, default=str))
    return {}
