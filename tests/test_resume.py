"""Crash-safe resume of real ``oocgnn train`` runs on a small real store.

Every scenario ends with the final ``state_dict`` compared *bitwise* to an
uninterrupted run.  Crashes at exact windows use ``OOCGNN_CRASH_AT`` (a real
SIGKILL at a named point: journal record written but rows not landed, checkpoint
files written but not renamed, renamed but not marked COMPLETE, ...); full disk
uses ``OOCGNN_FAIL_AT`` (ENOSPC from that point on).  Signals are sent once the
run's own files show progress (a COMPLETE marker), never after a bare sleep.
"""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from oocgnn.checkpoint import EXIT_PREEMPTED, faults
from oocgnn.cli.main import main as cli_main
from oocgnn.testing.stores import make_store, random_graph

ARGS = ["--epochs", "3", "--parts-per-batch", "2", "--checkpoint-every", "2", "--deterministic", "--no-progress",
        "--hidden", "16", "--io-threads", "2"]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("resume") / "store"
    g = random_graph(num_nodes=600, num_edges=3000, num_features=8, num_classes=3, seed=1)
    make_store(path, g["edge_index"], g["x"], g["y"], g["splits"], num_partitions=8)
    return path


def train_cmd(store: Path, run_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "oocgnn.cli.main", "train", "--data", str(store), "--run-dir", str(run_dir),
            *ARGS, *extra]


