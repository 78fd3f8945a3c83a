"""Files written from now on put their data at byte 4096; old 128-byte-header files still read."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from oocgnn.history import HistorySet, HistoryTable
from oocgnn.io import file_region, gather_rows, rowfile_for
from oocgnn.store import format as fmt
from oocgnn.store.npyfile import DATA_ALIGN, NpyWriter, create_npy_memmap, npy_data_offset
from oocgnn.store.verify import verify_store
from oocgnn.testing.stores import make_store, random_graph

ENGINES = ["direct", "pread", "mmap"]


def _gather(array: np.ndarray, ids: np.ndarray, engine: str) -> np.ndarray:
    out = np.full((len(ids), array.shape[1]), 7, dtype=array.dtype)
    rf = rowfile_for(array, engine)
    if rf is None:  # mmap: the caller's own memmap path
        return np.asarray(array)[ids]
    with rf:
        gather_rows(rf, ids, out)
    return out


@pytest.mark.parametrize("row_shape,dtype", [((), np.int64), ((), np.int32), ((1433,), np.float32), ((64,), np.float16)])
def test_npy_writer_aligns_data_and_loads_bitwise(tmp_path, row_shape, dtype) -> None:
    a = (np.random.default_rng(0).standard_normal((1000, *row_shape)) * 100).astype(dtype)
    w = NpyWriter(tmp_path / "a.npy", dtype, row_shape=row_shape)
    for s in range(0, len(a), 333):
        w.append(a[s:s + 333])
    w.close()
    assert npy_data_offset(tmp_path / "a.npy") == DATA_ALIGN == 4096
    assert np.load(tmp_path / "a.npy").tobytes() == a.tobytes()
    mm = np.load(tmp_path / "a.npy", mmap_mode="r")
    assert mm.offset == 4096 and np.asarray(mm).tobytes() == a.tobytes()


def test_new_store_files_are_aligned_and_verify(tmp_path) -> None:
    g = random_graph(num_nodes=600, num_edges=5000, num_features=100, num_classes=4, seed=5)
    ds = make_store(tmp_path / "store", g["edge_index"], g["x"], g["y"], g["splits"], num_partitions=4)
    for name in (fmt.FEATURES, fmt.INDPTR, fmt.INDICES):
        path = ds.path / name
        assert npy_data_offset(path) == 4096, name
        loaded = np.load(path)
        mm = getattr(ds, {fmt.FEATURES: "features", fmt.INDPTR: "indptr", fmt.INDICES: "indices"}[name])
        assert loaded.tobytes() == np.asarray(mm).tobytes()
    np.testing.assert_array_equal(ds.features, g["x"][ds.perm])
    assert file_region(ds.features) == (str(ds.path / fmt.FEATURES), 4096)
    ids = np.random.default_rng(2).integers(0, ds.num_nodes, 900)
    for engine in ENGINES:
        assert _gather(ds.features, ids, engine).tobytes() == np.asarray(ds.features)[ids].tobytes(), engine
    assert verify_store(ds, progress=False) == []


@pytest.mark.parametrize("width,dtype", [(1433, np.float32), (100, np.float32), (64, np.float16)])
def test_old_layout_file_still_gathers(tmp_path, width, dtype) -> None:
    a = np.random.default_rng(1).standard_normal((500, width)).astype(dtype)
    np.save(tmp_path / "old.npy", a)  # numpy's own 128-byte header: rows straddle pages
    assert npy_data_offset(tmp_path / "old.npy") == 128
    mm = np.load(tmp_path / "old.npy", mmap_mode="r")
    ids = np.random.default_rng(3).permutation(500)[:300]
    ids = np.concatenate([ids, [0, 499, 0]])
    for engine in ENGINES:
        assert _gather(mm, ids, engine).tobytes() == a[ids].tobytes(), engine


def test_new_history_table_is_aligned_and_pushes_read_back(tmp_path) -> None:
    hs = HistorySet(777, [100, 64], "float32", tmp_path / "hist")
    vals = [torch.randn(777, 100), torch.randn(777, 64)]
    hs.push(vals, step=0, ranges=[(0, 777)])
    hs.close()
    for t, v in zip(hs.tables, vals):
        assert npy_data_offset(t.path) == 4096
        assert np.load(t.path).tobytes() == v.numpy().tobytes()
        ids = np.arange(0, 777, 5)
        assert _gather(t.array, ids, "pread").tobytes() == v.numpy()[ids].tobytes()
    again = HistoryTable(777, 100, "float32", tmp_path / "hist" / "layer_0.npy")  # reopen: contents kept
    assert np.asarray(again.array).tobytes() == vals[0].numpy().tobytes()


def test_old_history_table_reopens(tmp_path) -> None:
    a = np.random.default_rng(4).standard_normal((300, 32)).astype(np.float16)
    np.save(tmp_path / "layer_0.npy", a)
    t = HistoryTable(300, 32, "float16", tmp_path / "layer_0.npy")
    assert t.array.offset == 128 and np.asarray(t.array).tobytes() == a.tobytes()
    out = torch.empty(10, 32)
    ids = np.arange(290, 300)
    assert torch.equal(t.pull(ids, out), torch.from_numpy(a[ids].astype(np.float32)))


def test_create_npy_memmap_is_zero_and_sparse(tmp_path) -> None:
    mm = create_npy_memmap(tmp_path / "z.npy", np.float32, (1000, 256))
    assert mm.offset == 4096 and not np.asarray(mm).any()
    assert (tmp_path / "z.npy").stat().st_size == 4096 + 1000 * 256 * 4
