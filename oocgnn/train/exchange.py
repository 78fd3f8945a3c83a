"""Cross-host halo rows: each rank owns its partitions' history rows and ships the ones others need.

On the ``all-to-all`` path (ranks on several hosts, or forced with
``--halo-exchange all-to-all``) every rank keeps its own history tables
(``RUN/histories/rank-R/``) and trains only the partitions it owns
(:class:`~oocgnn.batching.RankSplit` ``by_owner``), so it is the only writer of its
rows.  A halo row owned by another rank is *another stale history*: after each step
a rank sends the rows it just pushed to every rank whose partitions have them in
their halo (send maps computed once from the partition cut), with one
``all_to_all_single`` of ids and one of values.  The exchange runs in the background
during the next step's forward and backward (PipeGCN-style, one step stale) and its
rows are pushed into the local tables at the end of that step, through the same push
path as the rank's own rows (write-behind, journal, exact prefetch patching), so
checkpoints and resume need nothing new.  :meth:`HaloExchange.drain` lands the
exchange in flight; checkpoints and epoch ends call it.
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from oocgnn.batching import Ranges, partition_owner, ranges_to_ids
from oocgnn.history import HistorySet

log = logging.getLogger(__name__)

_MAP_BLOCK = 1 << 22  #: CSR entries per read while computing the send maps


def owner_row_ranges(partition_ptr: np.ndarray, world_size: int) -> list[tuple[int, int]]:
    """Store-id range ``[lo, hi)`` owned by each rank (contiguous partition blocks)."""
    owner = partition_owner(len(partition_ptr) - 1, world_size)
    out = []
    for r in range(world_size):
        parts = np.flatnonzero(owner == r)
        out.append((int(partition_ptr[parts[0]]), int(partition_ptr[parts[-1] + 1])) if len(parts) else (0, 0))
    return out


def send_masks(indptr: np.ndarray, indices: np.ndarray, rows: list[tuple[int, int]], rank: int) -> list[np.ndarray]:
    """For every peer q, which of this rank's rows lie in the halo of q's rows (bool over ``rows[rank]``).

    One sequential pass over the CSR slices of the other ranks (streamed in blocks).
    """
    lo, hi = rows[rank]
    masks = []
    for q, (qlo, qhi) in enumerate(rows):
        mask = np.zeros(hi - lo, dtype=bool)
        if q != rank and qhi > qlo:
            start, end = int(indptr[qlo]), int(indptr[qhi])
            for s in range(start, end, _MAP_BLOCK):
                cols = np.asarray(indices[s:min(s + _MAP_BLOCK, end)])
                mine = cols[(cols >= lo) & (cols < hi)]
                mask[mine - lo] = True
        masks.append(mask)
    return masks


class HaloExchange:
    """One rank's side of the per-step all-to-all of freshly pushed history rows."""

    def __init__(self, world_size: int, rank: int, histories: HistorySet, indptr: np.ndarray,
                 indices: np.ndarray, partition_ptr: np.ndarray) -> None:
        self.world_size, self.rank = world_size, rank
        self.histories = histories
        self.rows = owner_row_ranges(np.asarray(partition_ptr, dtype=np.int64), world_size)
        self.masks = send_masks(indptr, indices, self.rows, rank)
        self.channels = [t.channels for t in histories.tables]
        self.width = sum(self.channels)
        self.bytes_sent = 0       #: value + id bytes sent so far (metrics)
        self.rows_received = 0
        self._pending: tuple[list[Any], torch.Tensor, torch.Tensor, int] | None = None
        n_send = [int(m.sum()) for m in self.masks]
        log.info("halo exchange: rank %d owns rows [%d, %d), sends up to %s rows per epoch to its peers",
                 rank, *self.rows[rank], n_send)

    def after_step(self, ranges: Ranges, pushes: list[torch.Tensor] | None, step: int) -> None:
        """Land the previous step's exchange, then start sending the rows this step pushed.

        Every rank calls this once per step (an idle rank with ``ranges=[]``): the
        collectives pair up only if all do.
        """
        self.drain()
        W, lo = self.world_size, self.rows[self.rank][0]
        ids = ranges_to_ids(ranges) if ranges and pushes else np.empty(0, dtype=np.int64)
        if len(ids):
            vals = torch.cat([p.detach().to("cpu", torch.float32) for p in pushes], dim=1)
        else:
            vals = torch.empty(0, self.width, dtype=torch.float32)
        send_ids, send_vals, counts = [], [], []
        for q in range(W):
            sel = self.masks[q][ids - lo] if len(ids) else np.zeros(0, dtype=bool)
            send_ids.append(ids[sel])
            send_vals.append(vals[torch.from_numpy(sel)])
            counts.append(int(sel.sum()))
        in_counts = torch.tensor(counts, dtype=torch.int64)
        out_counts = torch.empty(W, dtype=torch.int64)
        dist.all_to_all_single(out_counts, in_counts)  # sizes first (tiny, synchronous)
        recv_n = out_counts.tolist()
        send_id_t = torch.from_numpy(np.concatenate(send_ids)) if W else torch.empty(0, dtype=torch.int64)
        send_val_t = torch.cat(send_vals).contiguous()
        recv_id_t = torch.empty(sum(recv_n), dtype=torch.int64)
        recv_val_t = torch.empty(sum(recv_n), self.width, dtype=torch.float32)
        works = [dist.all_to_all_single(recv_id_t, send_id_t, recv_n, counts, async_op=True),
                 dist.all_to_all_single(recv_val_t.view(-1), send_val_t.view(-1), [n * self.width for n in recv_n],
                                        [n * self.width for n in counts], async_op=True)]
        self.bytes_sent += send_id_t.numel() * 8 + send_val_t.numel() * 4
        self._pending = (works, recv_id_t, recv_val_t, step)

    def drain(self) -> None:
        """Wait for the exchange in flight and push its rows into this rank's tables."""
        if self._pending is None:
            return
        works, ids_t, vals_t, step = self._pending
        self._pending = None
        for w in works:
            w.wait()
        if ids_t.numel() == 0:
            return
        ids = ids_t.numpy()
        order = np.argsort(ids, kind="stable")
        vals = vals_t[torch.from_numpy(order)]
        parts, o = [], 0
        for c in self.channels:
            parts.append(vals[:, o:o + c])
            o += c
        self.histories.push(parts, step=step, ids=ids[order])
        self.rows_received += len(ids)
