"""Exact full-graph inference through the histories, layer by layer, and accuracy.

Sweep ``l`` runs layer ``l`` on every batch (fixed partition order), reading its
inputs for batch and halo rows from table ``l-1`` (features for ``l = 0``) and
writing table ``l``; every row of table ``l-1`` was written with the current
parameters by sweep ``l-1``, so the final logits equal a full-batch forward.

``refresh=True`` sweeps into the training tables (GAS does this each epoch, which
leaves every history fresh).  ``refresh=False`` sweeps into scratch tables
``RUN/histories/eval_*`` so the training histories, and their last-push steps,
stay exactly as training left them.  Only predictions (``int32[N]``) are kept,
never ``[N, C]`` logits.

Each sweep's input table (features for ``l = 0``, table ``l-1`` after) is either
loaded into RAM once and indexed there (streaming, when it fits the budget the
memory plan leaves: :mod:`oocgnn.train.stream`), read in ordered passes, one per
group of batches whose rows fit that room (:mod:`oocgnn.train.scan`), or gathered
batch by batch from disk; ``--stream-inference`` forces one of them, and results are
bitwise the same.  The path each layer took is logged and kept in
``trainer.inference_paths``.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from oocgnn.batching import fixed_plan, group_ranges
from oocgnn.history import HistorySet, HistoryTable
from oocgnn.prefetch import BatchLoader
from oocgnn.train.scan import plan_scan
from oocgnn.train.stream import stream_input
from oocgnn.utils.memory import format_size
from oocgnn.utils.atomic import atomic_output

log = logging.getLogger(__name__)


def _scratch(trainer: Any) -> HistorySet:
    hs = getattr(trainer, "_eval_scratch", None)
    if hs is None:
        in_mem = trainer.cfg.io.in_memory or trainer.run_dir is None
        directory = None if in_mem else trainer.run_dir / "histories"
        hs = HistorySet(trainer.ds.num_nodes, list(trainer.model.history_channels), trainer.cfg.io.history_dtype,
                        directory, prefix="eval", track_steps=False)  # nothing reads their ages
        trainer._eval_scratch = hs
    return hs


def _sweep_cache(trainer: Any, src: Any, plan: list) -> Any:
    """The training row cache of the table a gathered sweep reads, set up for the sweep's plan, or None.

    The feature cache serves the features; a history cache serves its training table
    (it stays coherent with the pushes a refreshing sweep makes to the next table);
    scratch tables have none.  LRU caches at scale then read the next batches' halos with
    each miss read (:mod:`oocgnn.read_ahead`), as in training: without it a sweep reads
    most of a table that does not fit in RAM for every batch.  Rows served are the
    table's rows, so results are bitwise those of an uncached sweep.
    """
    from oocgnn.cache import begin_sweep_cache

    if src is trainer.features:
        cache = getattr(trainer, "cache", None)
    else:
        tables = trainer.histories.tables
        caches = getattr(trainer, "hist_caches", None) or []
        cache = next((c for t, c in zip(tables, caches) if t is src), None)
    if cache is not None:
        begin_sweep_cache(cache, trainer, plan)
    return cache


def _pull(src: torch.Tensor, ids: np.ndarray, out: torch.Tensor) -> torch.Tensor:
    """:meth:`HistoryTable.pull` on a tensor (an in-RAM copy of a table): the same ops, the same bytes."""
    dst = out[: len(ids)]
    idx = torch.from_numpy(np.ascontiguousarray(ids, dtype=np.int64))
    if src.dtype == dst.dtype:
        torch.index_select(src, 0, idx, out=dst)
    else:
        dst.copy_(src.index_select(0, idx))
    return dst


def _predicted(preds: np.ndarray, logits_out: torch.Tensor | None, done: tuple | None) -> None:
    """Write a batch's predicted classes (and logits) into the host arrays."""
    if done is None:
        return
    rows, classes, logits = done
    preds[rows] = classes.cpu().numpy()
    if logits_out is not None:
        logits_out[torch.from_numpy(rows)] = logits.cpu()


