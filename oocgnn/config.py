"""Run configuration: one small dataclass per component, validated on construction.

Shared by every layer that reads options (``train/``, ``staleness/``, ``checkpoint/``,
``cli/``), so the trainer and the staleness policies that plug into it depend on this
module and never on each other.  Sections of a run: ``[model] [train] [io] [eval]
[staleness]``.  Each dataclass validates itself in ``__post_init__`` and raises
:class:`ConfigError` naming the flag.

The run config as a file: precedence is dataclass defaults < ``--config run.toml``
< command-line flags; the resolved config is written to ``RUN/config.toml`` so
``oocgnn eval --run-dir RUN`` and resume rebuild exactly the same model and data path.
"""
from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from oocgnn.errors import ConfigError
from oocgnn.utils.atomic import atomic_write_bytes
from oocgnn.utils.memory import parse_size

#: ``--method`` choices: plain historical embeddings and the staleness cures built on them
METHODS: tuple[str, ...] = ("gas", "rest", "rest-is", "visagnn")
#: ``--rest-loop`` choices (see :mod:`oocgnn.staleness.schedule`)
REST_LOOPS: tuple[str, ...] = ("extra", "interleave")
#: ``--lr-scaling`` choices (see :func:`oocgnn.train.optim.step_lr`)
LR_SCALINGS: tuple[str, ...] = ("sqrt", "none")
#: REST's refreshes per optimizer step when ``--method rest|rest-is`` names none (F = 1 would be plain GAS)
REST_DEFAULT_F = 2.0


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
    normalize_features: bool = False  #: row-normalise input features (sum 1), as GAS/Kipf & Welling on Planetoid

    def __post_init__(self) -> None:
        _check(self.name in ("gcn", "sage", "gat", "gcnii"), f"--model {self.name!r}: choose gcn, sage, gat or gcnii")
        _check(self.layers >= 1, f"--layers must be >= 1, got {self.layers}")
        _check(self.hidden >= 1, f"--hidden must be >= 1, got {self.hidden}")
        _check(0.0 <= self.dropout < 1.0, f"--dropout must be in [0, 1), got {self.dropout}")


@dataclass
class OptimConfig:
    lr: float = 0.01                #: the full-batch learning rate; see ``lr_scaling``
    lr_scaling: str = "sqrt"        #: sqrt: Adam's lr = lr / sqrt(batches per epoch); none: lr as given
    weight_decay: float = 0.0       #: Adam weight decay of the first layer (GAS's reg_weight_decay)
    weight_decay_rest: float = 0.0  #: Adam weight decay of the other layers (GAS's nonreg_weight_decay)
    grad_clip: float = 0.0          #: max gradient norm before each step; 0 = no clipping
    fill_histories: bool = True     #: one exact inference into the histories before the first step
    epochs: int = 100
    parts_per_batch: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        _check(self.lr > 0, f"--lr must be positive, got {self.lr}")
        _check(self.lr_scaling in LR_SCALINGS, f"--lr-scaling {self.lr_scaling!r}: choose {' or '.join(LR_SCALINGS)}")
        _check(self.weight_decay >= 0, f"--weight-decay must be >= 0, got {self.weight_decay}")
        _check(self.weight_decay_rest >= 0, f"--weight-decay-rest must be >= 0, got {self.weight_decay_rest}")
        _check(self.grad_clip >= 0, f"--grad-clip must be >= 0 (0 = off), got {self.grad_clip}")
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
    cache_fraction: float = 0.8
    in_memory: bool = False
    io_engine: str = "auto"  #: how random rows are read: auto (direct, else pread), direct, pread, mmap
    #: inference sweeps load a layer's input table into RAM: auto (when it fits the budget), on, off
    stream_inference: str = "auto"
    #: device memory a CUDA run may plan for (None: 90 % of what is free when it starts)
    gpu_memory_budget: str | None = None

    def __post_init__(self) -> None:
        _check(self.device == "cpu" or self.device.startswith("cuda"), f"--device {self.device!r}: use cpu or cuda[:N]")
        _check(self.io_threads >= 1, f"--io-threads must be >= 1, got {self.io_threads}")
        _check(self.prefetch >= 0, f"--prefetch must be >= 0, got {self.prefetch}")
        _check(self.history_dtype in ("float16", "float32"), f"--history-dtype {self.history_dtype!r}: use float16 or float32")
        _check(self.staleness_bound >= 0, f"--staleness-bound must be >= 0, got {self.staleness_bound}")
        _check(self.cache in ("belady", "lru", "none"), f"--cache {self.cache!r}: use belady, lru or none")
        _check(0.0 <= self.cache_fraction < 1.0, f"--cache-fraction must be in [0, 1), got {self.cache_fraction}")
        _check(self.io_engine in ("auto", "direct", "pread", "mmap"),
               f"--io-engine {self.io_engine!r}: use auto, direct, pread or mmap")
        _check(self.stream_inference in ("auto", "on", "scan", "off"),
               f"--stream-inference {self.stream_inference!r}: use auto, on, scan or off")
        if self.memory_budget not in (None, "", "auto"):
            parse_size(self.memory_budget)
        if self.gpu_memory_budget not in (None, "", "auto"):
            parse_size(self.gpu_memory_budget, "--gpu-memory-budget")


