"""REST schedules: which batches train and which only refresh the histories.

REST (Xue et al. 2024) runs forward-only passes that push every history table
``F`` times as often as parameter updates, so histories age ~F x less in
optimizer steps.  The paper's exact loop is not public; both readings of
``shared/design/algorithms.md`` are offered (**our choice**, named ``--rest-loop``):

``extra``
    every batch of the epoch plan trains (forward + backward + step); after the
    training step at global step ``g`` come ``n(g) = floor((g+1)(F-1)) -
    floor(g(F-1))`` forward-only passes, so a fractional ``F`` averages out.
    Refresh batches come from a separate queue: round-robin over *all*
    partitions (label-free ones included), reshuffled every cycle
    (``rest``), or drawn by importance x age (``rest-is``, see
    :mod:`oocgnn.staleness.importance`).
``interleave``
    batches in epoch-plan order; position ``i`` trains iff
    ``floor((i+1)/F) > floor(i/F)`` (every F-th for integer F), the others are
    forward-only.  Fewer optimizer steps per epoch; no refresh queue.

With ``F = 1`` both loops yield exactly the GAS epoch (every batch trains, in
plan order).  Everything here is a pure function of the seed and a small
explicit state (:class:`ScheduleState`: position in the epoch, refreshes still
owed after the last step, refresh cursor, global step) plus the per-partition
last-push step, so the whole remaining epoch can be *simulated* ahead: that list
is what the prefetcher reads ahead, and a resumed run recomputes the identical
remainder from the restored state.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from oocgnn.batching import Action, RankSplit, group_ranges
from oocgnn.errors import ConfigError
from oocgnn.staleness.importance import draw_refresh_parts

_EPS = 1e-9
_REFRESH_STREAM = 0x5E57  # separates the refresh queue's RNG stream from the epoch plan's


@dataclass
class ScheduleState:
    """The schedule's part of the trainer state (saved with it, needed by resume)."""

    position: int = 0        #: index of the next epoch-plan batch to process
    pending: int = 0         #: refreshes still owed after the last training step (``extra``)
    cursor: int = 0          #: refresh batches drawn so far (the refresh queue position)
    global_step: int = 0     #: optimizer steps so far (push clock)


def refreshes_after_step(step: int, f: float) -> int:
    """``n(g)``: forward-only passes after the training step at global step ``step``."""
    extra = f - 1.0
    return int(math.floor((step + 1) * extra + _EPS) - math.floor(step * extra + _EPS))


def interleave_trains(position: int, f: float) -> bool:
    """Whether epoch position ``position`` trains under the ``interleave`` loop."""
    return math.floor((position + 1) / f + _EPS) > math.floor(position / f + _EPS)


