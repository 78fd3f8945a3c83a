"""``--memory-budget`` bounds anonymous memory: planned from the process baseline, honoured, refused in one line."""
from __future__ import annotations

import numpy as np
import pytest

from oocgnn.errors import ConfigError
from oocgnn.store.reader import open_dataset
from oocgnn.testing.stores import make_store, random_graph
from oocgnn.config import RunConfig
from oocgnn.runner import make_trainer
from oocgnn.utils.memory import PeakRSSMonitor, current_anon_rss


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    g = random_graph(num_nodes=40_000, num_edges=400_000, num_features=64, num_classes=4, seed=5)
    path = tmp_path_factory.mktemp("store") / "s"
    make_store(path, g["edge_index"], g["x"], g["y"], g["splits"], 8)
    return open_dataset(path)


def _cfg(tmp_path, budget: int, ppb: int = 2) -> RunConfig:
    return RunConfig.from_dict({"data": "", "run_dir": str(tmp_path / "run"),
                                "io": {"memory_budget": budget, "prefetch": 2, "io_threads": 2},
                                "train": {"epochs": 1, "parts_per_batch": ppb}})


def test_budget_too_small_for_one_batch_is_refused_in_one_line(store, tmp_path) -> None:
    budget = current_anon_rss() + (1 << 20)  # 1 MiB above the process baseline
    with pytest.raises(ConfigError) as err:
        make_trainer(store, _cfg(tmp_path, budget, ppb=8), tmp_path / "run")
    msg = str(err.value)
    assert "\n" not in msg and "cannot hold one batch" in msg and "--parts-per-batch" in msg


def test_anonymous_peak_stays_under_budget(store, tmp_path) -> None:
    from oocgnn.subgraph import SubgraphBuilder, partition_halo_sizes

    # compile the trainer's numba kernels first (the halo count, the subgraph build, on the arrays the
    # engine reads): their one-time JIT memory is part of the process baseline (which the plan
    # measures), not of the 320 MB this test gives the batches
    partition_halo_sizes(store.indptr, store.indices, store.partition_ptr, "auto")
    warm = SubgraphBuilder(store.indptr, store.indices, "auto")
    warm([(0, int(store.partition_ptr[1]))]).transpose()
    warm.close()
    del warm
    base = current_anon_rss()
    budget = base + (320 << 20)  # two batches ahead: each with its CSR and its transpose
    trainer = make_trainer(store, _cfg(tmp_path, budget), tmp_path / "run")
    plan = trainer.memory_plan
    assert plan["planned_peak_anon_bytes"] <= budget and plan["prefetch_depth"] >= 1
    assert trainer.cache is not None  # the room left after one batch goes to the cache
    try:
        with PeakRSSMonitor(interval=0.005) as mon:
            rec = trainer.train_epoch()
    finally:
        trainer.close()
    assert np.isfinite(rec["loss"]) and rec["batches"] == 4
    assert mon.peak_anon <= budget, (mon.peak_anon - base) / 2**20


def test_belady_charge_covers_the_access_stream_peak() -> None:
    """The plan charges BELADY_BYTES_PER_ACCESS per halo access; plan_accesses must not need more.

    numpy reports its buffers to tracemalloc, so the traced peak is exact (no sampling).
    """
    import tracemalloc
    from types import SimpleNamespace

    from oocgnn.batching import group_ranges
    from oocgnn.belady import plan_accesses
    from oocgnn.train.budget import BELADY_BYTES_PER_ACCESS

    rng = np.random.default_rng(0)
    n, deg, parts = 200_000, 16, 20
    indptr = np.arange(0, (n + 1) * deg, deg, dtype=np.int64)
    indices = rng.integers(0, n, n * deg).astype(np.int32)
    ptr = np.linspace(0, n, parts + 1).astype(np.int64)
    plan = [group_ranges(ptr, np.array([p])) for p in rng.permutation(parts)]
    trainer = SimpleNamespace(indptr=indptr, indices=indices)
    tracemalloc.start()
    try:
        accesses, nus, uniq, first = plan_accesses(trainer, plan)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    total = sum(len(a) for a in accesses)
    assert total > 1_000_000
    assert peak <= BELADY_BYTES_PER_ACCESS * total, peak / total
    assert peak > 0.5 * BELADY_BYTES_PER_ACCESS * total  # the charge is not wildly loose either


