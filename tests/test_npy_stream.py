"""Streaming .npy / .npz members: equal to np.load in both memory orders, bounded RAM, clear errors.

Not reproducible here (ogb-formats.md 5.3): members > 4 GiB with zip64
end-of-central-directory records; ``zipfile`` handles those itself.
"""
from __future__ import annotations

import json
import tracemalloc
import zipfile

import numpy as np
import pytest

from oocgnn.errors import InputError, InputNotFoundError
from oocgnn.prepare.readers.npy_stream import (iter_edge_blocks, iter_flat_blocks, iter_row_blocks, open_npz_member,
                                  read_npy_info, read_small_array, spill_to_raw)

RNG = np.random.default_rng(0)
EDGES = RNG.integers(0, 10**9, size=(2, 1237)).astype(np.int64)
FEAT = RNG.standard_normal((1001, 13)).astype(np.float32)


@pytest.fixture(scope="module")
def npz(tmp_path_factory):
    path = tmp_path_factory.mktemp("npz") / "data.npz"
    np.savez_compressed(path, edge_c=EDGES, edge_f=np.asfortranarray(EDGES), feat_c=FEAT,
                        feat_f=np.asfortranarray(FEAT), small_f=np.asfortranarray(FEAT[:3, :4]),
                        col=FEAT[:, :1].copy(), edge_i32=EDGES.astype(np.int32))
    return path


