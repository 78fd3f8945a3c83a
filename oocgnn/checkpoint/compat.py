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
    "io.io_engine", "io.stream_inference",
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


def write_manifest(run_dir: Path, store_checksum: str | None, extra: dict[str, Any] | None = None) -> None:
    from oocgnn import __version__

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