def test_trim_heap_gives_freed_arrays_back() -> None:
    """Freed heap chunks stay in RssAnon until trimmed; the streaming decision trims before it measures."""
    from oocgnn.utils.memory import trim_heap

    x = np.ones(4_000_000)  # freeing a 32 MB block raises glibc's mmap threshold: what follows is heap
    del x
    # 800 KB each: heap whether the threshold is glibc's dynamic one or the trainer's fixed 1 MiB
    xs = [np.ones(100_000) for _ in range(600)]
    del xs[::2]  # holes, not the top of the heap: free() keeps them
    before = current_anon_rss()
    trim_heap()
    assert before - current_anon_rss() > 200 << 20


_HEAP_PATTERN = """
import sys, numpy as np
from oocgnn.utils.memory import current_anon_rss, keep_large_buffers_off_heap
if sys.argv[1] == "fixed":
    keep_large_buffers_off_heap()
big = np.ones(30 << 20, np.uint8); del big      # a freed mapped block raises glibc's dynamic threshold
chunks = [np.ones(4 << 20, np.uint8) for _ in range(20)]  # 4 MiB temporaries, as a training step makes them
before = current_anon_rss()
del chunks[::2]                                   # freed between live ones: no heap top to trim
print((before - current_anon_rss()) >> 20)
"""


@pytest.mark.parametrize("mode", ["dynamic", "fixed"])
def test_freed_step_buffers_leave_rss_once_the_trainer_fixes_the_threshold(mode: str) -> None:
    """The trainer's fixed mmap threshold returns freed MiB-sized buffers at once; glibc's default keeps them.

    Run in a fresh interpreter: the setting is process-wide, and this one has built trainers.
    """
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    out = subprocess.run([sys.executable, "-c", _HEAP_PATTERN, mode], capture_output=True, text=True, env=env,
                         check=True)
    returned_mib = int(out.stdout.split()[-1])
    if mode == "fixed":
        assert returned_mib >= 36  # the 40 MiB freed
    else:
        assert returned_mib < 20  # the arena kept them: what the budget overshoot was made of


def test_building_a_trainer_fixes_the_threshold(store, tmp_path, monkeypatch) -> None:
    """The setting above is made by every trainer (CLI train/eval, benchmarks, API), before it plans memory."""
    import oocgnn.train.loop as loop

    calls = []
    monkeypatch.setattr(loop, "keep_large_buffers_off_heap", lambda *a, **k: calls.append(1) or True)
    make_trainer(store, _cfg(tmp_path, 4 << 30), tmp_path / "run").close()
    assert calls == [1]


@pytest.mark.parametrize("engine", ["direct", "mmap"])
def test_mapped_window_follows_the_engine_in_use(store, tmp_path, engine) -> None:
    """The row-gather engine maps no gathered row and pushes land with pwrite: its window is two pushes,
    not the 8 % of the budget that memmap gathers need (120 MB at 1.5 GB, ~3x what it maps)."""
    from oocgnn.train.budget import MAPPED_WINDOW_FRACTION

    budget = current_anon_rss() + (1500 << 20)
    cfg = _cfg(tmp_path, budget)
    cfg.io.io_engine = engine
    trainer = make_trainer(store, cfg, tmp_path / "run")
    try:
        window = trainer.memory_plan["mapped_window_bytes"]
        rows = int(np.diff(np.asarray(store.partition_ptr)).max()) * 2
        push = rows * sum(t.row_bytes for t in trainer.histories.tables)
        assert trainer._releaser.window == window
    finally:
        trainer.close()
    if engine == "mmap":
        assert window == int(budget * MAPPED_WINDOW_FRACTION)
    else:
        assert window <= max(16 << 20, 2 * push) < int(budget * MAPPED_WINDOW_FRACTION)


def test_pushed_ranges_map_no_pages(tmp_path) -> None:
    """History range writes go through pwrite: they reach the file (and its memmap readers) without
    mapping the written pages into RSS."""
    from oocgnn.history import HistoryTable
    from oocgnn.utils.mapped import mapped_rss, release_mapped_pages

    table = HistoryTable(200_000, 64, "float32", tmp_path / "layer_0.npy")
    values = np.random.default_rng(0).standard_normal((130_000, 64)).astype(np.float32)  # 33 MB
    release_mapped_pages()
    before = mapped_rss()
    table.write([(10, 60_010), (100_000, 170_000)], None, values)
    grew = mapped_rss() - before
    table.flush()
    assert grew < (2 << 20), grew / 2**20
    assert np.array_equal(table.array[10:60_010], values[:60_000])  # the memmap sees the writes
    table.close_reader()
    back = np.load(tmp_path / "layer_0.npy", mmap_mode="r")
    assert np.array_equal(back[100_000:170_000], values[60_000:]) and not back[60_010:100_000].any()
