"""``oocgnn report`` writes a non-empty PNG from runs' metrics.jsonl."""
from __future__ import annotations

import json

from oocgnn.cli.main import main


def write_run(path, offset):
    path.mkdir()
    with open(path / "metrics.jsonl", "w") as f:
        for e in range(1, 5):
            f.write(json.dumps({"epoch": e, "loss": 1.0 / e + offset, "test_acc": 0.5 + 0.05 * e, "valid_acc": 0.5,
                                "age_mean_0": 10.0 - e, "true_staleness_0": 0.1 * e, "bytes_read": 1e6 * e,
                                "io_wait_fraction": 0.1, "refresh_passes": 3}) + "\n")


def test_report_writes_png(tmp_path, capsys):
    write_run(tmp_path / "gas", 0.0)
    write_run(tmp_path / "rest", 0.1)
    out = tmp_path / "r" / "report.png"
    assert main(["report", str(tmp_path / "gas"), str(tmp_path / "rest"), "--out", str(out)]) == 0
    assert out.stat().st_size > 1000 and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_missing_metrics_is_one_line_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty"), "--out", str(tmp_path / "x.png")]) != 0
    assert "metrics.jsonl" in capsys.readouterr().err
