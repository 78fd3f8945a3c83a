"""Keep the file pages our memmaps map into RSS under a fixed window.

Every row gathered from a memmap (features, CSR, history tables) maps a 4 KiB
page of the file into this process.  Those pages are page cache, but they count
in RSS until unmapped, so a long epoch over a 33 GB store would report a
resident set far above ``--memory-budget`` even though the anonymous part stays
inside it.  :class:`MappedPageReleaser` polls ``RssFile + RssShmem`` and, when it
passes the window, calls ``madvise(MADV_DONTNEED)`` on every registered mapping:
the pages leave our page tables but stay in the page cache (a later access is a
minor fault), and dirty pages of a shared mapping are kept and written back by
the kernel, so nothing is lost.  Only shared mappings (``mode`` ``r``, ``r+``,
``w+``) are registered: on a private copy-on-write mapping DONTNEED would drop
modifications.
"""
from __future__ import annotations

import logging
import mmap
import threading
import weakref

import numpy as np

log = logging.getLogger(__name__)

#: every shared memmap opened through :func:`register_mapped` (weak: closing a table drops it)
_REGISTRY: "weakref.WeakSet[mmap.mmap]" = weakref.WeakSet()
_LOCK = threading.Lock()
#: releasers running now, innermost last (:func:`check_window` asks the innermost)
_ACTIVE: "list[MappedPageReleaser]" = []
_PAGE = mmap.PAGESIZE
_SHARED_MODES = ("r", "r+", "w+", "readonly", "readwrite", "write")


def _mmap_of(array: np.ndarray) -> mmap.mmap | None:
    """The ``mmap`` object behind a numpy memmap (or a view of one), if any."""
    a: object = array
    while a is not None:
        mm = getattr(a, "_mmap", None)
        if mm is not None:
            return mm if getattr(a, "mode", "r") in _SHARED_MODES else None
        a = getattr(a, "base", None)
    return None


def register_mapped(array: np.ndarray) -> np.ndarray:
    """Let the releaser unmap this memmap's pages; returns ``array`` (no-op for RAM arrays)."""
    mm = _mmap_of(array)
    if mm is not None and hasattr(mmap, "MADV_DONTNEED"):
        with _LOCK:
            _REGISTRY.add(mm)
    return array


def release_pages(array: np.ndarray) -> bool:
    """Drop the pages of one shared memmap (or a view of one) from our page tables; True if it had a map.

    For a stream over a memmap far larger than RAM (the CSR stages of ``prepare``), where
    every touched page would otherwise stay mapped and RSS would grow by the file size.
    """
    mm = _mmap_of(array)
    if mm is None or not hasattr(mmap, "MADV_DONTNEED"):
        return False
    mm.madvise(mmap.MADV_DONTNEED)
    return True


def release_mapped_pages() -> int:
    """Drop every registered mapping's pages from our page tables; returns mappings released."""
    with _LOCK:
        maps = list(_REGISTRY)
    done = 0
    for mm in maps:
        try:
            mm.madvise(mmap.MADV_DONTNEED)
            done += 1
        except (ValueError, OSError):  # closed meanwhile, or a zero-length map
            pass
    return done


def mapped_rss() -> int:
    """File-backed + shared resident pages of this process (``RssFile + RssShmem``), in bytes.

    Read from ``/proc/self/statm`` (its third field), half the cost of parsing
    ``/proc/self/status``: the loader asks after every gather chunk.
    """
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[2]) * _PAGE
    except (OSError, IndexError, ValueError):
        return 0


def check_window() -> None:
    """Release now if the active releaser's window is exceeded (no-op without one).

    Readers that map many pages in one call (a halo gather maps one 4 KiB page per
    random row) call this after each bounded chunk, so the window is kept between
    chunks and not only at the poller's next tick.
    """
    with _LOCK:
        active = _ACTIVE[-1] if _ACTIVE else None
    if active is not None:
        active.check()


class MappedPageReleaser:
    """Daemon thread: whenever our maps' RSS exceeds ``window_bytes``, release registered maps.

    Mapped RSS also counts the pages of shared libraries, which no release drops; they
    are measured after each release (the *floor*) and the window counts from there.
    Before, a window smaller than the libraries (120 MB at a 1.5 GB budget, against ~130 MB
    of torch's code pages) released every registered map at every poll.

    Pages are released once mapped RSS passes *half* the window: the other half is
    room for what readers map before the next check.  The poller alone let concurrent
    gathers overshoot by ~0.5 GB over a 320 MB window (4 threads; every random row maps
    ~48 KiB through the kernel's fault-around); with :func:`check_window` after every
    bounded gather chunk, the overshoot is at most one chunk per gathering thread.  Use
    as a context manager around training or an evaluation sweep.
    """

    def __init__(self, window_bytes: int, interval: float = 0.02) -> None:
        self.interval = interval
        self.set_window(window_bytes)
        self.releases = 0
        #: file pages no release can drop (shared libraries: ~130 MB with torch loaded), re-read
        #: after every release; the window counts what our own memmaps map on top of them
        self.floor = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def set_window(self, window_bytes: int) -> None:
        """Change the window (the trainer sizes it once its memory plan knows what the engine maps)."""
        self.window = int(window_bytes)
        self.threshold = self.window // 2

    def check(self) -> bool:
        """Release now if our maps pass the release threshold (half the window); True if it did."""
        if mapped_rss() - self.floor <= self.threshold:
            return False
        release_mapped_pages()
        self.floor = mapped_rss()
        self.releases += 1
        return True

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.check()

    def __enter__(self) -> "MappedPageReleaser":
        if self._thread is None and hasattr(mmap, "MADV_DONTNEED"):
            release_mapped_pages()
            self.floor = mapped_rss()
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="oocgnn-page-release", daemon=True)
            self._thread.start()
            with _LOCK:
                _ACTIVE.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        with _LOCK:
            if self in _ACTIVE:
                _ACTIVE.remove(self)
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        log.debug("mapped-page releaser: %d releases (window %d bytes)", self.releases, self.window)