@torch.inference_mode()
def layerwise_inference(trainer: Any, refresh: bool = True, logits_out: torch.Tensor | None = None,
                        stream: str | None = None, tables_only: bool = False) -> np.ndarray:
    """Predicted class of every node (store order) by layer-wise sweeps.

    ``tables_only`` stops after the sweeps that write history tables (filling them
    needs no logits; the last sweep would cost as much as any other) and returns
    predictions of -1.

    ``logits_out`` ([N, C], small graphs and tests only) also receives the logits.
    ``stream`` (auto/on/off) overrides ``--stream-inference`` for this call.
    """
    model = trainer.model
    model.eval()
    trainer.histories.flush()
    for slot in getattr(trainer, "slots", []):
        slot.release_hist()  # a sweep reads no halo history rows; the next training batch allocates them
    target = trainer.histories if refresh else _scratch(trainer)
    mode = stream if stream is not None else getattr(trainer.cfg.io, "stream_inference", "auto")
    plan = [group_ranges(trainer.partition_ptr, g)
            for g in fixed_plan(len(trainer.partition_ptr) - 1, trainer.cfg.train.parts_per_batch)]
    preds = np.full(trainer.ds.num_nodes, -1, dtype=np.int32)  # class ids fit; 4 B/node is charged
    num_layers = model.num_inference_layers
    feat_every = bool(getattr(model, "needs_features_every_layer", False))
    xbuf = None
    step = trainer.state.global_step
    trainer.inference_paths = []
    # a sweep over a billion-edge store takes tens of minutes: show it (on a terminal only, like tqdm's default)
    sweeps = len(target.tables) if tables_only else num_layers
    bar = tqdm(total=sweeps * len(plan), desc="inference", unit="batch", disable=None, leave=False)
    for layer in range(sweeps):
        bar.set_postfix(layer=layer)
        from_features = layer == 0 or feat_every
        prev: HistoryTable | None = target.tables[layer - 1] if layer > 0 else None
        # the layer's input table: what its halo rows are read from (GCNII: table l-1, features only for batch rows)
        name = "features" if prev is None else f"history table {layer - 1}"
        table = trainer.features if prev is None else prev.array
        ram, path = stream_input(trainer, table, mode, layer, name)
        # a table that cannot be streamed: ordered passes per group of batches, or gathers (oocgnn.train.scan)
        scan = plan_scan(trainer, table, plan, mode, layer, name, scannable=not feat_every) if path == "gather" else None
        trainer.inference_paths.append("scan" if scan is not None else path)
        if from_features:
            src = ram if (ram is not None and prev is None) else trainer.features
        else:
            src = ram if ram is not None else prev
        prev_t = torch.from_numpy(ram) if (ram is not None and prev is not None) else None
        groups = iter(scan) if scan is not None else iter([(plan, src, None)])  # (batches, x source, x index)
        for part, x_src, x_index in groups:
            cache = _sweep_cache(trainer, x_src, part) if path == "gather" and scan is None else None
            loader = BatchLoader(trainer.indptr, trainer.indices, x_src, None, [], trainer.pool,
                                 trainer.cfg.io.io_threads, cache=cache, io_engine=trainer.cfg.io.io_engine,
                                 subgraphs=trainer.subgraphs, x_index=x_index)
            done = None  # the last batch's predictions, read on the host one batch later (no wait for the device)
            try:
                for batch in trainer.prefetcher(part, loader):
                    x_all = batch.x
                    if layer > 0 and feat_every:
                        n = len(batch.n_id)
                        if xbuf is None or xbuf.shape[0] < n or xbuf.shape[1] != prev.channels:
                            xbuf = torch.empty(max(n, trainer.max_rows), prev.channels)
                        x_all = (prev.pull(batch.n_id, xbuf) if prev_t is None else _pull(prev_t, batch.n_id, xbuf)
                                 ).to(trainer.device)
                    out = model.forward_layer(layer, x_all, batch)
                    if layer < num_layers - 1:
                        trainer.push(target, [out], step=step, ranges=batch.ranges, tables=[layer])
                    else:
                        _predicted(preds, logits_out, done)
                        done = (batch.n_id[: batch.batch_size], out.argmax(dim=-1), out if logits_out is not None else None)
                    bar.update(1)
                _predicted(preds, logits_out, done)
            finally:
                loader.close()
            # a group's staged rows go before the next group reads its own: the last batch holds its
            # prefetcher (early release), which holds the loader and the rows
            batch = x_all = out = done = None
            del loader, x_src, x_index
        target.flush()
        if scan is not None:
            log.info("inference layer %d: %d ordered passes read %s in %.1f s (%s/s)", layer, scan.groups,
                     format_size(scan.bytes_read), scan.read_s, format_size(scan.bytes_read / max(scan.read_s, 1e-9)))
        # drop the RAM copy before the next layer loads its own (two never coexist)
        del src, prev_t, ram, scan, groups
    bar.close()
    return preds


def accuracy(ds: Any, preds: np.ndarray, labels: np.ndarray, split: str) -> float:
    """Accuracy on ``split`` (OGB's Evaluator when the store came from OGB)."""
    if split not in ds.split_names:
        return float("nan")
    ids = ds.split(split)
    ids = ids[labels[ids] >= 0]
    if len(ids) == 0:
        return float("nan")
    if ds.evaluator_name:
        os.environ.setdefault("OUTDATED_IGNORE", "1")
        from ogb.nodeproppred import Evaluator

        res = Evaluator(ds.evaluator_name).eval({"y_true": labels[ids].reshape(-1, 1),
                                                 "y_pred": preds[ids].reshape(-1, 1)})
        return float(res["acc"])
    return float((preds[ids] == labels[ids]).mean())


def evaluate(trainer: Any, refresh: bool = True) -> tuple[dict[str, float], np.ndarray]:
    """Train/valid/test accuracy of the current model, plus the predictions."""
    log.info("evaluation: layer-wise inference (%s)",
             "refreshing training histories" if refresh else "scratch tables, training histories untouched")
    preds = layerwise_inference(trainer, refresh)
    accs = {f"{s}_acc": accuracy(trainer.ds, preds, trainer.labels, s) for s in ("train", "valid", "test")}
    return accs, preds


def export_predictions(ds: Any, preds: np.ndarray, path: str | Path) -> None:
    """Write predictions indexed by *original* node id (``perm`` undone), atomically."""
    perm = np.asarray(ds.perm, dtype=np.int64)
    out = np.full(len(preds), -1, dtype=np.int64)
    out[perm] = preds
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, out)
