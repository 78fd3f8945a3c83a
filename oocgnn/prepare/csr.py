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
are int64; column ids are int32 while ``N < 2**31``.  The per-edge work of each
pass is one numba loop (:mod:`oocgnn.prepare.csr_kernels`), not a chain of numpy
temporaries.
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
from oocgnn.prepare.csr_kernels import (bucket_keys, count_entries, dedupe_decode, scatter_relabelled_rows,
                                        sort_rows)
from oocgnn.store.format import indices_dtype
from oocgnn.store.npyfile import NpyWriter
from oocgnn.utils.buffers import empty_aligned
from oocgnn.utils.mapped import release_pages

log = logging.getLogger(__name__)

EdgeBlocks = Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]]

#: Bytes of RAM one edge key needs while its bucket is sorted and de-duplicated
#: (key 8 + duplicate mask 1 + compacted copy 8, plus slack; 20 measured 0.15 % over
#: a 12 GB budget on 2 B entries).
_SORT_BYTES_PER_KEY = 22


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


def _int64_blocks(edge_blocks: EdgeBlocks, num_nodes: int, what: str) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """``(block_no, src, dst)`` as flat int64 arrays of equal length (ids are checked by the kernels)."""
    for k, (src, dst) in enumerate(edge_blocks()):
        src = np.ascontiguousarray(src, dtype=np.int64).reshape(-1)
        dst = np.ascontiguousarray(dst, dtype=np.int64).reshape(-1)
        if src.shape != dst.shape:
            _validated(src, dst, num_nodes, what, k)  # raises the one-line error
        yield k, src, dst


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
    relabel_arr = np.empty(0, dtype=np.int64) if relabel is None else np.ascontiguousarray(relabel, dtype=np.int64)
    counts = np.zeros(num_nodes, dtype=np.int64)
    with tqdm(total=edges_hint or None, unit="edge", unit_scale=True, desc="CSR 1/3 count", disable=not progress) as bar:
        for k, src, dst in _int64_blocks(edge_blocks, num_nodes, what):
            loops, ok = count_entries(src, dst, num_nodes, relabel_arr, symmetric, counts)
            if not ok:
                _validated(src, dst, num_nodes, what, k)  # raises the one-line error
            stats["input_edges"] += src.size
            stats["self_loops"] += int(loops)
            bar.update(src.size)
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
        keys = np.empty(0, dtype=np.int64)  # grown to the largest block, then reused
        offsets = np.zeros(num_buckets + 1, dtype=np.int64)
        with tqdm(total=edges_hint or None, unit="edge", unit_scale=True, desc="CSR 2/3 scatter", disable=not progress) as bar:
            for k, src, dst in _int64_blocks(edge_blocks, num_nodes, what):
                if keys.size < 2 * src.size:
                    keys = np.empty(2 * src.size, dtype=np.int64)
                if not bucket_keys(src, dst, num_nodes, relabel_arr, symmetric, bounds, keys, offsets):
                    _validated(src, dst, num_nodes, what, k)  # raises the one-line error
                for b in np.flatnonzero(np.diff(offsets)):
                    files[b].write(memoryview(keys[offsets[b]:offsets[b + 1]]))
                bar.update(src.size)
        del keys
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
                row_counts = np.zeros(int(bounds[b + 1] - bounds[b]), dtype=np.int64)
                cols = np.empty(keys.size, dtype=indices.dtype)
                kept = dedupe_decode(keys, num_nodes, row_counts, cols)
                del keys
                indices.append(cols[:kept])
                del cols
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


#: Old CSR entries read per step of :func:`relabel_csr` (a memmap window, released after each).
_RELABEL_READ_ENTRIES = 1 << 24
#: Most sequential passes over the old CSR before the sort buckets of :func:`build_csr` win.
MAX_RELABEL_PASSES = 2


