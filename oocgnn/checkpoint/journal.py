"""Undo journal that keeps on-disk history tables consistent with checkpoints.

Why: a history table is ``[N, H]`` on disk (57 GB per layer on papers100M), far
too big to copy at each checkpoint, yet pushes overwrite it in place between
checkpoints.  So before a push overwrites a row *for the first time since the
last checkpoint*, the row's old value and old last-push step are appended to a
journal segment ``RUN/histories/journal-{seq}.bin``; replaying the segments
written since checkpoint ``seq`` (newest first) restores the tables exactly, bit
for bit, to that checkpoint.  Journal volume per interval = rows pushed in it,
once each (a row-level bitmap, 1 byte/row/table, says what is already saved).

Ordering is what makes this crash-safe: the record is written (and, with
``fsync=True``, made durable) *before* the table rows are written, and it happens
on the history writer thread, off the training thread.  A record torn by a crash
is detected (length + CRC32) and ignored: its push had not started landing.

Tables are preallocated (``posix_fallocate``) so a write into the memmap never
needs new disk blocks: ENOSPC can only surface here, as an ordinary ``OSError``
on the journal append, before any table row changed, never as SIGBUS.

The per-row last-push steps also live on disk (``layer_{i}.steps.npy``, int64),
written by the same thread right after the rows land, so staleness bookkeeping
rolls back with the tables.
"""
from __future__ import annotations

import contextlib
import logging
import os
import struct
import threading
import zlib
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from oocgnn.errors import RunDirError, translate_os_error
from oocgnn.checkpoint import faults
from oocgnn.utils.atomic import fsync_dir

log = logging.getLogger(__name__)

SEG_MAGIC = b"OOCGNNJ1"
SEG_HEADER = struct.Struct("<8sQ")          # magic, segment seq
REC_MAGIC = b"OUJR"
REC_HEADER = struct.Struct("<4sIIQII")      # magic, table, channels, rows, itemsize, crc32(payload)


def segment_path(directory: Path, seq: int) -> Path:
    return directory / f"journal-{seq:08d}.bin"


def list_segments(directory: Path) -> dict[int, Path]:
    out = {}
    for p in directory.glob("journal-*.bin"):
        try:
            out[int(p.stem.split("-", 1)[1])] = p
        except ValueError:
            continue
    return out


def preallocate(path: Path) -> None:
    """Reserve the blocks of an existing file so memmap writes never hit ENOSPC/SIGBUS."""
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
    except OSError as exc:
        raise translate_os_error(exc, path, "allocating") from exc
    finally:
        os.close(fd)


def open_steps(path: Path, num_nodes: int) -> np.memmap:
    """The durable last-push-step array of one table (created as all -1)."""
    if path.exists():
        try:
            arr = np.load(path, mmap_mode="r+")
        except (ValueError, OSError) as exc:
            raise RunDirError(f"history step file {path} is damaged ({exc}); start over with --overwrite") from None
        if arr.shape != (num_nodes,) or arr.dtype != np.int64:
            raise RunDirError(f"history step file {path} has shape {arr.shape} {arr.dtype}, expected ({num_nodes},) "
                              f"int64; start over with --overwrite")
        return arr
    try:
        arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.int64, shape=(num_nodes,))
        arr[:] = -1
        arr.flush()
    except OSError as exc:
        raise translate_os_error(exc, path, "creating") from exc
    return arr


