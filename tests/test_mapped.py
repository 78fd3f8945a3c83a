"""Mapped-page releaser: memmap pages leave RSS under a window, and no write is lost doing so."""
from __future__ import annotations

import mmap

import numpy as np
import pytest

from oocgnn.utils.mapped import MappedPageReleaser, mapped_rss, register_mapped, release_pages

pytestmark = pytest.mark.skipif(not hasattr(mmap, "MADV_DONTNEED"), reason="needs madvise(MADV_DONTNEED)")

MiB = 1 << 20


@pytest.fixture()
def big_file(tmp_path):
    """A 96 MiB float32 .npy file (larger than the windows used below)."""
    path = tmp_path / "rows.npy"
    arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(96 * MiB // 256, 64))
    arr[:] = np.arange(arr.shape[0], dtype=np.float32)[:, None]
    arr.flush()
    del arr
    return path


def _stream(arr: np.ndarray) -> float:
    """Touch every page once, block by block, as a sweep over features does."""
    total, block = 0.0, 4096
    for s in range(0, arr.shape[0], block):
        total += float(arr[s:s + block, 0].sum())
    return total


def test_streaming_a_memmap_stays_under_the_window(big_file) -> None:
    base = mapped_rss()  # shared libraries' pages: not ours, the window counts from them
    window = 16 * MiB
    arr = register_mapped(np.load(big_file, mmap_mode="r"))
    peak = 0
    with MappedPageReleaser(window, interval=0.001) as rel:
        total, block = 0.0, 4096
        for s in range(0, arr.shape[0], block):
            total += float(arr[s:s + block, 0].sum())
            rel.check()  # the poller may lag on a loaded box; a check per block makes the bound exact
            peak = max(peak, mapped_rss())
    n = arr.shape[0]
    assert total == n * (n - 1) / 2  # the data read through released pages is intact
    assert rel.releases > 0
    # one block (4096 rows x 256 B = 1 MiB) may be faulted in past the window before a check
    assert peak - base <= window + 2 * MiB, (peak - base) / MiB


def test_library_pages_do_not_count_against_the_window() -> None:
    """torch's code pages (~130 MB) are file pages no release drops: a small window must not release
    at every poll because of them (it did, at any budget under ~1.6 GB)."""
    assert mapped_rss() > 4 * MiB  # the interpreter and numpy's libraries at least
    with MappedPageReleaser(2 * MiB, interval=60) as rel:
        assert not any(rel.check() for _ in range(20))
    assert rel.releases == 0


def test_without_release_the_pages_stay_mapped(big_file) -> None:
    """Negative control: the same stream with no releaser maps most of the file into RSS."""
    base = mapped_rss()
    arr = np.load(big_file, mmap_mode="r")
    _stream(arr)
    assert mapped_rss() - base > 64 * MiB
    assert release_pages(arr)  # and the one-shot release drops them
    assert mapped_rss() - base < 8 * MiB


def test_release_keeps_dirty_pages_of_a_writable_map(tmp_path) -> None:
    path = tmp_path / "hist.npy"
    arr = register_mapped(np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(1 << 16, 64)))
    arr[:] = 3.0
    arr[123] = 7.0
    assert release_pages(arr)  # no flush first: the kernel must keep the dirty pages
    assert float(arr[123, 0]) == 7.0 and float(arr[5, 5]) == 3.0
    del arr
    back = np.load(path, mmap_mode="r")
    assert float(back[123, 0]) == 7.0 and float(back.sum()) == 3.0 * (1 << 16) * 64 + 4.0 * 64


def test_private_copy_on_write_maps_are_never_released(tmp_path) -> None:
    """DONTNEED on a MAP_PRIVATE page would throw away its modification: such maps are not registered."""
    path = tmp_path / "c.npy"
    np.save(path, np.zeros((1024, 16), np.float32))
    arr = np.load(path, mmap_mode="c")
    arr[0] = 5.0
    assert register_mapped(arr) is arr and not release_pages(arr)
    assert float(arr[0, 0]) == 5.0


def test_halo_gather_keeps_the_window_between_chunks(tmp_path, monkeypatch) -> None:
    """A random-row gather maps pages faster than a poller sees; the loader checks after every chunk.

    What one chunk maps depends on the kernel (fault-around, large page-cache folios: one random
    row mapped ~12 pages here), so the bound is measured: just before each check, mapped RSS is at
    most the release threshold plus what one chunk maps from a released map.
    """
    import torch

    from oocgnn import prefetch
    from oocgnn.prefetch import BatchLoader, advise_random
    from oocgnn.utils import mapped

    chunk_rows = 16  # few rows per chunk, so a chunk maps a small part of the file even with large folios
    monkeypatch.setattr(prefetch, "GATHER_CHUNK_ROWS", chunk_rows)

    path = tmp_path / "feats.npy"
    w = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(256 * MiB // 256, 64))
    w[:] = np.arange(w.shape[0], dtype=np.float32)[:, None]
    w.flush()
    del w
    feats = register_mapped(np.load(path, mmap_mode="r"))
    advise_random(feats)  # as the trainer does
    loader = BatchLoader(np.zeros(2, np.int64), np.zeros(0, np.int32), feats, None, [], None, io_threads=1,
                         io_engine="mmap")
    rng = np.random.default_rng(0)
    ids = rng.permutation(feats.shape[0])[: 8 * chunk_rows]
    out = torch.empty(len(ids), feats.shape[1])

    release_pages(feats)
    base = mapped_rss()
    loader._gather(loader.x_t, ids[:chunk_rows], out[:chunk_rows])  # no releaser: a no-op check
    one_chunk = mapped_rss() - base

    seen: list[int] = []
    real_check = mapped.check_window

    def spying_check() -> None:
        seen.append(mapped_rss())
        real_check()

    monkeypatch.setattr(prefetch, "check_window", spying_check)
    release_pages(feats)
    rel = MappedPageReleaser(2 * 4 * MiB, interval=3600)  # released past base + 4 MiB
    with rel:  # poller asleep: only the chunk checks release
        loader._gather(loader.x_t, ids, out)
    assert torch.equal(out, torch.from_numpy(np.asarray(feats[ids])))
    assert len(seen) == 8 and rel.releases >= 7
    assert max(seen) - base <= rel.threshold + 2 * one_chunk, (max(seen) - base) / MiB

    # negative control: without the checks the same gather keeps several chunks' pages mapped
    release_pages(feats)
    monkeypatch.setattr(prefetch, "check_window", lambda: None)
    loader._gather(loader.x_t, ids, out)
    assert mapped_rss() - base > 3 * one_chunk
