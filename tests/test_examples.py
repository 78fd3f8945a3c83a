"""The examples run as a user runs them (small sizes)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_own_arrays_example_prepares_and_trains(tmp_path):
    """examples/own_arrays.py: .npy arrays -> `prepare arrays` -> `train`; the model beats chance."""
    r = subprocess.run([sys.executable, str(EXAMPLES / "own_arrays.py"), "--nodes", "1500", "--epochs", "3",
                        "--workdir", str(tmp_path)], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(EXAMPLES.parent)})
    assert r.returncode == 0, r.stderr[-2000:]
    assert "$ oocgnn prepare arrays --edge-index" in r.stdout
    store = json.loads((tmp_path / "store" / "zarr.json").read_text())["attributes"]["oocgnn"]
    assert store["source"]["name"] == "arrays" and store["num_nodes"] == 1500
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["best_valid_acc"] > 1 / 6 + 0.1  # 6 classes: well above chance after 3 epochs
