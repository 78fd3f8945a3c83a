"""The row-gather engine (oocgnn.io): bitwise equal to numpy, fallback, read errors, training."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from oocgnn.errors import ConfigError, ReadError
from oocgnn.io import RowFile, aligned_empty, gather_rows, reset_fallback_warnings, rowfile_for
from oocgnn.io import rowfile as rowfile_mod

SHAPES = [(1433, np.float32), (100, np.float32), (64, np.float16), (1024, np.float32)]


def write_table(path: Path, rows: int, width: int, dtype, seed: int = 0) -> np.ndarray:
    a = np.random.default_rng(seed).standard_normal((rows, width)).astype(dtype)
    np.save(path, a)
    return a


def id_sets(n: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {
        "random_sorted": np.sort(rng.choice(n, n // 3, replace=False)),
        "unsorted": rng.permutation(n)[: n // 2],
        "duplicated": rng.integers(0, n, 2 * n),
        "empty": np.empty(0, np.int64),
        "first_last": np.array([0, n - 1, 0, n - 1, n - 2, 1]),
        "dense": np.arange(n),
    }


@pytest.mark.parametrize("engine", ["direct", "direct-threads", "pread", "mmap"])
@pytest.mark.parametrize("width,dtype", SHAPES)
def test_engine_equals_numpy_bitwise(tmp_path, engine, width, dtype) -> None:
    n = 700
    ref = write_table(tmp_path / "t.npy", n, width, dtype)
    mm = np.load(tmp_path / "t.npy", mmap_mode="r")
    kind, _, transport = engine.partition("-")
    # small chunks and queue so chunk boundaries, threads and page-spanning rows are all exercised
    with rowfile_for(mm, kind, queue_depth=8, chunk_pages=64, transport=transport or "auto") if kind != "mmap" else \
            RowFile(mm.filename, mm.offset, width * np.dtype(dtype).itemsize, n, "mmap") as f:
        assert f.engine == kind
        if engine == "direct":
            assert f.transport == ("aio" if rowfile_mod.AIO_AVAILABLE else "threads")
        for name, ids in id_sets(n).items():
            out = np.full((len(ids), width), 7, dtype=dtype)
            gather_rows(f, ids, out)
            assert out.tobytes() == ref[ids].tobytes(), name


@pytest.mark.parametrize("max_gap", [0, 1, 4, 64])
@pytest.mark.parametrize("width,dtype", [(100, np.float32), (64, np.float16), (1433, np.float32)])
def test_gap_reads_equal_numpy_and_cut_requests(tmp_path, max_gap, width, dtype, monkeypatch) -> None:
    """Reading through gaps of unneeded pages changes the requests, never the rows.

    Strided ids leave gaps of about one page, random sparse ones gaps of many; small
    chunks put chunk ends inside gaps.  A dense-ish gather must issue fewer requests
    with gaps read through than without.
    """
    n = 3000
    ref = write_table(tmp_path / "t.npy", n, width, dtype)
    mm = np.load(tmp_path / "t.npy", mmap_mode="r")
    rng = np.random.default_rng(3)
    rb = width * np.dtype(dtype).itemsize
    sets = {"strided": np.arange(0, n, max(3, 2 * 4096 // rb + 1)), "sparse": np.sort(rng.choice(n, n // 40, replace=False)),
            "shuffled_dup": rng.integers(0, n, n // 2)}
    requests: list[int] = []
    real_read = RowFile._read

    def counting(self, buf, run_page, run_slot, run_len, n_runs):
        requests.append(n_runs)
        return real_read(self, buf, run_page, run_slot, run_len, n_runs)

    monkeypatch.setattr(RowFile, "_read", counting)
    for kind in ("direct", "pread"):
        counts = {}
        for gap in (0, max_gap):
            with rowfile_for(mm, kind, queue_depth=8, chunk_pages=16, max_gap=gap) as f:
                for name, ids in sets.items():
                    out = np.full((len(ids), width), 7, dtype=dtype)
                    requests.clear()
                    gather_rows(f, ids, out)
                    assert out.tobytes() == ref[ids].tobytes(), (kind, gap, name)
                    counts[(gap, name)] = sum(requests)
        if max_gap >= 1 and rb < 4096:  # strided rows: one needed page, then a gap of about one page
            assert counts[(max_gap, "strided")] < counts[(0, "strided")]


def test_direct_reads_rows_written_through_a_memmap_not_yet_written_back(tmp_path) -> None:
    """A history push lands in a shared memmap (dirty page cache); a later O_DIRECT read sees it.

    (Linux writes back a range's dirty pages before an O_DIRECT read.  Reads *racing* the
    writes are another matter: see ``rowfile_for(written=True)``, which is why training
    reads history tables with buffered pread.)
    """
    from oocgnn.history import HistorySet

    hs = HistorySet(1000, [100], "float32", tmp_path / "hist")
    ids = np.arange(100, 900, 3)
    f = rowfile_for(hs.tables[0].array, "direct")
    assert f.engine == "direct"
    before = np.empty((len(ids), 100), np.float32)
    gather_rows(f, ids, before)
    assert not before.any()
    vals = torch.randn(800, 100)
    hs.push([vals], step=0, ranges=[(100, 900)])
    hs.flush()  # landed in the memmap; nothing called msync
    out = np.empty((len(ids), 100), np.float32)
    gather_rows(f, ids, out)
    assert out.tobytes() == vals.numpy()[ids - 100].tobytes()
    f.close()
    hs.close()


def test_refused_o_direct_falls_back_and_warns_once(tmp_path, monkeypatch, caplog) -> None:
    shm = Path("/dev/shm")
    d = Path(os.environ.get("OOCGNN_TMPFS", shm))
    if not d.is_dir():
        pytest.skip("no tmpfs")
    p = d / f"oocgnn-test-{os.getpid()}.npy"
    try:
        ref = write_table(p, 300, 100, np.float32)
        try:
            os.close(os.open(p, os.O_RDONLY | os.O_DIRECT))
            refused = False
        except OSError:
            refused = True
        if not refused:  # tmpfs accepts O_DIRECT on this kernel: simulate a filesystem that does not
            def refuse(path):
                raise OSError(22, "Invalid argument", path)
            monkeypatch.setattr(rowfile_mod, "_open_direct", refuse)
        reset_fallback_warnings()
        mm = np.load(p, mmap_mode="r")
        with caplog.at_level(logging.WARNING, logger="oocgnn.io.rowfile"):
            for _ in range(3):
                f = rowfile_for(mm, "auto")
                assert f.engine == "pread"
                ids = np.array([5, 299, 0, 5])
                out = np.empty((4, 100), np.float32)
                gather_rows(f, ids, out)
                assert out.tobytes() == ref[ids].tobytes()
                f.close()
        warnings = [r for r in caplog.records if "O_DIRECT refused" in r.getMessage()]
        assert len(warnings) == 1 and str(p) in warnings[0].getMessage()
        with pytest.raises(ConfigError, match="io-engine direct"):
            rowfile_for(mm, "direct")
    finally:
        p.unlink(missing_ok=True)


def test_refused_first_aligned_read_falls_back(tmp_path, monkeypatch, caplog) -> None:
    ref = write_table(tmp_path / "t.npy", 50, 100, np.float32)
    real = rowfile_mod.kernels.read_runs
    calls = []

    def einval_once(fd, buf, rp, rs, rl, n, first, step, end, err):
        if not calls:
            calls.append(1)
            err[:] = (0, 22, 0, end)
            return -1
        return real(fd, buf, rp, rs, rl, n, first, step, end, err)

    monkeypatch.setattr(rowfile_mod.kernels, "read_runs", einval_once)
    reset_fallback_warnings()
    with caplog.at_level(logging.WARNING, logger="oocgnn.io.rowfile"):
        f = rowfile_for(np.load(tmp_path / "t.npy", mmap_mode="r"), "auto")
    assert f.engine == "pread" and "O_DIRECT refused" in caplog.text
    out = np.empty((2, 100), np.float32)
    gather_rows(f, np.array([49, 3]), out)
    assert out.tobytes() == ref[[49, 3]].tobytes()


@pytest.mark.parametrize("engine", ["direct", "direct-threads", "pread"])
def test_truncated_file_gives_one_error_naming_it(tmp_path, engine) -> None:
    p = tmp_path / "t.npy"
    write_table(p, 1000, 100, np.float32)
    kind, _, transport = engine.partition("-")
    f = rowfile_for(np.load(p, mmap_mode="r"), kind, transport=transport or "auto")
    os.truncate(p, 128 + 500 * 400 + 10)  # after open: rows 500.. are gone
    out = np.zeros((3, 100), np.float32)
    gather_rows(f, np.array([0, 10, 400]), out)  # pages still whole
    with pytest.raises(ReadError, match=f"short read of {p}") as err:
        gather_rows(f, np.array([3, 700, 10]), out)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("engine", ["direct", "direct-threads", "pread", "mmap"])
@pytest.mark.parametrize("width,dtype", [(1, np.int32), (1, np.int64), (100, np.float32), (64, np.float16)])
def test_range_reads_equal_numpy_bitwise(tmp_path, engine, width, dtype) -> None:
    """read_range (a batch's CSR slices): any start and length, page-spanning ends, runs longer than one request."""
    n = 40_000
    ref = write_table(tmp_path / "t.npy", n, width, dtype) if dtype in (np.float32, np.float16) else None
    if ref is None:
        ref = np.random.default_rng(2).integers(-2**30, 2**30, (n, width)).astype(dtype)
        np.save(tmp_path / "t.npy", ref)
    mm = np.load(tmp_path / "t.npy", mmap_mode="r")
    kind, _, transport = engine.partition("-")
    f = rowfile_for(mm, kind, queue_depth=8, transport=transport or "auto") if kind != "mmap" else \
        RowFile(mm.filename, mm.offset, width * np.dtype(dtype).itemsize, n, "mmap")
    with f:
        rng = np.random.default_rng(3)
        spans = [(0, n), (0, 1), (n - 1, n), (5, 5), (17, 4113)] + \
            [tuple(sorted(rng.integers(0, n + 1, 2))) for _ in range(30)]
        for s, e in spans:
            buf = aligned_empty(f.range_bytes(s, e) + 4096)
            got = f.read_range(int(s), int(e), buf)
            assert got.shape == (e - s, f.row_bytes) and got.tobytes() == ref[s:e].tobytes(), (s, e)
        with pytest.raises(ReadError, match=f"outside {mm.filename}"):
            f.read_range(n - 2, n + 1, aligned_empty(f.range_bytes(n - 2, n + 1)))
        with pytest.raises(ValueError, match="page-aligned buffer"):
            f.read_range(0, 100, aligned_empty(4096)[1:])


def test_truncated_file_range_read_gives_one_error_naming_it(tmp_path) -> None:
    p = tmp_path / "t.npy"
    write_table(p, 1000, 100, np.float32)
    f = rowfile_for(np.load(p, mmap_mode="r"), "auto")
    os.truncate(p, 128 + 500 * 400 + 10)
    with pytest.raises(ReadError, match=f"short read of {p}") as err:
        f.read_range(300, 900, aligned_empty(f.range_bytes(300, 900)))
    assert "\n" not in str(err.value)


def test_id_past_the_end_gives_one_error_naming_the_file(tmp_path) -> None:
    p = tmp_path / "t.npy"
    write_table(p, 10, 100, np.float32)
    f = rowfile_for(np.load(p, mmap_mode="r"), "auto")
    with pytest.raises(ReadError, match=f"row 10 is outside {p}"):
        gather_rows(f, np.array([0, 10]), np.empty((2, 100), np.float32))


def test_eio_gives_one_error_naming_the_file() -> None:
    """/proc/self/mem returns EIO for an unmapped address: a real EIO from pread."""
    f = RowFile("/proc/self/mem", 0, 64, 1 << 20, "pread")
    with pytest.raises(ReadError, match=r"reading /proc/self/mem failed at offset 0: .*\(EIO\)"):
        gather_rows(f, np.array([1, 2]), np.empty((2, 64), np.uint8))
    with pytest.raises(ReadError, match=r"reading /proc/self/mem failed at offset 0: .*\(EIO\)"):
        f.read_range(0, 100, aligned_empty(f.range_bytes(0, 100)))


def test_unknown_engine_is_a_config_error(tmp_path) -> None:
    write_table(tmp_path / "t.npy", 4, 4, np.float32)
    with pytest.raises(ConfigError, match="--io-engine 'fast'"):
        RowFile(tmp_path / "t.npy", 128, 16, 4, "fast")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from oocgnn.testing.stores import make_store, random_graph

    g = random_graph(num_nodes=800, num_edges=6000, num_features=12, num_classes=4, seed=2)
    return make_store(tmp_path_factory.mktemp("store") / "s", g["edge_index"], g["x"], g["y"], g["splits"], 12)


def _train(store, run_dir: Path, engine: str, history_dtype: str, monkeypatch) -> tuple:
    from oocgnn.config import IOConfig, ModelConfig, OptimConfig, RunConfig
    from oocgnn.runner import make_trainer

    used: dict[str, int] = {}
    real = RowFile.gather

    def counting(self, ids, out):
        used[self.engine] = used.get(self.engine, 0) + len(ids)
        return real(self, ids, out)

    monkeypatch.setattr(RowFile, "gather", counting)
    cfg = RunConfig(model=ModelConfig(layers=3, hidden=16, dropout=0.5),
                    train=OptimConfig(epochs=2, parts_per_batch=2),
                    io=IOConfig(prefetch=2, io_threads=2, cache="belady", memory_budget="1GB", cache_fraction=0.05,
                                history_dtype=history_dtype, io_engine=engine))
    tr = make_trainer(store, cfg, run_dir)
    losses = []
    for _ in range(2):
        tr.train_epoch(on_batch=lambda rec: losses.append(rec["loss"]))
    tr.histories.flush()
    out = ([p.detach().clone() for p in tr.model.parameters()], [t.array.copy() for t in tr.histories.tables],
           np.array(losses))
    tr.close()
    return out, used


@pytest.mark.parametrize("history_dtype", ["float32", "float16"])
def test_training_is_bitwise_identical_across_engines(store, tmp_path, monkeypatch, history_dtype) -> None:
    runs = {}
    for engine in ("mmap", "direct", "pread"):
        (tmp_path / engine).mkdir()
        runs[engine], used = _train(store, tmp_path / engine, engine, history_dtype, monkeypatch)
        if engine == "mmap":
            assert not used  # today's memmap path, engine untouched
        else:  # history tables, written through a memmap while read, always use buffered pread
            assert used.get(engine, 0) > 0 and set(used) == {engine, "pread"}, used
    ref_params, ref_hist, ref_losses = runs["mmap"]
    assert len(ref_losses) > 4 and np.isfinite(ref_losses).any()
    for engine in ("direct", "pread"):
        params, hist, losses = runs[engine]
        assert losses.tobytes() == ref_losses.tobytes(), engine
        assert all(torch.equal(a, b) for a, b in zip(params, ref_params)), engine
        assert all(a.tobytes() == b.tobytes() for a, b in zip(hist, ref_hist)), engine


def test_io_engine_flag_and_config() -> None:
    import argparse

    from oocgnn.cli import train as cli_train
    from oocgnn.config import IOConfig

    with pytest.raises(ConfigError, match="--io-engine 'uring'"):
        IOConfig(io_engine="uring")
    parser = argparse.ArgumentParser()
    cli_train.add_parser(parser.add_subparsers())
    args = parser.parse_args(["train", "--data", "d", "--run-dir", "r", "--io-engine", "pread"])
    assert args.io_engine == "pread" and cli_train.FLAG_MAP["io_engine"] == ("io", "io_engine")


def test_refused_aio_falls_back_to_threads(tmp_path, monkeypatch) -> None:
    ref = write_table(tmp_path / "t.npy", 300, 100, np.float32)
    f = rowfile_for(np.load(tmp_path / "t.npy", mmap_mode="r"), "direct", transport="aio")

    monkeypatch.setattr(rowfile_mod.kernels, "aio_setup", lambda depth: -11)  # EAGAIN: aio-max-nr reached
    ids = np.array([299, 0, 150, 0])
    out = np.empty((4, 100), np.float32)
    gather_rows(f, ids, out)
    assert f.transport == "threads" and out.tobytes() == ref[ids].tobytes()
