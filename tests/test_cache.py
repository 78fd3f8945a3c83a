"""Row cache: next-use bookkeeping, Belady >= LRU on the same stream, and correct rows served."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from oocgnn.belady import INF, Policy, next_uses
from oocgnn.cache import FeatureCache
from oocgnn.lru import LRUPolicy


def test_next_uses() -> None:
    acc = [np.array([1, 2, 3]), np.array([2, 4]), np.array([1, 4])]
    nu = next_uses(acc)
    assert nu[0].tolist() == [2, 1, INF] and nu[1].tolist() == [INF, 2] and nu[2].tolist() == [INF, INF]


def _stream(seed: int, batches: int = 40, n: int = 400) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    hot = rng.zipf(1.5, size=(batches, 60)) % n  # skewed: a few rows are read by many batches
    return [np.unique(h) for h in hot]


def test_belady_beats_lru_and_never_exceeds_capacity() -> None:
    for seed in range(5):
        acc = _stream(seed)
        nus = next_uses(acc)
        bel, lru = Policy(20, "belady"), LRUPolicy(20)
        for t, (a, nu) in enumerate(zip(acc, nus)):
            bel.step(a, nu, t)
            lru.step(a, nu, t)
            assert len(bel.ids) <= 20 and len(set(bel.slot.tolist())) == len(bel.slot)
        assert bel.hits >= lru.hits > 0


def test_feature_cache_serves_exact_rows() -> None:
    feats = torch.randn(400, 5)
    acc = _stream(7, batches=15)

    class Fake:
        indptr = indices = None

    cache = FeatureCache(capacity=30, width=5, row_bytes=20)
    cache.accesses, cache.nus, cache.t = acc, next_uses(acc), 0
    rng = np.random.default_rng(0)
    misses = 0
    for a in acc:
        halo = rng.permutation(a)  # first-seen order differs from sorted order
        out = torch.empty(len(halo), 5)
        cache.gather(halo, out, lambda ids, o: o.copy_(feats[torch.from_numpy(ids)]))
        assert torch.equal(out, feats[torch.from_numpy(halo)])
        misses += cache.last_misses
    m = cache.epoch_metrics()
    assert 0 < m["cache_hit_rate"] <= 1 and m["cache_bytes_saved"] == (sum(map(len, acc)) - misses) * 20
    assert m["cache_hit_rate"] >= m["cache_hit_rate_lru_same_size"]


def test_lru_without_access_stream_serves_exact_rows_and_matches_the_lru_shadow() -> None:
    """The billion-scale fallback: LRU with no plan gives the rows and hit rate the LRU shadow had."""
    feats = torch.randn(400, 5)
    acc = _stream(3, batches=25)
    with_stream = FeatureCache(capacity=30, width=5, row_bytes=20)  # Belady, LRU shadow
    with_stream.accesses, with_stream.nus, with_stream.t = acc, next_uses(acc), 0
    lru = FeatureCache(capacity=30, width=5, row_bytes=20, policy="lru", shadow=False)
    assert not lru.needs_stream
    lru.begin_epoch(None, [])  # needs no trainer or plan: nothing is precomputed
    shuffled = FeatureCache(capacity=30, width=5, row_bytes=20, policy="lru", shadow=False)
    shuffled.begin_epoch(None, [])
    rng = np.random.default_rng(1)
    for a in acc:
        # the shadow sees each halo sorted (the stream's order), the fallback in the order it is given:
        # given sorted, it ties rows of one batch the same way, so the hit rates must agree exactly
        for cache, halo in ((with_stream, rng.permutation(a)), (lru, a), (shuffled, rng.permutation(a))):
            out = torch.empty(len(halo), 5)
            cache.gather(halo, out, lambda ids, o: o.copy_(feats[torch.from_numpy(ids)]))
            assert torch.equal(out, feats[torch.from_numpy(halo)])
    m, b = lru.epoch_metrics(), with_stream.epoch_metrics()
    assert m["cache_policy"] == "lru" and not any("same_size" in k for k in m)
    assert m["cache_hit_rate"] == b["cache_hit_rate_lru_same_size"] > 0
    assert abs(shuffled.epoch_metrics()["cache_hit_rate"] - m["cache_hit_rate"]) < 0.1  # other ties, same policy


def test_belady_without_stream_is_refused() -> None:
    with pytest.raises(ValueError):
        FeatureCache(capacity=3, width=2, row_bytes=8, policy="belady", shadow=False)


def _reference_lru(stream: list[np.ndarray], capacity: int) -> list[int]:
    """Hits per batch of a plain per-row LRU (OrderedDict) with batch-granular recency."""
    import collections

    cache: collections.OrderedDict[int, None] = collections.OrderedDict()
    hits = []
    for a in stream:
        hits.append(sum(int(x) in cache for x in a))
        for x in a:  # every row of the batch becomes most recent (ties: ascending id, like LRUPolicy)
            cache.pop(int(x), None)
            cache[int(x)] = None
        while len(cache) > capacity:
            cache.popitem(last=False)
    return hits


@pytest.mark.parametrize("capacity", [1, 7, 30, 120, 1000])
def test_lru_policy_matches_a_reference_lru_and_keeps_its_maps_consistent(capacity) -> None:
    acc = _stream(11, batches=60, n=300) + [np.arange(0, 300, 2)] + _stream(12, batches=20, n=300)
    ref = _reference_lru(acc, capacity)
    lru = LRUPolicy(capacity)
    same = True  # until a batch larger than the cache: which of its rows stay is a free choice
    for t, a in enumerate(acc):
        h0 = lru.hits
        hit, hit_slots, ins_pos, new_slots = lru.step(a, None, t)
        same &= len(a) <= capacity
        if same:
            assert lru.hits - h0 == ref[t], t
        assert lru.size <= capacity and len(set(new_slots.tolist()) | set(hit_slots.tolist())) == len(new_slots) + len(hit_slots)
        cached = np.flatnonzero(lru.slot_of >= 0)
        assert len(cached) == lru.size and np.array_equal(lru.id_of[lru.slot_of[cached]], cached)
        m, s = lru.cached_slots(a[ins_pos])
        assert m.all() and np.array_equal(s, new_slots)
    assert lru._queued <= 3 * capacity + 300  # stale queue entries are compacted



def test_lru_id_map_never_grows_past_the_graph() -> None:
    """Doubling the id -> slot map past the last node id wasted up to 4 bytes per node per cache."""
    lru = LRUPolicy(8, num_nodes=1000)
    lru.step(np.array([3, 600]), None, 0)
    lru.step(np.array([999]), None, 1)  # doubling 601 would give 1202
    assert len(lru.slot_of) == 1000
    hit, _ = lru.cached_slots(np.array([3, 600, 999]))
    assert hit.all()
    free = LRUPolicy(8)  # unbounded: grows by doubling
    free.step(np.array([600]), None, 0)
    free.step(np.array([700]), None, 1)
    assert len(free.slot_of) == 1202