class UndoJournal:
    """Journal of first overwrites per checkpoint interval, for one :class:`HistorySet`.

    ``tables`` are objects with an ``.array`` (``[N, H]`` memmap); ``steps`` the
    matching durable step arrays.  The history writer calls :meth:`before_land`
    and :meth:`after_land` around each push; the checkpoint code calls
    :meth:`sync` (before saving) and :meth:`rotate` (after the checkpoint is
    complete); resume calls :meth:`rollback`.  Extra tables (VISAGNN's staleness-loss
    table) may follow the history tables in ``tables``; their owner calls
    :meth:`before_land` / :meth:`after_land` from the training thread, so both hold a lock.
    """

    def __init__(self, directory: str | Path, tables: Sequence[Any], steps: Sequence[np.ndarray], seq: int,
                 fsync: bool = True) -> None:
        self.directory = Path(directory)
        self.tables, self.steps = list(tables), list(steps)
        self.fsync = fsync
        self.seq = seq
        self.saved = [np.zeros(len(s), dtype=bool) for s in self.steps]
        self.bytes_journaled = 0
        self.saving = True  #: False inside :meth:`not_saving`
        self._fd: int | None = None
        self._lock = threading.Lock()
        self._open_segment(seq)

    # ----------------------------------------------------------- segments
    def _open_segment(self, seq: int) -> None:
        path = segment_path(self.directory, seq)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.write(fd, SEG_HEADER.pack(SEG_MAGIC, seq))
            os.fsync(fd)
            fsync_dir(self.directory)
        except OSError as exc:
            raise translate_os_error(exc, path, "creating the history journal") from exc
        self._fd, self.seq = fd, seq

    def rotate(self, new_seq: int, keep_from: int) -> None:
        """Start segment ``new_seq`` (a checkpoint was just completed) and drop segments < ``keep_from``."""
        self.close()
        self._open_segment(new_seq)
        for s in self.saved:
            s[:] = False
        for seq, path in list_segments(self.directory).items():
            if seq < keep_from:
                path.unlink(missing_ok=True)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    # ----------------------------------------------------------- write path
    def before_land(self, tables: Sequence[int], ids: np.ndarray) -> None:
        """Save the current value of rows ``ids`` of ``tables`` not yet saved in this segment."""
        with self._lock:
            self._before_land(tables, ids)
        faults.maybe_crash("push-journaled")

    @contextlib.contextmanager
    def not_saving(self) -> Iterator[None]:
        """Land pushes without saving the rows they overwrite; their steps are still recorded.

        For the fill before step 0 (``--fill-histories``): it computes every row of every
        table from the store and parameters alone, deterministically, and any resume that
        rolls back to before it runs it again, so its old rows are never needed; saving
        them copied every table into the journal (6.4 GB at 50 M nodes, fsynced per push).
        The caller lands every push (a flush) before the block ends.
        """
        self.saving = False
        try:
            yield
        finally:
            self.saving = True

    def _before_land(self, tables: Sequence[int], ids: np.ndarray) -> None:
        if not self.saving:
            return
        wrote = False
        for t in tables:
            fresh = ids[~self.saved[t][ids]]
            if len(fresh) == 0:
                continue
            arr = self.tables[t].array
            old = np.ascontiguousarray(arr[fresh])
            old_steps = np.ascontiguousarray(self.steps[t][fresh])
            payload = fresh.astype(np.int64).tobytes() + old_steps.tobytes() + old.tobytes()
            header = REC_HEADER.pack(REC_MAGIC, t, arr.shape[1], len(fresh), arr.dtype.itemsize, zlib.crc32(payload))
            self._append(header + payload)
            self.saved[t][fresh] = True
            wrote = True
        if wrote and self.fsync:
            os.fsync(self._fd)

    def _append(self, data: bytes) -> None:
        path = segment_path(self.directory, self.seq)
        try:
            faults.maybe_fail("journal-write", path)
            view = memoryview(data)
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
        except OSError as exc:
            raise translate_os_error(exc, path, "journaling history rows to") from exc
        self.bytes_journaled += len(data)

    def after_land(self, tables: Sequence[int], ids: np.ndarray, step: int) -> None:
        """Record the push's step in the durable step arrays (after its rows landed)."""
        faults.maybe_crash("push-landed")
        with self._lock:
            for t in tables:
                self.steps[t][ids] = step

    def sync(self) -> None:
        """Make tables, step arrays and the journal durable (called before a checkpoint)."""
        for t in self.tables:
            if isinstance(t.array, np.memmap):
                t.array.flush()
        for s in self.steps:
            if isinstance(s, np.memmap):
                s.flush()
        if self._fd is not None:
            os.fsync(self._fd)


