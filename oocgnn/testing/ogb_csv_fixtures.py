"""Miniature (or benchmark-sized) OGB csv downloads: ogbn-arxiv / ogbn-products layouts.

Why: the csv sources must be tested against the *format* OGB ships and OGB's own
``NodePropPredDataset`` reads (gzip text, no header, one graph; the file names of
``read_csv_graph_raw``; ``split/<split>/*.csv.gz``; the additional node files that
``master.csv`` lists, e.g. arxiv's ``node_year``), not the size.  Text is written by
a numba kernel (numbers -> ASCII), so the benchmark's 2.4 M x 100 products-layout
input takes seconds instead of the ~25 minutes of ``DataFrame.to_csv``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
from numba import njit

from oocgnn.prepare.readers.csv_blocks import _gzip
from oocgnn.prepare.sources.ogb import ogb_meta

_ROWS_PER_CHUNK = 1 << 15


@njit(nogil=True, cache=True)
def _put_uint(out: np.ndarray, pos: int, v: int, width: int) -> int:
    """ASCII digits of ``v >= 0`` at ``out[pos:]``, zero-padded to ``width``; returns the new end."""
    start = pos
    while v > 0 or pos - start < width:
        out[pos] = 48 + v % 10
        v //= 10
        pos += 1
    i, j = start, pos - 1
    while i < j:
        out[i], out[j] = out[j], out[i]
        i += 1
        j -= 1
    return pos


@njit(nogil=True, cache=True)
def _format_rows(values: np.ndarray, decimals: int, out: np.ndarray) -> int:
    """``values`` [rows, cols] as csv lines with ``decimals`` fixed decimals (0: integers); returns bytes used."""
    scale = 10 ** decimals
    pos = 0
    for r in range(values.shape[0]):
        for c in range(values.shape[1]):
            x = values[r, c]
            q = np.int64(np.round(abs(x) * scale))
            if x < 0 and q != 0:
                out[pos] = 45  # '-'
                pos += 1
            pos = _put_uint(out, pos, q // scale, 1)
            if decimals:
                out[pos] = 46  # '.'
                pos = _put_uint(out, pos + 1, q % scale, decimals)
            out[pos] = 44 if c + 1 < values.shape[1] else 10  # ',' or '\n'
            pos += 1
    return pos


def write_csv_gz(path: Path, values: np.ndarray | Iterable[np.ndarray], decimals: int = 0) -> None:
    """``values`` ([n] or [n, c], or an iterable of such row blocks) as a headerless gzip csv, like
    ``to_csv(header=False, index=False)``; ``decimals`` > 0 writes fixed-point floats."""
    blocks = [values] if isinstance(values, np.ndarray) else values
    with _gzip.open(path, "wb") as f:
        for block in blocks:
            block = np.asarray(block).reshape(len(block), -1)
            for s in range(0, len(block), _ROWS_PER_CHUNK):
                chunk = np.ascontiguousarray(block[s:s + _ROWS_PER_CHUNK], dtype=np.float64 if decimals else np.int64)
                buf = np.empty(chunk.size * (23 + decimals), dtype=np.uint8)
                f.write(memoryview(buf[:_format_rows(chunk, decimals, buf)]))


def make_ogb_csv_fixture(root: str | Path, name: str = "ogbn-arxiv", num_nodes: int = 1201, num_edges: int = 6007, *,
                         num_features: int | None = None, seed: int = 0, folder_name: str | None = None) -> Path:
    """Write ``root/<folder_name>`` like an extracted OGB csv download; returns that folder.

    ``folder_name`` defaults to OGB's renamed folder (``ogbn_arxiv``); ``arxiv`` is the
    zip's own name.  Width defaults to the real one (arxiv 128, products 100); classes
    are master.csv's (the largest occurs).  Edges hold a few duplicates and self-loops.
    Every node is labelled and in one split, as in both real datasets.
    """
    meta = ogb_meta(name)
    rng = np.random.default_rng(seed)
    n, e = num_nodes, num_edges
    f = num_features or {"ogbn-arxiv": 128, "ogbn-products": 100}.get(name, 64)
    classes = int(meta["num classes"])
    d = Path(root) / (folder_name or name.replace("-", "_"))
    raw, split = d / "raw", d / "split" / meta["split"]
    raw.mkdir(parents=True, exist_ok=True)
    split.mkdir(parents=True, exist_ok=True)
    (d / f"RELEASE_v{meta['version']}.txt").write_text(f"{name} fixture made by oocgnn.testing\n")

    def edge_blocks(block: int = 1 << 22):  # blocks: the benchmark's 62 M edges never sit in RAM
        for s in range(0, e, block):
            edges = rng.integers(0, n, size=(min(block, e - s), 2))
            k = min(5, len(edges) // 10) if s == 0 else 0
            if k:
                edges[:k, 1] = edges[:k, 0]                  # self-loops
                edges[2 * k:3 * k] = edges[4 * k:5 * k]      # duplicates
            yield edges

    write_csv_gz(raw / "edge.csv.gz", edge_blocks())
    block = 1 << 18
    write_csv_gz(raw / "node-feat.csv.gz", (rng.standard_normal((min(block, n - s), f)) * 0.1
                                            for s in range(0, n, block)), decimals=6)
    labels = rng.integers(0, classes, n)
    labels[rng.integers(0, n)] = classes - 1
    perm = rng.permutation(n)
    n_train, n_valid = int(0.5 * n), int(0.2 * n)
    parts = {"train": perm[:n_train], "valid": perm[n_train:n_train + n_valid], "test": perm[n_train + n_valid:]}
    write_csv_gz(raw / "node-label.csv.gz", labels)
    write_csv_gz(raw / "num-node-list.csv.gz", np.array([n]))
    write_csv_gz(raw / "num-edge-list.csv.gz", np.array([e]))
    for extra in meta["additional node files"].split(","):
        if extra != "None":  # e.g. arxiv's node_year, which OGB's loader requires
            write_csv_gz(raw / f"{extra}.csv.gz", rng.integers(1990, 2021, n))
    for key, ids in parts.items():
        write_csv_gz(split / f"{key}.csv.gz", np.sort(ids))
    return d
