"""Open a finished dataset store for reading.

:func:`open_dataset` checks the completion marker and the schema version, then
exposes the arrays lazily: ``features``/``indptr``/``indices`` are read-only
memmaps (nothing is loaded until rows are indexed), the per-node small arrays
are read from zarr on first use.  Nothing here writes: a store is shared
read-only by every run that trains on it.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from oocgnn.errors import StoreError
from oocgnn.store import format as fmt
from oocgnn.utils.mapped import register_mapped


def _load_npy_memmap(path: Path) -> np.memmap:
    try:
        return register_mapped(np.load(path, mmap_mode="r"))
    except FileNotFoundError:
        raise StoreError(f"store file missing: {path}; re-run `oocgnn prepare` for this store") from None
    except (ValueError, OSError) as exc:
        raise StoreError(f"store file unreadable: {path} ({exc}); re-run `oocgnn prepare ... --overwrite`") from None


class Dataset:
    """A prepared dataset store (read-only).

    Node ids are *store ids*: nodes were reordered so each partition is a
    contiguous range ``[partition_ptr[p], partition_ptr[p+1])``; ``perm[i]`` is
    the original (source) id of store node ``i``.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise StoreError(f"no dataset store at {self.path}; create one with `oocgnn prepare ... --out {self.path}`")
        complete = self.path / fmt.COMPLETE
        if not complete.exists():
            raise StoreError(
                f"{self.path} is not a finished store (no {fmt.COMPLETE} marker); re-run the same "
                f"`oocgnn prepare` command to resume it"
            )
        try:
            self._group = zarr.open_group(str(self.path), mode="r")
            self.manifest: dict[str, Any] = dict(self._group.attrs["oocgnn"])
        except Exception as exc:  # zarr raises several types for a damaged zarr.json
            raise StoreError(f"cannot read store metadata {self.path / 'zarr.json'}: {exc}") from None
        version = self.manifest.get("schema_version")
        if version != fmt.SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} has store schema version {version}, this oocgnn reads version "
                f"{fmt.SCHEMA_VERSION}; re-run `oocgnn prepare --overwrite`"
            )
        self.num_nodes: int = int(self.manifest["num_nodes"])
        self.num_edges: int = int(self.manifest["num_edges"])
        self.num_features: int = int(self.manifest["num_features"])
        self.num_classes: int = int(self.manifest["num_classes"])

    # -- big arrays: memmaps -------------------------------------------------
    @functools.cached_property
    def features(self) -> np.memmap:
        """[N, F] node features in store order (memmap; index rows to read)."""
        return _load_npy_memmap(self.path / fmt.FEATURES)

    @functools.cached_property
    def indptr(self) -> np.memmap:
        """[N+1] int64 CSR row pointer."""
        return _load_npy_memmap(self.path / fmt.INDPTR)

    @functools.cached_property
    def indices(self) -> np.memmap:
        """[nnz] CSR column ids (store ids), sorted within each row."""
        return _load_npy_memmap(self.path / fmt.INDICES)

    # -- small per-node arrays: zarr, loaded on first use ----------------------
    def _zarr(self, name: str) -> np.ndarray:
        try:
            return np.asarray(self._group[name][:])
        except KeyError:
            raise StoreError(f"store array {name!r} missing in {self.path}; re-run `oocgnn prepare --overwrite`") from None
        except Exception as exc:
            raise StoreError(f"store array {self.path / name} unreadable ({exc}); re-run `oocgnn prepare --overwrite`") from None

    @functools.cached_property
    def labels(self) -> np.ndarray:
        """[N] integer class ids, -1 where the node has no label."""
        return self._zarr(fmt.LABELS)

    @functools.cached_property
    def perm(self) -> np.ndarray:
        """[N] int64: store id -> original id in the source dataset."""
        return self._zarr(fmt.PERM)

    @functools.cached_property
    def partition_ptr(self) -> np.ndarray:
        """[P+1] int64 partition boundaries in store ids."""
        return self._zarr(fmt.PARTITION_PTR)

    @property
    def num_partitions(self) -> int:
        return len(self.partition_ptr) - 1

    def split(self, name: str) -> np.ndarray:
        """Sorted store ids of split ``name`` (``train``, ``valid`` or ``test``)."""
        if name not in self.split_names:
            raise StoreError(f"store {self.path} has no split {name!r}; it has {', '.join(self.split_names)}")
        return self._zarr(f"{fmt.SPLITS}/{name}")

    @property
    def split_names(self) -> list[str]:
        return list(self.manifest.get("splits", {}).keys())

    # -- metadata --------------------------------------------------------------
    @property
    def attrs(self) -> dict[str, Any]:
        return self.manifest

    @property
    def checksum(self) -> str:
        """One fingerprint of the store's content (hash of its per-array checksums)."""
        import hashlib

        blob = json.dumps(self.manifest.get("checksums", {}), sort_keys=True).encode()
        return "sha256:" + hashlib.sha256(blob).hexdigest()[:32]

    @property
    def evaluator_name(self) -> str | None:
        """Name for ``ogb.nodeproppred.Evaluator`` when the store came from OGB."""
        return self.manifest.get("source", {}).get("ogb_evaluator")

    def original_ids(self, store_ids: np.ndarray) -> np.ndarray:
        """Map store ids back to the source dataset's node ids."""
        return self.perm[np.asarray(store_ids)]

    def __repr__(self) -> str:
        return (
            f"Dataset({str(self.path)!r}, nodes={self.num_nodes:,}, edges={self.num_edges:,}, "
            f"features={self.num_features}, classes={self.num_classes}, partitions={self.num_partitions})"
        )


def open_dataset(path: str | Path) -> Dataset:
    """Open the finished store at ``path`` (raises :class:`StoreError` with advice if it is not)."""
    return Dataset(path)
