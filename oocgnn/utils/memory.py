"""Memory budget parsing and RSS accounting.

One ``--memory-budget`` is split among sort buffers, staging rings and caches; the
helpers here turn ``"12GB"`` into bytes, choose a default from the memory that is
actually available, and track the peak resident set size we report per stage.
"""
from __future__ import annotations

import ctypes
import gc
import re
import resource
import threading
import time

import psutil

from oocgnn.errors import ConfigError

_UNITS = {
    "": 1, "b": 1,
    "k": 10**3, "kb": 10**3, "kib": 2**10,
    "m": 10**6, "mb": 10**6, "mib": 2**20,
    "g": 10**9, "gb": 10**9, "gib": 2**30,
    "t": 10**12, "tb": 10**12, "tib": 2**40,
}

#: Fraction of currently available RAM used when no budget is given.
DEFAULT_BUDGET_FRACTION = 0.5


def parse_size(text: str | int | float, flag: str = "--memory-budget") -> int:
    """Parse a human size such as ``12GB``, ``512MiB`` or ``1e9`` into bytes.

    >>> parse_size("1.5GiB")
    1610612736
    """
    if isinstance(text, (int, float)):
        if text <= 0:
            raise ConfigError(f"{flag} must be positive, got {text}")
        return int(text)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][0-9]+)?)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _UNITS:
        raise ConfigError(f"{flag}: cannot read size {text!r}; write e.g. 12GB, 512MiB or 2000000000")
    value = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    if value <= 0:
        raise ConfigError(f"{flag} must be positive, got {text!r}")
    return value


def format_size(num_bytes: float) -> str:
    """Format bytes for humans (powers of 1000, as disks are sold)."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(num_bytes) < 1000 or unit == "TB":
            return f"{num_bytes:.1f} {unit}" if unit != "B" else f"{int(num_bytes)} B"
        num_bytes /= 1000
    return f"{num_bytes:.1f} TB"


def default_budget() -> int:
    """Half of the RAM available right now: leaves room for the page cache."""
    return int(psutil.virtual_memory().available * DEFAULT_BUDGET_FRACTION)


def resolve_budget(value: str | int | None) -> int:
    """Budget in bytes from a flag value, or the default when ``None``."""
    return default_budget() if value in (None, "", "auto") else parse_size(value)


def current_rss() -> int:
    """Resident set size of this process, in bytes."""
    return psutil.Process().memory_info().rss


def current_anon_rss() -> int:
    """Anonymous resident memory (heap, numpy/torch buffers) of this process, in bytes.

    RSS also counts file-backed pages of memmaps (store features, CSR, history
    tables): those are reclaimable page cache, so the budget is enforced on this
    number and both are reported.  Falls back to ``rss - shared`` off Linux.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    mi = psutil.Process().memory_info()
    return mi.rss - getattr(mi, "shared", 0)


def trim_heap(collect: bool = False) -> None:
    """Give freed heap memory back to the kernel (glibc ``malloc_trim``; a no-op elsewhere).

    numpy arrays below glibc's mmap threshold (up to 32 MiB) come from malloc arenas,
    which keep freed chunks: after a sweep's batches (subgraph arrays of tens of MB each,
    on two threads) RssAnon stayed ~1 GB above what was live, and the streaming decision,
    which measures RssAnon, refused a table that fits.  ``collect``: reference cycles go
    first (``gc.collect``, ~0.25 s in a process with torch loaded): freed row caches
    were still held by one after an epoch.
    """
    if collect:
        gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


#: allocations at least this large get their own mapping from glibc, returned to the kernel when freed
HEAP_MMAP_THRESHOLD = 1 << 20
#: glibc's ``mallopt`` parameter number of ``M_MMAP_THRESHOLD`` (malloc.h)
_M_MMAP_THRESHOLD = -3


def keep_large_buffers_off_heap(threshold: int = HEAP_MMAP_THRESHOLD) -> bool:
    """Make glibc map every allocation of ``threshold`` bytes or more on its own (``mallopt``); True if set.

    By default glibc raises its mmap threshold to the size of each mapped block freed, up
    to 32 MiB, so the 1-32 MiB arrays a training step makes and frees (gathers' temporaries,
    cache misses, subgraph pieces, on several threads) then come from malloc arenas, which
    keep them resident after ``free``. At a 1.5 GB budget that held RssAnon ~450 MB above the
    memory plan (peak 1.64 GB, planned 1.19 GB), room a memory cgroup then took from the page
    cache the history reads need. With a fixed 1 MiB threshold the same epoch peaked at
    1.28 GB (``benchmarks/RESULTS.md``, "Session 10"). Setting the threshold also stops the
    dynamic adjustment. Process-wide and idempotent; a no-op off glibc.
    """
    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_THRESHOLD, int(threshold)))
    except (OSError, AttributeError):
        return False


def lifetime_peak_rss() -> int:
    """Peak RSS of this process since it started (kernel's ru_maxrss), in bytes."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class PeakRSSMonitor:
    """Samples RSS in a daemon thread so a stage can report its own peak.

    ``ru_maxrss`` only ever grows over the process lifetime, so it cannot tell the
    peak of the *current* stage; sampling every ``interval`` seconds can.

    >>> with PeakRSSMonitor() as mon:
    ...     _ = bytearray(10)
    >>> mon.peak > 0
    True
    """

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.peak = 0
        self.peak_anon = 0  #: peak of :func:`current_anon_rss` (what ``--memory-budget`` bounds)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sample(self) -> int:
        rss = current_rss()
        self.peak = max(self.peak, rss)
        self.peak_anon = max(self.peak_anon, current_anon_rss())
        return rss

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> "PeakRSSMonitor":
        self.sample()
        self._thread = threading.Thread(target=self._run, name="oocgnn-rss-monitor", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sample()


class Stopwatch:
    """Accumulates wall time of a repeated activity (e.g. waiting on I/O)."""

    def __init__(self) -> None:
        self.total = 0.0

    def __enter__(self) -> "Stopwatch":
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.total += time.perf_counter() - self._t0