def run_sub(store: Path, run_dir: Path, env: dict[str, str] | None = None, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(train_cmd(store, run_dir, *extra), env={**os.environ, **(env or {})},
                          capture_output=True, text=True, timeout=300)


def run_inproc(store: Path, run_dir: Path, *extra: str) -> int:
    return cli_main(["train", "--data", str(store), "--run-dir", str(run_dir), *ARGS, *extra])


def assert_bitwise(a: Path, b: Path) -> None:
    sa, sb = torch.load(a / "final" / "model.pt"), torch.load(b / "final" / "model.pt")
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k
    assert np.array_equal(np.load(a / "final" / "predictions.npy"), np.load(b / "final" / "predictions.npy"))


@pytest.fixture(scope="module")
def reference(store, tmp_path_factory) -> Path:
    """Uninterrupted subprocess run (the oracle for subprocess scenarios)."""
    run_dir = tmp_path_factory.mktemp("ref") / "run"
    r = run_sub(store, run_dir)
    assert r.returncode == 0, r.stderr
    return run_dir


@pytest.fixture(scope="module")
def reference_inproc(store, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("refin") / "run"
    assert run_inproc(store, run_dir) == 0
    return run_dir


def _wait_for_new_checkpoint(proc: subprocess.Popen, run_dir: Path, seen: set[str]) -> None:
    deadline = time.monotonic() + 240
    while not {p.parent.name for p in (run_dir / "checkpoints").glob("step-*/COMPLETE")} - seen:
        assert proc.poll() is None and time.monotonic() < deadline, "run ended before a new checkpoint"
        time.sleep(0.01)


def test_kill9_then_sigterm_then_resume_is_bitwise_exact(store, reference_inproc, tmp_path):
    """SIGKILL mid-checkpoint and mid-push, then SIGTERM (exit 75), then resume to the end."""
    run_dir = tmp_path / "run"
    for point in ("ckpt-files:2", "push-journaled:7"):   # before the rename; record written, rows not landed
        r = run_sub(store, run_dir, {"OOCGNN_CRASH_AT": point})
        assert r.returncode == -9, (point, r.stderr)
    seen = {p.parent.name for p in (run_dir / "checkpoints").glob("step-*/COMPLETE")}
    proc = subprocess.Popen(train_cmd(store, run_dir), stderr=subprocess.PIPE, text=True)
    _wait_for_new_checkpoint(proc, run_dir, seen)          # observable progress, then the signal
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == EXIT_PREEMPTED, err
    assert "stopped by SIGTERM" in err and "re-run the same command to resume" in err and "Traceback" not in err
    r = run_sub(store, run_dir)
    assert r.returncode == 0, r.stderr
    assert "resuming from checkpoint" in r.stderr
    assert_bitwise(reference_inproc, run_dir)


def test_kill9_during_pushes_through_the_row_gather_engine_resumes_bitwise(store, reference, tmp_path):
    """SIGKILL while pushes land, with every halo row read by the engine's ``pread`` kernel.

    ``--io-engine pread`` works on any filesystem (``auto``/``direct`` read history tables
    with it too); halo history rows are gathered on the prefetcher's second thread while
    pushes land, so a crash can catch a push journaled but not landed, or landed but its
    steps not recorded, with engine reads around it.  The resumed run must equal the
    uninterrupted one (default engine) bitwise.
    """
    run_dir = tmp_path / "run"
    for point in ("push-journaled:3", "push-landed:9"):
        r = run_sub(store, run_dir, {"OOCGNN_CRASH_AT": point}, "--io-engine", "pread")
        assert r.returncode == -9, (point, r.stderr)
    r = run_sub(store, run_dir, None, "--io-engine", "pread")
    assert r.returncode == 0, r.stderr
    assert "resuming from checkpoint" in r.stderr
    assert_bitwise(reference, run_dir)


@pytest.mark.slow
def test_kill9_at_every_critical_point_is_bitwise_exact(store, reference, tmp_path):
    """SIGKILL in each dangerous window: push journaled/landed, checkpoint before rename/before COMPLETE."""
    run_dir = tmp_path / "run"
    for point in ("push-journaled:5", "ckpt-files:2", "push-landed:4", "ckpt-renamed:2"):
        r = run_sub(store, run_dir, {"OOCGNN_CRASH_AT": point})
        assert r.returncode == -9, (point, r.stderr)
    r = run_sub(store, run_dir)
    assert r.returncode == 0, r.stderr
    assert_bitwise(reference, run_dir)


@pytest.mark.parametrize("point", ["journal-write:9", "ckpt-write:7"])
def test_disk_full_keeps_last_checkpoint_and_resumes(store, reference_inproc, tmp_path, monkeypatch, capsys, point):
    """ENOSPC while journaling a push / writing a checkpoint: one line, exit 28, resume after space is freed."""
    run_dir = tmp_path / "run"
    name, n = point.split(":")
    monkeypatch.setattr(faults, "_FAIL", (name, int(n)))
    monkeypatch.setattr(faults, "_counts", {})
    assert run_inproc(store, run_dir) == 28
    err = capsys.readouterr().err
    assert "disk full" in err and "re-run the same command to resume" in err and len(err.strip().splitlines()) == 1
    assert list((run_dir / "checkpoints").glob("step-*/COMPLETE"))
    assert not [p for p in (run_dir / "checkpoints").iterdir() if p.name.startswith(".tmp")]
    monkeypatch.setattr(faults, "_FAIL", None)      # space freed
    assert run_inproc(store, run_dir) == 0
    assert_bitwise(reference_inproc, run_dir)


def _interrupted_run(store: Path, run_dir: Path, monkeypatch) -> None:
    """A run stopped after its 3rd checkpoint (in-process SIGTERM at a step boundary)."""
    from oocgnn.checkpoint import session as sess

    orig = sess.RunSession.save

    def save_then_stop(self, trainer):
        info = orig(self, trainer)
        if self.checkpoints_written == 3:
            self.stop.signum = 15
        return info
    monkeypatch.setattr(sess.RunSession, "save", save_then_stop)
    assert run_inproc(store, run_dir) == EXIT_PREEMPTED
    monkeypatch.setattr(sess.RunSession, "save", orig)


def test_corrupt_newest_checkpoint_falls_back(store, reference_inproc, tmp_path, monkeypatch, caplog):
    run_dir = tmp_path / "run"
    _interrupted_run(store, run_dir, monkeypatch)
    newest = max((run_dir / "checkpoints").glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
    state = newest / "state.pt"
    state.write_bytes(state.read_bytes()[:-100])           # truncated
    assert run_inproc(store, run_dir) == 0
    assert "unusable" in caplog.text and "skipped" in caplog.text
    assert_bitwise(reference_inproc, run_dir)


@pytest.mark.parametrize("damage, message", [
    ("truncate-history", "history file"),
    ("delete-steps", "is missing"),
    ("corrupt-journal", "history journal"),
    ("config", "result-affecting options (train.lr: 0.01 -> 0.02)"),
    ("store", "changed since this run started"),
    ("manifest", "run.json is missing"),
    ("all-checkpoints", "no usable checkpoint"),
])
def test_damaged_run_dir_gives_one_line_error(store, tmp_path, monkeypatch, capsys, damage, message):
    run_dir = tmp_path / "run"
    _interrupted_run(store, run_dir, monkeypatch)
    capsys.readouterr()
    hist = run_dir / "histories"
    extra: list[str] = []
    data = store
    if damage == "truncate-history":
        with open(hist / "layer_0.npy", "r+b") as f:
            f.truncate(1000)
    elif damage == "delete-steps":
        (hist / "layer_0.steps.npy").unlink()
    elif damage == "corrupt-journal":
        newest = max((run_dir / "checkpoints").glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
        (newest / "state.pt").write_bytes(b"junk")        # falls back, so the older segment is replayed
        seg = sorted(hist.glob("journal-*.bin"))[0]
        b = bytearray(seg.read_bytes())
        assert len(b) >= 200, "the oldest journal segment holds no record to damage"
        b[60] ^= 0xFF
        seg.write_bytes(bytes(b) + bytes(b[16:]))   # damage followed by more records: not a torn tail
    elif damage == "config":
        extra = ["--lr", "0.02", "--io-threads", "1", "--prefetch", "0"]  # speed-only changes alone are fine
    elif damage == "store":
        import shutil

        data = tmp_path / "store2"
        shutil.copytree(store, data)
        import zarr

        grp = zarr.open_group(str(data), mode="r+")
        attrs = dict(grp.attrs["oocgnn"])
        attrs["checksums"] = {**attrs.get("checksums", {}), "features": "sha256:changed"}
        grp.attrs["oocgnn"] = attrs
    elif damage == "manifest":
        (run_dir / "run.json").unlink()
    elif damage == "all-checkpoints":
        for p in (run_dir / "checkpoints").glob("step-*/state.pt"):
            p.write_bytes(b"junk")
    rc = cli_main(["train", "--data", str(data), "--run-dir", str(run_dir), *ARGS, *extra])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.mark.slow
def test_kill9_at_random_moments_is_bitwise_exact(store, reference, tmp_path):
    """Kill -9 at random times (sync on the run's files: checkpoint markers, journal growth)."""
    rng = random.Random(1234)
    run_dir = tmp_path / "run"
    kills = 0
    for attempt in range(12):
        proc = subprocess.Popen(train_cmd(store, run_dir, "--checkpoint-every", "1"),
                                stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        start = {p.name for p in (run_dir / "checkpoints").glob("step-*")} if run_dir.exists() else set()
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            now = {p.name for p in (run_dir / "checkpoints").glob("step-*")} if run_dir.exists() else set()
            if now - start:   # it made progress in this attempt: kill somewhere in the next few ms
                time.sleep(rng.random() * 0.2)
                proc.kill()
                kills += 1
                break
            time.sleep(0.005)
        proc.wait()
        if proc.returncode == 0:
            break
    else:
        # A kill can land after summary.json (written last) but before exit: then the run is
        # finished and the next attempt exits 0 at once (a requeue); otherwise finish it now.
        if not (run_dir / "summary.json").exists():
            r = run_sub(store, run_dir)
            assert r.returncode == 0, r.stderr
    assert kills >= 2
    assert_bitwise(reference, run_dir)
