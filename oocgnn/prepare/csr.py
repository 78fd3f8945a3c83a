"""Out-of-core CSR construction: count, bucket, sort.

Building the symmetric, de-duplicated adjacency of papers100M in RAM is what
kills OGB and PyG users (``to_undirected`` on 3.2 B int64 pairs).  We never hold
the edge list: three streamed passes need RAM for one block of edges, one
``[N]`` int64 degree array, and one bucket of sort keys, the latter sized from
the memory budget.

1. *count*: stream the edges once, validate ids, drop self-loops, add the reverse
   direction when symmetrising, and count entries per row;
2. *scatter*: stream again, and append each entry as an int64 key
   ``(row - bucket_start) * N + col`` to the file of its row-range bucket,
   buckets cut so each one's keys fit the sort budget;
3. *sort*: per bucket, load, sort in place, drop duplicates, and append the
   column ids to ``indices.npy`` and the row counts to ``indptr``.

Keys sort by (row, col), so every neighbour list comes out sorted.  All offsets
are int64; column ids are int32 while ``N < 2**31``.
"""
from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
from tqdm.auto import tqdm

from oocgnn.errors import InputError, translate_os_error
from oocgnn.store.format import indices_dtype
from oocgnn.store.npyfile import NpyWriter
from oocgnn.utils.mapped import release_pages

log = logging.getLogger(__name__)

EdgeBlocks = Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]]

#: Bytes of RAM one edge key needs while its bucket is sorted and de-duplicated
#: (key 8 + duplicate mask 1 + compacted copy 8, plus slack; 20 measured 0.15 % over
#: a 12 GB budget on 2 B entries).
_SORT_BYTES_PER_KEY = 22
#: Keys decoded to (row, col) at a time after sorting.
_DECODE_SLICE = 1 << 24


@dataclass
class CSRResult:
    num_nodes: int
    num_entries: int          #: stored (directed) entries after symmetrising and de-duplication
    input_edges: int          #: edges the source yielded
    self_loops_dropped: int
    indptr_checksum: str
    indices_checksum: str


def _validated(src: np.ndarray, dst: np.ndarray, num_nodes: int, what: str, block_no: int) -> tuple[np.ndarray, np.ndarray]:
    src = np.asarray(src, dtype=np.int64).reshape(-1)
    dst = np.asarray(dst, dtype=np.int64).reshape(-1)
    if src.shape != dst.shape:
        raise InputError(f"{what}: edge block {block_no} has {src.size} sources but {dst.size} targets; the input is corrupted")
    if src.size:
        lo = min(int(src.min()), int(dst.min()))
        hi = max(int(src.max()), int(dst.max()))
        if lo < 0 or hi >= num_nodes:
            bad = lo if lo < 0 else hi
            raise InputError(
                f"{what}: edge endpoint {bad} is outside [0, {num_nodes}) (edge block {block_no}); "
                f"the edge list or the node count is corrupted"
            )
    return src, dst


