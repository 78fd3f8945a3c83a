"""Feature permutation: the in-RAM table, range passes over a re-readable source and bucket files agree byte for byte."""
from __future__ import annotations

import re

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


@pytest.mark.parametrize("path, budget, again", [("table", 4 * N * F * 4, False), ("range2", (N // 2 + 1) * F * 4, True),
                                                 ("buckets", (N // 2 + 1) * F * 4, False)])
@pytest.mark.parametrize("value, needle", [(np.nan, "row 3333 (original node id) holds NaN"),
                                           (-np.inf, "row 3333 (original node id) holds an infinity")])
def test_non_finite_feature_is_refused_naming_its_row(tmp_path, monkeypatch, path, budget, again, value, needle):
    """NaN / inf in any row stops every write path with the row's original id; no features file is left."""
    monkeypatch.setattr(features, "_BLOCK_RESERVE", 0)
    bad = X.copy()
    bad[3333, 7] = value
    bad[4000, 1] = np.nan  # only the first bad row is named

    def blocks():
        return (bad[s:s + 701] for s in range(0, N, 701))

    with pytest.raises(InputError, match=re.escape(needle)) as info:
        write_permuted_features(blocks(), INV, tmp_path / "x.npy", tmp_path, num_features=F, dtype="float32",
                                memory_budget=budget, what="in.npy", progress=False,
                                blocks_again=blocks if again else None)
    assert str(info.value).startswith("in.npy: ")
    assert not (tmp_path / "x.npy").exists()


def test_value_past_float16_range_is_refused_for_a_float16_store(tmp_path):
    """70000 is finite in float32 but inf in float16: refused for --feature-dtype float16, kept for float32."""
    big = X.copy()
    big[12, 0] = 70000.0
    kw = dict(num_features=F, memory_budget=1 << 30, what="in.npy", progress=False)
    with pytest.raises(InputError, match="row 12 .* beyond the range of float16"):
        write_permuted_features(iter([big]), INV, tmp_path / "h.npy", tmp_path, dtype="float16", **kw)
    write_permuted_features(iter([big]), INV, tmp_path / "f.npy", tmp_path, dtype="float32", **kw)
    assert np.load(tmp_path / "f.npy")[INV[12], 0] == 70000.0
