"""REST / REST-IS schedules: determinism, F = 1 is GAS, importance ranking."""
from __future__ import annotations

import numpy as np
import pytest

from oocgnn.errors import ConfigError
from oocgnn.staleness.importance import (draw_refresh_parts, node_importance, partition_importance,
                                         refresh_probabilities)
from oocgnn.staleness.schedule import (RefreshSchedule, ScheduleState, interleave_trains,
                                       partition_last_step, refreshes_after_step)

PTR = np.arange(0, 101, 10)  # 10 partitions of 10 rows


def kinds(actions):
    return [(a.kind, a.parts) for a in actions]


@pytest.mark.parametrize("method,loop", [("rest", "extra"), ("rest", "interleave"), ("rest-is", "extra")])
def test_schedule_deterministic_for_seed(method, loop):
    imp = np.linspace(1, 2, 10)
    last = np.full(10, -1)
    make = lambda seed: RefreshSchedule(10, 2, seed, method, 2.5, loop, imp)  # noqa: E731
    a = kinds(make(3).plan(1, ScheduleState(global_step=7, cursor=4), last, PTR))
    b = kinds(make(3).plan(1, ScheduleState(global_step=7, cursor=4), last, PTR))
    c = kinds(make(4).plan(1, ScheduleState(global_step=7, cursor=4), last, PTR))
    assert a == b and a != c


def test_f1_is_gas_epoch():
    gas = RefreshSchedule(10, 2, 0, "gas", 1.0)
    for loop in ("extra", "interleave"):
        rest = RefreshSchedule(10, 2, 0, "rest", 1.0, loop)
        acts = rest.plan(2, ScheduleState(), np.full(10, -1), PTR)
        assert all(a.kind == "train" for a in acts)
        assert [a.parts for a in acts] == [a.parts for a in gas.plan(2, ScheduleState(), np.full(10, -1), PTR)]
        assert [a.parts for a in acts] == rest.epoch_groups(2)


def test_extra_counts_and_round_robin_covers_all():
    assert [refreshes_after_step(g, 2.5) for g in range(4)] == [1, 2, 1, 2]
    assert sum(refreshes_after_step(g, 1.3) for g in range(10)) == 3
    s = RefreshSchedule(10, 2, 0, "rest", 3.0)
    acts = s.plan(0, ScheduleState(), np.full(10, -1), PTR)
    assert sum(a.kind == "train" for a in acts) == 5 and sum(a.kind == "refresh" for a in acts) == 10
    refreshed = [a.parts for a in acts if a.kind == "refresh"][:5]
    assert sorted(p for parts in refreshed for p in parts) == list(range(10))  # one full cycle, all partitions


def test_resume_midway_gives_identical_remainder():
    imp = np.linspace(1, 2, 10)
    s = RefreshSchedule(10, 1, 5, "rest-is", 2.0, "extra", imp)
    last = np.full(10, -1)
    full = s.plan(0, ScheduleState(), last, PTR)
    st, sim_last = ScheduleState(), last.copy()
    for a in full[:7]:  # run 7 actions, mirroring the pushes
        sim_last[list(a.parts)] = st.global_step  # train pushes at g, refreshes after it at g + 1
        s.advance(st, a)
    assert kinds(s.plan(0, st, sim_last, PTR)) == kinds(full[7:])


def test_interleave_every_fth_trains():
    assert [interleave_trains(i, 3) for i in range(6)] == [False, False, True, False, False, True]
    assert all(interleave_trains(i, 1) for i in range(5))


def test_importance_ranks_cross_partition_neighbour_first():
    # partition 0 = {0,1,2}, partition 1 = {3,4,5}; node 2 is read by partition 1 three times, node 0 by nobody
    edges = [(0, 1), (1, 2), (2, 3), (2, 4), (2, 5), (3, 4), (4, 5)]
    n = 6
    adj = [[] for _ in range(n)]
    for u, v in edges:
        adj[u].append(v)
        adj[v].append(u)
    indptr = np.cumsum([0] + [len(a) for a in adj])
    indices = np.array([v for a in adj for v in sorted(a)])
    ptr = np.array([0, 3, 6])
    imp = node_importance(indptr, indices, ptr, block_rows=2)
    assert imp[2] > 0 and imp[0] == 0 and imp[2] > imp[1]
    assert np.isclose(imp[2], sum(1 / np.sqrt((len(adj[2]) + 1) * (len(adj[u]) + 1)) for u in (3, 4, 5)))
    part = partition_importance(imp, ptr)
    assert np.isclose(part.sum(), imp.sum())


def test_is_prefers_important_and_old_but_never_starves():
    imp = np.array([10.0, 1.0, 0.0, 1.0])
    last = np.array([5, 5, 5, 9])
    p = refresh_probabilities(imp, last, 10, uniform_mix=0.1)
    assert np.isclose(p.sum(), 1) and p[0] > p[1] > p[3] and p[2] == pytest.approx(0.025)
    rng = np.random.default_rng(0)
    draws = [draw_refresh_parts(imp, last, 10, 1, rng)[0] for _ in range(2000)]
    assert np.bincount(draws, minlength=4)[0] > 1500 and np.bincount(draws, minlength=4)[2] > 0


def test_partition_last_step_and_errors():
    last = np.array([3, 3, -1, 4, 4, 4])
    assert partition_last_step(last, np.array([0, 2, 3, 3, 6])).tolist() == [3, -1, -1, 4]
    with pytest.raises(ConfigError):
        RefreshSchedule(10, 1, 0, "gas", 2.0)
    with pytest.raises(ConfigError):
        RefreshSchedule(10, 1, 0, "rest-is", 2.0, "interleave", np.ones(10))
