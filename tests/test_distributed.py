"""Several ranks (torch.distributed, gloo, 2 processes) driven end to end through `oocgnn train`.

Every test runs the real CLI in subprocesses on a real store on disk: the launcher
(`--nproc-per-node 2`), both halo-exchange paths, checkpoints, a rank killed by a
fault point and by an outside SIGKILL, and the one-line refusals.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch

from oocgnn.batching import RankSplit

CORA_ARGS = ["--parts-per-batch", "2", "--weight-decay", "5e-4", "--io-threads", "1", "--no-progress"]


def train(store: Path, run: Path, *extra: str, env: dict | None = None,
          timeout: float = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "oocgnn.cli.main", "train", "--data", str(store), "--run-dir", str(run), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})


def launch_past_first_epoch(store: Path, run: Path, epochs: int) -> subprocess.Popen:
    """Start a 2-rank run and return once rank 0 logged its first epoch (polling the run's metrics file)."""
    cmd = [sys.executable, "-m", "oocgnn.cli.main", "train", "--data", str(store), "--run-dir", str(run),
           "--epochs", str(epochs), "--nproc-per-node", "2", *CORA_ARGS]
    launcher = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while not (run / "metrics.jsonl").exists():
        if launcher.poll() is not None or time.monotonic() > deadline:
            launcher.kill()
            raise AssertionError(launcher.communicate())
        time.sleep(0.1)
    return launcher


def summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


@pytest.fixture(scope="module")
def cora(tmp_path_factory) -> Path:
    """Cora (public split, row-normalised features) as a store of 20 METIS partitions."""
    from conftest import SHARED_DATASETS
    from test_train import planetoid_store

    if not (SHARED_DATASETS / "Planetoid" / "Cora" / "raw").is_dir():
        pytest.skip(f"real datasets not found at {SHARED_DATASETS}")
    tmp = tmp_path_factory.mktemp("cora")
    planetoid_store(SHARED_DATASETS, tmp, "Cora", parts=20)
    return tmp / "Cora.store"


def test_rank_split_covers_the_plan_once() -> None:
    """Shared path: the ranks together train exactly the one-process plan; owner path: each its own parts."""
    for world in (2, 3):
        for by_owner in (False, True):
            groups = [RankSplit(r, world, by_owner).groups(11, 2, seed=4, epoch=1) for r in range(world)]
            parts = sorted(int(p) for g in groups for grp in g for p in grp)
            assert parts == list(range(11))
            assert max(len(g) for g in groups) == RankSplit(0, world, by_owner).steps(11, 2)
            if by_owner:
                owned = [set(RankSplit(r, world, True).owned(11).tolist()) for r in range(world)]
                assert all(set(int(p) for grp in g for p in grp) == owned[r] for r, g in enumerate(groups))
    one = RankSplit().groups(13, 2, seed=4, epoch=1)  # 7 batches: rank 0 trains 4, rank 1 trains 3 and idles once
    two = [RankSplit(r, 2).groups(13, 2, seed=4, epoch=1) for r in range(2)]
    assert [len(g) for g in two] == [4, 3] and RankSplit(0, 2).steps(13, 2) == 4
    assert [g.tolist() for g in one] == [two[i % 2][i // 2].tolist() for i in range(len(one))]


def test_two_ranks_match_one_rank_accuracy_on_cora(cora, tmp_path) -> None:
    """2 ranks (shared files, and the forced cross-host all-to-all path) reach 1 rank's accuracy within noise."""
    args = ["--epochs", "40", *CORA_ARGS]
    one = train(cora, tmp_path / "one", *args)
    assert one.returncode == 0, one.stderr
    shared = train(cora, tmp_path / "shared", *args, "--nproc-per-node", "2")
    assert shared.returncode == 0, shared.stderr
    cross = train(cora, tmp_path / "cross", *args, "--nproc-per-node", "2", "--halo-exchange", "all-to-all")
    assert cross.returncode == 0, cross.stderr
    a1, a2, a3 = (summary(tmp_path / r)["test_acc_at_best_valid"] for r in ("one", "shared", "cross"))
    assert a1 > 0.75, a1
    assert a2 >= a1 - 0.04, (a1, a2)
    assert a3 >= a2 - 0.04, (a2, a3)
    for r in ("shared", "cross"):
        s = summary(tmp_path / r)
        assert s["world_size"] == 2
        lines = [json.loads(x) for x in (tmp_path / r / "metrics.jsonl").read_text().splitlines()]
        assert len(lines) == 40 and all(x["world_size"] == 2 for x in lines)  # one metrics file, rank 0's
        assert lines[0]["train_batches"] == 5  # 10 batches per epoch, 5 per rank
    cross_rec = json.loads((tmp_path / "cross" / "metrics.jsonl").read_text().splitlines()[-1])
    assert cross_rec["exchange_bytes_sent"] > 0 and cross_rec["exchange_rows_received"] > 0
    assert (tmp_path / "cross" / "histories" / "rank-1" / "layer_0.npy").exists()
    assert not (tmp_path / "shared" / "histories" / "rank-1" / "layer_0.npy").exists()  # shares rank 0's tables


# rank 1 pushes once per step on shared files; on the cross-host path it also fills its own tables
# and pushes the rows it receives, so its 7th push would come before the first checkpoint
@pytest.mark.parametrize("exchange,crash_at", [("shared-files", 7), ("all-to-all", 30)])
def test_killed_rank_then_rerun_resumes_bitwise(cora, tmp_path, exchange, crash_at) -> None:
    """A deterministic 2-rank run whose rank 1 is SIGKILLed mid-push, rerun, equals an uninterrupted run bitwise."""
    args = ["--epochs", "3", "--checkpoint-every", "4", "--deterministic", "--nproc-per-node", "2",
            "--halo-exchange", exchange, *CORA_ARGS]
    ref = train(cora, tmp_path / "ref", *args)
    assert ref.returncode == 0, ref.stderr
    crash = train(cora, tmp_path / "run", *args,
                  env={"OOCGNN_CRASH_AT": f"push-journaled:{crash_at}", "OOCGNN_CRASH_RANK": "1"})
    assert crash.returncode != 0
    assert "rank 1 was killed by SIGKILL" in crash.stderr and "re-run the same command" in crash.stderr
    assert not (tmp_path / "run" / "summary.json").exists()
    again = train(cora, tmp_path / "run", *args)
    assert again.returncode == 0, again.stderr
    assert "resuming from checkpoint" in again.stderr
    a = torch.load(tmp_path / "ref" / "final" / "model.pt")
    b = torch.load(tmp_path / "run" / "final" / "model.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for table in sorted((tmp_path / "ref" / "histories").rglob("layer_*.npy")):
        other = tmp_path / "run" / "histories" / table.relative_to(tmp_path / "ref" / "histories")
        assert np.array_equal(np.load(table), np.load(other)), table
    ra, rb = summary(tmp_path / "ref"), summary(tmp_path / "run")
    assert ra["test_acc_at_best_valid"] == rb["test_acc_at_best_valid"]


def test_kill_one_rank_ends_every_rank(cora, tmp_path) -> None:
    """kill -9 of one rank from outside: every rank exits, the launcher fails naming the rank, well within 60 s."""
    launcher = launch_past_first_epoch(cora, tmp_path / "run", 100000)
    try:
        ranks = psutil.Process(launcher.pid).children()
        assert len(ranks) == 2
        victim = next(p for p in ranks if p.environ().get("RANK") == "1")
        victim.send_signal(signal.SIGKILL)
        _, err = launcher.communicate(timeout=60)  # the bound: every rank gone within 60 s, else it raises
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode != 0
    assert "rank 1 was killed by SIGKILL" in err and "stopped the other ranks" in err
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in ranks)


def test_refusals_are_one_line(cora, tmp_path) -> None:
    """Unsupported combinations and another world size on resume: one line, exit 2, no rank started."""
    r = train(cora, tmp_path / "a", "--epochs", "1", "--nproc-per-node", "2", "--method", "rest", *CORA_ARGS)
    assert r.returncode == 2 and "does not run on several ranks" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "a").exists()
    r = train(cora, tmp_path / "a", "--epochs", "1", "--halo-exchange", "all-to-all", *CORA_ARGS)
    assert r.returncode == 2 and "needs several ranks" in r.stderr
    r = train(cora, tmp_path / "a", "--epochs", "1", "--dist-timeout", "60", *CORA_ARGS)
    assert r.returncode == 2 and "--dist-timeout needs several ranks" in r.stderr
    done = train(cora, tmp_path / "b", "--epochs", "2", "--nproc-per-node", "2", *CORA_ARGS)
    assert done.returncode == 0, done.stderr
    again = train(cora, tmp_path / "b", "--epochs", "2", "--nproc-per-node", "2", *CORA_ARGS)  # a requeued job
    assert again.returncode == 0 and "already holds this finished run" in again.stderr
    other = train(cora, tmp_path / "b", "--epochs", "2", *CORA_ARGS)
    assert other.returncode == 2 and "ranks: 2 -> 1" in other.stderr
    # an interrupted 2-rank run resumed with 1 rank
    crash = train(cora, tmp_path / "c", "--epochs", "3", "--checkpoint-every", "3", "--nproc-per-node", "2",
                  *CORA_ARGS, env={"OOCGNN_CRASH_AT": "push-journaled:18", "OOCGNN_CRASH_RANK": "0"})
    assert crash.returncode != 0
    one = train(cora, tmp_path / "c", "--epochs", "3", "--checkpoint-every", "3", *CORA_ARGS)
    assert one.returncode == 2 and "trained with 2 rank(s)" in one.stderr
    assert len(one.stderr.strip().splitlines()) == 1


def test_same_entry_point_under_torchrun(cora, tmp_path) -> None:
    """torchrun starts the ranks (RANK, WORLD_SIZE, MASTER_ADDR from its environment): the same run, one summary."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2", "--master-port",
           str(port), "-m", "oocgnn.cli.main", "train", "--data", str(cora), "--run-dir", str(tmp_path / "run"),
           "--epochs", "2", *CORA_ARGS]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert summary(tmp_path / "run")["world_size"] == 2
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 2
    both = train(cora, tmp_path / "run", "--epochs", "2", "--nproc-per-node", "2", *CORA_ARGS)  # same run, requeued
    assert both.returncode == 0 and "already holds this finished run" in both.stderr


def test_sigterm_to_the_launcher_checkpoints_every_rank_then_resumes(cora, tmp_path) -> None:
    """A scheduler's SIGTERM reaches every rank once: all checkpoint at the same step, exit 75; rerun resumes."""
    from oocgnn.checkpoint import EXIT_PREEMPTED

    launcher = launch_past_first_epoch(cora, tmp_path / "run", 30)
    try:
        launcher.send_signal(signal.SIGTERM)
        _, err = launcher.communicate(timeout=120)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode == EXIT_PREEMPTED, err
    assert "stopped by SIGTERM" in err and "error" not in err
    assert not (tmp_path / "run" / "summary.json").exists()
    again = train(cora, tmp_path / "run", "--epochs", "30", "--nproc-per-node", "2", *CORA_ARGS)
    assert again.returncode == 0 and "resuming from checkpoint" in again.stderr, again.stderr
    assert summary(tmp_path / "run")["epochs"] == 30