class RefreshSchedule:
    """Builds the action list of an epoch for one run's method / loop / F / seed.

    ``importance`` (per-partition REST-IS importance, :func:`partition_importance`)
    is required for ``method="rest-is"``.  ``uniform_mix`` is the share of the
    REST-IS draw probability spread uniformly so no partition starves.
    """

    def __init__(self, num_partitions: int, parts_per_batch: int, seed: int, method: str = "gas",
                 refresh_per_step: float = 1.0, loop: str = "extra",
                 importance: np.ndarray | None = None, uniform_mix: float = 0.1,
                 split: RankSplit = RankSplit()) -> None:
        if refresh_per_step < 1.0:
            raise ConfigError(f"--refresh-per-step must be >= 1, got {refresh_per_step}")
        if loop not in ("extra", "interleave"):
            raise ConfigError(f"--rest-loop {loop!r}: choose extra or interleave")
        if method == "gas" and refresh_per_step != 1.0:
            raise ConfigError("--refresh-per-step > 1 needs --method rest, rest-is or visagnn (gas never refreshes)")
        if method == "rest-is" and loop != "extra":
            raise ConfigError("--method rest-is needs --rest-loop extra (interleave has no refresh queue to order)")
        if method == "rest-is" and importance is None:
            raise ConfigError("--method rest-is needs partition importance (internal: pass importance=)")
        if not 0.0 <= uniform_mix <= 1.0:
            raise ConfigError(f"--rest-is-uniform must be in [0, 1], got {uniform_mix}")
        self.num_partitions, self.parts_per_batch = int(num_partitions), int(parts_per_batch)
        self.seed, self.method, self.f, self.loop = int(seed), method, float(refresh_per_step), loop
        self.importance = None if importance is None else np.asarray(importance, dtype=np.float64)
        self.uniform_mix = float(uniform_mix)
        self.split = split  #: this rank's share of each epoch plan (one process: the whole plan)
        self.batches_per_cycle = math.ceil(self.num_partitions / self.parts_per_batch)

    # ------------------------------------------------------------ refresh queue
    def queue_parts(self, cursor: int) -> tuple[int, ...]:
        """Plain REST: the ``cursor``-th refresh batch (round-robin, reshuffled per cycle)."""
        cycle, idx = divmod(int(cursor), self.batches_per_cycle)
        order = np.random.default_rng((self.seed, _REFRESH_STREAM, cycle)).permutation(self.num_partitions)
        group = order[idx * self.parts_per_batch:(idx + 1) * self.parts_per_batch]
        return tuple(int(p) for p in np.sort(group))

    def draw(self, cursor: int, part_last: np.ndarray, step: int) -> tuple[int, ...]:
        """The ``cursor``-th refresh batch given per-partition last-push steps at ``step``."""
        if self.method != "rest-is":
            return self.queue_parts(cursor)
        rng = np.random.default_rng((self.seed, _REFRESH_STREAM, 1, int(cursor)))
        return draw_refresh_parts(self.importance, part_last, step, self.parts_per_batch, rng, self.uniform_mix)

    # ------------------------------------------------------------------- epochs
    def epoch_groups(self, epoch: int) -> list[tuple[int, ...]]:
        return [tuple(int(p) for p in g)
                for g in self.split.groups(self.num_partitions, self.parts_per_batch, self.seed, epoch)]

    def plan(self, epoch: int, state: ScheduleState, part_last: np.ndarray,
             partition_ptr: np.ndarray) -> list[Action]:
        """Remaining actions of ``epoch`` from ``state``, simulated exactly.

        ``part_last`` (per-partition last-push step, -1 = never) is copied, not
        modified; the simulation applies the pushes the actions will make (a
        training step at ``g`` pushes with step ``g``, refreshes after it with
        ``g + 1``), which is all that changes ages during an epoch.
        """
        groups = self.epoch_groups(epoch)
        last = np.array(part_last, dtype=np.int64, copy=True)
        st = replace(state)
        out: list[Action] = []

        def emit(kind: str, parts: tuple[int, ...]) -> None:
            out.append(Action(kind, parts, group_ranges(partition_ptr, np.asarray(parts, dtype=np.int64))))

        if self.loop == "interleave":
            for i in range(st.position, len(groups)):
                train = interleave_trains(i, self.f)
                emit("train" if train else "refresh", groups[i])
            return out
        while True:
            while st.pending > 0:
                parts = self.draw(st.cursor, last, st.global_step)
                emit("refresh", parts)
                last[list(parts)] = st.global_step
                st.cursor += 1
                st.pending -= 1
            if st.position >= len(groups):
                return out
            emit("train", groups[st.position])
            last[list(groups[st.position])] = st.global_step
            st.pending = refreshes_after_step(st.global_step, self.f)
            st.global_step += 1
            st.position += 1

    def advance(self, state: ScheduleState, action: Action) -> None:
        """Update ``state`` after ``action`` ran (mirror of :meth:`plan`'s simulation)."""
        if self.loop == "interleave":
            state.position += 1
            if action.kind == "train":
                state.global_step += 1
            return
        if action.kind == "train":
            state.pending = refreshes_after_step(state.global_step, self.f)
            state.global_step += 1
            state.position += 1
        else:
            state.cursor += 1
            state.pending -= 1

    def end_epoch(self, state: ScheduleState) -> None:
        """Start of the next epoch: position back to 0 (cursor and step carry over)."""
        state.position = 0


def partition_last_step(last_step: np.ndarray, partition_ptr: np.ndarray) -> np.ndarray:
    """Per-partition last-push step from a per-row one (pushes cover whole partitions).

    Takes the minimum over each partition's rows, so a partially written partition
    counts as old; cheap: one pass over an int64[N] array already in RAM.
    """
    ptr = np.asarray(partition_ptr, dtype=np.int64)
    sizes = np.diff(ptr)
    out = np.full(len(sizes), -1, dtype=np.int64)
    nonempty = sizes > 0
    if len(last_step) and nonempty.any():
        out[nonempty] = np.minimum.reduceat(np.asarray(last_step), ptr[:-1][nonempty])
    return out