def corrupt_member(path, member: str, nbytes: int = 64) -> None:
    """Overwrite bytes in the middle of a member's compressed data (its local header stays)."""
    with zipfile.ZipFile(path) as zf:
        zi = zf.getinfo(member)
    with open(path, "r+b") as f:
        f.seek(zi.header_offset + 26)
        name_len, extra_len = np.frombuffer(f.read(4), dtype="<u2")
        start = zi.header_offset + 30 + int(name_len) + int(extra_len)
        f.seek(start + zi.compress_size // 2)
        f.write(bytes(RNG.integers(0, 256, nbytes, dtype=np.uint8)))


def _edges(path, member, block):
    blocks = list(iter_edge_blocks(path, member, block))
    assert all(len(s) <= block and s.dtype == np.int64 for s, _ in blocks)
    return np.concatenate([s for s, _ in blocks]), np.concatenate([d for _, d in blocks])


@pytest.mark.parametrize("member", ["edge_c", "edge_f", "edge_i32"])
@pytest.mark.parametrize("block", [1, 97, 5000])
def test_edge_blocks_equal_np_load(npz, member, block):
    src, dst = _edges(npz, member, block)
    ref = np.load(npz)[member]
    np.testing.assert_array_equal(src, ref[0])
    np.testing.assert_array_equal(dst, ref[1])


@pytest.mark.parametrize("fortran", [False, True])
def test_plain_npy_edges_and_rows(tmp_path, fortran):
    order = np.asfortranarray if fortran else np.ascontiguousarray
    np.save(tmp_path / "e.npy", order(EDGES))
    np.save(tmp_path / "x.npy", order(FEAT))
    assert read_npy_info(tmp_path / "x.npy").fortran_order is fortran
    src, dst = _edges(tmp_path / "e.npy", None, 101)
    np.testing.assert_array_equal(np.stack([src, dst]), EDGES)
    blocks = list(iter_row_blocks(tmp_path / "x.npy", None, 77))
    assert all(b.flags.c_contiguous for b in blocks)
    np.testing.assert_array_equal(np.concatenate(blocks), FEAT)


@pytest.mark.parametrize("member", ["feat_c", "feat_f"])
@pytest.mark.parametrize("block", [1, 333, 4096])
def test_row_blocks_equal_np_load(npz, tmp_path, member, block):
    info = read_npy_info(npz, member)
    assert info.fortran_order is (member == "feat_f") and info.shape == FEAT.shape
    blocks = list(iter_row_blocks(npz, member, block, spill_path=tmp_path / "spill.raw"))
    assert [len(b) for b in blocks[:-1]] == [block] * (len(blocks) - 1)
    np.testing.assert_array_equal(np.concatenate(blocks), FEAT)


def test_fortran_member_needs_spill_path(npz):
    with pytest.raises(RuntimeError, match="spill_path"):
        next(iter_row_blocks(npz, "feat_f", 10))


def test_spill_is_resumable_and_notices_changed_source(npz, tmp_path):
    dest = tmp_path / "feat.raw"
    spill_to_raw(npz, "feat_f", dest)
    marker = json.loads((tmp_path / "feat.raw.done").read_text())
    first = dest.stat().st_mtime_ns
    spill_to_raw(npz, "feat_f", dest)  # reused
    assert dest.stat().st_mtime_ns == first
    (tmp_path / "feat.raw.done").write_text(json.dumps(dict(marker, mtime_ns=0)))
    spill_to_raw(npz, "feat_f", dest)  # stale marker: spilled again
    assert json.loads((tmp_path / "feat.raw.done").read_text()) == marker
    assert not list(tmp_path.glob(".*tmp*"))


def test_flat_and_small_arrays(npz):
    np.testing.assert_array_equal(np.concatenate(list(iter_flat_blocks(npz, "col", 100))), FEAT[:, 0])
    small = read_small_array(npz, "small_f")
    np.testing.assert_array_equal(small, FEAT[:3, :4])
    with pytest.raises(InputError, match="far larger"):
        read_small_array(npz, "feat_c", max_bytes=100)


def test_member_is_streamed_in_bounded_memory(tmp_path):
    big = np.zeros((2, 4_000_000), dtype=np.int64)  # 64 MB, compresses to almost nothing
    big[1] = 7
    np.savez_compressed(tmp_path / "big.npz", edge_index=big)
    tracemalloc.start()
    try:
        total = 0
        for src, dst in iter_edge_blocks(tmp_path / "big.npz", "edge_index", 100_000):
            assert dst[0] == 7 and src[-1] == 0
            total += len(src)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert total == 4_000_000
    assert peak < 20 << 20, peak  # blocks + 4 MB reads + zip buffers, never the 64 MB member


def test_truncated_npz_names_file(npz, tmp_path):
    cut = tmp_path / "cut.npz"
    cut.write_bytes(npz.read_bytes()[: npz.stat().st_size // 2])
    with pytest.raises(InputError, match=r"cut\.npz.*re-download"):
        list(iter_edge_blocks(cut, "edge_c", 100))


def test_corrupted_member_names_file_and_member(npz, tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(npz.read_bytes())
    corrupt_member(bad, "feat_c.npy")
    with pytest.raises(InputError, match=r"bad\.npz member feat_c\.npy is corrupted"):
        list(iter_row_blocks(bad, "feat_c", 100))
    np.testing.assert_array_equal(_edges(bad, "edge_c", 500)[0], EDGES[0])  # other members intact


def test_truncated_npy_and_wrong_shapes(tmp_path):
    np.save(tmp_path / "x.npy", FEAT)
    raw = (tmp_path / "x.npy").read_bytes()
    (tmp_path / "x.npy").write_bytes(raw[:-100])
    with pytest.raises(InputError, match=r"x\.npy is truncated \(has \d+ of 52052 data bytes"):
        list(iter_row_blocks(tmp_path / "x.npy", None, 10))
    np.save(tmp_path / "e.npy", EDGES[:1])
    with pytest.raises(InputError, match=r"e\.npy must be an integer array of shape \(2, E\)"):
        list(iter_edge_blocks(tmp_path / "e.npy", None, 10))
    np.save(tmp_path / "ef.npy", EDGES.astype(np.float32))
    with pytest.raises(InputError, match="integer array"):
        list(iter_edge_blocks(tmp_path / "ef.npy", None, 10))
    (tmp_path / "junk.npy").write_bytes(b"not an npy file at all")
    with pytest.raises(InputError, match=r"junk\.npy is corrupted"):
        read_npy_info(tmp_path / "junk.npy")
    with pytest.raises(InputNotFoundError, match=r"missing\.npy does not exist"):
        read_npy_info(tmp_path / "missing.npy")


def test_missing_member(npz):
    with pytest.raises(InputError, match=r"has no member node_feat\.npy"):
        open_npz_member(npz, "node_feat")
