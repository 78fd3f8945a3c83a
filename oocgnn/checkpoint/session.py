"""Resume-by-default glue between a run directory and a :class:`Trainer`.

Why a separate object: the trainer stays a pure "state + step" machine; this
class owns everything about persistence across processes, and the training loop
only calls four hooks (``prepare`` before the trainer exists, ``attach`` once it
does, ``after_step`` / ``after_epoch`` at the boundaries where state is
consistent, ``finish`` at the end).

Consistency protocol at a checkpoint (seq ``s``):

1. land every queued push, msync tables and step arrays, fsync the journal;
2. write ``checkpoints/step-N`` (temp dir, fsync, rename, COMPLETE marker);
3. prune to the last k, start journal segment ``s`` and drop segments older
   than the oldest kept checkpoint.

On resume from checkpoint ``s``: replay segments ``>= s`` newest first (undo),
load the trainer state, truncate ``metrics.jsonl`` to its length at ``s``.

Several ranks (:mod:`oocgnn.train.dist`): rank 0 decides fresh start or resume and
writes the checkpoint (model, optimizer, state, plus every rank's RNG states);
each rank journals the history rows it writes (``histories/rank-R/`` for ranks > 0
sharing rank 0's tables; its own table folder on the cross-host path).  Whether to
checkpoint or stop is agreed by an all-reduce at every step, so all ranks save at
the same step.  Resume needs the same number of ranks (the epoch plan is split by it).
"""
from __future__ import annotations

import io
import logging
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from oocgnn.checkpoint import journal as jr
from oocgnn.checkpoint.compat import check_config, check_manifest, setup_determinism, write_manifest
from oocgnn.checkpoint.signals import Preempted, StopFlag
from oocgnn.checkpoint.store import CheckpointInfo, CheckpointStore, load_state
from oocgnn.device import cuda_rng_state, set_cuda_rng_state
from oocgnn.errors import ConfigError, OocgnnError, PeerStopped, RunDirError
from oocgnn.train.dist import SINGLE, DistContext
from oocgnn.utils.atomic import fsync_dir

log = logging.getLogger(__name__)

HISTORIES = "histories"
FINAL = "final"
#: files of a previous attempt that a fresh start (no usable checkpoint) removes
FRESH_START_REMOVES = ("histories", "metrics.jsonl", "best_model.pt", "predictions.npy", "final", "run.json")


@dataclass
class CheckpointOptions:
    every_steps: int = 0          #: checkpoint every N optimizer steps (0 = off)
    interval_s: float = 1800.0    #: and/or every this many seconds (0 = off)
    keep: int = 2                 #: complete checkpoints kept (>= 2)
    enabled: bool = True          #: False: no checkpoints, no journal, no resume
    deterministic: bool = False
    journal_fsync: bool = True    #: fsync each journal record before its rows land (power-loss safe)

    def __post_init__(self) -> None:
        if self.every_steps < 0:
            raise ConfigError(f"--checkpoint-every must be >= 0, got {self.every_steps}")
        if self.interval_s < 0:
            raise ConfigError(f"--checkpoint-interval must be >= 0, got {self.interval_s}")
        if self.keep < 2:
            raise ConfigError(f"--keep-checkpoints must be >= 2 (a fallback for a corrupted newest), got {self.keep}")


def _journaled_tables(trainer: Any) -> list[Any]:
    """History tables, then the trainer's other journaled tables (VISAGNN's staleness-loss table)."""
    extra = getattr(trainer, "journaled_tables", None)
    return [*trainer.histories.tables, *(extra() if extra is not None else [])]


def _history_layout(trainer: Any) -> list[dict[str, Any]]:
    """Files (relative to ``RUN/histories``; ``rank-R/...`` on the cross-host path), shapes and dtypes."""
    root = trainer.run_dir / HISTORIES if trainer.run_dir is not None else None
    return [{"file": t.path.relative_to(root).as_posix() if t.path is not None else None,
             "shape": list(t.array.shape), "dtype": str(t.array.dtype)} for t in _journaled_tables(trainer)]


def check_history_files(run_dir: Path, layout: list[dict[str, Any]]) -> None:
    """Missing, truncated or reshaped history tables -> one-line :class:`RunDirError`."""
    for entry in layout:
        if entry["file"] is None:
            continue
        for name, shape, dtype in ((entry["file"], entry["shape"], entry["dtype"]),
                                   (entry["file"].replace(".npy", ".steps.npy"), entry["shape"][:1], "int64")):
            path = run_dir / HISTORIES / name
            if not path.exists():
                raise RunDirError(f"history file {path} is missing; the run cannot be resumed, start over with "
                                  f"--overwrite")
            try:
                arr = np.load(path, mmap_mode="r")
            except (ValueError, OSError) as exc:
                raise RunDirError(f"history file {path} is damaged ({exc}); start over with --overwrite") from None
            if list(arr.shape) != list(shape) or str(arr.dtype) != dtype:
                raise RunDirError(f"history file {path} has shape {list(arr.shape)} {arr.dtype}, the checkpoint "
                                  f"expects {shape} {dtype}; start over with --overwrite")
            del arr


