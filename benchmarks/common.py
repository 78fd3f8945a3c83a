"""Helpers shared by the benchmark scripts: disk bandwidth, RSS sampling, output."""
from __future__ import annotations

import json
import os
import platform
import random
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import psutil

OUT_DIR = Path(__file__).resolve().parent / "out"


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "ram_bytes": psutil.virtual_memory().total,
            "platform": platform.platform(), "python": sys.version.split()[0]}


def drop_caches() -> bool:
    """Drop the page cache if permitted (root); returns whether it worked."""
    try:
        subprocess.run(["sync"], check=True)
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def _dd_rate(args: list[str]) -> float:
    out = subprocess.run(["dd", *args], capture_output=True, text=True, check=True).stderr
    m = re.search(r"(\d+) bytes.*copied, ([\d.]+) s", out)
    return int(m.group(1)) / float(m.group(2))


def disk_bandwidth(directory: Path, size_mb: int = 2048) -> dict[str, float]:
    """Sequential write and read bandwidth (bytes/s) with O_DIRECT, 1 MiB blocks, via dd."""
    path = directory / ".oocgnn_ddtest"
    try:
        write = _dd_rate(["if=/dev/zero", f"of={path}", "bs=1M", f"count={size_mb}", "oflag=direct", "conv=fsync"])
        read = _dd_rate([f"if={path}", "of=/dev/null", "bs=1M", "iflag=direct"])
    finally:
        path.unlink(missing_ok=True)
    return {"seq_write_Bps": write, "seq_read_Bps": read}


def disk_random_read(directory: Path, size_mb: int = 4096, seconds: float = 5.0, threads: int = 16,
                     block: int = 4096, path: Path | None = None) -> dict[str, float]:
    """Random ``block``-byte reads/s with ``threads`` in flight (O_DIRECT, so the page cache cannot help).

    The rate a halo gather would get from the disk alone; ``pread`` releases the GIL, so
    Python threads keep ``threads`` requests queued (the queue depth).  ``path``: read
    this existing file instead of writing a ``size_mb`` scratch file (kept afterwards).
    """
    import mmap
    import threading

    scratch = path is None
    path = directory / ".oocgnn_randtest" if scratch else Path(path)
    try:
        if scratch:
            subprocess.run(["dd", "if=/dev/zero", f"of={path}", "bs=1M", f"count={size_mb}", "oflag=direct",
                            "conv=fsync"], capture_output=True, check=True)
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECT", 0))
        blocks = os.fstat(fd).st_size // block
        counts = [0] * threads
        deadline = time.perf_counter() + seconds

        def worker(i: int) -> None:
            buf = mmap.mmap(-1, block)  # page-aligned, as O_DIRECT requires
            rng = random.Random(i)
            n = 0
            while time.perf_counter() < deadline:
                os.preadv(fd, [buf], rng.randrange(blocks) * block)
                n += 1
            counts[i] = n

        t0 = time.perf_counter()
        pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
        for t in pool:
            t.start()
        for t in pool:
            t.join()
        elapsed = time.perf_counter() - t0
        os.close(fd)
    finally:
        if scratch:
            path.unlink(missing_ok=True)
    return {"rand_read_iops": sum(counts) / elapsed, "rand_read_block": block, "rand_read_threads": threads}


def disk_random_read_aio(path: Path, seconds: float = 5.0, depth: int = 64) -> dict[str, float]:
    """Random 4 KiB reads/s of an existing file at ``depth`` in flight: O_DIRECT, Linux native AIO.

    One nogil loop (:mod:`oocgnn.io.kernels`' AIO calls) submits and reaps, so the figure is
    the device's, not the CPU's: Python threads in ``os.preadv`` (:func:`disk_random_read`)
    need ~12-18 us of CPU per read, which on a loaded 2-core box caps them below the disk.
    Reads are uniform over the file, independent of any gather's page order.
    """
    import numpy as np

    from oocgnn.io import aligned_empty
    from oocgnn.io import kernels as k

    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        blocks = os.fstat(fd).st_size // 4096
        buf = aligned_empty(depth * 4096)
        ctx = k.aio_setup(depth)
        if ctx <= 0:
            raise OSError(-ctx, os.strerror(-ctx), "io_setup")
        rng = np.random.default_rng(12345)
        scratch = (np.zeros((depth, 8), np.int64), np.zeros(depth, np.int64), np.zeros((depth, 4), np.int64),
                   np.zeros(depth, np.int64), np.zeros(4, np.int64))
        step = 16384  # reads per kernel call: the queue drains only once per call
        slots = np.arange(step, dtype=np.int64) % depth  # reads share buffer pages: the data is not looked at
        ones = np.ones(step, np.int64)
        reads, c0, t0 = 0, os.times(), time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            pages = rng.integers(0, blocks, step)
            rc = k.aio_read_runs(ctx, fd, buf, pages, slots, ones, step, depth, blocks * 4096, *scratch)
            if rc != 0:
                raise OSError(int(scratch[-1][1]), "AIO read failed", str(path))
            reads += step
        el, c1 = time.perf_counter() - t0, os.times()
        k.aio_destroy(ctx)
    finally:
        os.close(fd)
    cpu = (c1.user - c0.user) + (c1.system - c0.system)
    return {"rand_read_iops": reads / el, "rand_read_block": 4096, "rand_read_depth": depth,
            "cpu_us_per_read": cpu / reads * 1e6}


def run_and_sample_rss(cmd: Sequence[str], interval: float = 0.05, env: dict | None = None) -> dict[str, float]:
    """Run ``cmd``; return wall time and the peak RSS of it and its children."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(list(cmd), env=env)
    ps = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        try:
            rss = ps.memory_info().rss + sum(c.memory_info().rss for c in ps.children(recursive=True))
            peak = max(peak, rss)
        except psutil.Error:
            pass
        time.sleep(interval)
    if proc.returncode != 0:
        raise SystemExit(f"benchmark step failed ({proc.returncode}): {' '.join(cmd)}")
    return {"time_s": time.perf_counter() - t0, "peak_rss_bytes": peak}


def write_json(name: str, data: dict[str, Any]) -> Path:
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    path = OUT_DIR / f"{name}.json"
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return path


def print_table(rows: list[tuple[str, str]]) -> None:
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
