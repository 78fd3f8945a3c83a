"""What may change between a run and its resume, and the run's identity file.

Why: resuming with another learning rate or another store would silently mix
two experiments, so options that change results are compared with the saved
``RUN/config.toml`` and refused.  The list is a *whitelist of speed-only
options*: any option added later counts as result-affecting until someone
decides otherwise, which is the safe default.  ``RUN/run.json`` records the
store checksum, so a store rebuilt or modified since the run started is caught
even when its path is the same.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from oocgnn.errors import ConfigError, RunDirError
from oocgnn.utils.atomic import atomic_write_json, read_json

log = logging.getLogger(__name__)

RUN_MANIFEST = "run.json"

#: Flattened config keys that only change speed or memory use, never results.
SPEED_ONLY = frozenset({
    "data", "run_dir", "train.epochs",
    "io.device", "io.io_threads", "io.prefetch", "io.memory_budget", "io.cache", "io.cache_fraction",
    "io.io_engine", "io.stream_inference", "io.gpu_memory_budget",
})


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_differences(saved: dict[str, Any], new: dict[str, Any], defaults: dict[str, Any]) -> list[str]:
    """Result-affecting keys whose value differs, as ``key: old -> new`` strings.

    A key absent from one side (saved by an older oocgnn, or added since) is
    taken at its default value.
    """
    s, n, d = flatten(saved), flatten(new), flatten(defaults)
    diffs = []
    for key in sorted(set(s) | set(n)):
        if key in SPEED_ONLY:
            continue
        old, cur = s.get(key, d.get(key)), n.get(key, d.get(key))
        if old != cur and not (isinstance(old, (int, float)) and isinstance(cur, (int, float)) and float(old) == float(cur)):
            diffs.append(f"{key}: {old!r} -> {cur!r}")
    return diffs


def check_config(saved: dict[str, Any], new: dict[str, Any], defaults: dict[str, Any], run_dir: Path) -> None:
    diffs = config_differences(saved, new, defaults)
    if diffs:
        raise RunDirError(
            f"{run_dir} was started with other result-affecting options ({'; '.join(diffs)}); use the original "
            f"options to resume, or --overwrite / another --run-dir to start a new run")
    if flatten(saved).get("io.device") != flatten(new).get("io.device"):
        log.warning("device changed since the run started: training continues, but results are no longer "
                    "bitwise identical to an uninterrupted run")


def check_same_finished_run(run_dir: Path, cfg: Any, store_checksum: str | None,
                            world_size: int = 1) -> dict[str, Any]:
    """The summary of the finished run in ``run_dir`` if ``cfg`` would redo exactly that run, else one-line refusal.

    Why: schedulers requeue jobs, so the exact command of a finished run is
    re-run; that must be a no-op (exit 0), not an error, while a changed command
    must still refuse to silently mix two experiments.  "Finished" means
    ``summary.json`` and ``final/model.pt`` exist and the summary counts every
    epoch the saved config asked for.  "Same" means the same store (the
    checksum resume checks) and equal result-affecting options (the resume
    comparison, :func:`config_differences`); the epoch count, speed-only for a
    resume, is result-affecting here: more epochs would continue a finished
    run, which is not supported (its final files are already written).
    Reads only: nothing in ``run_dir`` is touched.
    """
    from oocgnn.config import RunConfig, load_config

    hint = "pass --overwrite or choose another --run-dir"
    try:
        summary = read_json(run_dir / "summary.json")
        saved = load_config(run_dir / "config.toml").to_dict()
    except FileNotFoundError as exc:
        raise RunDirError(f"{run_dir} holds a summary.json but {Path(exc.filename or '').name or 'a file'} is "
                          f"missing, so it cannot be checked against this command; {hint}") from None
    except (OSError, ValueError) as exc:
        raise RunDirError(f"{run_dir} holds a run whose summary.json or config.toml is unreadable ({exc}); "
                          f"{hint}") from None
    done, asked = int(summary.get("epochs", -1)), int(saved["train"]["epochs"])
    has_final = (run_dir / "final" / "model.pt").exists()
    if done < asked or not has_final:
        raise RunDirError(f"{run_dir} holds a summary.json but not a complete finished run ({done} of {asked} "
                          f"epochs, final/model.pt {'present' if has_final else 'missing'}); {hint}")
    # run.json is what resume checks; runs made with --no-checkpoints only have the summary's copy
    manifest = run_dir / RUN_MANIFEST
    try:
        made_on = read_json(manifest)["store_checksum"] if manifest.exists() else summary.get("store_checksum")
    except (OSError, ValueError, KeyError) as exc:
        raise RunDirError(f"{manifest} is unreadable ({exc}); {hint}") from None
    if made_on != store_checksum:
        raise RunDirError(f"{run_dir} holds a finished run made on another dataset store (checksum {made_on}, "
                          f"{cfg.data} has {store_checksum}); {hint}")
    epochs = int(cfg.train.epochs)
    if epochs > done:
        raise RunDirError(f"{run_dir} holds a finished run of {done} epochs and this command asks for {epochs}: "
                          f"continuing a finished run is not supported; start a new --run-dir or pass --overwrite")
    new = cfg.to_dict()
    diffs = config_differences(saved, new, RunConfig().to_dict())
    if epochs != asked:
        diffs = sorted([*diffs, f"train.epochs: {asked!r} -> {epochs!r}"])
    ranks = int(summary.get("world_size", 1))
    if ranks != world_size:  # another number of ranks trains another sequence of batches
        diffs = sorted([*diffs, f"ranks: {ranks} -> {world_size}"])
    if diffs:
        more = f" and {len(diffs) - 1} more" if len(diffs) > 1 else ""
        raise RunDirError(f"{run_dir} already holds a finished run made with other result-affecting options "
                          f"({diffs[0]}{more}); {hint}")
    return summary


def write_manifest(run_dir: Path, store_checksum: str | None, extra: dict[str, Any] | None = None) -> None:
    from oocgnn._version import __version__

    atomic_write_json(run_dir / RUN_MANIFEST, {"store_checksum": store_checksum, "oocgnn_version": __version__,
                                               "created": time.strftime("%Y-%m-%dT%H:%M:%S"), **(extra or {})})


def check_manifest(run_dir: Path, store_checksum: str | None, data_path: object) -> dict[str, Any]:
    path = run_dir / RUN_MANIFEST
    try:
        manifest = read_json(path)
    except FileNotFoundError:
        raise RunDirError(f"{path} is missing, so this run cannot be resumed safely; start over with --overwrite") \
            from None
    except (OSError, ValueError) as exc:
        raise RunDirError(f"{path} is unreadable ({exc}); start over with --overwrite") from None
    if manifest.get("store_checksum") != store_checksum:
        raise RunDirError(
            f"dataset store {data_path} changed since this run started (checksum {store_checksum} != "
            f"{manifest.get('store_checksum')} in {path}); use the original store, or --overwrite to start over")
    return manifest


def setup_determinism(enabled: bool, staleness_bound: int) -> bool | None:
    """Deterministic kernels (CPU) so a resumed run is bitwise identical.

    Prefetching stays on: with ``staleness_bound=0`` reads are patched to equal a
    synchronous read, so thread timing cannot change any value.  A bound > 0 lets
    timing decide which rows are stale, which no seed can reproduce.
    """
    if not enabled:
        return None
    if staleness_bound > 0:
        raise ConfigError("--deterministic needs --staleness-bound 0 (a bound lets I/O timing decide which "
                          "history rows are stale)")
    import torch

    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    return previous  # restored by RunSession.close (library callers share the process)