class RunSession:
    """Checkpoints, journal, resume and signal handling of one ``train`` invocation."""

    def __init__(self, run_dir: str | Path, opts: CheckpointOptions | None = None, dist: DistContext = SINGLE) -> None:
        self.run_dir = Path(run_dir)
        self.opts = opts or CheckpointOptions()
        self.dist = dist
        self.store = CheckpointStore(self.run_dir, self.opts.keep)
        self.resume_from: CheckpointInfo | None = None  #: rank 0 only
        self.resume_seq: int | None = None              #: every rank: the checkpoint resumed from
        self._stop_all = False                          #: some rank was asked to stop
        self.journal: jr.UndoJournal | None = None
        self.stop = StopFlag()
        self.seq = 0
        self.checkpoint_s = 0.0       #: time spent writing checkpoints (benchmarks)
        self.checkpoints_written = 0
        self._t_last = time.monotonic()
        self._step_last = 0
        self._prev_deterministic: bool | None = None

    # ------------------------------------------------------------ before the trainer
    def prepare(self, cfg: Any, ds: Any) -> CheckpointInfo | None:
        """Pick resume vs fresh start and validate the run dir, before any file is opened.

        Several ranks: rank 0 decides (and cleans a fresh start) while the others wait,
        then tells them which checkpoint to resume, or that it failed.
        """
        self._prev_deterministic = setup_determinism(self.opts.deterministic, cfg.io.staleness_bound)
        d = self.dist
        if not d.active:
            info = self._prepare_main(cfg, ds)
        elif d.is_main:
            try:
                info = self._prepare_main(cfg, ds)
            except OocgnnError as exc:
                d.broadcast_object(("error", str(exc)))
                raise
            d.broadcast_object(("ok", None if info is None else info.seq))
        else:
            status, value = d.broadcast_object(None)
            if status == "error":
                raise PeerStopped(f"rank 0 stopped: {value}")
            self.resume_seq = value
            return None
        self.resume_seq = None if info is None else info.seq
        return info

    def _prepare_main(self, cfg: Any, ds: Any) -> CheckpointInfo | None:
        if not self.opts.enabled:
            if self.store.directories():
                raise RunDirError(f"{self.run_dir} holds checkpoints of a run; resume it without --no-checkpoints, "
                                  f"or start over with --overwrite")
            return None
        self.store.clean_temp()
        info, invalid = self.store.scan()
        if info is None:
            if any(had_marker for _, _, had_marker in invalid):
                reasons = "; ".join(f"{p.name}: {r}" for p, r, _ in invalid)
                raise RunDirError(f"no usable checkpoint in {self.store.dir} ({reasons}); start over with --overwrite")
            for p, r, _ in invalid:
                self.store.discard(p, r)
            for name in FRESH_START_REMOVES:  # leftovers of an attempt killed before its first checkpoint
                p = self.run_dir / name
                if p.is_dir():
                    shutil.rmtree(p)
                elif p.exists():
                    p.unlink()
            write_manifest(self.run_dir, getattr(ds, "checksum", None))
            return None
        check_manifest(self.run_dir, getattr(ds, "checksum", None), cfg.data)
        ranks = int(info.meta.get("world_size", 1))
        if ranks != self.dist.world_size:
            raise RunDirError(f"{self.run_dir} was trained with {ranks} rank(s) and this command runs "
                              f"{self.dist.world_size}: resume with the same number of ranks (--nproc-per-node / "
                              f"torchrun), or start over with --overwrite")
        mode = info.meta.get("halo_exchange")
        if self.dist.active and mode != self.dist.exchange:
            raise RunDirError(f"{self.run_dir} was trained with --halo-exchange {mode} and this command uses "
                              f"{self.dist.exchange}: resume with --halo-exchange {mode}, or start over with --overwrite")
        from oocgnn.config import RunConfig, load_config

        cfg_path = self.run_dir / "config.toml"
        if not cfg_path.exists():
            raise RunDirError(f"{cfg_path} is missing, so the options of this run are unknown; start over with "
                              f"--overwrite")
        check_config(load_config(cfg_path).to_dict(), cfg.to_dict(), RunConfig().to_dict(), self.run_dir)
        if not cfg.io.in_memory:
            check_history_files(self.run_dir, info.meta.get("histories", []))
        for p, r, _ in invalid:  # newer torn/corrupt ones: their journal segments are replayed in attach()
            self.store.discard(p, r)
        self.resume_from = info
        return info

    # ------------------------------------------------------------ once the trainer exists
    def attach(self, trainer: Any) -> None:
        """Roll histories back to the chosen checkpoint, load its state, start journaling."""
        if not self.opts.enabled:
            return
        hs, d = trainer.histories, self.dist
        self.seq = self.resume_seq if self.resume_seq is not None else 0
        tables = _journaled_tables(trainer)
        on_disk = all(t.path is not None for t in tables)
        shared = d.shared_tables
        if on_disk and tables:
            hist_dir = tables[0].path.parent
            jdir = hist_dir / f"rank-{d.rank}" if shared and not d.is_main else hist_dir
            jdir.mkdir(parents=True, exist_ok=True)
            for turn in range(d.world_size if shared else 1):  # shared: rank 0 creates the step files first
                if not shared or turn == d.rank:
                    for t in tables:
                        jr.preallocate(t.path)
                    steps = [jr.open_steps(t.path.with_name(t.path.name.replace(".npy", ".steps.npy")), t.num_nodes)
                             for t in tables]
                    for s in steps:
                        jr.preallocate(Path(s.filename))
                if shared:
                    d.barrier()
            restored = self._rollback(jdir, tables, steps)
            if restored:
                log.info("history journal: restored %d rows to their state at the checkpoint", restored)
            for t in range(len(hs.tables)):
                hs.last_step[t][:] = steps[t]
            if shared:
                hs.landed_steps = steps[:len(hs.tables)]
            self.journal = jr.UndoJournal(jdir, tables, steps, self.seq, fsync=self.opts.journal_fsync)
            hs.journal = self.journal
            if len(tables) > len(hs.tables):
                trainer.attach_journal(self.journal, len(hs.tables), steps[len(hs.tables):])
        if self.resume_seq is not None:
            info = self.resume_from
            sd = d.broadcast_object(load_state(info) if d.is_main else None)
            trainer.load_state_dict(sd["trainer"])
            np.random.set_state(sd["numpy_rng"])
            random.setstate(sd["python_rng"])
            if d.active:  # every rank continues its own dropout stream
                rng = sd["rank_rng"][d.rank]
                torch.set_rng_state(rng["torch"])
                set_cuda_rng_state(trainer.device, rng.get("cuda"))
                np.random.set_state(rng["numpy"])
                random.setstate(rng["python"])
            if sd.get("best_model_state") is not None:
                trainer.best_model_state = sd["best_model_state"]
            if sd.get("memory_histories") is not None:
                for t, (arr, last) in enumerate(sd["memory_histories"]):
                    hs.tables[t].array[:] = arr
                    hs.last_step[t][:] = last
            st = trainer.state
            if d.is_main:
                self._truncate_metrics(int(info.meta.get("metrics_lines", 0)))
                log.info("resuming from checkpoint %s: step %d (epoch %d, batch %d of the epoch)",
                         info.path, st.global_step, st.epoch + 1, st.position)
        elif not on_disk:
            log.info("histories in RAM: checkpoints include them")
        self._step_last = trainer.state.global_step
        self._t_last = time.monotonic()
        self.stop.install()

    def _rollback(self, jdir: Path, tables: list[Any], steps: list[np.ndarray]) -> int:
        """Undo every journal segment since the checkpoint.

        Ranks sharing tables replay segment by segment, newest first, and within a
        segment rank 0 first: a row is written by two ranks between two checkpoints
        only when rank 0's evaluation sweep rewrites rows another rank trained, and that
        sweep comes after every training push of its epoch, so its records are the newest.
        """
        d = self.dist
        if not d.shared_tables:
            return jr.rollback(jdir, tables, steps, self.seq)
        mine = [s for s in jr.list_segments(jdir) if s >= self.seq]
        restored = 0
        for seq in sorted({s for seqs in d.gather_objects(mine) for s in seqs}, reverse=True):
            for turn in range(d.world_size):
                if turn == d.rank:
                    restored += jr.rollback(jdir, tables, steps, self.seq, only_seq=seq, delete=False)
                d.barrier()
        jr.drop_segments(jdir, self.seq)  # only once every rank replayed: a crash before replays them all again
        d.barrier()
        return restored

    def _truncate_metrics(self, lines: int) -> None:
        """Drop metric lines of epochs replayed after the checkpoint (they are re-appended)."""
        path = self.run_dir / "metrics.jsonl"
        if not path.exists():
            return
        keep = path.read_text(encoding="utf-8").splitlines(keepends=True)[:lines]
        tmp = path.with_name(".metrics.jsonl.tmp")
        tmp.write_text("".join(keep), encoding="utf-8")
        tmp.replace(path)
        fsync_dir(self.run_dir)

    # ------------------------------------------------------------ boundaries
    def after_step(self, trainer: Any) -> None:
        """Between two training steps: checkpoint when due or when a stop was requested."""
        step = trainer.state.global_step
        # REST refresh passes do not advance the step: checkpoint once per step, not after each of them
        due = self.opts.enabled and (
            (self.opts.every_steps > 0 and step % self.opts.every_steps == 0 and step != self._step_last) or
            (self.opts.interval_s > 0 and time.monotonic() - self._t_last >= self.opts.interval_s))
        due, self._stop_all = self.dist.any_of([due, self.stop.requested])
        if not self.opts.enabled:
            if self._stop_all:
                raise Preempted(f"stopped by {self.stop.name or 'another rank'} (checkpoints disabled, nothing saved)")
            return
        if due or self._stop_all:
            self.save(trainer)
        self._raise_if_stopped(trainer)

    def after_epoch(self, trainer: Any) -> None:
        """After an epoch's evaluation and metrics line: always checkpoint."""
        self._stop_all = self.dist.any_of([self.stop.requested])[0]
        if self.opts.enabled:
            self.save(trainer)
        self._raise_if_stopped(trainer)

    def _raise_if_stopped(self, trainer: Any) -> None:
        if self._stop_all:
            where = f" ({self.store.dir / f'step-{trainer.state.global_step}'})" if self.opts.enabled else ""
            by = self.stop.name or "a signal to another rank"
            raise Preempted(f"stopped by {by} at step {trainer.state.global_step} with a checkpoint{where}; re-run "
                            f"the same command to resume from there")

    def save(self, trainer: Any) -> CheckpointInfo | None:
        """Write a checkpoint of the trainer now (flushes pushes first)."""
        if not self.opts.enabled:
            return None
        t0 = time.perf_counter()
        d = self.dist
        hs = trainer.histories
        trainer.drain_exchange()
        hs.flush()
        if self.journal is not None:
            self.journal.sync()
        # every rank's RNG states; also the point where all ranks have synced their journals
        rank_rng = d.gather_objects({"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
                                     "python": random.getstate(), "cuda": cuda_rng_state(trainer.device)}
                                    ) if d.active else None
        seq = self.seq + 1
        info = None
        if d.is_main:
            extra = {"trainer": trainer.state_dict(), "numpy_rng": np.random.get_state(),
                     "python_rng": random.getstate(), "rank_rng": rank_rng,
                     "best_model_state": getattr(trainer, "best_model_state", None),
                     "memory_histories": None if self.journal is not None or not hs.tables else
                     [(t.array.copy(), ls.copy()) for t, ls in zip(hs.tables, hs.last_step)]}
            buf = io.BytesIO()
            torch.save(extra, buf)
            metrics = self.run_dir / "metrics.jsonl"
            st = trainer.state
            meta = {"epoch": st.epoch, "position": st.position, "histories": _history_layout(trainer),
                    "metrics_lines": len(metrics.read_bytes().splitlines()) if metrics.exists() else 0,
                    "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "world_size": d.world_size,
                    "halo_exchange": d.exchange if d.active else None}
            info = self.store.save(seq, st.global_step, buf.getvalue(), meta)
            keep_from = self.store.prune()
        keep_from = d.broadcast_object(keep_from if d.is_main else None)
        if self.journal is not None:
            self.journal.rotate(seq, keep_from)
        self.seq = seq
        self._t_last, self._step_last = time.monotonic(), trainer.state.global_step
        self.checkpoint_s += time.perf_counter() - t0
        self.checkpoints_written += 1
        log.debug("checkpoint %d written in %.3f s", seq, time.perf_counter() - t0)
        return info

    # ------------------------------------------------------------ end
    def finish(self, trainer: Any, predictions: np.ndarray | None) -> None:
        """``RUN/final/model.pt`` (state_dict) and ``predictions.npy`` (by original node id)."""
        from oocgnn.train.evaluate import export_predictions, layerwise_inference
        from oocgnn.train.run import save_torch

        if not self.dist.is_main:
            return
        final = self.run_dir / FINAL
        final.mkdir(parents=True, exist_ok=True)
        save_torch({k: v.detach().cpu().clone() for k, v in trainer.model.state_dict().items()}, final / "model.pt")
        if predictions is None:  # resumed after the last epoch-end checkpoint: no evaluation ran here
            predictions = layerwise_inference(trainer, refresh=False)
        export_predictions(trainer.ds, predictions, final / "predictions.npy")
        fsync_dir(final)

    def close(self) -> None:
        self.stop.restore()
        if self._prev_deterministic is not None:
            torch.use_deterministic_algorithms(self._prev_deterministic)
            self._prev_deterministic = None
        if self.journal is not None:
            self.journal.close()
