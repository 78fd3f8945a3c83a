"""The raw-member inflate path: byte-identical to np.load with every inflater, clear errors, stdlib fallback."""
from __future__ import annotations

import sys
import zipfile

import numpy as np
import pytest

from oocgnn.errors import ConfigError, InputError
from oocgnn.prepare.readers import inflate
from oocgnn.prepare.readers.inflate import BACKENDS, ZipMemberReader, get_inflater
from oocgnn.prepare.readers.npy_stream import iter_edge_blocks, iter_row_blocks, read_small_array

from test_npy_stream import corrupt_member

RNG = np.random.default_rng(1)
EDGES = RNG.integers(0, 3_000_000, size=(2, 300_001)).astype(np.int64)  # inflates to ~4.8 MB: several chunks
FEAT = RNG.standard_normal((20_011, 37)).astype(np.float32)


def _installed() -> list[str]:
    return [b for b in BACKENDS if inflate._load(b) is not None]


@pytest.fixture(autouse=True)
def _fresh_choice():
    get_inflater.cache_clear()
    yield
    get_inflater.cache_clear()


@pytest.fixture(scope="module", params=["compressed", "stored"])
def npz(request, tmp_path_factory):
    path = tmp_path_factory.mktemp("npz") / f"{request.param}.npz"
    save = np.savez_compressed if request.param == "compressed" else np.savez
    save(path, edge_c=EDGES, edge_f=np.asfortranarray(EDGES), feat=FEAT, empty=np.zeros((0, 5), np.float32))
    return path


@pytest.mark.parametrize("backend", _installed())
def test_arrays_byte_identical_to_np_load(npz, backend, monkeypatch, tmp_path):
    monkeypatch.setenv("OOCGNN_INFLATER", backend)
    assert get_inflater().name == backend
    ref = np.load(npz)
    for member in ("edge_c", "edge_f"):
        blocks = list(iter_edge_blocks(npz, member, 65_536))
        got = np.stack([np.concatenate([s for s, _ in blocks]), np.concatenate([d for _, d in blocks])])
        assert got.tobytes() == np.ascontiguousarray(ref[member]).tobytes()
    rows = np.concatenate(list(iter_row_blocks(npz, "feat", 4099)))
    assert rows.tobytes() == ref["feat"].tobytes()
    assert read_small_array(npz, "empty").shape == (0, 5)


@pytest.mark.parametrize("backend", _installed())
def test_whole_member_bytes_and_skip(npz, backend):
    with zipfile.ZipFile(npz) as zf:
        zi = zf.getinfo("edge_c.npy")
        want = zf.read(zi)
    with ZipMemberReader(npz, zi, get_inflater(backend)) as r:
        head = r.read(1000)
        assert r.skip(2_000_000) == 2_000_000
        rest = r.read()
        assert r.read(10) == b"" and r.tell() == len(want)
    assert head == want[:1000] and rest == want[2_001_000:]


@pytest.mark.parametrize("backend", _installed())
def test_corrupt_member_is_one_line_naming_it(npz, backend, monkeypatch, tmp_path):
    monkeypatch.setenv("OOCGNN_INFLATER", backend)
    bad = tmp_path / "bad.npz"
    bad.write_bytes(npz.read_bytes())
    corrupt_member(bad, "feat.npy", nbytes=256)  # stored members: only the CRC can tell
    with pytest.raises(InputError, match=r"bad\.npz member feat\.npy is corrupted or truncated") as err:
        list(iter_row_blocks(bad, "feat", 1000))
    assert "\n" not in str(err.value)


def test_unknown_or_missing_inflater_is_a_config_error(monkeypatch):
    monkeypatch.setenv("OOCGNN_INFLATER", "gzip9000")
    with pytest.raises(ConfigError, match=r"OOCGNN_INFLATER='gzip9000' is not one of"):
        get_inflater()
    get_inflater.cache_clear()
    monkeypatch.setenv("OOCGNN_INFLATER", "isal")
    monkeypatch.setitem(sys.modules, "isal", None)  # as if not installed
    with pytest.raises(ConfigError, match=r"pip install isal or unset OOCGNN_INFLATER"):
        get_inflater()


def test_fallback_to_stdlib_zlib_without_fast_inflaters(npz, monkeypatch):
    monkeypatch.delenv("OOCGNN_INFLATER", raising=False)
    for mod in ("isal", "isal.isal_zlib", "zlib_ng", "zlib_ng.zlib_ng"):
        monkeypatch.setitem(sys.modules, mod, None)
    assert get_inflater().name == "zlib"
    rows = np.concatenate(list(iter_row_blocks(npz, "feat", 5000)))
    assert rows.tobytes() == FEAT.tobytes()


def test_store_checksums_keep_zlib_values():
    """Store checksums may use ISA-L's crc32: the values must stay zlib's (stores made before still verify)."""
    import zlib

    from oocgnn.store.checksum import Crc32

    c = Crc32()
    for block in (FEAT[:1000], FEAT[1000:1001], FEAT[1001:]):
        c.update(block)
    assert c.hexdigest() == f"crc32:{zlib.crc32(FEAT.tobytes()) & 0xFFFFFFFF:08x}"
