"""`oocgnn prepare` / `oocgnn inspect` from the command line, on real files."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from oocgnn import open_dataset
from oocgnn.cli.main import main
from oocgnn.prepare.pipeline import PrepareOptions, prepare_store
from oocgnn.prepare.sources.ogbn_papers import Papers100MSource
from oocgnn.store import format as fmt
from oocgnn.testing.ogb_fixtures import make_mag240m_fixture, make_papers100m_fixture


@pytest.fixture(scope="module")
def papers_f(tmp_path_factory):
    return make_papers100m_fixture(tmp_path_factory.mktemp("papers"), num_nodes=1503, num_edges=7001,
                                   num_features=16, fortran=True)


def test_prepare_papers_then_inspect_verify(tmp_path, papers_f, capsys):
    out = tmp_path / "store"
    assert main(["prepare", "ogbn-papers100M", "--root", str(papers_f.parent), "--out", str(out),
                 "--partitions", "6", "--feature-dtype", "float16", "--no-progress"]) == 0
    ds = open_dataset(out)
    assert ds.num_nodes == 1503 and ds.features.dtype == np.float16 and ds.num_partitions == 6
    assert ds.evaluator_name == "ogbn-papers100M"
    capsys.readouterr()
    assert main(["inspect", str(out), "--verify", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["verify"] == {"ok": True, "problems": []} and info["num_nodes"] == 1503


def test_prepare_mag240m_with_authors(tmp_path):
    root = make_mag240m_fixture(tmp_path / "in", papers=301, authors=197, institutions=11, num_cites=1201,
                                num_writes=601, num_affiliations=151, num_features=8)
    out = tmp_path / "store"
    assert main(["prepare", "mag240m", "--root", str(root), "--out", str(out), "--with-authors-institutions",
                 "--partitions", "4", "--no-progress"]) == 0
    assert open_dataset(out).num_nodes == 301 + 197 + 11


def test_prepare_synthetic(tmp_path):
    out = tmp_path / "store"
    assert main(["prepare", "synthetic", "--nodes", "3000", "--edges", "20000", "--features", "8",
                 "--classes", "4", "--out", str(out), "--no-progress"]) == 0
    ds = open_dataset(out)
    assert ds.num_nodes == 3000 and ds.num_features == 8 and ds.num_classes == 4


def test_prepare_synthetic_multilevel(tmp_path):
    out = tmp_path / "store"
    assert main(["prepare", "synthetic", "--nodes", "3000", "--edges", "20000", "--features", "4", "--classes", "4",
                 "--partitioner", "multilevel", "--partitions", "6", "--out", str(out), "--no-progress"]) == 0
    part = open_dataset(out).manifest["partition"]
    assert part["method"] == "multilevel" and part["max_size"] <= 1.10 * 3000 / 6


class _CrashAfterOneBlock(Papers100MSource):
    def iter_features(self, block_rows):
        yield next(iter(super().iter_features(100)))
        raise KeyboardInterrupt


def test_resume_of_fortran_papers_uses_its_spill(tmp_path, papers_f):
    """A resumed build must still find the source's scratch spill (F-ordered features)."""
    opts = PrepareOptions(partitions=6)
    with pytest.raises(KeyboardInterrupt):
        prepare_store(_CrashAfterOneBlock(papers_f), tmp_path / "s", opts, memory_budget=1 << 30, progress=False)
    ds = prepare_store(Papers100MSource(papers_f), tmp_path / "s", opts, memory_budget=1 << 30, progress=False)
    clean = prepare_store(Papers100MSource(papers_f), tmp_path / "clean", opts, memory_budget=1 << 30, progress=False)
    assert ds.manifest["checksums"] == clean.manifest["checksums"]


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "oocgnn.cli.main", *args], capture_output=True, text=True)


@pytest.mark.parametrize("args, needle", [
    (["prepare", "ogbn-papers100M", "--root", "/nonexistent/dir", "--out", "{tmp}/s"], "/nonexistent/dir"),
    (["prepare", "synthetic", "--nodes", "10", "--edges", "10", "--out", "{tmp}/s", "--memory-budget", "lots"],
     "--memory-budget"),
    (["inspect", "{tmp}/nothing"], "no dataset store"),
])
def test_user_errors_are_one_line_without_traceback(tmp_path, args, needle):
    r = _cli(*[a.replace("{tmp}", str(tmp_path)) for a in args])
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0], r.stderr


def test_unfinished_store_is_refused_by_readers(tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / fmt.BUILDING).write_text("{}")
    r = _cli("inspect", str(tmp_path / "s"))
    assert r.returncode != 0 and "not a finished store" in r.stderr
