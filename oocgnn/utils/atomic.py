"""Crash-safe file writing: temp file, fsync, rename, fsync the directory.

Readers of anything we persist trust only files that reached their final name,
so a crash or a full disk leaves either the old content or nothing, never a
half-written file under the real name.
"""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Iterator

from oocgnn.errors import translate_os_error


def fsync_dir(path: str | os.PathLike) -> None:
    """fsync a directory so a rename inside it survives power loss."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, action: str = "writing") -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success fsync it, rename it to
    ``path`` and fsync the directory.  On any failure the temp file is removed
    (ENOSPC becomes a :class:`~oocgnn.errors.DiskFullError`), so ``path`` holds
    either its old content or the complete new one.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise translate_os_error(exc, path, action) from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp + fsync + rename)."""
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as pretty JSON to ``path`` atomically."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file written by :func:`atomic_write_json`."""
    with open(path, "rb") as f:
        return json.loads(f.read())
