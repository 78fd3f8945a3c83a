"""Checkpoint directories: temp dir, fsync, rename, COMPLETE marker; keep the last k.

Why this shape (torchtitan's): a checkpoint counts only once its ``COMPLETE``
marker exists, and the marker carries a format version plus the size and
SHA-256 of every file, so a torn write (crash between rename and marker) and a
later corruption (bit flip, truncation) are both detected on load and the
previous checkpoint is used instead.  Layout::

    RUN/checkpoints/step-N/state.pt    torch.save of the trainer state (+ RNGs)
    RUN/checkpoints/step-N/meta.json   step, epoch, position, seq, history layout
    RUN/checkpoints/step-N/COMPLETE    {"format_version", "seq", "files": {...}}

``seq`` numbers checkpoints monotonically (two checkpoints can share a step: a
stop at an epoch's last batch and the epoch-end one after evaluation); it orders
them and names the history-journal segment that starts at each.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from oocgnn.checkpoint import faults
from oocgnn.errors import OocgnnError, RunDirError, translate_os_error
from oocgnn.utils.atomic import atomic_write_json, fsync_dir, read_json

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
COMPLETE = "COMPLETE"
STATE = "state.pt"
META = "meta.json"


@dataclass
class CheckpointInfo:
    path: Path
    seq: int
    step: int
    meta: dict[str, Any]


class InvalidCheckpoint(Exception):
    """Why one checkpoint directory cannot be used (internal; turned into warnings)."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _write_file(path: Path, data: bytes) -> None:
    faults.maybe_fail("ckpt-write", path)
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


class CheckpointStore:
    """The ``RUN/checkpoints`` folder: save, verify, find the newest usable, prune."""

    def __init__(self, run_dir: str | Path, keep: int = 2) -> None:
        if keep < 2:
            raise ValueError("keep must be >= 2 so a corrupted newest checkpoint has a fallback")
        self.dir = Path(run_dir) / "checkpoints"
        self.keep = keep

    # ------------------------------------------------------------ listing
    def clean_temp(self) -> None:
        """Remove temp/trash dirs left by a crash mid-save (never counted as checkpoints)."""
        if not self.dir.is_dir():
            return
        for p in self.dir.iterdir():
            if p.name.startswith((".tmp-", ".trash-")):
                shutil.rmtree(p, ignore_errors=True)

    def directories(self) -> list[Path]:
        if not self.dir.is_dir():
            return []
        return [p for p in self.dir.iterdir() if p.is_dir() and p.name.startswith("step-")]

    def verify(self, path: Path) -> CheckpointInfo:
        """Check marker, version and file checksums; raises :class:`InvalidCheckpoint`."""
        marker = path / COMPLETE
        if not marker.exists():
            raise InvalidCheckpoint("no COMPLETE marker (torn write)")
        try:
            done = read_json(marker)
            meta = read_json(path / META)
        except (OSError, ValueError) as exc:
            raise InvalidCheckpoint(f"unreadable marker or meta ({exc})") from None
        if done.get("format_version") != FORMAT_VERSION:
            raise InvalidCheckpoint(f"format version {done.get('format_version')} != {FORMAT_VERSION}")
        for name, want in done.get("files", {}).items():
            f = path / name
            if not f.exists():
                raise InvalidCheckpoint(f"{name} missing")
            if f.stat().st_size != want["size"]:
                raise InvalidCheckpoint(f"{name} has {f.stat().st_size} bytes, expected {want['size']}")
            if _sha256(f) != want["sha256"]:
                raise InvalidCheckpoint(f"{name} checksum mismatch")
        if STATE not in done.get("files", {}):
            raise InvalidCheckpoint(f"{STATE} not listed in the marker")
        return CheckpointInfo(path, int(done["seq"]), int(meta["step"]), meta)

    def scan(self) -> tuple[CheckpointInfo | None, list[tuple[Path, str, bool]]]:
        """Newest valid checkpoint, plus ``(path, reason, had_marker)`` of every invalid one."""
        valid: list[CheckpointInfo] = []
        invalid: list[tuple[Path, str, bool]] = []
        for p in self.directories():
            try:
                valid.append(self.verify(p))
            except InvalidCheckpoint as exc:
                invalid.append((p, str(exc), (p / COMPLETE).exists()))
        valid.sort(key=lambda i: i.seq)
        return (valid[-1] if valid else None), invalid

    def discard(self, path: Path, reason: str) -> None:
        log.warning("checkpoint %s is unusable (%s); skipped and removed in favour of an older one", path, reason)
        shutil.rmtree(path, ignore_errors=True)

    # ------------------------------------------------------------ saving
    def save(self, seq: int, step: int, state: bytes, meta: dict[str, Any]) -> CheckpointInfo:
        """Write checkpoint ``seq`` at ``step``: temp dir, fsync, rename, COMPLETE marker.

        On any failure the temp dir is removed and the previous checkpoints are
        untouched; ENOSPC becomes :class:`DiskFullError`.
        """
        self.dir.mkdir(parents=True, exist_ok=True)
        final = self.dir / f"step-{step}"
        tmp = self.dir / f".tmp-step-{step}-{os.getpid()}"
        trash = self.dir / f".trash-step-{step}-{os.getpid()}"
        meta = dict(meta, step=step, seq=seq)
        try:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            files = {STATE: state, META: (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode()}
            for name, data in files.items():
                _write_file(tmp / name, data)
            fsync_dir(tmp)
            faults.maybe_crash("ckpt-files")
            if final.exists():  # same step saved before (stop at an epoch's last batch, then epoch end)
                os.replace(final, trash)
            os.replace(tmp, final)
            fsync_dir(self.dir)
            faults.maybe_crash("ckpt-renamed")
            marker = {"format_version": FORMAT_VERSION, "seq": seq, "step": step,
                      "files": {n: {"size": len(d), "sha256": hashlib.sha256(d).hexdigest()} for n, d in files.items()}}
            faults.maybe_fail("ckpt-write", final / COMPLETE)
            atomic_write_json(final / COMPLETE, marker)
        except OocgnnError:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise translate_os_error(exc, final, "writing checkpoint") from exc
        shutil.rmtree(trash, ignore_errors=True)
        return CheckpointInfo(final, seq, step, meta)

    def prune(self) -> int:
        """Keep the newest ``keep`` complete checkpoints; return the oldest kept seq."""
        infos = []
        for p in self.directories():
            try:
                done = read_json(p / COMPLETE)
                infos.append((int(done["seq"]), p))
            except (OSError, ValueError, KeyError):
                continue
        infos.sort()
        for _, p in infos[:-self.keep]:
            shutil.rmtree(p, ignore_errors=True)
        kept = infos[-self.keep:]
        return kept[0][0] if kept else 0


def load_state(info: CheckpointInfo) -> dict[str, Any]:
    """The trainer state saved in a verified checkpoint."""
    import torch

    try:
        with open(info.path / STATE, "rb") as f:
            return torch.load(f, map_location="cpu", weights_only=False)
    except Exception as exc:  # checksum passed, so this is a version/pickle problem
        raise RunDirError(f"cannot load {info.path / STATE} ({exc}); start over with --overwrite") from None
