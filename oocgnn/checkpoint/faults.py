"""Fault injection at named points, for crash and full-disk tests of real runs.

Why: "kill -9 during a checkpoint write" or "ENOSPC during a push" are windows of
microseconds; polling from outside cannot hit them reliably.  A test sets
``OOCGNN_CRASH_AT=point:n`` (SIGKILL ourselves the n-th time ``point`` is
reached) or ``OOCGNN_FAIL_AT=point:n`` (raise ENOSPC there) in the environment of
a real ``oocgnn train`` subprocess; with several ranks, ``OOCGNN_CRASH_RANK=r``
limits the crash to rank ``r``.  Unset (always, outside tests) each call is one
dict lookup.

Points: ``push-journaled`` (journal record written, rows not yet landed),
``push-landed`` (rows landed, step array not yet), ``ckpt-files`` (checkpoint
files written in the temp dir), ``ckpt-renamed`` (renamed, COMPLETE not yet
written), ``journal-write`` / ``ckpt-write`` (fail points).
"""
from __future__ import annotations

import errno
import os
import signal

_counts: dict[str, int] = {}


def _parse(var: str) -> tuple[str, int] | None:
    spec = os.environ.get(var)
    if not spec:
        return None
    name, _, n = spec.partition(":")
    return name, int(n or 1)


_CRASH = _parse("OOCGNN_CRASH_AT")
if _CRASH is not None and os.environ.get("OOCGNN_CRASH_RANK", os.environ.get("RANK")) != os.environ.get("RANK"):
    _CRASH = None  # another rank's crash
_FAIL = _parse("OOCGNN_FAIL_AT")


def _hit(spec: tuple[str, int] | None, point: str) -> bool:
    if spec is None or spec[0] != point:
        return False
    _counts[point] = _counts.get(point, 0) + 1
    return _counts[point] >= spec[1]


def maybe_crash(point: str) -> None:
    """SIGKILL this process at the configured hit of ``point`` (no cleanup at all)."""
    if _hit(_CRASH, point):
        os.kill(os.getpid(), signal.SIGKILL)


def maybe_fail(point: str, path: object = "") -> None:
    """Raise ENOSPC from the configured hit of ``point`` on (the disk stays full)."""
    if _FAIL is not None and _FAIL[0] == point and (_hit(_FAIL, point) or _counts.get(point, 0) >= _FAIL[1]):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
