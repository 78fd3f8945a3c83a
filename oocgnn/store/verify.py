"""Re-check a finished store: checksums and structural invariants.

``oocgnn inspect --verify`` runs this.  It streams every array once (bounded
RAM), so a corrupted chunk, a truncated file or a buggy converter shows up as a
named problem instead of as a silently wrong accuracy (cf. ogb #176, where a
corrupted derived feature matrix cost users weeks).
"""
from __future__ import annotations

import numpy as np
from tqdm.auto import tqdm

from oocgnn.store.csr import iter_csr_edges
from oocgnn.store import format as fmt
from oocgnn.store.checksum import checksum_array
from oocgnn.store.reader import Dataset

_BLOCK = 1 << 24


def verify_store(ds: Dataset, progress: bool = True) -> list[str]:
    """Return a list of problems (empty when the store is sound)."""
    problems: list[str] = []
    n = ds.num_nodes
    expected = ds.manifest.get("checksums", {})
    arrays = {fmt.FEATURES: ds.features, fmt.INDPTR: ds.indptr, fmt.INDICES: ds.indices,
              fmt.LABELS: ds.labels, fmt.PERM: ds.perm, fmt.PARTITION_PTR: ds.partition_ptr}
    for name in ds.split_names:
        arrays[f"{fmt.SPLITS}/{name}"] = ds.split(name)
    total = sum(int(a.nbytes) for a in arrays.values())
    with tqdm(total=total, unit="B", unit_scale=True, desc="verify checksums", disable=not progress) as bar:
        for name, arr in arrays.items():
            row_bytes = int(arr.nbytes // max(arr.shape[0], 1))
            got = checksum_array(arr, progress=lambda rows: bar.update(rows * row_bytes))
            if name not in expected:
                problems.append(f"{name}: no checksum recorded in the manifest")
            elif got != expected[name]:
                problems.append(f"{name}: checksum {got} != recorded {expected[name]} (file corrupted)")

    indptr, indices = ds.indptr, ds.indices
    if indptr.shape != (n + 1,) or int(indptr[0]) != 0:
        problems.append(f"{fmt.INDPTR}: shape {indptr.shape} or first value {int(indptr[0])} is wrong")
    if int(indptr[-1]) != indices.shape[0] or indices.shape[0] != ds.num_edges:
        problems.append(f"{fmt.INDPTR}: last value {int(indptr[-1])} != len(indices) {indices.shape[0]} / num_edges {ds.num_edges}")
    for s in range(0, n + 1, _BLOCK):
        if np.any(np.diff(np.asarray(indptr[s:s + _BLOCK + 1])) < 0):
            problems.append(f"{fmt.INDPTR}: not monotone near row {s}")
            break
    if not problems:
        for rows, cols in iter_csr_edges(indptr, indices, _BLOCK):
            if cols.size and (cols.min() < 0 or cols.max() >= n):
                problems.append(f"{fmt.INDICES}: column id out of [0, {n}) in rows {rows[0]}..{rows[-1]}")
                break
            same_row = rows[1:] == rows[:-1]
            if np.any(cols[1:][same_row] <= cols[:-1][same_row]):
                problems.append(f"{fmt.INDICES}: neighbour list unsorted or duplicated in rows {rows[0]}..{rows[-1]}")
                break
            if np.any(rows == cols):
                problems.append(f"{fmt.INDICES}: self-loop in rows {rows[0]}..{rows[-1]}")
                break
    if ds.features.shape != (n, ds.num_features):
        problems.append(f"{fmt.FEATURES}: shape {ds.features.shape} != ({n}, {ds.num_features})")
    else:
        bad = _first_non_finite_row(ds.features)
        if bad is not None:
            problems.append(f"{fmt.FEATURES}: row {bad} (store id; original id {int(ds.perm[bad])}) holds NaN or "
                            f"infinite values: a model trains to chance on them; fix the source and rebuild")
    labels = ds.labels
    if labels.shape != (n,) or (n and (labels.min() < -1 or labels.max() >= ds.num_classes)):
        problems.append(f"{fmt.LABELS}: shape or values outside [-1, {ds.num_classes})")
    perm = ds.perm
    if perm.shape != (n,) or (n and (perm.min() < 0 or perm.max() >= n or np.bincount(perm, minlength=n).max() != 1)):
        problems.append(f"{fmt.PERM}: not a permutation of 0..{n - 1}")
    ptr = ds.partition_ptr
    if ptr[0] != 0 or ptr[-1] != n or np.any(np.diff(ptr) < 0):
        problems.append(f"{fmt.PARTITION_PTR}: must rise from 0 to {n}")
    seen = np.zeros(n, dtype=bool)
    for name in ds.split_names:
        ids = ds.split(name)
        if ids.size and (ids.min() < 0 or ids.max() >= n):
            problems.append(f"split {name}: ids outside [0, {n})")
            continue
        if seen[ids].any():
            problems.append(f"split {name}: overlaps another split")
        seen[ids] = True
    return problems


def _first_non_finite_row(features: np.ndarray, block_bytes: int = 64 << 20) -> int | None:
    """First store row of ``features`` holding a NaN or inf, streamed in blocks (None: all finite)."""
    rows = max(1, block_bytes // max(1, features.shape[1] * features.dtype.itemsize))
    for s in range(0, features.shape[0], rows):
        block = np.asarray(features[s:s + rows])
        finite = np.isfinite(block).all(axis=1)
        if not finite.all():
            return s + int(np.argmin(finite))
    return None
