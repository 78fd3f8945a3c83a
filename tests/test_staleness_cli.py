"""``oocgnn train --method gas|rest|rest-is|visagnn`` end to end on a small real store.

Covers the wiring of :mod:`oocgnn.staleness` into the trainer, the CLI and the
checkpoints: staleness metrics in ``metrics.jsonl``, F = 1 REST equal to GAS,
bitwise resume after a real SIGTERM in the middle of REST refresh passes and
after SIGKILL of a VISAGNN run (its staleness-loss table is journaled), the
``[staleness]`` section of ``config.toml`` and ``oocgnn report`` on two runs.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from oocgnn.checkpoint import EXIT_PREEMPTED
from oocgnn.cli.main import main as cli_main
from oocgnn.testing.stores import make_store, random_graph

BASE = ["--epochs", "2", "--parts-per-batch", "1", "--hidden", "8", "--layers", "3", "--io-threads", "1",
        "--prefetch", "1", "--no-progress", "--seed", "3"]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("stcli") / "store"
    g = random_graph(num_nodes=400, num_edges=2000, num_features=8, num_classes=3, seed=2)
    make_store(path, g["edge_index"], g["x"], g["y"], g["splits"], num_partitions=8)
    return path


def train(store: Path, run_dir: Path, *extra: str) -> int:
    return cli_main(["train", "--data", str(store), "--run-dir", str(run_dir), *BASE, *extra])


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def assert_bitwise(a: Path, b: Path) -> None:
    sa, sb = torch.load(a / "final" / "model.pt"), torch.load(b / "final" / "model.pt")
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    assert np.array_equal(np.load(a / "final" / "predictions.npy"), np.load(b / "final" / "predictions.npy"))


@pytest.mark.parametrize("method, extra", [
    ("rest", ["--refresh-per-step", "2"]),
    ("rest-is", ["--refresh-per-step", "1.5", "--measure-true-staleness"]),
    ("visagnn", ["--model", "gat", "--visagnn-criterion", "grad", "--visagnn-drop-threshold", "30"]),
])
def test_methods_write_staleness_metrics(store, tmp_path, method, extra):
    run = tmp_path / method
    assert train(store, run, "--method", method, *extra) == 0
    recs = metrics(run)
    assert len(recs) == 2
    last = recs[-1]
    assert last["method"] == method
    for t in (0, 1):  # two history tables (3 layers)
        for key in ("age_mean", "age_p90", "age_max", "never_frac", "grad_norm", "push_drift"):
            assert f"{key}_{t}" in last, key
        assert last[f"grad_norm_{t}"] is not None and last[f"grad_norm_{t}"] > 0
        assert last[f"push_drift_{t}"] is not None
    assert last["train_batches"] == 8
    if method.startswith("rest"):
        assert last["refresh_passes"] > 0 and last["rows_refreshed"] > 0
        assert last["batches"] == 8 + last["refresh_passes"]
    if "--measure-true-staleness" in extra:
        assert 0 <= last["true_staleness_0"] < 10
    cfg = (run / "config.toml").read_text()
    assert "[staleness]" in cfg and f'method = "{method}"' in cfg
    if method == "visagnn":
        assert (run / "histories" / "stale_out.npy").exists()


def test_rest_default_refreshes_and_f1_is_refused(store, tmp_path, capsys):
    """--method rest must act: its default F is REST's 2; F = 1 (plain GAS in disguise) is refused in one line."""
    assert train(store, tmp_path / "rest", "--method", "rest") == 0
    assert metrics(tmp_path / "rest")[-1]["refresh_passes"] > 0
    assert "refresh_per_step = 2.0" in (tmp_path / "rest" / "config.toml").read_text()
    capsys.readouterr()
    assert train(store, tmp_path / "rest1", "--method", "rest-is", "--refresh-per-step", "1") == 2
    err = capsys.readouterr().err.strip()
    assert "never refreshes" in err and len(err.splitlines()) == 1, err


