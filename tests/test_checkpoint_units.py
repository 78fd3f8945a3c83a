"""Unit tests of the checkpoint pieces with small fakes (no trainer, no subprocess)."""
from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest

from oocgnn.checkpoint import faults
from oocgnn.checkpoint import journal as jr
from oocgnn.checkpoint.compat import config_differences
from oocgnn.checkpoint.signals import StopFlag
from oocgnn.checkpoint.store import CheckpointStore
from oocgnn.errors import DiskFullError, RunDirError


class FakeTable:
    def __init__(self, path: Path, n: int, c: int) -> None:
        self.path = path
        self.array = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, c))


def make_tables(tmp_path: Path, n: int = 200, channels=(8, 4)):
    tables = [FakeTable(tmp_path / f"layer_{i}.npy", n, c) for i, c in enumerate(channels)]
    steps = [jr.open_steps(tmp_path / f"layer_{i}.steps.npy", n) for i in range(len(channels))]
    return tables, steps


def snapshot(tables, steps):
    return [np.array(t.array) for t in tables], [np.array(s) for s in steps]


def push(journal, tables, steps, rng, step):
    """What HistorySet._land does around a push of random rows to every table."""
    n = len(steps[0])
    ids = np.unique(rng.integers(0, n, rng.integers(1, 40)))
    tabs = [0, 1]
    journal.before_land(tabs, ids)
    for t in tabs:
        tables[t].array[ids] = rng.normal(size=(len(ids), tables[t].array.shape[1])).astype(np.float32)
    journal.after_land(tabs, ids, step)


def assert_same(a, b):
    for x, y in zip(a[0] + a[1], b[0] + b[1]):
        assert x.tobytes() == y.tobytes()


def test_journal_rollback_is_bitwise_across_segments(tmp_path):
    rng = np.random.default_rng(0)
    tables, steps = make_tables(tmp_path)
    j = jr.UndoJournal(tmp_path, tables, steps, seq=0)
    for s in range(5):
        push(j, tables, steps, rng, s)
    j.sync()
    at1 = snapshot(tables, steps)      # "checkpoint 1"
    j.rotate(1, keep_from=0)           # keep segment 0: fallback to checkpoint 0 possible
    for s in range(5, 12):
        push(j, tables, steps, rng, s)
    j.sync()
    at2 = snapshot(tables, steps)
    j.rotate(2, keep_from=1)           # checkpoint 2; segment 0 dropped
    assert sorted(jr.list_segments(tmp_path)) == [1, 2]
    for s in range(12, 20):
        push(j, tables, steps, rng, s)
    j.close()
    restored = jr.rollback(tmp_path, tables, steps, 2)
    assert restored > 0
    assert_same(snapshot(tables, steps), at2)
    # rolling back again is a no-op (segment consumed), and idempotent by design
    assert jr.rollback(tmp_path, tables, steps, 2) == 0


def test_journal_not_saving_records_steps_but_no_rows_and_later_pushes_still_roll_back(tmp_path):
    """The fill before step 0 lands without saving old rows; the first training push of a row saves the
    filled value, so a rollback returns to the filled tables."""
    rng = np.random.default_rng(3)
    tables, steps = make_tables(tmp_path)
    j = jr.UndoJournal(tmp_path, tables, steps, seq=0)
    with j.not_saving():
        push(j, tables, steps, rng, 0)
    assert j.bytes_journaled == 0 and j.saving and all((s[s >= 0] == 0).all() and (s == 0).any() for s in steps)
    filled = snapshot(tables, steps)
    for s in range(1, 4):
        push(j, tables, steps, rng, s)
    assert j.bytes_journaled > 0
    j.close()
    jr.rollback(tmp_path, tables, steps, 0)
    assert_same(snapshot(tables, steps), filled)


def test_journal_fallback_to_older_checkpoint(tmp_path):
    rng = np.random.default_rng(1)
    tables, steps = make_tables(tmp_path)
    at0 = snapshot(tables, steps)
    j = jr.UndoJournal(tmp_path, tables, steps, seq=0)
    for s in range(6):
        push(j, tables, steps, rng, s)
    j.rotate(1, keep_from=0)
    for s in range(6, 14):
        push(j, tables, steps, rng, s)
    j.close()
    jr.rollback(tmp_path, tables, steps, 0)   # checkpoint 1 corrupted: back to checkpoint 0
    assert_same(snapshot(tables, steps), at0)
    assert (steps[0] == -1).all()


