"""``benchmarks/gpu_check.py`` keeps working between lent GPUs: run here with ``--device cpu`` on a tiny store."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from oocgnn.testing.stores import make_store, random_graph

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_runs_end_to_end_on_the_cpu(tmp_path) -> None:
    g = random_graph(num_nodes=500, num_edges=3000, num_features=8, num_classes=3, seed=2)
    make_store(tmp_path / "store", g["edge_index"], g["x"], g["y"], g["splits"], 4)
    out = tmp_path / "gpu_check.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--store",
                        str(tmp_path / "store"), "--parts-per-batch", "2", "--hidden", "8", "--epochs", "1",
                        "--memory-budget", "1GB", "--workdir", str(tmp_path / "work"), "--out", str(out)],
                       capture_output=True, text=True, timeout=600,
                       env=dict(os.environ, PYTHONPATH=str(ROOT), OUTDATED_IGNORE="1"))
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads(out.read_text())
    assert report["step"]["allclose"] is True
    assert len(report["cpu"]["epochs"]) == len(report["device"]["epochs"]) == 1
    assert report["cpu"]["test_acc"] == report["device"]["test_acc"]  # the same device twice: the same run
    checks = report["checks"]
    assert checks["accuracy_points_vs_cpu"]["met"] and checks["peak_anon_rss_vs_budget"]["met"]
    assert checks["copy_wait_s"]["met"] is None  # CUDA events only
    assert "target copy_wait_s" in r.stdout and "one step, dropout 0: allclose" in r.stdout