def test_bad_staleness_options_are_one_line_errors(store, tmp_path, capsys):
    for argv, needle in ((["--method", "gas", "--refresh-per-step", "2"], "--refresh-per-step"),
                         (["--method", "rest-is", "--rest-loop", "interleave"], "--rest-loop"),
                         (["--method", "rest", "--refresh-per-step", "0.5"], "--refresh-per-step"),
                         (["--method", "visagnn", "--stale-loss-weight", "-1"], "--stale-loss-weight")):
        assert train(store, tmp_path / "bad", *argv) != 0
        err = capsys.readouterr().err.strip()
        assert needle in err and len(err.splitlines()) == 1, err


def test_resume_rejects_changed_staleness_option(store, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    _sigterm_at_refresh(monkeypatch, 3)
    assert train(store, run, "--method", "rest", "--refresh-per-step", "2") == EXIT_PREEMPTED
    capsys.readouterr()
    assert train(store, run, "--method", "rest", "--refresh-per-step", "3") != 0
    assert "staleness.refresh_per_step: 2.0 -> 3.0" in capsys.readouterr().err


def _sigterm_at_refresh(monkeypatch, n: int) -> None:
    """Deliver a real SIGTERM to this process during the ``n``-th REST refresh pass."""
    from oocgnn.train.loop import Trainer

    orig, calls = Trainer.refresh, [0]

    def refresh_then_signal(self, batch):
        orig(self, batch)
        calls[0] += 1
        if calls[0] == n:
            os.kill(os.getpid(), signal.SIGTERM)
    monkeypatch.setattr(Trainer, "refresh", refresh_then_signal)


def test_rest_sigterm_mid_refresh_then_resume_is_bitwise(store, tmp_path, monkeypatch, caplog):
    """SIGTERM between two refresh passes of a step (refreshes still owed): exit 75, resume, same model."""
    caplog.set_level(logging.INFO)
    opts = ["--method", "rest", "--refresh-per-step", "2.5", "--deterministic", "--checkpoint-every", "3"]
    assert train(store, tmp_path / "ref", *opts) == 0
    run = tmp_path / "run"
    with monkeypatch.context() as m:
        _sigterm_at_refresh(m, 14)  # epoch 0: 8 steps, 12 refreshes; step 9 is followed by refreshes 14, 15
        assert train(store, run, *opts) == EXIT_PREEMPTED
    assert "stopped by SIGTERM" in caplog.text
    caplog.clear()
    ckpt = torch.load(max((run / "checkpoints").glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
                      / "state.pt", weights_only=False)["trainer"]["state"]
    assert ckpt["epoch"] == 1 and ckpt["refresh_cursor"] == 14 and ckpt["refresh_pending"] == 1
    assert train(store, run, *opts) == 0
    assert "resuming from checkpoint" in caplog.text
    assert_bitwise(tmp_path / "ref", run)
    assert [r["refresh_passes"] for r in metrics(run)] == [r["refresh_passes"] for r in metrics(tmp_path / "ref")]


def test_visagnn_kill9_then_resume_is_bitwise(store, tmp_path):
    """SIGKILL after checkpoints while the staleness-loss table keeps being written: the journal undoes it."""
    opts = ["--method", "visagnn", "--model", "gat", "--refresh-per-step", "1.5", "--visagnn-drop-threshold", "30",
            "--deterministic", "--checkpoint-every", "3"]
    assert train(store, tmp_path / "ref", *opts) == 0
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "oocgnn.cli.main", "train", "--data", str(store), "--run-dir", str(run), *BASE, *opts]
    # push-journaled counts history pushes and staleness-loss writes: the 40th is in epoch 1, after checkpoints
    r = subprocess.run(cmd, env={**os.environ, "OOCGNN_CRASH_AT": "push-journaled:40"}, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == -9, r.stderr
    assert list((run / "checkpoints").glob("step-*/COMPLETE"))
    assert train(store, run, *opts) == 0
    assert_bitwise(tmp_path / "ref", run)


def test_report_on_two_runs(store, tmp_path, capsys):
    assert train(store, tmp_path / "gas", "--method", "gas", "--no-checkpoints") == 0
    assert train(store, tmp_path / "rest", "--method", "rest", "--refresh-per-step", "2", "--no-checkpoints") == 0
    out = tmp_path / "report.png"
    assert cli_main(["report", str(tmp_path / "gas"), str(tmp_path / "rest"), "--out", str(out)]) == 0
    assert out.stat().st_size > 1000 and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
