"""``oocgnn train --nproc-per-node N``: start N ranks of the same command on this host and watch them.

What torchrun does for a single host, kept small: every rank is this same
command with ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``LOCAL_WORLD_SIZE``,
``MASTER_ADDR`` and ``MASTER_PORT`` in its environment (so ``torchrun`` can start
the same entry point across hosts instead).  Why not torchrun here: users of one
workstation should not need a second launcher, and a failed rank must end the
run with one line, not a page of elastic-agent tracebacks.

Failure: when a rank exits non-zero or is killed, the others are killed at once
(their last checkpoint is consistent on disk: the history journal makes kill -9
safe) and the launcher exits non-zero naming the rank; re-running the command
resumes.  SIGINT / SIGTERM to the launcher are forwarded once to every rank, which
checkpoint at the same step and stop.  Ranks die with the launcher (``PR_SET_PDEATHSIG``).
"""
from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import time

from oocgnn.checkpoint.signals import EXIT_PREEMPTED

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
#: set in the environment of the ranks the launcher starts (they see --nproc-per-node too)
LAUNCHED_ENV = "OOCGNN_LAUNCHED_RANK"
_POLL_S = 0.1


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the launcher dies (Linux), so no rank trains orphaned."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def _describe(code: int) -> str:
    if code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with status {code}"


def launch(argv: list[str], nproc: int) -> int:
    """Run ``oocgnn <argv>`` as ``nproc`` ranks; 0 when all succeed, else the first failure's status."""
    port = free_port()
    threads = max(1, (os.cpu_count() or 1) // nproc)
    procs: list[subprocess.Popen] = []
    for rank in range(nproc):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(nproc),
                   LOCAL_WORLD_SIZE=str(nproc), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                   OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", str(threads)), **{LAUNCHED_ENV: "1"})
        procs.append(subprocess.Popen([sys.executable, "-m", "oocgnn.cli.main", *argv], env=env,
                                      start_new_session=True, preexec_fn=_die_with_parent))
    log.info("started %d ranks (pids %s); rank 0 reports progress", nproc, " ".join(str(p.pid) for p in procs))
    forwarded = []

    def forward(signum: int, frame: object) -> None:
        if forwarded:  # a second signal: stop now
            for p in procs:
                if p.poll() is None:
                    p.kill()
            return
        forwarded.append(signum)
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while True:
            codes = [p.poll() for p in procs]
            # after a forwarded signal every rank checkpoints and exits EXIT_PREEMPTED: that is no failure
            failed = [(r, c) for r, c in enumerate(codes)
                      if c not in (None, 0) and not (forwarded and c == EXIT_PREEMPTED)]
            if failed:
                rank, code = failed[0]
                for p in procs:
                    if p.poll() is None:
                        p.kill()
                for p in procs:
                    p.wait()
                # status 2 is a user error the rank already printed in one line: resuming would not help
                advice = ("fix what its message above says" if code == 2 else
                          "re-run the same command to resume from the last checkpoint")
                print(f"oocgnn train: error: rank {rank} {_describe(code)}; stopped the other ranks; {advice}",
                      file=sys.stderr)
                return code if code > 0 else 128 - code
            if all(c is not None for c in codes):
                bad = [c for c in codes if c != 0]
                return bad[0] if bad else 0
            time.sleep(_POLL_S)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
