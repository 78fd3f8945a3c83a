"""Write node features in store order with bounded RAM.

Sources stream features in their original order; the store wants row ``i`` to be
original row ``perm[i]``.  Gathering rows at random from a 57 GB file would be
random I/O, so when the matrix does not fit the budget we do two sequential
passes instead: scatter each source block into per-range bucket files (rows
tagged with their new id), then load one bucket at a time, place its rows, and
append it to ``features.npy``.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Iterable

import numpy as np
from tqdm.auto import tqdm

from oocgnn.errors import InputError, translate_os_error
from oocgnn.store.npyfile import NpyWriter


def _checked_blocks(blocks: Iterable[np.ndarray], num_nodes: int, num_features: int, what: str):
    seen = 0
    for block in blocks:
        block = np.asarray(block)
        if block.ndim != 2 or block.shape[1] != num_features:
            raise InputError(f"{what}: feature block of shape {block.shape}, expected (rows, {num_features})")
        if seen + block.shape[0] > num_nodes:
            raise InputError(f"{what}: more than {num_nodes} feature rows; node count and features disagree")
        yield seen, block
        seen += block.shape[0]
    if seen != num_nodes:
        raise InputError(f"{what}: only {seen} of {num_nodes} feature rows; the feature file is truncated")


def write_permuted_features(blocks: Iterable[np.ndarray], inv_perm: np.ndarray, out: Path, workdir: Path, *,
                            num_features: int, dtype: str, memory_budget: int, what: str,
                            progress: bool = True) -> str:
    """Write ``features.npy`` with row ``inv_perm[j]`` = source row ``j``; returns its checksum."""
    num_nodes = len(inv_perm)
    dtype = np.dtype(dtype)
    row_bytes = num_features * dtype.itemsize
    writer = NpyWriter(out, dtype, row_shape=(num_features,))
    bar = tqdm(total=num_nodes, unit="row", unit_scale=True, desc="features", disable=not progress)
    try:
        if num_nodes * row_bytes <= memory_budget // 2:
            table = np.empty((num_nodes, num_features), dtype=dtype)
            for start, block in _checked_blocks(blocks, num_nodes, num_features, what):
                table[inv_perm[start:start + len(block)]] = block
                bar.update(len(block))
            step = max(1, (64 << 20) // max(row_bytes, 1))
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


def _bucketed(blocks, inv_perm, writer: NpyWriter, workdir: Path, num_features: int, dtype: np.dtype,
              memory_budget: int, what: str, bar) -> None:
    num_nodes = len(inv_perm)
    row_bytes = num_features * dtype.itemsize
    bucket_rows = max(1, (memory_budget // 3) // (row_bytes + 8))
    num_buckets = -(-num_nodes // bucket_rows)
    bdir = workdir / "feature_buckets"
    shutil.rmtree(bdir, ignore_errors=True)
    bdir.mkdir(parents=True)
    id_files = [open(bdir / f"{b:05d}.ids", "wb") for b in range(num_buckets)]
    row_files = [open(bdir / f"{b:05d}.rows", "wb") for b in range(num_buckets)]
    try:
        for start, block in _checked_blocks(blocks, num_nodes, num_features, what):
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
    buf = np.empty((bucket_rows, num_features), dtype=dtype)
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
