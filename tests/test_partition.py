"""Partitioners: balance, quality ordering, and the auto choice by budget."""
from __future__ import annotations

import numpy as np
import pytest

from oocgnn.errors import ConfigError
from oocgnn.prepare.csr import build_csr
from oocgnn.prepare.partition import choose_method, partition_graph
from oocgnn.testing.graphs import community_edges


@pytest.fixture(scope="module")
def community_csr(tmp_path_factory):
    n = 20_000
    src, dst = community_edges(n, 150_000, 16, seed=0)
    d = tmp_path_factory.mktemp("csr")
    build_csr(lambda: [(src, dst)], n, d / "ip.npy", d / "ix.npy", d, symmetric=True, memory_budget=1 << 28, progress=False)
    return np.load(d / "ip.npy", mmap_mode="r"), np.load(d / "ix.npy", mmap_mode="r")


def test_methods_balanced_and_ordered_by_quality(community_csr):
    ip, ix = community_csr
    cuts = {}
    for method in ("metis", "ldg", "range"):
        r = partition_graph(ip, ix, 16, method, memory_budget=1 << 30, progress=False)
        sizes = np.bincount(r.part, minlength=16)
        assert r.method == method and sizes.sum() == len(ip) - 1
        assert sizes.max() <= 1.1 * sizes.mean() + 1
        cuts[method] = r.edge_cut_fraction
    assert cuts["metis"] < cuts["ldg"] < cuts["range"]
    assert cuts["metis"] < 0.3 and cuts["range"] > 0.8


def test_auto_picks_metis_only_when_it_fits_else_multilevel_else_ldg():
    assert choose_method("auto", 1000, 10_000, 1 << 30) == "metis"
    assert choose_method("auto", 10**8, 3 * 10**9, 12 * 10**9) == "multilevel"
    assert choose_method("auto", 10**9, 3 * 10**10, 12 * 10**9) == "ldg"
    with pytest.raises(ConfigError, match="--partitioner"):
        choose_method("spectral", 10, 10, 10)


def test_partition_count_validated(community_csr):
    ip, ix = community_csr
    with pytest.raises(ConfigError, match="--partitions 0"):
        partition_graph(ip, ix, 0, memory_budget=1 << 30, progress=False)