def read_segment(path: Path) -> list[tuple[int, np.ndarray, np.ndarray, bytes, int, int]]:
    """Records of one segment: (table, ids, old_steps, old_values_bytes, channels, itemsize).

    A damaged record at the tail is a torn append (its push never landed) and is
    dropped with a warning; damage followed by more records means the file was
    corrupted afterwards, which no rollback can repair.
    """
    data = path.read_bytes()
    if len(data) < SEG_HEADER.size or data[:8] != SEG_MAGIC:
        raise RunDirError(f"history journal {path} is damaged (bad header); the histories cannot be restored, "
                          f"start over with --overwrite")
    out, off = [], SEG_HEADER.size
    while off < len(data):
        bad = None
        if off + REC_HEADER.size > len(data):
            bad = "truncated record header"
        else:
            magic, t, ch, n, isz, crc = REC_HEADER.unpack_from(data, off)
            end = off + REC_HEADER.size + n * 16 + n * ch * isz
            if magic != REC_MAGIC:
                bad = "bad record magic"
            elif end > len(data):
                bad = "truncated record"
            else:
                payload = data[off + REC_HEADER.size:end]
                if zlib.crc32(payload) != crc:
                    bad = "checksum mismatch"
        if bad is not None:
            if bad.startswith("truncated") or (bad == "checksum mismatch" and end == len(data)):
                log.warning("history journal %s: torn last record (%s) ignored; its push never landed", path, bad)
                break
            raise RunDirError(f"history journal {path} is corrupted at byte {off} ({bad}); the histories cannot be "
                              f"restored, start over with --overwrite")
        ids = np.frombuffer(payload, dtype=np.int64, count=n)
        steps = np.frombuffer(payload, dtype=np.int64, count=n, offset=n * 8)
        out.append((t, ids, steps, payload[n * 16:], ch, isz))
        off = end
    return out


def rollback(directory: Path, tables: Sequence[Any], steps: Sequence[np.ndarray], to_seq: int,
             only_seq: int | None = None, delete: bool = True) -> int:
    """Replay segments ``>= to_seq`` newest first, fsync, then drop them.

    Idempotent: a crash during rollback leaves the segments in place and the
    next resume replays them again to the same result.  ``only_seq`` replays just
    that segment and ``delete=False`` keeps them: several ranks sharing tables
    replay segment by segment in a global order, then drop theirs
    (:func:`drop_segments`).
    """
    segs = {s: p for s, p in list_segments(directory).items()
            if s >= to_seq and (only_seq is None or s == only_seq)}
    restored = 0
    for seq in sorted(segs, reverse=True):
        for t, ids, old_steps, raw, ch, isz in read_segment(segs[seq]):
            if t >= len(tables) or tables[t].array.shape[1] != ch or tables[t].array.dtype.itemsize != isz:
                raise RunDirError(f"history journal {segs[seq]} does not match the history tables; "
                                  f"start over with --overwrite")
            arr = tables[t].array
            arr[ids] = np.frombuffer(raw, dtype=arr.dtype).reshape(len(ids), ch)
            steps[t][ids] = old_steps
            restored += len(ids)
    for t in tables:
        if isinstance(t.array, np.memmap):
            t.array.flush()
    for s in steps:
        if isinstance(s, np.memmap):
            s.flush()
    if delete:
        drop_segments(directory, to_seq)
    return restored


def drop_segments(directory: Path, from_seq: int) -> None:
    """Delete the segments ``>= from_seq`` (after they were replayed)."""
    segs = {s: p for s, p in list_segments(directory).items() if s >= from_seq}
    for seq in sorted(segs, reverse=True):
        segs[seq].unlink()
    if segs:
        fsync_dir(directory)
