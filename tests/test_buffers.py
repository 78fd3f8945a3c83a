"""Page-aligned buffers and O_DIRECT writes of .npy files: same bytes as buffered writes."""
from __future__ import annotations

import errno
import os

import numpy as np
import pytest

from oocgnn.store import npyfile
from oocgnn.store.npyfile import NpyWriter
from oocgnn.utils.buffers import PAGE, aligned_rows, empty_aligned


@pytest.mark.parametrize("shape,dtype", [((3, 4), np.float32), ((100_001,), np.int64), ((5, 1433), np.float16)])
def test_empty_aligned_is_a_page_aligned_array(shape, dtype):
    a = empty_aligned(shape, dtype)
    assert a.shape == shape and a.dtype == dtype and a.flags.c_contiguous and a.flags.writeable
    assert a.ctypes.data % PAGE == 0
    a[...] = 1
    view = a[1:]
    del a
    assert (view == 1).all()  # a view keeps the memory alive


@pytest.mark.parametrize("row_bytes", [512, 400, 1433 * 4, 6, 8192])
def test_aligned_rows_fill_whole_pages(row_bytes):
    rows = aligned_rows(row_bytes)
    assert rows * row_bytes % PAGE == 0 and rows * row_bytes <= max(64 << 20, PAGE * row_bytes)
    assert aligned_rows(row_bytes, 0) * row_bytes == np.lcm(row_bytes, PAGE)


def _write(path, blocks, direct):
    w = NpyWriter(path, np.float32, row_shape=(128,), direct=direct)
    for b in blocks:
        w.append(b)
    return w.close(), w.direct_bytes


def test_direct_writes_equal_buffered_writes(tmp_path, monkeypatch):
    """Aligned blocks go past the page cache, an unaligned one and the ones after it through it,
    and the file and its checksum are those of a buffered writer."""
    monkeypatch.setattr(npyfile, "DIRECT_MIN_BYTES", PAGE)
    table = empty_aligned((5000, 128), np.float32)
    table[:] = np.random.default_rng(0).standard_normal(table.shape)
    step = aligned_rows(512, 1 << 20)
    assert 4096 % step == 0
    blocks = [table[s:s + step] for s in range(0, 4096, step)] + [table[4096:4099], table[4099:]]
    crc_d, direct_bytes = _write(tmp_path / "d.npy", blocks, True)
    crc_b, buffered_direct = _write(tmp_path / "b.npy", blocks, False)
    assert (tmp_path / "d.npy").read_bytes() == (tmp_path / "b.npy").read_bytes() and crc_d == crc_b
    assert np.array_equal(np.load(tmp_path / "d.npy"), table)
    if hasattr(os, "O_DIRECT"):
        assert direct_bytes == 4096 * 512 and buffered_direct == 0


def test_a_refused_direct_write_falls_back_to_the_page_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(npyfile, "DIRECT_MIN_BYTES", PAGE)
    real = os.pwrite

    def refuse(fd, data, offset):
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(os, "pwrite", refuse)
    table = empty_aligned((4096, 128), np.float32)
    table[:] = 3.0
    _, direct_bytes = _write(tmp_path / "d.npy", [table[:2048], table[2048:]], True)
    monkeypatch.setattr(os, "pwrite", real)
    assert direct_bytes == 0 and np.array_equal(np.load(tmp_path / "d.npy"), table)


def test_feature_table_written_direct_is_byte_identical(tmp_path, monkeypatch):
    from oocgnn.prepare.features import write_permuted_features

    monkeypatch.setattr(npyfile, "DIRECT_MIN_BYTES", PAGE)
    x = np.random.default_rng(0).standard_normal((30001, 32)).astype(np.float32)
    inv = np.random.default_rng(1).permutation(30001)
    write_permuted_features((x[s:s + 5000] for s in range(0, 30001, 5000)), inv, tmp_path / "f.npy", tmp_path / "w",
                            num_features=32, dtype="float32", memory_budget=1 << 30, what="t", progress=False)
    want = np.empty_like(x)
    want[inv] = x
    assert np.array_equal(np.load(tmp_path / "f.npy"), want)
