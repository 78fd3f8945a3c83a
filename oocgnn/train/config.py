"""Run configuration: small dataclasses per component, a TOML file, flag overrides.

Precedence: dataclass defaults < ``--config run.toml`` < command-line flags.  The
resolved config is written to ``RUN/config.toml`` so ``oocgnn eval --run-dir RUN``
(and resume, later) rebuild exactly the same model and data path.  Sections:
``[model] [train] [io] [eval] [staleness]`` (the last is
:class:`oocgnn.staleness.control.StalenessConfig`: ``--method`` and its options).  Each
dataclass validates itself in ``__post_init__`` and raises :class:`ConfigError`
naming the flag.
"""
from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from oocgnn.errors import ConfigError
from oocgnn.staleness.control import StalenessConfig
from oocgnn.utils.atomic import atomic_write_bytes
from oocgnn.utils.memory import parse_size


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


@dataclass
class ModelConfig:
    name: str = "gcn"
    layers: int = 2
    hidden: int = 64
    dropout: float = 0.5
    batch_norm: bool = False

    def __post_init__(self) -> None:
        _check(self.name in ("gcn", "sage", "gat", "gcnii"), f"--model {self.name!r}: choose gcn, sage, gat or gcnii")
        _check(self.layers >= 1, f"--layers must be >= 1, got {self.layers}")
        _check(self.hidden >= 1, f"--hidden must be >= 1, got {self.hidden}")
        _check(0.0 <= self.dropout < 1.0, f"--dropout must be in [0, 1), got {self.dropout}")


@dataclass
class OptimConfig:
    lr: float = 0.01
    weight_decay: float = 0.0
    epochs: int = 100
    parts_per_batch: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        _check(self.lr > 0, f"--lr must be positive, got {self.lr}")
        _check(self.weight_decay >= 0, f"--weight-decay must be >= 0, got {self.weight_decay}")
        _check(self.epochs >= 1, f"--epochs must be >= 1, got {self.epochs}")
        _check(self.parts_per_batch >= 1, f"--parts-per-batch must be >= 1, got {self.parts_per_batch}")


@dataclass
class IOConfig:
    device: str = "cpu"
    io_threads: int = 4
    prefetch: int = 2
    memory_budget: str | None = None
    history_dtype: str = "float32"
    staleness_bound: int = 0
    cache: str = "belady"
    cache_fraction: float = 0.25
    in_memory: bool = False
    io_engine: str = "auto"

    def __post_init__(self) -> None:
        _check(self.device == "cpu" or self.device.startswith("cuda"), f"--device {self.device!r}: use cpu or cuda[:N]")
        _check(self.io_threads >= 1, f"--io-threads must be >= 1, got {self.io_threads}")
        _check(self.prefetch >= 0, f"--prefetch must be >= 0, got {self.prefetch}")
        _check(self.history_dtype in ("float16", "float32"), f"--history-dtype {self.history_dtype!r}: use float16 or float32")
        _check(self.staleness_bound >= 0, f"--staleness-bound must be >= 0, got {self.staleness_bound}")
        _check(self.cache in ("belady", "lru", "none"), f"--cache {self.cache!r}: use belady, lru or none")
        _check(0.0 <= self.cache_fraction < 1.0, f"--cache-fraction must be in [0, 1), got {self.cache_fraction}")
        _check(self.io_engine in ("auto", "direct", "pread", "mmap"), f"--io-engine {self.io_engine!r}: use auto, direct, pread or mmap")
        if self.memory_budget not in (None, "", "auto"):
            parse_size(self.memory_budget)


@dataclass
class EvalConfig:
    eval_refresh: bool = True
    eval_every: int = 1

    def __post_init__(self) -> None:
        _check(self.eval_every >= 1, f"--eval-every must be >= 1, got {self.eval_every}")


@dataclass
class RunConfig:
    data: str = ""
    run_dir: str = ""
    model: ModelConfig = field(default_factory=ModelConfig)
    train: OptimConfig = field(default_factory=OptimConfig)
    io: IOConfig = field(default_factory=IOConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    staleness: StalenessConfig = field(default_factory=StalenessConfig)

    SECTIONS = ("model", "train", "io", "eval", "staleness")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
        sections = {}
        for name, klass in (("model", ModelConfig), ("train", OptimConfig), ("io", IOConfig), ("eval", EvalConfig),
                            ("staleness", StalenessConfig)):
            sec = d.get(name, {})
            _check(isinstance(sec, dict), f"config [{name}] must be a table (section), got {sec!r}")
            sec = dict(sec)
            known = {f.name for f in dataclasses.fields(klass)}
            unknown = set(sec) - known
            _check(not unknown, f"config section [{name}] has unknown keys {sorted(unknown)}; known: {sorted(known)}")
            sections[name] = klass(**sec)
        top_unknown = set(d) - set(cls.SECTIONS) - {"data", "run_dir"}
        _check(not top_unknown, f"config has unknown top-level keys {sorted(top_unknown)}")
        return cls(data=str(d.get("data", "")), run_dir=str(d.get("run_dir", "")), **sections)


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
