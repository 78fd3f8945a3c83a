"""``--device``: one GPU per rank, CUDA runs evaluated on a CPU, refusals in one line (no GPU needed).

Each rank computes on the GPU of its ``LOCAL_RANK``; a run trained on CUDA evaluates on a
CPU-only machine with ``oocgnn eval --device cpu``; ``--deterministic --device cuda`` either
works or says in one line why not; a batch the GPU cannot hold is refused before training
by the GPU memory plan (checked here with a device of a given capacity).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from oocgnn.cli.main import main
from oocgnn.config import IOConfig, ModelConfig, OptimConfig, RunConfig
from oocgnn.device import rank_device
from oocgnn.errors import ConfigError
from oocgnn.runner import make_trainer
from oocgnn.testing.device import RecordingDevice
from oocgnn.testing.stores import make_store, random_graph
from oocgnn.train.budget import DEVICE_RESERVE, check_device_memory, device_batch_bytes, device_memory_need

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    g = random_graph(num_nodes=400, num_edges=2500, num_features=8, num_classes=3, seed=6)
    path = tmp_path_factory.mktemp("store") / "s"
    make_store(path, g["edge_index"], g["x"], g["y"], g["splits"], 4)
    return path


@pytest.mark.parametrize("spec,local_rank,local_world,count,want", [
    ("cpu", 3, 4, 0, "cpu"),
    ("cuda", None, 1, 1, "cuda:0"),
    ("cuda", 0, 2, 2, "cuda:0"),
    ("cuda", 1, 2, 2, "cuda:1"),        # one GPU per rank of a host
    ("cuda", 3, 4, 8, "cuda:3"),
    ("cuda:1", 0, 1, 2, "cuda:1"),      # one process may name its GPU
])
def test_local_rank_selects_one_gpu_per_rank(spec, local_rank, local_world, count, want) -> None:
    assert rank_device(spec, local_rank, local_world, count) == want


@pytest.mark.parametrize("spec,local_rank,local_world,count,needle", [
    ("cuda", 2, 3, 2, "LOCAL_RANK 2 needs cuda:2 but only 2 GPU"),
    ("cuda:1", 0, 2, 2, "puts all 2 ranks of this host on one GPU"),
    ("cuda:3", 0, 1, 2, "--device cuda:3 needs cuda:3"),
    ("cuda", 0, 1, 0, "use --device cpu"),
    ("cuda:x", 0, 1, 1, "use cpu or cuda[:N]"),
])
def test_a_device_a_rank_cannot_have_is_refused_in_one_line(spec, local_rank, local_world, count, needle) -> None:
    with pytest.raises(ConfigError) as err:
        rank_device(spec, local_rank, local_world, count)
    assert needle in str(err.value) and "\n" not in str(err.value)


def _cli(*argv: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OUTDATED_IGNORE="1")
    return subprocess.run([sys.executable, "-m", "oocgnn.cli.main", *argv], capture_output=True, text=True,
                          env=env, timeout=600)


def test_deterministic_on_cuda_works_or_is_one_line(store, tmp_path) -> None:
    r = _cli("train", "--data", str(store), "--run-dir", str(tmp_path / "run"), "--device", "cuda", "--deterministic",
             "--epochs", "1", "--hidden", "8", "--no-progress")
    if torch.cuda.is_available():
        assert r.returncode == 0, r.stderr
    else:
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        err = [line for line in r.stderr.splitlines() if line.strip()]
        assert len(err) == 1 and err[0].startswith("oocgnn train: error:") and "--device cpu" in err[0], r.stderr


def test_eval_on_cpu_of_a_run_whose_config_says_cuda(store, tmp_path, capsys) -> None:
    run = tmp_path / "run"
    assert main(["train", "--data", str(store), "--run-dir", str(run), "--epochs", "2", "--hidden", "8",
                 "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["eval", "--run-dir", str(run)]) == 0
    ref = json.loads(capsys.readouterr().out)
    cfg = run / "config.toml"
    text = cfg.read_text()
    assert 'device = "cpu"' in text
    cfg.write_text(text.replace('device = "cpu"', 'device = "cuda"'))  # as a CUDA run writes it
    assert main(["eval", "--run-dir", str(run), "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out) == ref
    if not torch.cuda.is_available():  # without --device it would need the run's GPU: one line saying what to do
        assert main(["eval", "--run-dir", str(run)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "--device cpu" in err[0]


def test_gpu_memory_plan_with_a_given_capacity() -> None:
    """The plan's terms add up; a budget below them is one line naming the flags that help."""
    batch = device_batch_bytes(rows=100_000, halo=60_000, batch_rows=40_000, edges=2_000_000, width=128,
                               hist_width=256, transpose=True, edge_index=False)
    need = device_memory_need(batch, lookahead=1, activation_bytes=300 << 20, param_bytes=1 << 20, edges=2_000_000,
                              ranks=False)
    assert need["batches"] == 2 * batch and need["reserve"] == DEVICE_RESERVE
    total = sum(need.values())
    check_device_memory(need, total, "cuda:0", 100_000, 2_000_000)  # exactly enough: fine
    with pytest.raises(ConfigError) as err:
        check_device_memory(need, total - 1, "cuda:0", 100_000, 2_000_000)
    msg = str(err.value)
    assert "\n" not in msg and "--parts-per-batch" in msg and "--hidden" in msg and "--gpu-memory-budget" in msg


def test_a_batch_the_device_cannot_hold_is_refused_before_training(store, tmp_path) -> None:
    from oocgnn.store.reader import open_dataset

    store = open_dataset(store)
    cfg = RunConfig(model=ModelConfig(layers=2, hidden=8), train=OptimConfig(parts_per_batch=4),
                    io=IOConfig(cache="none"))
    with pytest.raises(ConfigError) as err:
        make_trainer(store, cfg, tmp_path / "a", device=RecordingDevice(capacity=DEVICE_RESERVE))
    assert "cannot hold one training step" in str(err.value) and "\n" not in str(err.value)
    tr = make_trainer(store, cfg, tmp_path / "b", device=RecordingDevice(capacity=4 * DEVICE_RESERVE))
    plan = tr.memory_plan["device"]
    assert plan["need_bytes"] <= plan["budget_bytes"] == int(0.9 * 4 * DEVICE_RESERVE)
    assert tr.memory_plan["activation_bytes"] == 0  # a step's autograd state is planned on the device, not the host
    tr.close()
    cfg.io.gpu_memory_budget = "500MiB"
    with pytest.raises(ConfigError, match="--gpu-memory-budget 524.3 MB"):
        make_trainer(store, cfg, tmp_path / "c", device=RecordingDevice(capacity=8 * DEVICE_RESERVE))
