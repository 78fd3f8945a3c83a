"""SyntheticSource: determinism, structure (communities, power law, homophily,
class signal) and bounded memory while streaming."""
from __future__ import annotations

import numpy as np
import psutil
import pytest

from oocgnn.errors import ConfigError
from oocgnn.prepare.sources.synthetic import EDGE_PIECE, SyntheticSource, calibrate_noise

N, E, F, K = 20_000, 300_000, 32, 8


@pytest.fixture(scope="module")
def src() -> SyntheticSource:
    return SyntheticSource(N, E, F, K, seed=3)


@pytest.fixture(scope="module")
def edges(src: SyntheticSource) -> tuple[np.ndarray, np.ndarray]:
    blocks = list(src.iter_edges(E))
    assert len(blocks) == 1
    return blocks[0]


def _cat(blocks: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    return np.concatenate([b[0] for b in blocks]), np.concatenate([b[1] for b in blocks])


def test_edges_are_identical_across_calls_and_block_sizes(src, edges):
    first = list(src.iter_edges(70_000))
    second = list(src.iter_edges(70_000))
    assert [len(s) for s, _ in first] == [70_000] * 4 + [20_000]  # last block shorter
    for (s1, d1), (s2, d2) in zip(first, second):
        np.testing.assert_array_equal(s1, s2)
        np.testing.assert_array_equal(d1, d2)
    for got in (_cat(first), _cat(list(src.iter_edges(12_345)))):
        np.testing.assert_array_equal(got[0], edges[0])
        np.testing.assert_array_equal(got[1], edges[1])
    # A fresh object with the same parameters yields the same graph, another seed does not.
    again = SyntheticSource(N, E, F, K, seed=3)
    np.testing.assert_array_equal(next(again.iter_edges(1000))[0], edges[0][:1000])
    other = SyntheticSource(N, E, F, K, seed=4)
    assert not np.array_equal(next(other.iter_edges(1000))[0], edges[0][:1000])


def test_piece_boundaries_total_count():
    s = SyntheticSource(1000, EDGE_PIECE + 7, 4, 2)
    sizes = [len(a) for a, _ in s.iter_edges(EDGE_PIECE // 3 + 1)]
    assert sum(sizes) == EDGE_PIECE + 7 and max(sizes) == EDGE_PIECE // 3 + 1


def test_ids_in_range(edges):
    for arr in edges:
        assert arr.dtype == np.int64 and arr.min() >= 0 and arr.max() < N


def test_degrees_heavy_tailed(edges):
    deg = np.bincount(np.concatenate(edges), minlength=N)
    assert deg.max() > 20 * deg.mean()
    assert np.median(deg) < deg.mean()  # right-skewed
    assert (deg == 0).mean() < 0.02


def test_homophily_matches_request(src, edges):
    same_comm = (src.community_of(edges[0]) == src.community_of(edges[1])).mean()
    assert abs(same_comm - 0.6) < 0.01
    labels = src.labels()
    same_class = (labels[edges[0]] == labels[edges[1]]).mean()
    assert 0.6 <= same_class < 0.7  # other communities of the same class add a little
    strong = SyntheticSource(N, 100_000, F, K, seed=3, homophily=0.9)
    s, d = next(strong.iter_edges(100_000))
    assert abs((strong.community_of(s) == strong.community_of(d)).mean() - 0.9) < 0.01


def test_communities_are_scattered_over_ids(src):
    ids = np.arange(N)
    comm = src.community_of(ids)
    members = np.flatnonzero(comm == comm[0])
    assert members.max() - members.min() > N // 2  # not a contiguous id range
    runs = np.count_nonzero(np.diff(comm))  # a contiguous layout would change C-1 times
    assert runs > N // 2
    np.testing.assert_array_equal(src.id_to_rank(src.rank_to_id(ids)), ids)
    assert len(np.unique(src.rank_to_id(ids))) == N


def test_features_are_class_correlated_but_not_separable(src):
    blocks = list(src.iter_features(3000))
    x = np.concatenate(blocks)
    assert x.dtype == np.float32 and x.shape == (N, F) and len(blocks[-1]) == N % 3000
    np.testing.assert_array_equal(np.concatenate(list(src.iter_features(N))), x)
    y, splits = src.labels(), src.splits()
    tr, te = splits["train"], splits["test"]
    centroids = np.stack([x[tr][y[tr] == c].mean(0) for c in range(K)])
    pred = np.argmin(((x[te, None, :] - centroids[None]) ** 2).sum(-1), axis=1)
    acc = (pred == y[te]).mean()
    assert 0.45 < acc < 0.65, acc  # chance is 1/8; calibrated to ~0.55


def test_labels_and_splits(src):
    y = src.labels()
    assert y.dtype == np.int64 and y.shape == (N,) and set(np.unique(y)) == set(range(K))
    sp = src.splits()
    sizes = {k: len(v) for k, v in sp.items()}
    assert abs(sizes["train"] / N - 0.6) < 0.02 and abs(sizes["valid"] / N - 0.2) < 0.02
    allids = np.concatenate(list(sp.values()))
    assert len(np.unique(allids)) == len(allids) == N
    np.testing.assert_array_equal(src.splits()["valid"], sp["valid"])
    info = src.info()
    assert info.num_nodes == N and info.num_edges_hint == E and info.directed
    assert "0.6/0.2/0.2" in info.split_note and info.extra["split"] == [0.6, 0.2, 0.2]
    assert src.fingerprint() == SyntheticSource(N, E, F, K, seed=3).fingerprint()
    assert src.fingerprint() != SyntheticSource(N, E, F, K, seed=3, homophily=0.5).fingerprint()


def test_calibrated_noise_decreases_with_classes():
    assert calibrate_noise(2) > calibrate_noise(8) > calibrate_noise(64) > 0


def test_streaming_memory_is_bounded():
    """10 M edges over 50 M nodes: no per-node state, one piece + one block in RAM."""
    s = SyntheticSource(50_000_000, 10_000_000, 128, 16, seed=1)
    proc = psutil.Process()
    rss0 = peak = proc.memory_info().rss
    total = 0
    for a, b in s.iter_edges(1_000_000):
        total += len(a)
        peak = max(peak, proc.memory_info().rss)
    assert total == 10_000_000
    assert peak - rss0 < 200e6, (peak - rss0) / 1e6


@pytest.mark.parametrize("kwargs, flag", [
    (dict(num_nodes=1), "--nodes"),
    (dict(num_edges=0), "--edges"),
    (dict(num_classes=1), "--classes"),
    (dict(communities=3), "--communities"),
    (dict(homophily=1.5), "--homophily"),
    (dict(power_law_exponent=2.0), "--power-law-exponent"),
    (dict(split=(0.8, 0.2, 0.2)), "--split"),
])
def test_bad_options_raise_config_error(kwargs, flag):
    args = dict(num_nodes=100, num_edges=100, num_features=4, num_classes=4) | kwargs
    with pytest.raises(ConfigError, match=flag):
        SyntheticSource(**args)