def _entries(edge_blocks: EdgeBlocks, num_nodes: int, symmetric: bool, relabel: np.ndarray | None,
             what: str, stats: dict) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Validated (row, col) entries: self-loops dropped, relabelled, symmetrised."""
    for k, (src, dst) in enumerate(edge_blocks()):
        src, dst = _validated(src, dst, num_nodes, what, k)
        stats["input_edges"] += src.size
        keep = src != dst
        stats["self_loops"] += int(src.size - keep.sum())
        if not keep.all():
            src, dst = src[keep], dst[keep]
        if relabel is not None:
            src, dst = relabel[src], relabel[dst]
        if symmetric:
            src, dst = np.concatenate([src, dst]), np.concatenate([dst, src])
        yield src, dst


def max_bucket_rows(num_nodes: int) -> int:
    """Most rows one sort bucket may span so that ``local_row * N + col`` fits int64."""
    return max(1, (2**63 - 1) // max(num_nodes, 1) - 1)


def _bucket_bounds(counts: np.ndarray, max_keys: int, num_nodes: int) -> np.ndarray:
    """Row boundaries such that each bucket holds at most ``max_keys`` entries
    (a single row may exceed it; it then gets a bucket of its own)."""
    max_rows = max_bucket_rows(num_nodes)
    cum = np.cumsum(counts, dtype=np.int64)
    bounds = [0]
    while bounds[-1] < num_nodes:
        start = bounds[-1]
        base = cum[start - 1] if start > 0 else 0
        stop = int(np.searchsorted(cum, base + max_keys, side="right"))
        stop = min(max(stop, start + 1), start + max_rows, num_nodes)
        bounds.append(stop)
    return np.asarray(bounds, dtype=np.int64)


def build_csr(edge_blocks: EdgeBlocks, num_nodes: int, out_indptr: Path, out_indices: Path, workdir: Path, *,
              symmetric: bool, memory_budget: int, relabel: np.ndarray | None = None,
              edges_hint: int = 0, what: str = "edge list", progress: bool = True) -> CSRResult:
    """Build a sorted, de-duplicated, self-loop-free CSR from streamed edge blocks.

    Args:
        edge_blocks: a callable returning a fresh iterator of ``(src, dst)`` blocks
            (it is called twice).
        relabel: optional ``[N]`` map applied to both endpoints (old id -> new id).
        memory_budget: bytes available for the sort buckets.
        what: names the input in error messages.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    stats = {"input_edges": 0, "self_loops": 0}
    factor = 2 if symmetric else 1
    counts = np.zeros(num_nodes, dtype=np.int64)
    with tqdm(total=edges_hint or None, unit="edge", unit_scale=True, desc="CSR 1/3 count", disable=not progress) as bar:
        for rows, _ in _entries(edge_blocks, num_nodes, symmetric, relabel, what, stats):
            counts += np.bincount(rows, minlength=num_nodes)
            bar.update(rows.size // factor)
    total = int(counts.sum())
    max_keys = max(1024, memory_budget // _SORT_BYTES_PER_KEY)
    bounds = _bucket_bounds(counts, max_keys, num_nodes)
    num_buckets = len(bounds) - 1
    log.info("CSR: %d entries before de-duplication, %d sort bucket(s)", total, num_buckets)

    bucket_dir = workdir / "csr_buckets"
    shutil.rmtree(bucket_dir, ignore_errors=True)
    bucket_dir.mkdir(parents=True)
    files = [open(bucket_dir / f"{b:05d}.keys", "wb") for b in range(num_buckets)]
    try:
        stats = {"input_edges": 0, "self_loops": 0}
        with tqdm(total=edges_hint or None, unit="edge", unit_scale=True, desc="CSR 2/3 scatter", disable=not progress) as bar:
            for rows, cols in _entries(edge_blocks, num_nodes, symmetric, relabel, what, stats):
                if num_buckets == 1:
                    files[0].write(memoryview(rows * num_nodes + cols))
                else:
                    bucket = np.searchsorted(bounds, rows, side="right") - 1
                    order = np.argsort(bucket, kind="stable")
                    rows, cols, bucket = rows[order], cols[order], bucket[order]
                    cuts = np.searchsorted(bucket, np.arange(num_buckets + 1))
                    for b in np.flatnonzero(np.diff(cuts)):
                        s, e = cuts[b], cuts[b + 1]
                        files[b].write(memoryview((rows[s:e] - bounds[b]) * num_nodes + cols[s:e]))
                bar.update(rows.size // factor)
    except OSError as exc:
        raise translate_os_error(exc, bucket_dir, "writing sort buckets in") from exc
    finally:
        for f in files:
            f.close()

    indptr = NpyWriter(out_indptr, np.int64)
    indices = NpyWriter(out_indices, indices_dtype(num_nodes))
    indptr.append(np.zeros(1, dtype=np.int64))
    offset = 0
    try:
        with tqdm(total=num_buckets, unit="bucket", desc="CSR 3/3 sort", disable=not progress) as bar:
            for b in range(num_buckets):
                path = bucket_dir / f"{b:05d}.keys"
                keys = np.fromfile(path, dtype=np.int64)
                path.unlink()
                keys.sort()
                if keys.size > 1:
                    keep = np.empty(keys.size, dtype=bool)
                    keep[0] = True
                    np.not_equal(keys[1:], keys[:-1], out=keep[1:])
                    keys = keys[keep]
                    del keep
                row_counts = np.zeros(int(bounds[b + 1] - bounds[b]), dtype=np.int64)
                for s in range(0, keys.size, _DECODE_SLICE):  # slices: no full-size row/col copies
                    local_rows, cols = np.divmod(keys[s:s + _DECODE_SLICE], num_nodes)
                    row_counts += np.bincount(local_rows, minlength=row_counts.size)
                    indices.append(cols)
                del keys
                indptr.append(offset + np.cumsum(row_counts, dtype=np.int64))
                offset += int(row_counts.sum())
                bar.update(1)
        result = CSRResult(
            num_nodes=num_nodes, num_entries=offset, input_edges=stats["input_edges"],
            self_loops_dropped=stats["self_loops"],
            indptr_checksum=indptr.close(), indices_checksum=indices.close(),
        )
    except BaseException:
        indptr.abort()
        indices.abort()
        raise
    shutil.rmtree(bucket_dir, ignore_errors=True)
    return result


def iter_csr_edges(indptr: np.ndarray, indices: np.ndarray, block_edges: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Stream the entries of a CSR (memmaps welcome) as ``(row, col)`` blocks."""
    num_nodes = len(indptr) - 1
    row = 0
    while row < num_nodes:
        start = int(indptr[row])
        stop_row = int(np.searchsorted(indptr, start + block_edges, side="right")) - 1
        stop_row = min(max(stop_row, row + 1), num_nodes)
        ptr = np.asarray(indptr[row:stop_row + 1])
        cols = np.asarray(indices[ptr[0]:ptr[-1]], dtype=np.int64)
        rows = np.repeat(np.arange(row, stop_row, dtype=np.int64), np.diff(ptr))
        release_pages(indices)  # streaming a 7 GB memmap would otherwise map all of it into RSS
        yield rows, cols
        row = stop_row
