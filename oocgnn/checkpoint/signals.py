"""SIGINT/SIGTERM: ask the loop to stop at the next step boundary instead of dying.

Why: a preempted job (SLURM, Kubernetes, a reboot) gets SIGTERM and a grace
period.  Raising ``KeyboardInterrupt`` from inside a push or a checkpoint write
would leave half-landed state behind; instead the handler only sets a flag that
the training loop checks between steps, which then writes a checkpoint and exits
with :data:`EXIT_PREEMPTED`.  A second signal restores the default action, so
pressing Ctrl-C twice still kills at once (and resume still works: that is the
kill -9 path).
"""
from __future__ import annotations

import logging
import signal
import threading

from oocgnn.errors import OocgnnError

log = logging.getLogger(__name__)

#: Exit code after a clean stop on SIGINT/SIGTERM with a checkpoint written
#: (EX_TEMPFAIL: "try again later", distinct from errors (2), ENOSPC (28), 130).
EXIT_PREEMPTED = 75


class Preempted(OocgnnError):
    """The run stopped on a signal after writing a checkpoint; re-run to resume."""

    exit_code = EXIT_PREEMPTED


class StopFlag:
    """Installs SIGINT/SIGTERM handlers that record the signal; restores them on exit."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""

    def _handle(self, signum: int, frame: object) -> None:
        self.signum = signum
        log.warning("%s received: finishing the current step, then writing a checkpoint "
                    "(send it again to abort at once)", signal.Signals(signum).name)
        for s in self.SIGNALS:  # a second signal acts immediately
            signal.signal(s, self._old.get(s, signal.SIG_DFL))

    def install(self) -> "StopFlag":
        if threading.current_thread() is not threading.main_thread():
            return self  # signal handlers can only be set from the main thread
        for s in self.SIGNALS:
            self._old[s] = signal.getsignal(s)
            signal.signal(s, self._handle)
        return self

    def restore(self) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)  # type: ignore[arg-type]
        self._old.clear()
