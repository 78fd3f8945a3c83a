"""Crash-safe, resumable runs: checkpoints, the history undo journal, stop signals.

Public entry point: :class:`RunSession` (resume by default, checkpoints at step
intervals / time intervals / epoch ends, SIGINT/SIGTERM handling, final model).
Pieces: :mod:`.store` (checkpoint dirs with COMPLETE markers), :mod:`.journal`
(undo journal keeping on-disk histories consistent without copying them),
:mod:`.compat` (which options may change on resume), :mod:`.signals`,
:mod:`.faults` (test-only fault injection by environment variable).
"""
from oocgnn.checkpoint.signals import EXIT_PREEMPTED, Preempted, StopFlag
from oocgnn.checkpoint.store import CheckpointInfo, CheckpointStore
from oocgnn.checkpoint.session import CheckpointOptions, RunSession

__all__ = ["CheckpointInfo", "CheckpointOptions", "CheckpointStore", "EXIT_PREEMPTED", "Preempted", "RunSession",
           "StopFlag"]
