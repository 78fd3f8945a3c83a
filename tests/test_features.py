"""Feature permutation: the in-RAM table, range passes over a re-readable source and bucket files agree byte for byte."""
from __future__ import annotations

import numpy as np
import pytest

import oocgnn.prepare.features as features
from oocgnn.errors import InputError
from oocgnn.prepare.features import write_permuted_features

N, F = 5003, 24
X = np.random.default_rng(5).standard_normal((N, F)).astype(np.float32)
INV = np.random.default_rng(6).permutation(N).astype(np.int64)


def _blocks(rows=701):
    for s in range(0, N, rows):
        yield X[s:s + rows].copy()


def _write(tmp_path, name, budget, again, dtype="float32"):
    reads = []

    def factory():
        reads.append(1)
        return _blocks()

    out = tmp_path / f"{name}.npy"
    c = write_permuted_features(_blocks(), INV, out, tmp_path / f"w_{name}", num_features=F, dtype=dtype,
                                memory_budget=budget, what="test", progress=False,
                                blocks_again=factory if again else None)
    return out, c, len(reads)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_all_paths_byte_identical(tmp_path, monkeypatch, dtype):
    monkeypatch.setattr(features, "_BLOCK_RESERVE", 0)
    row = F * np.dtype(dtype).itemsize
    want = np.empty_like(X, dtype=dtype)
    want[INV] = X
    results = {}
    for name, budget, again, rereads in [("table", 4 * N * row, False, 0),
                                         ("range1", N * row, True, 0),
                                         ("range2", (N // 2 + 1) * row, True, 1),
                                         ("buckets", (N // 2 + 1) * row, False, 0),
                                         ("too_many_passes", N * row // 5, True, 0)]:
        out, c, n = _write(tmp_path, name, budget, again, dtype)
        assert n == rereads, name
        arr = np.load(out)
        assert arr.tobytes() == want.tobytes(), name
        results[name] = (out.read_bytes(), c)
    assert len(set(results.values())) == 1
    assert not list(tmp_path.glob("w_*/feature_buckets/*"))


def test_range_passes_check_every_pass(tmp_path, monkeypatch):
    monkeypatch.setattr(features, "_BLOCK_RESERVE", 0)

    def short():
        yield X[:100]

    with pytest.raises(InputError, match="only 100 of 5003 feature rows"):
        write_permuted_features(_blocks(), INV, tmp_path / "x.npy", tmp_path, num_features=F, dtype="float32",
                                memory_budget=(N // 2 + 1) * F * 4, what="test", progress=False, blocks_again=short)
    assert not (tmp_path / "x.npy").exists()
