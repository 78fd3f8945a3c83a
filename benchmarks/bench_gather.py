"""Cold random row gathers: the row-gather engine (oocgnn.io) vs memmap vs the disk itself.

    python benchmarks/bench_gather.py --workdir /tmp/bench_gather --size-gb 16 --batches 3

Creates (once; reused when present and intact) a file of ``--size-gb`` GiB of
256-byte rows (row ``i`` holds the int64 ``i`` 32 times, so every gather is checked),
then, with the page cache dropped before each method (``sync; echo 3 >
/proc/sys/vm/drop_caches``, needs root) before each batch, gathers ``--batches`` batches of ``--batch``
sorted unique random ids (each method its own ids: the VM's disk may be cached by the
host, which ``drop_caches`` cannot reach, so no method re-reads pages another just read)
with:

- numpy memmap fancy index, 1 thread, default read-ahead;
- memmap + ``MADV_RANDOM``, ``--memmap-threads`` threads (``torch.index_select``, the
  trainer's ``--io-engine mmap`` path);
- the engine: ``direct`` (``O_DIRECT``) through Linux AIO (its default) and through
  ``--queue-depth`` threads in ``pread``, and ``pread`` (buffered, ``POSIX_FADV_RANDOM``,
  threads), ``--queue-depth`` reads in flight;
- and measures the device's 4 KiB random-read IOPS on the same file at
  ``--queue-depth`` in flight, O_DIRECT: Linux AIO from one nogil loop
  (``common.disk_random_read_aio``) before and after the gathers, the higher of the two
  being the device figure the ratios use (the box is shared: load drifts), and Python
  threads in ``os.preadv`` (``common.disk_random_read``, CPU-bound on a loaded box).

Reports rows/s, CPU seconds per row (user + sys of this process, all threads), peak
RSS growth over the method (sampled every 10 ms) and the ratios the issue sets
targets for.  Prints a table, writes ``benchmarks/out/bench_gather.json``.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import mmap
import os
import sys
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import OUT_DIR, disk_random_read, disk_random_read_aio, drop_caches, machine  # noqa: E402

ROW_BYTES = 256
WORDS = ROW_BYTES // 8
GiB = 1 << 30


def make_file(path: Path, size_gb: float) -> int:
    """Write (or reuse) the table; returns its rows.  O_DIRECT writes: the page cache stays clean."""
    from oocgnn.io import aligned_empty

    nrows = int(size_gb * GiB) // ROW_BYTES
    if path.exists() and path.stat().st_size == nrows * ROW_BYTES:
        with open(path, "rb") as f:
            first = np.frombuffer(f.read(ROW_BYTES), np.int64)
            f.seek((nrows - 1) * ROW_BYTES)
            last = np.frombuffer(f.read(ROW_BYTES), np.int64)
        if (first == 0).all() and (last == nrows - 1).all():
            print(f"reusing {path} ({nrows:,} rows)")
            return nrows
    path.parent.mkdir(parents=True, exist_ok=True)
    block_rows = (64 << 20) // ROW_BYTES
    buf = aligned_empty(block_rows * ROW_BYTES)
    rows = buf.view(np.int64).reshape(block_rows, WORDS)
    t0 = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT, 0o644)
    try:
        for r0 in range(0, nrows, block_rows):
            k = min(block_rows, nrows - r0)
            rows[:k] = np.arange(r0, r0 + k, dtype=np.int64)[:, None]
            n = (k * ROW_BYTES + 4095) // 4096 * 4096  # the last block is padded to 4 KiB ...
            os.write(fd, memoryview(buf)[:n])
        os.ftruncate(fd, nrows * ROW_BYTES)            # ... and cut back
        os.fsync(fd)
    finally:
        os.close(fd)
    el = time.perf_counter() - t0
    print(f"wrote {path}: {nrows * ROW_BYTES / 1e9:.1f} GB in {el:.1f} s ({nrows * ROW_BYTES / el / 1e9:.2f} GB/s)")
    return nrows


class RssPeak:
    """Peak resident set (``/proc/self/statm``) while the block runs, minus the value at entry."""

    def __enter__(self) -> "RssPeak":
        self.base = self.peak = self._rss()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * mmap.PAGESIZE

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, self._rss())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self._rss())
        self.growth = self.peak - self.base


def batches(nrows: int, batch: int, count: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [np.sort(rng.choice(nrows, batch, replace=False)).astype(np.int64) for _ in range(count)]


def run_method(name: str, setup, gather, ids_list: list[np.ndarray]) -> dict:
    """Per batch: drop caches, open, gather into one preallocated buffer, close; check the rows.

    Every batch is cold: a memmap's default read-ahead pulls most of the file into the
    page cache during one batch (the 1-thread memmap's second batch ran 10x faster),
    and pages a live memmap maps survive ``drop_caches``, so each batch reopens.
    """
    out = np.empty((len(ids_list[0]), WORDS), np.int64)
    out.fill(-1)  # first touch outside the measurement
    times, cpu, dropped = [], 0.0, True
    with RssPeak() as rss:
        for ids in ids_list:
            dropped &= drop_caches()
            state = setup()
            c0, t0 = os.times(), time.perf_counter()
            gather(state, ids, out)
            t1, c1 = time.perf_counter(), os.times()
            times.append(t1 - t0)
            cpu += (c1.user - c0.user) + (c1.system - c0.system)
            if hasattr(state, "close"):
                state.close()
            del state
            if not (out[:, 0] == ids).all() or not (out[:, -1] == ids).all():
                raise SystemExit(f"{name}: wrong rows gathered")
    rows = sum(len(i) for i in ids_list)
    rec = {"method": name, "rows": rows, "time_s": sum(times), "rows_per_s": rows / sum(times),
           "batch_times_s": times, "cpu_s": cpu, "cpu_us_per_row": cpu / rows * 1e6,
           "peak_rss_growth_bytes": rss.growth, "caches_dropped": dropped}
    print(f"  {name:34s} {rec['rows_per_s']:>10,.0f} rows/s  {rec['cpu_us_per_row']:6.1f} us CPU/row  "
          f"RSS +{rss.growth / 1e6:,.0f} MB", flush=True)
    return rec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/bench_gather"))
    ap.add_argument("--size-gb", type=float, default=16.0, help="file size in GiB (default 16)")
    ap.add_argument("--batch", type=int, default=200_000, help="sorted unique random ids per batch")
    ap.add_argument("--batches", type=int, default=3, help="batches per method, each cold")
    ap.add_argument("--queue-depth", type=int, default=64, help="engine reads in flight, and the IOPS probe's")
    ap.add_argument("--memmap-threads", type=int, default=16)
    ap.add_argument("--iops-seconds", type=float, default=10.0)
    ap.add_argument("--skip-memmap1", action="store_true", help="skip the slow 1-thread memmap baseline")
    args = ap.parse_args()

    import torch

    from oocgnn.io import RowFile

    path = args.workdir / f"rows_{ROW_BYTES}B_{args.size_gb:g}GiB.bin"
    nrows = make_file(path, args.size_gb)
    seeds = iter(range(1, 100))

    def ids_for_method() -> list[np.ndarray]:
        return batches(nrows, args.batch, args.batches, seed=next(seeds))

    print(f"{nrows:,} rows of {ROW_BYTES} B ({nrows * ROW_BYTES / 1e9:.1f} GB); {args.batches} x {args.batch:,} "
          f"sorted unique ids per method; page cache dropped before each batch")
    results = []

    def mm_open(random: bool):
        def setup():
            mm = np.memmap(path, np.int64, "r", shape=(nrows, WORDS))
            if random:
                mm._mmap.madvise(mmap.MADV_RANDOM)
            return mm
        return setup

    def mm1(mm, ids, out):
        np.take(mm, ids, axis=0, out=out)

    pool = ThreadPoolExecutor(args.memmap_threads)

    def mm_threads(mm, ids, out):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            src = torch.from_numpy(np.asarray(mm))
        dst, idx = torch.from_numpy(out), torch.from_numpy(ids)
        bounds = np.linspace(0, len(ids), args.memmap_threads * 4 + 1).astype(np.int64)
        futs = [pool.submit(torch.index_select, src, 0, idx[a:b], out=dst[a:b])
                for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
        for f in futs:
            f.result()

    def engine(kind: str, transport: str = "auto"):
        return lambda: RowFile(path, 0, ROW_BYTES, nrows, kind, queue_depth=args.queue_depth, transport=transport)

    def eng(f, ids, out):
        f.gather(ids, out)

    # warm the numba kernels' cache outside the measurement
    RowFile(path, 0, ROW_BYTES, nrows, "pread").gather(np.array([0, 1]), np.empty((2, WORDS), np.int64))
    qd = args.queue_depth
    drop_caches()
    dev_before = disk_random_read_aio(path, seconds=args.iops_seconds, depth=qd)
    print(f"  {'device 4 KiB random reads, QD' + str(qd):34s} {dev_before['rand_read_iops']:>10,.0f} IOPS "
          f"(O_DIRECT, AIO, before)  {dev_before['cpu_us_per_read']:.1f} us CPU/read", flush=True)

    if not args.skip_memmap1:
        results.append(run_method("memmap fancy index, 1 thread", mm_open(False), mm1, ids_for_method()))
    results.append(run_method(f"memmap MADV_RANDOM, {args.memmap_threads} threads", mm_open(True), mm_threads,
                              ids_for_method()))
    results.append(run_method(f"engine direct (AIO), {qd} in flight", engine("direct"), eng, ids_for_method()))
    results.append(run_method(f"engine direct (threads), {qd} in flight", engine("direct", "threads"), eng,
                              ids_for_method()))
    results.append(run_method(f"engine pread (threads), {qd} in flight", engine("pread"), eng, ids_for_method()))
    pool.shutdown()

    drop_caches()
    dev_after = disk_random_read_aio(path, seconds=args.iops_seconds, depth=qd)
    print(f"  {'device 4 KiB random reads, QD' + str(qd):34s} {dev_after['rand_read_iops']:>10,.0f} IOPS "
          f"(O_DIRECT, AIO, after)  {dev_after['cpu_us_per_read']:.1f} us CPU/read")
    dev = max(dev_before, dev_after, key=lambda d: d["rand_read_iops"])
    drop_caches()
    c0 = os.times()
    dev_py = disk_random_read(args.workdir, seconds=args.iops_seconds, threads=qd, path=path)
    c1 = os.times()
    dev_py["cpu_us_per_read"] = ((c1.user - c0.user) + (c1.system - c0.system)) / max(
        dev_py["rand_read_iops"] * args.iops_seconds, 1) * 1e6
    print(f"  {'device 4 KiB random reads, QD' + str(qd):34s} {dev_py['rand_read_iops']:>10,.0f} IOPS "
          f"(O_DIRECT, Python threads)  {dev_py['cpu_us_per_read']:.1f} us CPU/read")

    by = {r["method"].split(",")[0]: r for r in results}
    d, dt_, p = by["engine direct (AIO)"], by["engine direct (threads)"], by["engine pread (threads)"]
    m16 = by["memmap MADV_RANDOM"]
    m1 = by.get("memmap fancy index")
    ratios = {
        "engine_direct_over_device_iops": d["rows_per_s"] / dev["rand_read_iops"],
        "engine_direct_threads_over_device_iops": dt_["rows_per_s"] / dev["rand_read_iops"],
        "engine_pread_over_device_iops": p["rows_per_s"] / dev["rand_read_iops"],
        "engine_direct_over_device_iops_python_threads_probe": d["rows_per_s"] / dev_py["rand_read_iops"],
        "engine_direct_over_memmap_1thread": d["rows_per_s"] / m1["rows_per_s"] if m1 else None,
        "engine_direct_over_memmap_random_threads": d["rows_per_s"] / m16["rows_per_s"],
        "cpu_per_row_direct_over_memmap_1thread": d["cpu_us_per_row"] / m1["cpu_us_per_row"] if m1 else None,
        "cpu_per_row_direct_over_memmap_random_threads": d["cpu_us_per_row"] / m16["cpu_us_per_row"],
        "engine_direct_threads_over_memmap_1thread": dt_["rows_per_s"] / m1["rows_per_s"] if m1 else None,
        "cpu_per_row_direct_threads_over_memmap_random_threads": dt_["cpu_us_per_row"] / m16["cpu_us_per_row"],
    }
    targets = {"engine_direct_over_device_iops": (">=", 0.8), "engine_direct_over_memmap_1thread": (">=", 4.0),
               "cpu_per_row_direct_over_memmap_1thread": ("<=", 1 / 3),
               "cpu_per_row_direct_over_memmap_random_threads": ("<=", 1 / 3)}

    print(f"\n| method | rows/s | CPU per row | peak RSS growth |\n|---|---|---|---|")
    for r in results:
        print(f"| {r['method']} | {r['rows_per_s']:,.0f} | {r['cpu_us_per_row']:.1f} us | "
              f"{r['peak_rss_growth_bytes'] / 1e6:,.0f} MB |")
    for when, d_ in (("before", dev_before), ("after", dev_after)):
        print(f"| device: 4 KiB random reads, {qd} in flight (O_DIRECT, Linux AIO), {when} the gathers | "
              f"{d_['rand_read_iops']:,.0f} IOPS | {d_['cpu_us_per_read']:.1f} us | |")
    print(f"| device: 4 KiB random reads, {qd} in flight (O_DIRECT, Python threads in os.preadv) | "
          f"{dev_py['rand_read_iops']:,.0f} IOPS | {dev_py['cpu_us_per_read']:.1f} us | |")
    print("\n| ratio | value | target | status |\n|---|---|---|---|")
    status = {}
    for k, v in ratios.items():
        if v is None:
            continue
        op, t = targets.get(k, (None, None))
        ok = None if op is None else (v >= t if op == ">=" else v <= t)
        status[k] = ok
        print(f"| {k} | {v:.2f} | {'' if op is None else f'{op} {t:.2f}'} | "
              f"{'' if ok is None else ('met' if ok else 'missed')} |")
    out = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "command": " ".join(sys.argv),
           "machine": machine(), "file": str(path), "rows": nrows, "row_bytes": ROW_BYTES,
           "batch": args.batch, "batches": args.batches, "queue_depth": args.queue_depth,
           "load_avg": os.getloadavg(), "methods": results, "device": dev, "device_before": dev_before, "device_after": dev_after,
           "device_python_threads": dev_py,
           "ratios": ratios,
           "targets": {k: f"{op} {t:.3f}" for k, (op, t) in targets.items()}, "targets_met": status}
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    (OUT_DIR / "bench_gather.json").write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nwrote {OUT_DIR / 'bench_gather.json'}")


if __name__ == "__main__":
    main()
