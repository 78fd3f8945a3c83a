"""History tables: disk == RAM, dtype rounding, ages, write-behind and read-after-write patching."""
from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from oocgnn.history import HistorySet, HistoryTable


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_disk_table_equals_memory_table(tmp_path, dtype: str) -> None:
    disk = HistorySet(50, [8, 4], dtype, tmp_path)
    mem = HistorySet(50, [8, 4], dtype, None)
    rng = np.random.default_rng(0)
    for step, ranges in enumerate([[(0, 10)], [(20, 30), (40, 45)], [(5, 15)]]):
        n = sum(e - s for s, e in ranges)
        vals = [torch.from_numpy(rng.normal(size=(n, c)).astype(np.float32)) for c in (8, 4)]
        disk.push(vals, step, ranges=ranges)
        mem.push(vals, step, ranges=ranges)
    disk.push([torch.ones(3, 8)], 9, ids=np.array([1, 33, 49]), tables=[0])
    mem.push([torch.ones(3, 8)], 9, ids=np.array([1, 33, 49]), tables=[0])
    disk.flush(), mem.flush()
    ids = np.array([49, 0, 12, 33, 44, 7])
    for t in range(2):
        a = disk.tables[t].pull(ids, torch.empty(6, disk.tables[t].channels))
        b = mem.tables[t].pull(ids, torch.empty(6, mem.tables[t].channels))
        assert torch.equal(a, b)
        assert np.array_equal(disk.last_step[t], mem.last_step[t])
    assert disk.age(0, np.array([1, 12, 46]), step=10).tolist() == [1, 8, -1]
    disk.close(), mem.close()
    reopened = HistoryTable(50, 8, dtype, tmp_path / "layer_0.npy")  # the file persists
    assert torch.equal(reopened.pull(ids, torch.empty(6, 8)), mem.tables[0].pull(ids, torch.empty(6, 8)))


def test_float16_rounds_like_pending_values() -> None:
    hs = HistorySet(10, [4], "float16", None)
    v = torch.full((10, 4), 1.0 + 1e-4)
    snap = hs.snapshot_seq()
    out = torch.zeros(10, 4)
    hs.push([v], 0, ranges=[(0, 10)])
    hs.patch(0, np.arange(10), out, snap)  # served from pending or table: same rounded value
    assert torch.equal(out, v.half().float())
    hs.close()


def test_patch_serves_rows_pushed_after_snapshot() -> None:
    hs = HistorySet(20, [2], "float32", None, max_pending=8)
    gate = threading.Event()
    real_land = hs._land

    def slow_land(p):  # keep pushes pending until the gate opens
        gate.wait(5)
        real_land(p)

    hs._land = slow_land
    ids = np.array([3, 15, 7])
    snap = hs.snapshot_seq()
    out = hs.tables[0].pull(ids, torch.empty(3, 2)).clone()   # stale snapshot (zeros)
    hs.push([torch.full((5, 2), 1.0)], 0, ranges=[(0, 5)])     # covers id 3
    hs.push([torch.full((5, 2), 2.0)], 1, ranges=[(13, 18)])   # covers id 15
    stats = hs.patch(0, ids, out, snap)
    assert stats["patched_pending"] == 2 and stats["patched_table"] == 0
    assert out[:, 0].tolist() == [1.0, 2.0, 0.0]
    # with a staleness bound of 1 the most recent push may be missed, and is counted
    out2 = torch.zeros(3, 2)
    stats = hs.patch(0, ids, out2, snap, bound=1)
    assert stats["stale_rows"] == 1 and out2[:, 0].tolist() == [1.0, 0.0, 0.0]
    gate.set()
    hs.flush()
    out3 = torch.zeros(3, 2)
    stats = hs.patch(0, ids, out3, snap)  # landed now: re-read from the table
    assert stats["patched_table"] == 2 and out3[:, 0].tolist() == [1.0, 2.0, 0.0]
    hs.close()


def test_writer_exception_surfaces() -> None:
    hs = HistorySet(10, [2], "float32", None)

    def boom(p):
        raise OSError("disk on fire")

    hs._land = boom
    hs.push([torch.zeros(2, 2)], 0, ranges=[(0, 2)])
    with pytest.raises(RuntimeError, match="history writer"):
        hs.flush()
    hs._writer.join(5)
    assert not hs._writer.is_alive()


def test_patch_after_a_push_of_no_rows(tmp_path) -> None:
    """A batch of empty partitions pushes empty ranges; a later patch must step over it."""
    hs = HistorySet(20, [3], "float32", tmp_path / "h")
    hs.push([torch.ones(20, 3)], step=0, ranges=[(0, 20)], sync=True)
    snap = hs.snapshot_seq()
    hs.push([torch.empty(0, 3)], step=1, ranges=[])
    hs.push([torch.full((5, 3), 2.0)], step=2, ranges=[(5, 10)])
    out = torch.zeros(4, 3)
    hs.tables[0].pull(np.array([1, 6, 9, 12]), out)
    hs.patch(0, np.array([1, 6, 9, 12]), out, snap)
    assert out[:, 0].tolist() == [1.0, 2.0, 2.0, 1.0]
    hs.close()


@pytest.mark.parametrize("dtype,channels", [("float32", 8), ("float16", 100), ("float32", 1433)])
def test_range_reads_see_every_landed_push(tmp_path, dtype: str, channels: int) -> None:
    """``read_ranges`` of a disk table (buffered pread, whole pages) equals the memmap's rows after
    pushes landed through it, for rows that do and do not divide 4 KiB, first and last rows included."""
    n = 300
    hs = HistorySet(n, [channels], dtype, tmp_path)
    rng = np.random.default_rng(1)
    reads = [[(0, 1)], [(0, 37), (120, 299)], [(250, 300)], [(37, 37), (5, 6)]]
    for step, ranges in enumerate([[(0, 50)], [(60, 61), (100, 300)], [(20, 90)]]):
        rows = sum(e - s for s, e in ranges)
        hs.push([torch.from_numpy(rng.normal(size=(rows, channels)).astype(np.float32))], step, ranges=ranges)
        hs.flush()
        table = hs.tables[0]
        for ranges_read in reads:
            want = np.concatenate([np.asarray(table.array[s:e], np.float32) for s, e in ranges_read])
            got = table.read_ranges(ranges_read, torch.empty(n, channels))
            assert np.array_equal(got.numpy(), want)
    assert hs.tables[0]._range_rows is not None and hs.tables[0]._range_rows.engine == "pread"
    hs.close()
    assert hs.tables[0]._range_rows is None  # descriptor closed with the set