@dataclass
class EvalConfig:
    eval_refresh: bool = True
    eval_every: int = 1

    def __post_init__(self) -> None:
        _check(self.eval_every >= 1, f"--eval-every must be >= 1, got {self.eval_every}")


@dataclass
class StalenessConfig:
    """``[staleness]`` section of the run config (flags in ``oocgnn train --help``)."""

    method: str = "gas"
    refresh_per_step: float | None = None  #: None = the method's default (REST: 2, others 1)
    rest_loop: str = "extra"
    rest_is_uniform: float = 0.1
    refresh_train_mode: bool = False
    #: VISAGNN's lambda, tuned once (Photo, GCN, 40 batches/epoch, seed 0: 0.01/0.03/0.1/0.3 gave
    #: 89.1/90.2/88.7/76.0 test): the paper's 0.3 freezes the logits with our loss, a mean over batch rows
    stale_loss_weight: float = 0.03
    visagnn_attention: bool = True
    visagnn_criterion: str = "grad"
    visagnn_augment: str = "sum"
    visagnn_drop_threshold: int = 0
    measure_true_staleness: bool = False
    push_drift: bool = True

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"--method {self.method!r}: choose one of {', '.join(METHODS)}")
        if self.refresh_per_step is None:
            self.refresh_per_step = REST_DEFAULT_F if self.method in ("rest", "rest-is") else 1.0
        for name, kind in (("refresh_per_step", float), ("rest_is_uniform", float), ("stale_loss_weight", float),
                           ("visagnn_drop_threshold", int)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and v != int(v)):
                raise ConfigError(f"--{name.replace('_', '-')} must be {'an integer' if kind is int else 'a number'}, "
                                  f"got {v!r}")
            setattr(self, name, kind(v))
        for name in ("refresh_train_mode", "visagnn_attention", "measure_true_staleness", "push_drift"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"[staleness] {name} must be true or false, got {getattr(self, name)!r}")
        if self.visagnn_criterion == "age":  # CLI alias: age = persistence (steps since the row's last push)
            self.visagnn_criterion = "persistence"
        if self.rest_loop not in REST_LOOPS:
            raise ConfigError(f"--rest-loop {self.rest_loop!r}: choose extra or interleave")
        if self.refresh_per_step < 1:
            raise ConfigError(f"--refresh-per-step must be >= 1, got {self.refresh_per_step}")
        if self.method == "gas" and self.refresh_per_step != 1:
            raise ConfigError("--refresh-per-step > 1 needs --method rest, rest-is or visagnn")
        if self.method in ("rest", "rest-is") and self.refresh_per_step == 1:
            raise ConfigError(f"--method {self.method} with --refresh-per-step 1 never refreshes (it is plain GAS); "
                              f"use F > 1 (default {REST_DEFAULT_F:g}) or --method gas")
        if self.method == "rest-is" and self.rest_loop != "extra":
            raise ConfigError("--method rest-is needs --rest-loop extra (interleave has no refresh queue to order)")
        if not 0.0 <= self.rest_is_uniform <= 1.0:
            raise ConfigError(f"--rest-is-uniform must be in [0, 1], got {self.rest_is_uniform}")
        check_visagnn_options(self.visagnn_criterion, self.visagnn_augment, self.visagnn_drop_threshold,
                              self.stale_loss_weight)


def check_visagnn_options(criterion: str, augment: str, drop_threshold: int, stale_loss_weight: float) -> None:
    """One-line errors for VISAGNN's switches (the run config and :class:`VisaOptions` both check)."""
    if criterion not in ("grad", "persistence"):
        raise ConfigError(f"--visagnn-criterion {criterion!r}: choose grad or persistence")
    if augment not in ("none", "concat", "sum"):
        raise ConfigError(f"--visagnn-augment {augment!r}: choose none, concat or sum")
    if drop_threshold < 0:
        raise ConfigError(f"--visagnn-drop-threshold must be >= 0, got {drop_threshold}")
    if stale_loss_weight < 0:
        raise ConfigError(f"--stale-loss-weight must be >= 0, got {stale_loss_weight}")


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


# ------------------------------------------------------------------ the config as a TOML file
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
