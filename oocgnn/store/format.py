"""Dataset store layout, version 1.

A store is a directory that is a zarr v3 group.  Structure, metadata and the
small arrays live in zarr; the three arrays that training gathers rows from at
random live beside them as raw ``.npy`` files so they can be memory-mapped
(measured here: a memmap gather is ~40x faster than zarr orthogonal indexing).

::

    STORE/
      zarr.json                 group; attributes["oocgnn"] = manifest (see below)
      features.npy              [N, F] float16|float32, rows in store order
      graph/indptr.npy          [N+1] int64
      graph/indices.npy         [nnz] int32 (N < 2**31) else int64; rows sorted, no dups, no self-loops
      labels/                   zarr [N] int16|int32, -1 = unlabelled
      splits/{train,valid,test} zarr int64 store ids, sorted
      order/perm                zarr [N] int64: store id -> original (source) id
      partition/ptr             zarr [P+1] int64: partition p = store ids [ptr[p], ptr[p+1])
      COMPLETE                  JSON written last; a store without it is unfinished
      .building.json            present while a build runs: the inputs' fingerprint
      .work/                    scratch of an unfinished build (stage outputs and markers)

The three ``.npy`` files written since issue #12 have a 4096-byte header, so their data
starts on a page (``O_DIRECT`` row reads); stores written before have numpy's 128-byte
header and read the same (readers take the offset from the header, the schema is unchanged).

The manifest holds: ``schema_version``, counts, dtypes, ``source``, ``options``,
``partition`` info (method, edge-cut fraction), ``checksums`` (crc32 per array).
"""
from __future__ import annotations

SCHEMA_VERSION = 1

FEATURES = "features.npy"
INDPTR = "graph/indptr.npy"
INDICES = "graph/indices.npy"
LABELS = "labels"
SPLITS = "splits"
PERM = "order/perm"
PARTITION_PTR = "partition/ptr"
COMPLETE = "COMPLETE"
BUILDING = ".building.json"
WORK = ".work"

SPLIT_NAMES = ("train", "valid", "test")

#: Rows per zarr chunk for the small per-node arrays (labels, perm).
NODE_CHUNK = 1 << 20


def indices_dtype(num_nodes: int) -> str:
    """int32 column ids while they fit, int64 beyond 2**31 - 1 nodes."""
    return "int32" if num_nodes < 2**31 else "int64"


def label_dtype(num_classes: int) -> str:
    """Smallest signed type that holds every class id and -1."""
    return "int16" if num_classes < 2**15 else "int32"