def test_torn_tail_ignored_corrupt_middle_refused(tmp_path):
    rng = np.random.default_rng(2)
    tables, steps = make_tables(tmp_path)
    at0 = snapshot(tables, steps)
    j = jr.UndoJournal(tmp_path, tables, steps, seq=0)
    for s in range(4):
        push(j, tables, steps, rng, s)
    j.close()
    seg = jr.segment_path(tmp_path, 0)
    good = seg.read_bytes()
    seg.write_bytes(good + b"OUJR\x00\x01")           # torn append of a record that never landed
    jr.rollback(tmp_path, tables, steps, 0)
    assert_same(snapshot(tables, steps), at0)
    bad = bytearray(good)
    bad[jr.SEG_HEADER.size + jr.REC_HEADER.size + 3] ^= 0xFF   # flip a byte in the first record
    seg.write_bytes(bytes(bad))
    with pytest.raises(RunDirError, match="corrupted"):
        jr.rollback(tmp_path, tables, steps, 0)


def test_journal_enospc_leaves_table_untouched(tmp_path, monkeypatch):
    rng = np.random.default_rng(3)
    tables, steps = make_tables(tmp_path)
    j = jr.UndoJournal(tmp_path, tables, steps, seq=0)
    push(j, tables, steps, rng, 0)
    before = snapshot(tables, steps)
    monkeypatch.setattr(faults, "_FAIL", ("journal-write", 1))
    monkeypatch.setattr(faults, "_counts", {})
    with pytest.raises(DiskFullError, match="disk full"):
        push(j, tables, steps, rng, 1)   # raises before any row is written
    assert_same(snapshot(tables, steps), before)


def test_store_keeps_last_k_and_skips_corrupt(tmp_path, caplog):
    store = CheckpointStore(tmp_path, keep=2)
    for seq, step in enumerate((3, 6, 9), start=1):
        store.save(seq, step, f"state{step}".encode(), {"epoch": 0})
        store.prune()
    assert sorted(p.name for p in store.directories()) == ["step-6", "step-9"]
    assert store.prune() == 2
    info, invalid = store.scan()
    assert info.step == 9 and not invalid
    # corrupt the newest: same size, one byte changed
    f = tmp_path / "checkpoints" / "step-9" / "state.pt"
    f.write_bytes(b"X" + f.read_bytes()[1:])
    info, invalid = store.scan()
    assert info.step == 6 and invalid[0][1] == "state.pt checksum mismatch"
    # truncated
    f.write_bytes(b"st")
    assert "bytes" in store.scan()[1][0][1]
    # torn: no marker
    (tmp_path / "checkpoints" / "step-9" / "COMPLETE").unlink()
    info, invalid = store.scan()
    assert info.step == 6 and "torn" in invalid[0][1] and invalid[0][2] is False


def test_store_same_step_replaced_and_enospc(tmp_path, monkeypatch):
    store = CheckpointStore(tmp_path, keep=2)
    store.save(1, 4, b"a", {})
    store.save(2, 4, b"b", {})                        # stop at an epoch's last batch, then epoch end
    info, _ = store.scan()
    assert info.seq == 2 and (info.path / "state.pt").read_bytes() == b"b"
    monkeypatch.setattr(faults, "_FAIL", ("ckpt-write", 1))
    monkeypatch.setattr(faults, "_counts", {})
    with pytest.raises(DiskFullError, match="disk full while writing checkpoint"):
        store.save(3, 8, b"c", {})
    info, invalid = store.scan()
    assert info.seq == 2 and not invalid
    assert not [p for p in store.dir.iterdir() if p.name.startswith(".")]


def test_config_differences():
    d = {"model": {"name": "gcn", "hidden": 64}, "train": {"lr": 0.01, "epochs": 10, "seed": 0},
         "io": {"io_threads": 4, "prefetch": 2}, "data": "/a"}
    new = {"model": {"name": "gcn", "hidden": 64}, "train": {"lr": 0.01, "epochs": 20, "seed": 0},
           "io": {"io_threads": 1, "prefetch": 0}, "data": "/b"}
    assert config_differences(d, new, d) == []
    new["train"]["lr"] = 0.02
    new["model"]["hidden"] = 32
    assert config_differences(d, new, d) == ["model.hidden: 64 -> 32", "train.lr: 0.01 -> 0.02"]
    # a key added later is compared at its default
    assert config_differences(d, {**d, "rest": {"k": 1}}, {**d, "rest": {"k": 1}}) == []
    assert config_differences(d, {**d, "rest": {"k": 2}}, {**d, "rest": {"k": 1}}) == ["rest.k: 1 -> 2"]


def test_stop_flag_on_sigterm():
    before = signal.getsignal(signal.SIGTERM)
    flag = StopFlag().install()
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        assert flag.requested and flag.name == "SIGTERM"
    finally:
        flag.restore()
    assert signal.getsignal(signal.SIGTERM) == before
