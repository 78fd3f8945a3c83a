"""The CUDA path on a real GPU (``-m gpu``; skipped where torch sees none, collected everywhere).

Every model's batch forward and backward on CUDA equals the CPU's (dropout 0, rtol 1e-4);
a copy stream delayed on purpose changes nothing (no staging slot is refilled before the
copy out of it is done); CUDA RNG states survive a checkpoint; a ``--deterministic`` run
killed mid-epoch resumes bitwise on CUDA.  ``benchmarks/gpu_check.py`` runs these with the
timing checks on a lent machine.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from oocgnn.config import IOConfig, ModelConfig, OptimConfig, RunConfig
from oocgnn.device import CUDADevice
from oocgnn.runner import make_trainer
from oocgnn.testing.stores import make_store, random_graph
from oocgnn.train.run import fit

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    g = random_graph(num_nodes=900, num_edges=7000, num_features=12, num_classes=4, seed=8)
    return make_store(tmp_path_factory.mktemp("store") / "s", g["edge_index"], g["x"], g["y"], g["splits"], 9)


def config(model: str = "gcn", device: str = "cuda", dropout: float = 0.0, epochs: int = 2) -> RunConfig:
    return RunConfig(model=ModelConfig(name=model, layers=3, hidden=16, dropout=dropout),
                     train=OptimConfig(epochs=epochs, parts_per_batch=3), io=IOConfig(device=device, cache="none"))


@pytest.mark.parametrize("model", ["gcn", "sage", "gat", "gcnii"])
def test_batch_forward_and_backward_on_cuda_match_the_cpu(store, tmp_path, model) -> None:
    cpu = make_trainer(store, config(model, "cpu"), tmp_path / "cpu")
    gpu = make_trainer(store, config(model, "cuda"), tmp_path / "gpu")
    gpu.model.load_state_dict(cpu.model.state_dict())
    plan = cpu.plan(0)
    for tr in (cpu, gpu):
        tr.histories.tables[0].array[:] = np.random.default_rng(0).normal(size=tr.histories.tables[0].array.shape)
    outs = []
    for tr in (cpu, gpu):
        tr.model.train()
        batch = next(iter(tr.prefetcher(plan, tr.epoch_loader())))
        logits, pushes = tr.model(batch)
        logits.square().sum().backward()
        outs.append((logits.detach().cpu(), [p.cpu() for p in pushes],
                     {n: p.grad.detach().cpu() for n, p in tr.model.named_parameters() if p.grad is not None}))
    (l0, p0, g0), (l1, p1, g1) = outs
    torch.testing.assert_close(l1, l0, rtol=1e-4, atol=1e-5)
    for a, b in zip(p1, p0):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert g0.keys() == g1.keys()
    for n in g0:
        torch.testing.assert_close(g1[n], g0[n], rtol=1e-4, atol=1e-4, msg=n)
    cpu.close()
    gpu.close()


class DelayedCopies(CUDADevice):
    """A copy stream that sleeps before every batch's copies: a loader refilling a slot early would corrupt it."""

    def copy_async(self, host, name=""):
        if name == "x":
            with torch.cuda.stream(self.copy_stream):
                torch.cuda._sleep(50_000_000)  # ~25 ms of GPU clock cycles
        return super().copy_async(host, name)


def test_slot_reuse_waits_for_a_delayed_copy_stream(store, tmp_path) -> None:
    cfg = config("gcn")
    cfg.io.prefetch = 1  # two slots: the loader wants each one back as early as it can
    ref = make_trainer(store, cfg, tmp_path / "a")
    fit(ref)
    dev = DelayedCopies("cuda:0")
    slow = make_trainer(store, cfg, tmp_path / "b", device=dev)
    fit(slow)
    for a, b in zip(ref.model.parameters(), slow.model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for a, b in zip(ref.histories.tables, slow.histories.tables):
        np.testing.assert_allclose(np.asarray(a.array), np.asarray(b.array), rtol=1e-5, atol=1e-6)
    ref.close()
    slow.close()
    dev.close()


def test_cuda_rng_state_round_trips_through_a_checkpoint(store, tmp_path) -> None:
    """The trainer state a checkpoint stores carries the CUDA generator: dropout masks after a resume are the same."""
    import io

    from oocgnn.checkpoint.store import CheckpointStore, load_state

    tr = make_trainer(store, config("gcn", dropout=0.5), tmp_path / "run")
    torch.cuda.manual_seed(123)
    torch.rand(10, device="cuda")
    buf = io.BytesIO()
    torch.save({"trainer": tr.state_dict()}, buf)
    info = CheckpointStore(tmp_path / "run").save(1, 0, buf.getvalue(), {})
    want = torch.rand(1000, device="cuda")
    torch.rand(77, device="cuda")  # move on
    tr.load_state_dict(load_state(info)["trainer"])
    assert torch.equal(torch.rand(1000, device="cuda"), want)
    tr.close()


def _train(store: Path, run_dir: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "oocgnn.cli.main", "train", "--data", str(store), "--run-dir", str(run_dir),
           "--device", "cuda", "--deterministic", "--epochs", "2", "--parts-per-batch", "2", "--hidden", "16",
           "--checkpoint-every", "2", "--no-progress"]
    return subprocess.run(cmd, env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}, capture_output=True,
                          text=True, timeout=600)


def test_deterministic_run_killed_mid_epoch_resumes_bitwise_on_cuda(store, tmp_path) -> None:
    path = Path(store.path)
    ref = _train(path, tmp_path / "ref")
    assert ref.returncode == 0, ref.stderr
    crashed = _train(path, tmp_path / "run", {"OOCGNN_CRASH_AT": "push-landed:5"})
    assert crashed.returncode == -9, crashed.stderr
    resumed = _train(path, tmp_path / "run")
    assert resumed.returncode == 0 and "resuming from checkpoint" in resumed.stderr, resumed.stderr
    a, b = torch.load(tmp_path / "ref" / "final" / "model.pt"), torch.load(tmp_path / "run" / "final" / "model.pt")
    for k in a:
        assert torch.equal(a[k], b[k]), k
