"""Miniature ogbn-papers100M and MAG240M downloads with the real on-disk formats.

Why: the real datasets are 57 GB and 167 GB; the readers must be tested against
the *format* (``np.savez_compressed`` members with zip64 extras, NaN labels,
gzip split files, ``torch.save`` zips, header-ful ``.npy`` memmaps), not the size.
The recipe is /work/shared/design/ogb-formats.md section 5: real key names,
dtypes and dimensionality; only the leading dimension and edge counts shrink.
OGB's own ``NodePropPredDataset('ogbn-papers100M')`` loads these folders offline.
"""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np


def _write_ids_gz(path: Path, ids: np.ndarray) -> None:
    """One decimal id per line, no header (what pandas ``to_csv(header=False)`` writes)."""
    with gzip.open(path, "wb") as f:
        f.write("".join(f"{int(i)}\n" for i in ids).encode())


def _edges(rng: np.random.Generator, num_src: int, num_dst: int, num_edges: int,
           self_loops: bool) -> np.ndarray:
    """Random int64 (2, E) edges with a few duplicates (and self-loops if asked)."""
    e = np.stack([rng.integers(0, num_src, num_edges), rng.integers(0, num_dst, num_edges)]).astype(np.int64)
    k = min(5, num_edges // 10)
    if k:
        if self_loops:
            e[1, :k] = e[0, :k]
        e[:, 2 * k:3 * k] = e[:, 4 * k:5 * k]  # duplicates
    return e


def make_papers100m_fixture(
    root: str | Path, num_nodes: int = 2003, num_edges: int = 9001, *, num_features: int = 128,
    num_classes: int = 172, fortran: bool = False, seed: int = 0, with_split_dict: bool = False,
    folder_name: str = "ogbn_papers100M", labelled_fraction: float = 0.3, compressed: bool = True,
) -> Path:
    """Write ``root/<folder_name>`` like an extracted ``papers100M-bin.zip``; returns that folder.

    ``compressed=False`` writes ``data.npz`` with ``np.savez`` (stored members, the
    same layout without DEFLATE: what a converter does past inflating).

    ``fortran=True`` stores ``edge_index`` and ``node_feat`` column-major (the
    unknown real order; both variants must work).  Only split nodes are labelled
    (others NaN); splits are year-consistent (train <= 2017, valid 2018, test >= 2019).
    """
    rng = np.random.default_rng(seed)
    n = num_nodes
    d = Path(root) / folder_name
    for sub in ("raw", "split/time", "mapping"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    (d / "RELEASE_v1.txt").write_text("ogbn-papers100M fixture made by oocgnn.testing\n")

    year = rng.integers(1950, 2021, size=(n, 1)).astype(np.int64)
    labelled = rng.permutation(n)[: max(3, int(labelled_fraction * n))]
    n_train = int(0.78 * len(labelled))
    n_valid = max(1, int(0.08 * len(labelled)))
    train, valid, test = np.split(labelled, [n_train, n_train + n_valid])
    year[train, 0] = rng.integers(1990, 2018, len(train))
    year[valid, 0] = 2018
    year[test, 0] = rng.integers(2019, 2021, len(test))
    label = np.full((n, 1), np.nan, dtype=np.float32)
    label[labelled, 0] = rng.integers(0, num_classes, len(labelled))
    label[train[0], 0] = num_classes - 1  # the largest class occurs

    edge_index = _edges(rng, n, n, num_edges, self_loops=True)
    feat = rng.standard_normal((n, num_features)).astype(np.float32)
    if fortran:
        edge_index, feat = np.asfortranarray(edge_index), np.asfortranarray(feat)
    (np.savez_compressed if compressed else np.savez)(
        d / "raw" / "data.npz", edge_index=edge_index, num_nodes_list=np.array([n], dtype=np.int64),
        num_edges_list=np.array([num_edges], dtype=np.int64), node_feat=feat, node_year=year)
    np.savez_compressed(d / "raw" / "node-label.npz", node_label=label)

    for name, ids in (("train", train), ("valid", valid), ("test", test)):
        _write_ids_gz(d / "split" / "time" / f"{name}.csv.gz", np.sort(ids))
    if with_split_dict:
        import torch

        torch.save({"train": np.sort(train), "valid": np.sort(valid), "test": np.sort(test)},
                   d / "split" / "time" / "split_dict.pt")
    with gzip.open(d / "mapping" / "nodeidx2paperid.csv.gz", "wb") as f:
        f.write(b"node idx,paper id\n" + "".join(f"{i},{1000000 + 7 * i}\n" for i in range(n)).encode())
    (d / "mapping" / "README.md").write_text("fixture mapping\n")
    return d


def _sorted(e: np.ndarray) -> np.ndarray:
    order = np.lexsort((e[1], e[0]))
    return np.ascontiguousarray(e[:, order])


def make_mag240m_fixture(
    root: str | Path, papers: int = 1501, authors: int = 997, institutions: int = 31, *,
    num_cites: int = 6007, num_writes: int = 3001, num_affiliations: int = 803,
    num_features: int = 768, num_classes: int = 153, fortran: bool = False, seed: int = 0,
    arxiv_fraction: float = 0.25,
) -> Path:
    """Write ``root/mag240m_kddcup2021`` like the extracted LSC download; returns that folder.

    Labels are float64 with NaN (non-arXiv) and -1.0 (hidden test labels); edge
    lists are sorted by (src, dst); some authors write no paper and some
    institutions have no author (their mean features are zero rows).
    """
    import torch

    rng = np.random.default_rng(seed)
    p, a, i = papers, authors, institutions
    d = Path(root) / "mag240m_kddcup2021"
    for sub in ("raw", "mapping", "processed/paper", "processed/paper___cites___paper",
                "processed/author___writes___paper", "processed/author___affiliated_with___institution"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    (d / "RELEASE_v1.txt").write_text("MAG240M fixture made by oocgnn.testing\n")
    torch.save({"paper": p, "author": a, "institution": i, "num_classes": num_classes}, d / "meta.pt")

    year = rng.integers(2000, 2021, size=p).astype(np.int64)
    arxiv = rng.permutation(p)[: max(10, int(arxiv_fraction * p))]
    n_train = int(0.8 * len(arxiv))
    n_valid = max(1, int(0.1 * len(arxiv)))
    train, valid, test = np.split(arxiv, [n_train, n_train + n_valid])
    year[train] = rng.integers(2000, 2019, len(train))
    year[valid], year[test] = 2019, 2020
    label = np.full(p, np.nan, dtype=np.float64)
    label[train] = rng.integers(0, num_classes, len(train))
    label[valid] = rng.integers(0, num_classes, len(valid))
    label[test] = -1.0
    torch.save({"train": np.sort(train), "valid": np.sort(valid), "test": np.sort(test)}, d / "split_dict.pt")

    feat = rng.standard_normal((p, num_features)).astype(np.float16)
    cites = _sorted(_edges(rng, p, p, num_cites, self_loops=True))
    active_authors = rng.permutation(a)[: max(1, int(0.95 * a))]       # the rest write nothing
    writes = _sorted(np.stack([active_authors[rng.integers(0, len(active_authors), num_writes)],
                               rng.integers(0, p, num_writes)]).astype(np.int64))
    used_inst = rng.permutation(i)[: max(1, int(0.8 * i))]             # the rest have no author
    affil = _sorted(np.stack([rng.integers(0, a, num_affiliations),
                              used_inst[rng.integers(0, len(used_inst), num_affiliations)]]).astype(np.int64))
    order = np.asfortranarray if fortran else np.ascontiguousarray
    proc = d / "processed"
    np.save(proc / "paper" / "node_feat.npy", order(feat))
    np.save(proc / "paper" / "node_label.npy", label)
    np.save(proc / "paper" / "node_year.npy", year)
    np.save(proc / "paper___cites___paper" / "edge_index.npy", order(cites))
    np.save(proc / "author___writes___paper" / "edge_index.npy", order(writes))
    np.save(proc / "author___affiliated_with___institution" / "edge_index.npy", order(affil))
    return d
