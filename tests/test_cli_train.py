"""`oocgnn train` / `oocgnn eval` end to end on a real store; user errors are one line."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from oocgnn.cli.main import main
from oocgnn.testing.stores import make_store, random_graph

EPOCH_KEYS = {"epoch", "step", "loss", "train_acc", "valid_acc", "test_acc", "epoch_time_s", "io_wait_s",
              "bytes_read", "bytes_written", "peak_rss_bytes"}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    g = random_graph(num_nodes=500, num_edges=3000, num_features=8, num_classes=3, seed=3)
    path = tmp_path_factory.mktemp("store") / "s"
    make_store(path, g["edge_index"], g["x"], g["y"], g["splits"], 6)
    return path


def test_train_then_eval(store, tmp_path, capsys) -> None:
    run = tmp_path / "run"
    cfg = tmp_path / "run.toml"
    cfg.write_text('[model]\nhidden = 8\nlayers = 3\n\n[train]\nepochs = 5\nlr = 0.02\n')
    rc = main(["train", "--data", str(store), "--run-dir", str(run), "--config", str(cfg), "--epochs", "3",
               "--parts-per-batch", "2", "--prefetch", "2", "--io-threads", "2", "--memory-budget", "1GB",
               "--history-dtype", "float16", "--no-eval-refresh", "--no-progress"])
    assert rc == 0
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 3 and EPOCH_KEYS <= set(lines[0]) and lines[-1]["step"] == 9
    assert all(line["eval_refresh"] is False for line in lines)
    summary = json.loads((run / "summary.json").read_text())
    assert {"best_valid_acc", "test_acc_at_best_valid", "epochs", "time_s", "peak_rss_bytes"} <= set(summary)
    assert summary["epochs"] == 3 and summary["peak_rss_bytes"] > 0
    resolved = (run / "config.toml").read_text()
    assert "epochs = 3" in resolved and "hidden = 8" in resolved and "lr = 0.02" in resolved  # flag > file > default
    preds = np.load(run / "predictions.npy")
    assert preds.shape == (500,) and preds.min() >= 0
    assert (run / "histories" / "layer_1.npy").exists()
    capsys.readouterr()
    assert main(["eval", "--run-dir", str(run)]) == 0
    accs = json.loads(capsys.readouterr().out)
    assert accs["valid_acc"] == pytest.approx(summary["best_valid_acc"])
    # a finished run is not overwritten by accident
    assert main(["train", "--data", str(store), "--run-dir", str(run), "--no-progress"]) != 0
    assert "--overwrite" in capsys.readouterr().err


@pytest.mark.parametrize("argv,needle", [
    (["train", "--data", "{tmp}/missing", "--run-dir", "{tmp}/r"], "no dataset store"),
    (["train", "--data", "{store}", "--run-dir", "{tmp}/r", "--prefetch", "-1"], "--prefetch"),
    (["train", "--data", "{store}", "--run-dir", "{tmp}/r", "--memory-budget", "lots"], "--memory-budget"),
    (["train", "--data", "{store}", "--run-dir", "{tmp}/r", "--memory-budget", "1KB"], "staging ring"),
    (["train", "--data", "{store}", "--run-dir", "{tmp}/r", "--config", "{tmp}/nope.toml"], "--config"),
    (["eval", "--run-dir", "{tmp}"], "config.toml"),
])
def test_user_errors_are_one_line(store, tmp_path, capsys, argv, needle) -> None:
    argv = [a.format(tmp=tmp_path, store=store) for a in argv]
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc != 0 and needle in err and len(err.splitlines()) == 1, err


def test_help_explains_every_flag(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    for flag in ("--model", "--layers", "--hidden", "--dropout", "--lr", "--epochs", "--parts-per-batch", "--seed",
                 "--device", "--io-threads", "--prefetch", "--memory-budget", "--eval-refresh", "--history-dtype",
                 "--staleness-bound"):
        assert flag in out


# ---------------------------------------------------------------- requeue: re-running a finished run's command
FINISHED_ARGV = ["--hidden", "8", "--epochs", "2", "--parts-per-batch", "2", "--io-threads", "2", "--no-progress"]


@pytest.fixture(scope="module")
def finished(store, tmp_path_factory):
    """One small finished run shared by the requeue tests (none of them may change it)."""
    run = tmp_path_factory.mktemp("finished") / "run"
    argv = ["train", "--data", str(store), "--run-dir", str(run), *FINISHED_ARGV]
    assert main(argv) == 0
    return run, argv


def _snapshot(run) -> dict[str, tuple[int, bytes | None]]:
    """Every path under ``run`` with its mtime and content (None for directories)."""
    return {str(p.relative_to(run)): (p.stat().st_mtime_ns, None if p.is_dir() else p.read_bytes())
            for p in sorted(run.rglob("*"))}


@pytest.mark.parametrize("extra", [[], ["--io-threads", "1", "--prefetch", "0", "--stream-inference", "off"]],
                         ids=["exact", "speed-only-change"])
def test_requeued_finished_run_is_a_noop(finished, capsys, caplog, extra) -> None:
    run, argv = finished
    before = _snapshot(run)
    caplog.clear()
    caplog.set_level(logging.INFO)
    assert main([*argv, *extra]) == 0
    assert _snapshot(run) == before
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert len(lines) == 1, lines
    assert "already holds this finished run (best valid" in lines[0] and "nothing to do" in lines[0]
    assert capsys.readouterr().err.strip() == ""


@pytest.mark.parametrize("extra,needles", [
    (["--lr", "0.05"], ["train.lr: 0.01 -> 0.05", "--overwrite", "--run-dir"]),
    (["--epochs", "3"], ["2 epochs", "asks for 3", "continuing a finished run is not supported", "--overwrite"]),
    (["--epochs", "1"], ["train.epochs: 2 -> 1", "--overwrite"]),
], ids=["lr", "more-epochs", "fewer-epochs"])
def test_changed_command_on_finished_run_refuses_in_one_line(finished, capsys, extra, needles) -> None:
    run, argv = finished
    before = _snapshot(run)
    capsys.readouterr()
    assert main([*argv, *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    assert _snapshot(run) == before


def test_finished_run_on_another_store_refuses(finished, tmp_path, capsys) -> None:
    run, argv = finished
    g = random_graph(num_nodes=500, num_edges=3000, num_features=8, num_classes=3, seed=4)
    other = tmp_path / "other"
    make_store(other, g["edge_index"], g["x"], g["y"], g["splits"], 6)
    capsys.readouterr()
    argv = [a if a != argv[2] else str(other) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "another dataset store" in err and "--overwrite" in err, err


@pytest.mark.parametrize("extra,warned", [
    (["--io-threads", "3"], "--io-threads 3 has no effect with --io-engine auto"),
    (["--io-threads", "3", "--io-engine", "mmap"], None),
    (["--cache", "none", "--cache-fraction", "0.5"], "--cache-fraction 0.5 has no effect with --cache none"),
])
def test_a_flag_the_command_makes_inert_says_so(store, tmp_path, caplog, extra, warned) -> None:
    caplog.set_level(logging.WARNING)
    argv = ["train", "--data", str(store), "--run-dir", str(tmp_path / "run"), "--epochs", "1", "--no-progress",
            "--no-checkpoints", *extra]
    assert main(argv) == 0
    said = [r.getMessage() for r in caplog.records if "has no effect" in r.getMessage()]
    assert said == ([] if warned is None else [next(m for m in said if warned in m)])
