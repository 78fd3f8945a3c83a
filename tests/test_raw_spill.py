"""Raw spills of npz members: the spilled papers100M source equals np.load, errors cross the thread, cancel cleans up."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from oocgnn.errors import InputError
from oocgnn.prepare.readers.npy_stream import SpillCancelled, spill_to_raw
from oocgnn.prepare.readers.raw_spill import BackgroundSpill
from oocgnn.prepare.sources.ogbn_papers import Papers100MSource
from oocgnn.testing.ogb_fixtures import make_papers100m_fixture

from test_npy_stream import corrupt_member


@pytest.mark.parametrize("fortran", [False, True])
def test_spilled_source_is_byte_identical_to_np_load(tmp_path, fortran):
    d = make_papers100m_fixture(tmp_path, 3001, 20011, num_features=16, fortran=fortran, seed=4)
    ref = np.load(d / "raw" / "data.npz")
    src = Papers100MSource(d)
    src.prepare_scratch(tmp_path / "w")
    assert src.cheap_feature_rereads
    assert (tmp_path / "w" / "papers100M_edge_index.raw.done").is_file()
    for _ in range(2):  # every call yields the same data
        blocks = list(src.iter_edges(4096))
        assert all(s.dtype == np.int64 and len(s) <= 4096 for s, _ in blocks)
        got = np.stack([np.concatenate([s for s, _ in blocks]), np.concatenate([t for _, t in blocks])])
        assert got.tobytes() == np.ascontiguousarray(ref["edge_index"]).tobytes()
        feats = list(src.iter_features(700))
        assert all(b.flags.c_contiguous and len(b) <= 700 for b in feats)
        assert np.concatenate(feats).tobytes() == np.ascontiguousarray(ref["node_feat"]).tobytes()
    src.close()


def test_corrupt_features_fail_with_one_line_naming_the_member(tmp_path):
    d = make_papers100m_fixture(tmp_path, 3001, 5000, num_features=16, seed=4)
    corrupt_member(d / "raw" / "data.npz", "node_feat.npy")
    src = Papers100MSource(d)
    src.prepare_scratch(tmp_path / "w")  # edges are fine; the feature spill fails on its thread
    with pytest.raises(InputError, match=r"data\.npz member node_feat\.npy is corrupted or truncated") as err:
        for _ in src.iter_edges(1000):  # raises here if the spill failed already (fail fast) ...
            pass
        next(src.iter_features(100))    # ... else here
    assert "\n" not in str(err.value)
    assert not list((tmp_path / "w").glob(".*tmp*"))  # nothing half-written left
    assert not (tmp_path / "w" / "papers100M_node_feat.C.raw").exists()


def test_cancel_removes_the_partial_spill(tmp_path):
    d = make_papers100m_fixture(tmp_path, 40_000, 1000, num_features=64, seed=1)  # 10 MB of features
    stop = threading.Event()
    stop.set()
    with pytest.raises(SpillCancelled):
        spill_to_raw(d / "raw" / "data.npz", "node_feat", tmp_path / "f.raw", stop=stop)
    assert not list(tmp_path.glob("*f.raw*"))
    spill = BackgroundSpill(d / "raw" / "data.npz", "node_feat", tmp_path / "g.raw")
    spill.close()  # whether it finished or was cancelled, no temp file is left
    assert not list(tmp_path.glob(".g.raw*"))
    if not (tmp_path / "g.raw").exists():
        with pytest.raises(RuntimeError, match="cancelled"):
            spill.wait()
