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