def relabel_passes(num_nodes: int, num_entries: int, memory_budget: int) -> int:
    """Passes over the old CSR :func:`relabel_csr` needs in ``memory_budget``; 0 when more than
    :data:`MAX_RELABEL_PASSES` (then :func:`build_csr` relabels through sort buckets)."""
    id_bytes = np.dtype(indices_dtype(num_nodes)).itemsize
    # old indptr, new indptr, np.diff's temporary (int64) and the id map, plus one window of old ids
    room = memory_budget - (24 + id_bytes) * (num_nodes + 1) - _RELABEL_READ_ENTRIES * id_bytes
    if room <= 0:
        return 0
    passes = max(1, -(-num_entries * id_bytes // room))
    return passes if passes <= MAX_RELABEL_PASSES else 0


def relabel_csr(old_indptr_path: Path, old_indices_path: Path, inv_perm: np.ndarray, out_indptr: Path,
                out_indices: Path, *, passes: int = 1, progress: bool = True) -> CSRResult:
    """The same de-duplicated CSR under new ids: old row ``u`` becomes row ``inv_perm[u]``, ids mapped.

    Why: rebuilding it through :func:`build_csr` (count, bucket, sort 2E keys, with
    a random id lookup per entry in each pass) took ~3 s of a 2 M-node prepare.  Here
    each pass streams the old ids in order, scatters the rows whose new id falls in
    the pass's range into a RAM table, sorts each row (short rows: insertion sort) and
    appends the range: ~1 s.  ``passes`` from :func:`relabel_passes`.  The files are
    byte-identical to ``build_csr``'s.
    """
    old_indptr = np.load(old_indptr_path)
    old_indices = np.load(old_indices_path, mmap_mode="r")
    num_nodes = len(old_indptr) - 1
    id_dtype = np.dtype(indices_dtype(num_nodes))
    inv = np.ascontiguousarray(inv_perm, dtype=id_dtype)  # int32 when it can: the map is looked up at random
    new_indptr = np.zeros(num_nodes + 1, dtype=np.int64)
    new_indptr[1:][inv] = np.diff(old_indptr)
    np.cumsum(new_indptr, out=new_indptr)
    total = int(new_indptr[-1])
    # new-row ranges of about total / passes entries each
    cuts = np.unique(np.searchsorted(new_indptr, np.linspace(0, total, passes + 1)[1:-1], side="right").tolist())
    bounds = [0, *[int(c) for c in cuts if 0 < c < num_nodes], num_nodes]
    table = empty_aligned(max(int(new_indptr[b] - new_indptr[a]) for a, b in zip(bounds, bounds[1:])), id_dtype)
    indptr, indices = NpyWriter(out_indptr, np.int64), NpyWriter(out_indices, id_dtype, direct=True)
    try:
        indptr.append(new_indptr)
        with tqdm(total=2 * num_nodes * (len(bounds) - 1), unit="row", unit_scale=True, desc="CSR relabel",
                  disable=not progress) as bar:
            for first, last in zip(bounds, bounds[1:]):
                lo = 0
                while lo < num_nodes:  # stream the old ids in windows
                    hi = int(np.searchsorted(old_indptr, old_indptr[lo] + _RELABEL_READ_ENTRIES, side="right")) - 1
                    hi = min(max(hi, lo + 1), num_nodes)
                    ids = old_indices[old_indptr[lo]:old_indptr[hi]]
                    scatter_relabelled_rows(old_indptr, ids, lo, hi, inv, new_indptr, first, last, table)
                    release_pages(old_indices)
                    bar.update(hi - lo)
                    lo = hi
                base = int(new_indptr[first])
                for lo in range(first, last, 1 << 20):
                    sort_rows(new_indptr, table, lo, min(lo + (1 << 20), last), base)
                    bar.update(min(1 << 20, last - lo))
                bar.update(num_nodes - (last - first))
                indices.append(table[:int(new_indptr[last]) - base])
        return CSRResult(num_nodes=num_nodes, num_entries=total, input_edges=total, self_loops_dropped=0,
                         indptr_checksum=indptr.close(), indices_checksum=indices.close())
    except BaseException:
        indptr.abort()
        indices.abort()
        raise
