"""Typed, user-facing errors.

Every error a user can cause (bad input file, wrong flag, existing output, full
disk) is raised as an :class:`OocgnnError` whose message is one actionable line:
what is wrong, which file or flag, and what to do.  The CLI prints that line and
exits non-zero without a traceback; anything else is a bug and keeps its
traceback.  Each class also inherits the matching built-in so library callers can
catch ``FileNotFoundError`` or ``ValueError`` as usual (zarr-python's pattern).
"""
from __future__ import annotations

import errno


class OocgnnError(Exception):
    """Base class of errors caused by the user's input or environment."""

    exit_code: int = 2


class ConfigError(OocgnnError, ValueError):
    """A flag, config file or option combination is invalid."""


class InputError(OocgnnError, ValueError):
    """A source file (OGB download, raw dataset) is missing, truncated or malformed."""


class InputNotFoundError(InputError, FileNotFoundError):
    """A required input file or folder does not exist."""


class StoreError(OocgnnError, ValueError):
    """A dataset store is missing, unfinished, corrupted or of another version."""


class OutputExistsError(OocgnnError, FileExistsError):
    """The output path exists and is not something we may resume or reuse."""


class RunDirError(OocgnnError, ValueError):
    """A run directory is missing pieces, corrupted, or was made with other options."""


class ReadError(OocgnnError, OSError):
    """A file could not be read back: an I/O error, or it is shorter than its header says."""


class NonFiniteLossError(OocgnnError, ArithmeticError):
    """Training produced a NaN or infinite loss: the run stops before the step corrupts the model."""


class PeerStopped(OocgnnError):
    """Another rank of a distributed run stopped with an error it already reported (this rank stays quiet)."""

    quiet = True


class DeviceMemoryError(OocgnnError, MemoryError):
    """The GPU ran out of memory mid-run although the memory plan admitted the batch."""


class DiskFullError(OocgnnError, OSError):
    """The disk filled up while writing; what was complete before is intact."""

    exit_code = 28


def translate_os_error(exc: OSError, path: object, action: str) -> OocgnnError | OSError:
    """Map an ``OSError`` raised while writing ``path`` to a user-facing error.

    ENOSPC / EDQUOT become :class:`DiskFullError`; others are returned unchanged so
    the caller re-raises the original.
    """
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFullError(
            f"disk full while {action} {path}: free space on that filesystem and re-run "
            f"the same command to resume"
        )
    return exc
