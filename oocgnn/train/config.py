"""The run config as a file: TOML loading, flag overrides, saving.

Precedence: dataclass defaults < ``--config run.toml`` < command-line flags.  The
resolved config is written to ``RUN/config.toml`` so ``oocgnn eval --run-dir RUN``
and resume rebuild exactly the same model and data path.  The dataclasses
themselves live in :mod:`oocgnn.config` (re-exported here).
"""
from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from oocgnn.config import EvalConfig, IOConfig, ModelConfig, OptimConfig, RunConfig, StalenessConfig
from oocgnn.errors import ConfigError
from oocgnn.utils.atomic import atomic_write_bytes

#: the dataclasses are re-exported: callers import the whole run config from here
__all__ = ["EvalConfig", "IOConfig", "ModelConfig", "OptimConfig", "RunConfig", "StalenessConfig", "dumps_toml",
           "load_config", "load_toml", "merge", "save_config"]


def load_toml(path: str | Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"--config {path}: file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"--config {path}: not valid TOML ({exc})") from None


def merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Overlay ``{section: {key: value}}`` (None values ignored) onto ``base``."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in base.items()}
    for k, v in overrides.items():
        if isinstance(v, dict):
            sec = out.setdefault(k, {})
            sec.update({kk: vv for kk, vv in v.items() if vv is not None})
        elif v is not None:
            out[k] = v
    return out


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


def dumps_toml(d: dict[str, Any]) -> str:
    lines = [f"{k} = {_toml_value(v)}" for k, v in d.items() if not isinstance(v, dict) and v is not None]
    for k, v in d.items():
        if isinstance(v, dict):
            lines.append(f"\n[{k}]")
            lines += [f"{kk} = {_toml_value(vv)}" for kk, vv in v.items() if vv is not None]
    return "\n".join(lines) + "\n"


def save_config(cfg: RunConfig, path: str | Path) -> None:
    atomic_write_bytes(path, dumps_toml(cfg.to_dict()).encode())


def load_config(path: str | Path) -> RunConfig:
    return RunConfig.from_dict(load_toml(path))
