"""``oocgnn train``: GAS training with on-disk histories and a prefetching loader.

``--method rest|rest-is|visagnn`` adds staleness control (REST refresh passes,
REST-IS refresh order, VISAGNN's staleness-aware model and loss); the staleness
metrics of every epoch go to ``RUN/metrics.jsonl`` (plot with ``oocgnn report``).

Precedence of options: built-in defaults < ``--config run.toml`` < flags.  The
resolved config goes to ``RUN/config.toml``; per-epoch metrics to
``RUN/metrics.jsonl``; the summary to ``RUN/summary.json``.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import time
from pathlib import Path
from typing import Any, Iterator

from tqdm import tqdm

from oocgnn.errors import ConfigError, DeviceMemoryError
from oocgnn.store.reader import open_dataset
from oocgnn.train.dist import check_supported
from oocgnn.config import RunConfig, load_toml, merge
from oocgnn.utils.memory import current_rss, format_size

log = logging.getLogger(__name__)

#: ``CUBLAS_WORKSPACE_CONFIG`` under ``--deterministic`` on CUDA (the value PyTorch documents)
CUBLAS_WORKSPACE = ":4096:8"

#: flag dest -> (config section, key)
FLAG_MAP = {
    "model": ("model", "name"), "layers": ("model", "layers"), "hidden": ("model", "hidden"),
    "dropout": ("model", "dropout"), "batch_norm": ("model", "batch_norm"),
    "normalize_features": ("model", "normalize_features"),
    "lr": ("train", "lr"), "lr_scaling": ("train", "lr_scaling"), "weight_decay": ("train", "weight_decay"),
    "weight_decay_rest": ("train", "weight_decay_rest"), "grad_clip": ("train", "grad_clip"),
    "fill_histories": ("train", "fill_histories"), "epochs": ("train", "epochs"),
    "parts_per_batch": ("train", "parts_per_batch"), "seed": ("train", "seed"),
    "device": ("io", "device"), "io_threads": ("io", "io_threads"), "prefetch": ("io", "prefetch"),
    "memory_budget": ("io", "memory_budget"), "history_dtype": ("io", "history_dtype"),
    "staleness_bound": ("io", "staleness_bound"), "cache": ("io", "cache"), "cache_fraction": ("io", "cache_fraction"),
    "in_memory": ("io", "in_memory"),
    "io_engine": ("io", "io_engine"),
    "stream_inference": ("io", "stream_inference"), "gpu_memory_budget": ("io", "gpu_memory_budget"),
    "eval_refresh": ("eval", "eval_refresh"), "eval_every": ("eval", "eval_every"),
    "method": ("staleness", "method"), "refresh_per_step": ("staleness", "refresh_per_step"),
    "rest_loop": ("staleness", "rest_loop"), "rest_is_uniform": ("staleness", "rest_is_uniform"),
    "refresh_train_mode": ("staleness", "refresh_train_mode"), "stale_loss_weight": ("staleness", "stale_loss_weight"),
    "visagnn_attention": ("staleness", "visagnn_attention"), "visagnn_criterion": ("staleness", "visagnn_criterion"),
    "visagnn_augment": ("staleness", "visagnn_augment"),
    "visagnn_drop_threshold": ("staleness", "visagnn_drop_threshold"),
    "measure_true_staleness": ("staleness", "measure_true_staleness"), "push_drift": ("staleness", "push_drift"),
}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a GNN on a prepared store (GAS, histories on disk)",
                       description="Train a GNN with GNNAutoScale-style histories kept on disk in RUN/histories.")
    p.add_argument("--data", required=True, type=Path, help="dataset store made by `oocgnn prepare`")
    p.add_argument("--run-dir", required=True, type=Path, help="run directory (histories, metrics, summary, config)")
    p.add_argument("--config", type=Path,
                   help="TOML file with [model] [train] [io] [eval] [staleness] sections; flags override it")
    p.add_argument("--overwrite", action="store_true",
                   help="start over in a run dir that already holds a run (without it, re-running the exact "
                        "command of a finished run is a no-op that exits 0, and a changed command is refused)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="hide the per-epoch progress bar")
    g = p.add_argument_group("model")
    g.add_argument("--model", choices=("gcn", "sage", "gat", "gcnii"), help="architecture (default gcn)")
    g.add_argument("--layers", type=int, help="message-passing layers; layers-1 history tables (default 2)")
    g.add_argument("--hidden", type=int, help="hidden width = history table width (default 64)")
    g.add_argument("--dropout", type=float, help="dropout probability (default 0.5)")
    g.add_argument("--batch-norm", action=argparse.BooleanOptionalAction, default=None,
                   help="batch norm after hidden layers (default off)")
    g.add_argument("--normalize-features", action=argparse.BooleanOptionalAction, default=None,
                   help="row-normalise input features to sum 1, as GAS and Kipf & Welling do on Planetoid "
                        "(helps CiteSeer; hurts raw bag-of-words co-purchase graphs) (default off)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--lr", type=float,
                   help="full-batch Adam learning rate; the step's rate follows --lr-scaling (default 0.01)")
    g.add_argument("--lr-scaling", choices=("sqrt", "none"),
                   help="sqrt: Adam steps use lr / sqrt(batches per epoch), which keeps many-batch training "
                        "from collapsing; none: every step uses --lr (default sqrt)")
    g.add_argument("--weight-decay", type=float,
                   help="Adam weight decay of the first layer, as GAS regularises (default 0)")
    g.add_argument("--weight-decay-rest", type=float, help="Adam weight decay of the other layers (default 0)")
    g.add_argument("--grad-clip", type=float, metavar="NORM",
                   help="clip the gradient norm to NORM before each step; 0 = off (default 0)")
    g.add_argument("--fill-histories", action=argparse.BooleanOptionalAction, default=None,
                   help="one exact layer-wise inference fills the histories before the first step, as GAS does; "
                        "--no-fill-histories starts them at zero (default on)")
    g.add_argument("--epochs", type=int, help="training epochs (default 100)")
    g.add_argument("--parts-per-batch", type=int,
                   help="partitions per mini-batch; batches per epoch = partitions / this (default 1)")
    g.add_argument("--seed", type=int, help="seed of initialisation, dropout and the epoch plans (default 0)")
    g = p.add_argument_group("I/O and memory")
    g.add_argument("--device", help="cpu or cuda[:N]; with several ranks, cuda puts rank r on cuda:LOCAL_RANK "
                   "(default cpu)")
    g.add_argument("--gpu-memory-budget", help="GPU memory a CUDA run plans for, e.g. 20GB; a batch that cannot "
                   "train in it is refused before the first step (default 90%% of the GPU memory free at start)")
    g.add_argument("--io-threads", type=int, help="threads gathering rows with --io-engine mmap or --in-memory (default "
                   "4); the default engine keeps 64 page reads in flight from one thread and does not use them")
    g.add_argument("--prefetch", type=int, help="batches read ahead into the staging ring; 0 = synchronous (default 2)")
    g.add_argument("--memory-budget",
                   help="RAM for staging ring and caches, e.g. 12GB or 512MiB (default: half the available RAM)")
    g.add_argument("--history-dtype", choices=("float16", "float32"),
                   help="dtype of the on-disk history tables (default float32)")
    g.add_argument("--staleness-bound", type=int,
                   help="history pushes a prefetched halo row may miss; 0 = exact GAS semantics (default 0)")
    g.add_argument("--cache", choices=("belady", "lru", "none"),
                   help="eviction policy of the hot halo-row caches, features and histories (default belady: uses the known epoch plan)")
    g.add_argument("--cache-fraction", type=float, help="share of what the memory plan leaves (after the staging ring, batch working set and "
                   "activations) that the row caches take (default 0.8; inference may free them to load a table)")
    g.add_argument("--in-memory", action=argparse.BooleanOptionalAction, default=None,
                   help="load features and keep histories in RAM (baseline for benchmarks; default off)")
    g.add_argument("--io-engine", choices=("auto", "direct", "pread", "mmap"),
                   help="how random feature/history rows are read (default auto: O_DIRECT, else buffered pread)")
    g.add_argument("--stream-inference", choices=("auto", "on", "scan", "off"),
                   help="how layer-wise inference reads each layer's input table (features, then history tables): "
                        "on = load it into RAM with one sequential read; scan = one ordered pass over it per group "
                        "of batches whose rows fit the budget; off = gather every batch's halo rows from disk; "
                        "auto = on when the table fits the memory the plan leaves, else scan when that reads less "
                        "than the gathers would, else off. Results are identical (default auto)")
    g = p.add_argument_group("checkpoints and resume (re-running the same command resumes)")
    g.add_argument("--checkpoint-every", type=int, default=0, metavar="N",
                   help="also checkpoint every N optimizer steps (default 0: only epoch ends and the time interval)")
    g.add_argument("--checkpoint-interval", type=float, default=1800.0, metavar="SECONDS",
                   help="also checkpoint when this much time passed since the last one; 0 = off (default 1800)")
    g.add_argument("--keep-checkpoints", type=int, default=2, metavar="K",
                   help="complete checkpoints kept in RUN/checkpoints, >= 2 (default 2)")
    g.add_argument("--no-checkpoints", dest="checkpoints", action="store_false",
                   help="no checkpoints, no history journal, no resume (benchmarks)")
    g.add_argument("--deterministic", action="store_true",
                   help="deterministic kernels so a resumed run is bitwise identical to an uninterrupted one")
    g = p.add_argument_group(
        "several ranks (torch.distributed; every rank trains its own batch each step, gradients are all-reduced)")
    g.add_argument("--nproc-per-node", type=int, default=1, metavar="N",
                   help="start N ranks on this host (gloo on CPU, NCCL on CUDA); across hosts start one "
                        "`oocgnn train` per process with torchrun instead (it sets RANK, WORLD_SIZE, MASTER_ADDR). "
                        "A rerun resumes with the same N; --memory-budget is shared by the ranks of a host "
                        "(default 1)")
    g.add_argument("--halo-exchange", choices=("auto", "shared-files", "all-to-all"), default="auto",
                   help="how a rank sees history rows other ranks pushed: shared-files = one set of tables on this "
                        "host's disk, read at most a few steps late; all-to-all = each rank owns its partitions' rows "
                        "and ships fresh ones to the ranks that need them once per step, one step stale (the "
                        "cross-host path; forcing it on one host tests it); auto = shared-files when every rank is on "
                        "one host (default auto)")
    g.add_argument("--dist-timeout", type=float, metavar="SECONDS",
                   help="a collective waiting longer than this for a peer fails the run (rank 0 evaluates while "
                        "the others wait: keep it above an evaluation's time) (default 1800)")
    g = p.add_argument_group("evaluation")
    g.add_argument("--eval-refresh", action=argparse.BooleanOptionalAction, default=None,
                   help="evaluation sweeps write the training histories (GAS behaviour, default) or, with "
                        "--no-eval-refresh, scratch tables that leave training histories untouched")
    g.add_argument("--eval-every", type=int, help="evaluate every N epochs (default 1)")
    g = p.add_argument_group(
        "staleness control (REST, REST-IS, VISAGNN; per-epoch staleness metrics go to metrics.jsonl)")
    g.add_argument("--method", choices=("gas", "rest", "rest-is", "visagnn"),
                   help="gas: plain historical embeddings; rest: extra forward-only refresh passes; rest-is: "
                        "refresh the most-needed, oldest histories first; visagnn: staleness-aware model and loss "
                        "(combines with --refresh-per-step) (default gas)")
    g.add_argument("--refresh-per-step", type=float, metavar="F",
                   help="history refreshes per optimizer step (REST's F, fractional allowed): > 1 for rest and "
                        "rest-is, >= 1 for visagnn (default 2 for rest/rest-is, 1 otherwise)")
    g.add_argument("--rest-loop", choices=("extra", "interleave"),
                   help="extra: every plan batch trains, F-1 refresh passes after each step from a separate queue "
                        "covering all partitions; interleave: every F-th plan batch trains, the others only "
                        "refresh (default extra; rest-is needs extra)")
    g.add_argument("--rest-is-uniform", type=float, metavar="MIX",
                   help="REST-IS: share of the refresh draw spread uniformly over partitions so none starves, "
                        "in [0, 1] (default 0.1)")
    g.add_argument("--refresh-train-mode", action=argparse.BooleanOptionalAction, default=None,
                   help="refresh passes with training semantics (dropout on) instead of eval semantics "
                        "(default off)")
    g.add_argument("--stale-loss-weight", type=float, metavar="LAMBDA",
                   help="VISAGNN staleness-aware loss weight: lambda * mean ||h_i - h_i,prev||^2 of the final "
                        "layer; 0 = off (default 0.03, tuned once on Amazon Photo; the paper's 0.3 froze learning there)")
    g.add_argument("--visagnn-attention", action=argparse.BooleanOptionalAction, default=None,
                   help="VISAGNN dynamic staleness attention (GAT logits; edge reweighting for gcn/sage/gcnii) "
                        "(default on)")
    g.add_argument("--visagnn-criterion", choices=("grad", "persistence", "age"),
                   help="VISAGNN staleness criterion per halo row: grad = gradient norm of the pulled row; "
                        "persistence (alias age) = optimizer steps since its last push (default grad)")
    g.add_argument("--visagnn-augment", choices=("none", "concat", "sum"),
                   help="VISAGNN staleness-augmented embeddings: append the staleness as a channel (concat) or "
                        "add tanh(W s) to halo rows (sum) (default sum)")
    g.add_argument("--visagnn-drop-threshold", type=int, metavar="STEPS",
                   help="VISAGNN: drop halo edges whose history is older than STEPS optimizer steps (or never "
                        "written); 0 = off (default 0)")
    g.add_argument("--measure-true-staleness", action=argparse.BooleanOptionalAction, default=None,
                   help="each epoch, recompute all histories exactly into scratch tables and log "
                        "||h_bar - h|| / ||h|| per table (one extra full inference per epoch; small graphs) "
                        "(default off)")
    g.add_argument("--push-drift", action=argparse.BooleanOptionalAction, default=None,
                   help="log ||h_new - h_old|| / ||h_new|| of every push (reads the batch rows back once per "
                        "push) (default on)")
    p.set_defaults(func=run)


def resolve_config(args: argparse.Namespace) -> RunConfig:
    base: dict[str, Any] = load_toml(args.config) if getattr(args, "config", None) else {}
    overrides: dict[str, Any] = {"data": str(args.data), "run_dir": str(args.run_dir)}
    for dest, (sec, key) in FLAG_MAP.items():
        value = getattr(args, dest, None)
        if value is not None:
            overrides.setdefault(sec, {})[key] = value
    return RunConfig.from_dict(merge(base, overrides))


def tqdm_progress(enabled: bool):
    def factory(epoch: int, total: int):
        bar = tqdm(total=total, desc=f"epoch {epoch + 1}", unit="batch", disable=not enabled, leave=False)
        t0 = time.perf_counter()

        def on_batch(info: dict[str, Any]) -> None:
            bar.update(1)
            el = time.perf_counter() - t0
            bar.set_postfix(loss=f"{info['loss']:.4f}", bps=f"{bar.n / max(el, 1e-9):.1f}",
                            io_wait=f"{info['io_wait_s']:.1f}s", rss=format_size(current_rss()), refresh=False)
        return on_batch, bar.close
    return factory


def _is_launched_rank() -> bool:
    """This process is a rank that ``--nproc-per-node`` started (not the launcher, not torchrun's)."""
    from oocgnn.cli.launch import LAUNCHED_ENV

    return os.environ.get(LAUNCHED_ENV) == "1"


def _check_ranks(args: argparse.Namespace, cfg: RunConfig) -> None:
    """Refuse rank options that cannot work, before any rank starts (one line each)."""
    if args.nproc_per_node < 1:
        raise ConfigError(f"--nproc-per-node must be >= 1, got {args.nproc_per_node}")
    if args.nproc_per_node > 1 and int(os.environ.get("WORLD_SIZE", "1")) > 1 and not _is_launched_rank():
        raise ConfigError("--nproc-per-node starts ranks itself; under torchrun (WORLD_SIZE is set) use "
                          "torchrun's --nproc-per-node instead")
    if args.dist_timeout is not None and args.dist_timeout <= 0:
        raise ConfigError(f"--dist-timeout must be > 0 seconds, got {args.dist_timeout}")
    world = max(args.nproc_per_node, int(os.environ.get("WORLD_SIZE", "1")))
    check_supported(cfg, world)
    _check_device(args, cfg)
    if world == 1:  # options of several ranks would silently do nothing
        if args.halo_exchange != "auto":
            raise ConfigError(f"--halo-exchange {args.halo_exchange} needs several ranks (--nproc-per-node N or "
                              f"torchrun)")
        if args.dist_timeout is not None:
            raise ConfigError("--dist-timeout needs several ranks (--nproc-per-node N or torchrun)")


def _check_device(args: argparse.Namespace, cfg: RunConfig) -> None:
    """Refuse a ``--device`` this host cannot give every rank (one GPU each), before anything starts."""
    if cfg.io.device == "cpu":
        return
    import torch

    from oocgnn.device import rank_device

    if args.nproc_per_node > 1:  # the launcher's ranks: the last one needs cuda:N-1
        local, local_rank = args.nproc_per_node, args.nproc_per_node - 1
    else:
        local, local_rank = int(os.environ.get("LOCAL_WORLD_SIZE", "1")), int(os.environ.get("LOCAL_RANK", "0"))
    rank_device(cfg.io.device, local_rank, local, torch.cuda.device_count() if torch.cuda.is_available() else 0)


def _warn_inert(args: argparse.Namespace, cfg: RunConfig) -> None:
    """One line for a flag the rest of the command makes ineffective (it is kept, not refused: configs reuse it)."""
    if args.io_threads is not None and cfg.io.io_engine != "mmap" and not cfg.io.in_memory:
        log.warning("--io-threads %d has no effect with --io-engine %s: the row-gather engine keeps its reads in "
                    "flight itself (it applies to --io-engine mmap and --in-memory)", args.io_threads, cfg.io.io_engine)
    if args.cache_fraction is not None and cfg.io.cache == "none":
        log.warning("--cache-fraction %g has no effect with --cache none", args.cache_fraction)
    if args.gpu_memory_budget is not None and not cfg.io.device.startswith("cuda"):
        log.warning("--gpu-memory-budget %s has no effect with --device %s", args.gpu_memory_budget, cfg.io.device)


@contextlib.contextmanager
def device_errors(deterministic: bool, trainer: Any) -> Iterator[None]:
    """The device's own failures as one line: out of GPU memory, an op without a deterministic kernel."""
    import torch

    try:
        yield
    except torch.OutOfMemoryError as exc:
        plan = (getattr(trainer, "memory_plan", None) or {}).get("device") or {}
        raise DeviceMemoryError(
            f"{trainer.device} ran out of memory at step {trainer.state.global_step} although the memory plan expected "
            f"{format_size(plan.get('need_bytes', 0))} of {format_size(plan.get('budget_bytes', 0))}: use fewer "
            f"--parts-per-batch or a smaller --hidden (a new run: --overwrite or another --run-dir); checkpoints "
            f"so far are intact ({str(exc).splitlines()[0][:120]})") from None
    except RuntimeError as exc:
        if deterministic and "deterministic" in str(exc):
            raise ConfigError(f"--deterministic on {trainer.device}: {str(exc).splitlines()[0]}; drop "
                              f"--deterministic to train with this model there") from None
        raise


def _finished(args: argparse.Namespace, cfg: RunConfig, ds: Any, world_size: int) -> bool:
    """True (and one log line) when RUN already holds exactly this finished run; a changed command raises.

    A scheduler requeueing a finished job re-runs its exact command: a no-op, not an error.
    """
    if args.overwrite or not (args.run_dir / "summary.json").exists():
        return False
    from oocgnn.checkpoint.compat import check_same_finished_run

    done = check_same_finished_run(args.run_dir, cfg, getattr(ds, "checksum", None), world_size)
    log.info("%s already holds this finished run (best valid %.4f, test %.4f at epoch %d); nothing to do",
             args.run_dir, done["best_valid_acc"], done["test_acc_at_best_valid"], done["best_epoch"])
    return True


def run(args: argparse.Namespace) -> int:
    from oocgnn.train.dist import DEFAULT_TIMEOUT_S, DistContext

    cfg = resolve_config(args)
    if args.deterministic and cfg.io.device.startswith("cuda"):
        # cuBLAS reads it when CUDA starts its handle: without it the first deterministic matmul fails.
        # Set before any rank (or this process) touches CUDA; launched ranks inherit it
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    _check_ranks(args, cfg)
    ds = open_dataset(args.data)
    if args.nproc_per_node > 1 and not _is_launched_rank():
        if _finished(args, cfg, ds, args.nproc_per_node):
            return 0
        from oocgnn.cli.launch import launch

        return launch(args.argv, args.nproc_per_node)
    timeout = args.dist_timeout if args.dist_timeout is not None else DEFAULT_TIMEOUT_S
    dist = DistContext.from_env(args.halo_exchange, timeout, cfg.io.device, args.deterministic)
    try:
        if dist.active:
            import torch

            torch.set_num_threads(max(1, (os.cpu_count() or 1) // dist.local_world_size))
            if not dist.is_main:  # rank 0 reports; the others only warn
                logging.getLogger().setLevel(logging.WARNING)
                args.progress = False
        return _train(args, cfg, ds, dist)
    finally:
        dist.close()


def _train(args: argparse.Namespace, cfg: RunConfig, ds: Any, dist: Any) -> int:
    from oocgnn.checkpoint import CheckpointOptions, Preempted, RunSession
    from oocgnn.runner import make_trainer
    from oocgnn.train.run import fit

    if _finished(args, cfg, ds, dist.world_size):
        return 0
    run_dir: Path = args.run_dir
    if dist.is_main:
        if args.overwrite and run_dir.exists():
            import shutil

            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
    dist.barrier()
    session = RunSession(run_dir, CheckpointOptions(
        every_steps=args.checkpoint_every, interval_s=args.checkpoint_interval, keep=args.keep_checkpoints,
        enabled=args.checkpoints, deterministic=args.deterministic), dist)
    try:
        session.prepare(cfg, ds)
        # ranks sharing history files: rank 0 creates them before the others open them
        shared = dist.shared_tables
        if shared and not dist.is_main:
            dist.barrier()
        trainer = make_trainer(ds, cfg, run_dir, dist=dist)
        if shared and dist.is_main:
            dist.barrier()
    except BaseException:
        session.close()
        raise
    if dist.is_main:  # after every refusal: a command that stops with one line says only that line
        _warn_inert(args, cfg)
    try:
        session.attach(trainer)
        with device_errors(args.deterministic, trainer):
            summary = fit(trainer, tqdm_progress(args.progress), session)
    except Preempted as exc:
        if dist.is_main:
            log.warning("%s", exc)
        return exc.exit_code
    finally:
        try:
            trainer.close()
        finally:
            session.close()
    log.info("best valid acc %.4f, test acc at best valid %.4f (epoch %d); %.1f s, peak RSS %s "
             "(anonymous %s, budget %s; the rest is page cache of memmaps)",
             summary["best_valid_acc"], summary["test_acc_at_best_valid"], summary["best_epoch"],
             summary["time_s"], format_size(summary["peak_rss_bytes"]), format_size(summary["peak_anon_rss_bytes"]),
             format_size(summary["memory_budget_bytes"]))
    return 0
