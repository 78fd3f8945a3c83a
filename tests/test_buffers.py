"""Huge-page buffers: ordinary numpy arrays to their users, advised for huge pages when large."""
from __future__ import annotations

import gc
import mmap
import sys

import numpy as np
import pytest

from oocgnn.utils import buffers
from oocgnn.utils.buffers import empty_huge


def _vm_flags(address: int) -> list[str]:
    """VmFlags of the mapping of this process that holds ``address``."""
    current = None
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                lo, hi = (int(x, 16) for x in head.split("-"))
                current = lo <= address < hi
            elif head == "VmFlags:" and current:
                return line.split()[1:]
    raise AssertionError("address not mapped")


def test_small_is_plain_numpy_and_large_behaves_like_np_empty():
    small = empty_huge((3, 4), np.float32)
    assert small.shape == (3, 4) and small.dtype == np.float32 and isinstance(small.base, (type(None), np.ndarray))
    big = empty_huge((buffers.HUGE_MIN_BYTES // 8 + 5,), np.int64)
    assert big.shape == (buffers.HUGE_MIN_BYTES // 8 + 5,) and big.flags.c_contiguous and big.flags.writeable
    big[:] = np.arange(big.size)
    tail = big[-3:]
    del big
    gc.collect()
    assert tail.tolist() == [buffers.HUGE_MIN_BYTES // 8 + 2, buffers.HUGE_MIN_BYTES // 8 + 3,
                             buffers.HUGE_MIN_BYTES // 8 + 4]  # a view keeps the memory alive


@pytest.mark.skipif(not sys.platform.startswith("linux") or not hasattr(mmap, "MADV_HUGEPAGE"),
                    reason="madvise(MADV_HUGEPAGE) is Linux-only")
def test_large_buffer_is_advised_for_huge_pages():
    big = empty_huge((2, buffers.HUGE_MIN_BYTES), np.uint8)
    assert "hg" in _vm_flags(big.ctypes.data)
    plain = np.empty(buffers.HUGE_MIN_BYTES * 2, np.uint8)
    assert "hg" not in _vm_flags(plain.ctypes.data)


def test_feature_table_in_huge_pages_is_byte_identical(tmp_path, monkeypatch):
    from oocgnn.prepare.features import write_permuted_features

    monkeypatch.setattr(buffers, "HUGE_MIN_BYTES", 0)
    x = np.random.default_rng(0).standard_normal((3001, 16)).astype(np.float32)
    inv = np.random.default_rng(1).permutation(3001)
    write_permuted_features((x[s:s + 500] for s in range(0, 3001, 500)), inv, tmp_path / "f.npy", tmp_path / "w",
                            num_features=16, dtype="float32", memory_budget=1 << 30, what="t", progress=False)
    want = np.empty_like(x)
    want[inv] = x
    assert np.array_equal(np.load(tmp_path / "f.npy"), want)
