"""Write node features in store order with bounded RAM.

Sources stream features in their original order; the store wants row ``i`` to be
original row ``perm[i]``.  Gathering rows at random from a 57 GB file would be
random I/O, so the rows are placed in a RAM table of store rows and the table
is written out in order.  When the matrix is larger than the table:

* if the source re-reads at disk speed (an uncompressed or already spilled
  input, ``blocks_again``) and at most :data:`MAX_RANGE_PASSES` tables cover
  it, it is read once per range of store rows, keeping the rows that fall in
  the range: no intermediate files, one write;
* otherwise each source block is scattered into per-range bucket files (rows
  tagged with their new id), then one bucket at a time is loaded, placed, and
  appended to ``features.npy`` (an extra write and read of the whole matrix).
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
from tqdm.auto import tqdm

from oocgnn.errors import InputError, translate_os_error
from oocgnn.store.npyfile import NpyWriter
from oocgnn.utils.buffers import aligned_rows, empty_aligned


def _first_bad_row(block: np.ndarray, limit: float) -> int | None:
    """Index of the first row of ``block`` holding NaN, an infinity, or a value past ``limit``
    (the largest finite value of the store's dtype), or None.  The common case costs two
    reductions and no copy (a NaN makes ``max`` NaN, and every comparison with NaN is False)."""
    if block.dtype.kind == "b" or not block.size:
        return None
    if block.dtype.kind == "f":  # a limit past the block's own range would be cast to inf and pass inf
        limit = min(limit, float(np.finfo(block.dtype).max))
    if -limit <= float(block.min()) and float(block.max()) <= limit:
        return None
    with np.errstate(invalid="ignore"):
        ok = (block >= -limit) & (block <= limit)
    return int(np.flatnonzero(~ok.all(axis=1))[0])


def _checked_blocks(blocks: Iterable[np.ndarray], num_nodes: int, num_features: int, what: str,
                    dtype: np.dtype):
    """``(first row, block)`` pairs, refusing wrong widths, wrong row counts, and values the store
    could not hold: NaN and infinities (which would train silently to chance), and finite values
    past the store dtype's range (float16: 65504), named by their first row (= original node id)."""
    seen = 0
    limit = float(np.finfo(dtype).max)
    for block in blocks:
        block = np.asarray(block)
        if block.ndim != 2 or block.shape[1] != num_features:
            raise InputError(f"{what}: feature block of shape {block.shape}, expected (rows, {num_features})")
        if seen + block.shape[0] > num_nodes:
            raise InputError(f"{what}: more than {num_nodes} feature rows; node count and features disagree")
        bad = _first_bad_row(block, limit)
        if bad is not None:
            row = block[bad]
            floats = row.dtype.kind in "fc"
            if floats and np.isnan(row).any():
                problem = "NaN; fix or impute that row"
            elif floats and np.isinf(row).any():
                problem = "an infinity; fix or impute that row"
            else:
                problem = f"a value beyond the range of {dtype.name} ({limit:g}); use --feature-dtype float32 or rescale"
            raise InputError(f"{what}: feature row {seen + bad} (original node id) holds {problem}, then re-run")
        yield seen, block
        seen += block.shape[0]
    if seen != num_nodes:
        raise InputError(f"{what}: only {seen} of {num_nodes} feature rows; the feature file is truncated")


#: Most sequential read passes over a cheaply re-readable source before bucket
#: files win: buckets cost one extra write and one extra read of the matrix.
MAX_RANGE_PASSES = 2
#: RAM kept free beside the table for a source block and its masked copies.
_BLOCK_RESERVE = 4 * (64 << 20)


def write_permuted_features(blocks: Iterable[np.ndarray], inv_perm: np.ndarray, out: Path, workdir: Path, *,
                            num_features: int, dtype: str, memory_budget: int, what: str,
                            progress: bool = True,
                            blocks_again: Callable[[], Iterable[np.ndarray]] | None = None) -> str:
    """Write ``features.npy`` with row ``inv_perm[j]`` = source row ``j``; returns its checksum.

    ``blocks_again``: a factory of fresh iterators over the same rows, given only
    when re-reading the source is about as cheap as reading a file (see module doc).
    """
    num_nodes = len(inv_perm)
    dtype = np.dtype(dtype)
    row_bytes = num_features * dtype.itemsize
    table_rows = max(1, (memory_budget - _BLOCK_RESERVE) // max(row_bytes, 1))
    passes = -(-num_nodes // table_rows)
    writer = NpyWriter(out, dtype, row_shape=(num_features,), direct=True)
    bar = tqdm(total=num_nodes, unit="row", unit_scale=True, desc="features", disable=not progress)
    try:
        if blocks_again is not None and passes <= MAX_RANGE_PASSES:
            bar.reset(total=num_nodes * passes)
            unit = aligned_rows(row_bytes, 0)  # ranges of whole pages keep every write aligned
            range_rows = -(-num_nodes // passes // unit) * unit
            _range_passes(blocks, blocks_again, inv_perm, writer, range_rows, num_features, dtype, what, bar)
        elif num_nodes * row_bytes <= memory_budget // 2:
            table = empty_aligned((num_nodes, num_features), dtype)
            for start, block in _checked_blocks(blocks, num_nodes, num_features, what, dtype):
                table[inv_perm[start:start + len(block)]] = block
                bar.update(len(block))
            step = aligned_rows(row_bytes)
            for s in range(0, num_nodes, step):
                writer.append(table[s:s + step])
        else:
            _bucketed(blocks, inv_perm, writer, workdir, num_features, dtype, memory_budget, what, bar)
        return writer.close()
    except BaseException:
        writer.abort()
        raise
    finally:
        bar.close()


def _range_passes(blocks, blocks_again, inv_perm: np.ndarray, writer: NpyWriter, range_rows: int,
                  num_features: int, dtype: np.dtype, what: str, bar) -> None:
    """One read of the source per range of ``range_rows`` store rows; each range is written whole."""
    num_nodes = len(inv_perm)
    table = empty_aligned((min(range_rows, num_nodes), num_features), dtype)  # written with O_DIRECT
    step = aligned_rows(num_features * dtype.itemsize)
    for k, lo in enumerate(range(0, num_nodes, range_rows)):
        hi = min(lo + range_rows, num_nodes)
        for start, block in _checked_blocks(blocks if k == 0 else blocks_again(), num_nodes, num_features, what, dtype):
            new = inv_perm[start:start + len(block)]
            if lo == 0 and hi == num_nodes:  # one range: every row is kept
                table[new] = block
            else:
                keep = (new >= lo) & (new < hi)
                table[new[keep] - lo] = block[keep]
            bar.update(len(block))
        for s in range(0, hi - lo, step):
            writer.append(table[s:min(s + step, hi - lo)])


def _bucketed(blocks, inv_perm, writer: NpyWriter, workdir: Path, num_features: int, dtype: np.dtype,
              memory_budget: int, what: str, bar) -> None:
    num_nodes = len(inv_perm)
    row_bytes = num_features * dtype.itemsize
    unit = aligned_rows(row_bytes, 0)
    bucket_rows = max(unit, (memory_budget // 3) // (row_bytes + 8) // unit * unit)
    num_buckets = -(-num_nodes // bucket_rows)
    bdir = workdir / "feature_buckets"
    shutil.rmtree(bdir, ignore_errors=True)
    bdir.mkdir(parents=True)
    id_files = [open(bdir / f"{b:05d}.ids", "wb") for b in range(num_buckets)]
    row_files = [open(bdir / f"{b:05d}.rows", "wb") for b in range(num_buckets)]
    try:
        for start, block in _checked_blocks(blocks, num_nodes, num_features, what, dtype):
            new = inv_perm[start:start + len(block)]
            bucket = new // bucket_rows
            order = np.argsort(bucket, kind="stable")
            new, bucket = new[order], bucket[order]
            rows = np.ascontiguousarray(block[order], dtype=dtype)
            cuts = np.searchsorted(bucket, np.arange(num_buckets + 1))
            for b in np.flatnonzero(np.diff(cuts)):
                s, e = cuts[b], cuts[b + 1]
                id_files[b].write(memoryview(np.ascontiguousarray(new[s:e], dtype=np.int64)))
                row_files[b].write(memoryview(rows[s:e]))
            bar.update(len(block))
    except OSError as exc:
        raise translate_os_error(exc, bdir, "writing feature buckets in") from exc
    finally:
        for f in id_files + row_files:
            f.close()
    buf = empty_aligned((bucket_rows, num_features), dtype)
    for b in range(num_buckets):
        lo = b * bucket_rows
        n = min(bucket_rows, num_nodes - lo)
        ids = np.fromfile(bdir / f"{b:05d}.ids", dtype=np.int64)
        rows = np.fromfile(bdir / f"{b:05d}.rows", dtype=dtype).reshape(-1, num_features)
        buf[ids - lo] = rows
        writer.append(buf[:n])
        (bdir / f"{b:05d}.ids").unlink()
        (bdir / f"{b:05d}.rows").unlink()
    shutil.rmtree(bdir, ignore_errors=True)
