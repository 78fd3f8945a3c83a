"""Read-ahead of GAS batches into a fixed ring of staging buffers.

The epoch plan is known before the epoch starts, so a coordinator thread builds
batch ``t+1 .. t+k`` (CSR slices, feature rows of batch and halo, halo history
rows) while the trainer computes batch ``t``.  Gathers are split over a pool of
``io_threads`` threads because a memmap gather faults one page at a time; with
``io_engine`` ``auto``/``direct``/``pread`` (the default is ``auto``) random rows of
file-backed tables go through the row-gather engine (:mod:`oocgnn.io`) instead:
sorted page reads, 64 in flight, nothing mapped.

The staging buffers (:class:`oocgnn.staging.Slot`) are preallocated once and sized from
an upper bound on any batch.  Batches are host batches: on CPU the trainer computes on
the staging tensors, and a slot goes back to the loader as soon as the forward pass no
longer needs it (see :class:`Prefetcher`); on CUDA the slots are page-locked and every
tensor of a batch lies in them, and :class:`oocgnn.train.feed.DeviceFeed` copies each
batch to the device one batch ahead.

History rows gathered ahead may miss pushes that the batches in between make.
Each prepared batch records the history's ``landed_seq`` before it gathered, and
:meth:`Prefetcher.finish` patches them (:meth:`HistorySet.patch_rows`) at the batch's turn: the
result equals a synchronous read (``staleness_bound=0``) or misses at most the
last ``s`` pushes, and the counters say which.
"""
from __future__ import annotations

import logging
import mmap
import queue
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import torch

from oocgnn.batch import SubgraphBatch
from oocgnn.errors import OocgnnError
from oocgnn.subgraph import Ranges, SubgraphBuilder, SubgraphStructure
from oocgnn.history import HistorySet, HistoryTable
from oocgnn.io import RowFile, is_mapped, rowfile_for
from oocgnn.staging import Slot, saved_so_far, storages_of
from oocgnn.utils.mapped import check_window

log = logging.getLogger(__name__)

#: most rows one gather call reads before :func:`~oocgnn.utils.mapped.check_window` may release the
#: pages it mapped.  A random row's fault maps more than its page: fault-around, and on kernels that map
#: large page-cache folios whole (ext4 on Linux 6.18 here) ~1 MB per row, so what a chunk maps is
#: kernel-dependent; checks cost ~50 us each, ~1 % of a step at this size
GATHER_CHUNK_ROWS = 1024


def as_tensor(array: np.ndarray) -> torch.Tensor:
    """Zero-copy torch view of a (possibly read-only) memmap; we never write through it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.from_numpy(np.asarray(array))


def advise_random(array: np.ndarray) -> None:
    """MADV_RANDOM on a memmap: a row gather must not read ahead the whole file."""
    mm = getattr(array, "_mmap", None)
    if mm is not None and hasattr(mm, "madvise"):
        mm.madvise(mmap.MADV_RANDOM)


@dataclass
class IOStats:
    """What the loader actually read and how long the trainer waited for it."""

    io_wait_s: float = 0.0
    feature_bytes: int = 0
    history_bytes: int = 0
    csr_bytes: int = 0
    halo_rows: int = 0
    batch_rows: int = 0
    patched_pending: int = 0
    patched_table: int = 0
    stale_rows: int = 0
    batches: int = 0
    early_releases: int = 0  #: batches whose whole slot went back to the loader before their backward pass

    def add(self, other: "IOStats") -> None:
        for k in self.__dataclass_fields__:
            setattr(self, k, getattr(self, k) + getattr(other, k))

    def as_dict(self) -> dict[str, float]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass
class Prepared:
    """A batch read into its slot: the loader's output, then (``batch``) the host batch made of it."""

    sub: SubgraphStructure
    slot: Slot
    x: torch.Tensor
    hist: list[torch.Tensor]
    snap_seq: int
    stats: IOStats = field(default_factory=IOStats)
    #: labels, masks and edges in the slot's arena, made by the loading thread (None: no arena)
    host: dict[str, np.ndarray] | None = None
    batch: SubgraphBatch | None = None


class BatchLoader:
    """Builds one batch into a slot: subgraph structure, input rows, halo history rows.

    ``x_source`` is the feature memmap (training, layer 0) or a history table
    (evaluation sweeps); ``hist_tables`` are the tables whose halo rows the model
    pulls (training) or ``[]`` (evaluation).  ``io_engine`` chooses how random rows
    of file-backed sources are read (``--io-engine``; RAM arrays are always indexed).
    ``subgraphs``: the trainer's builder (kept across epochs and sweeps: 8 bytes per
    node); without one the loader makes its own.  ``transpose``: also build each batch's
    transposed adjacency (training batches of models with ``uses_adj_transpose``).
    ``x_index``: the row of ``x_source`` that holds each node (int32 per node, -1: none;
    a scanned sweep stages only the rows its group of batches reads: :mod:`oocgnn.train.scan`);
    None: row ``i`` of ``x_source`` is node ``i``.
    """

    def __init__(self, indptr: np.ndarray, indices: np.ndarray, x_source: np.ndarray | HistoryTable,
                 histories: HistorySet | None, hist_tables: list[int], pool: ThreadPoolExecutor | None,
                 io_threads: int = 1, cache: object | None = None, hist_caches: list | None = None,
                 io_engine: str = "auto", subgraphs: SubgraphBuilder | None = None,
                 transpose: bool = False, x_index: np.ndarray | None = None) -> None:
        self.indptr, self.indices = indptr, indices
        self.x_index = x_index
        self.transpose = transpose
        self.subgraphs = subgraphs if subgraphs is not None else SubgraphBuilder(indptr, indices, io_engine)
        #: per-table HistoryCache (or None), indexed by table; only for loaders whose plan the caches know
        self.hist_caches = hist_caches
        self.histories, self.hist_tables = histories, hist_tables
        self.pool, self.io_threads, self.cache = pool, max(1, io_threads), cache
        if isinstance(x_source, HistoryTable):
            self.x_t, self.x_row_bytes, x_array = x_source._t, x_source.row_bytes, x_source.array
        else:
            self.x_t, self.x_row_bytes, x_array = as_tensor(x_source), x_source.shape[1] * x_source.dtype.itemsize, x_source
        self.width = self.x_t.shape[1]
        #: id(source tensor) -> (tensor, its RowFile): _gather keeps its (src, ids, out) signature
        self._files: dict[int, tuple[torch.Tensor, RowFile]] = {}
        self._hist_pool: ThreadPoolExecutor | None = None  #: one thread: halo history rows (see load)
        #: id(source tensor) of sources that live in RAM (no file behind them): gathered by one index_select
        self._in_ram: set[int] = set()
        self._open_file(self.x_t, x_array, io_engine, isinstance(x_source, HistoryTable))
        for t in hist_tables:
            table = histories.tables[t]
            self._open_file(table._t, table.array, io_engine, True)

    def _open_file(self, src: torch.Tensor, array: np.ndarray, engine: str, written: bool) -> None:
        rf = rowfile_for(array, engine, written=written)  # history tables: written through a memmap
        if rf is not None:
            self._files[id(src)] = (src, rf)
        elif not is_mapped(array):
            self._in_ram.add(id(src))

    def close(self) -> None:
        """Close the engine's file descriptors (also done when the loader is collected)."""
        if self._hist_pool is not None:
            self._hist_pool.shutdown(wait=True)
            self._hist_pool = None
        for _, rf in self._files.values():
            rf.close()
        self._files.clear()

    def _gather(self, src: torch.Tensor, ids: np.ndarray, out: torch.Tensor) -> None:
        """``out[:] = src[ids]`` (float32 out): through the row-gather engine for file-backed
        sources; memory-mapped ones (``--io-engine mmap``, ``--in-memory``) in chunks over the I/O
        pool (page faults in flight at once); RAM arrays (streamed sweeps) in one call."""
        n = len(ids)
        if n == 0:
            return
        entry = self._files.get(id(src))
        if entry is not None and entry[0] is src:
            self._gather_engine(entry[1], src, ids, out)
            return
        idx = torch.from_numpy(ids)
        if id(src) in self._in_ram:  # no I/O to overlap: one call, parallel over torch's intra-op threads
            if src.dtype == out.dtype:
                torch.index_select(src, 0, idx, out=out[:n])
            else:
                out[:n].copy_(src.index_select(0, idx))
            return

        def run(a: int, b: int) -> None:
            if src.dtype == out.dtype:
                torch.index_select(src, 0, idx[a:b], out=out[a:b])
            else:
                out[a:b].copy_(src.index_select(0, idx[a:b]))
            check_window()  # each random row mapped a page: keep RSS under the budget's mapped window

        chunks = max(min(self.io_threads * 4, max(1, n // 256)), -(-n // GATHER_CHUNK_ROWS))  # read at call time (tests shrink it)
        bounds = np.linspace(0, n, chunks + 1).astype(np.int64)
        spans = [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
        if self.pool is None or len(spans) <= 1:
            for a, b in spans:
                run(a, b)
            return
        futs = [self.pool.submit(run, a, b) for a, b in spans]
        for f in futs:
            f.result()

    @staticmethod
    def _gather_engine(rf: RowFile, src: torch.Tensor, ids: np.ndarray, out: torch.Tensor) -> None:
        """Engine gather: straight into ``out`` when dtypes match, else via a source-dtype buffer."""
        if src.dtype == out.dtype and out.is_contiguous():
            rf.gather(ids, out.numpy())
        else:
            tmp = torch.empty(len(ids), src.shape[1], dtype=src.dtype)
            rf.gather(ids, tmp.numpy())
            out.copy_(tmp)

    def load(self, ranges: Ranges, slot: Slot) -> Prepared:
        slot.wait_guard()  # the device copy of the slot's last batch is done: it may be written
        take = np.empty
        if slot.arena is not None:  # everything bound for the device goes to page-locked memory
            slot.arena.reset()
            take = slot.arena.take
        sub = self.subgraphs(ranges, take)
        if self.transpose:
            sub.transpose(take)
        B, n = sub.batch_size, len(sub.n_id)
        st = IOStats(batch_rows=B, halo_rows=n - B, batches=1)
        st.csr_bytes = (B + len(ranges)) * 8 + (int(sub.crow[-1]) - B) * self.indices.dtype.itemsize + (n - B) * 16
        snap = self.histories.snapshot_seq() if self.histories is not None else 0
        x = slot.x(n, self.width)
        if self.x_index is not None:  # a scanned group's staged rows, in RAM: batch and halo rows in one call
            self._gather(self.x_t, self._staged_index(sub.n_id), x[:n])
        elif id(self.x_t) in self._files:
            # batch rows of a file: the engine reads their ranges as consecutive pages, 512 KiB
            # requests with 64 in flight; a memmap slice would fault them in one page at a time
            # (the feature memmap is MADV_RANDOM: no read-ahead) and map them into RSS
            self._gather(self.x_t, sub.n_id[:B], x[:B])
        else:
            o = 0
            for s, e in ranges:  # batch rows: sequential slices
                x[o:o + e - s].copy_(self.x_t[s:e])
                o += e - s
        halo = sub.n_id[B:]
        # halo history rows are read on a second thread while the feature rows are read here:
        # the two tables are separate files (and caches), and each gather leaves the disk idle
        # while it plans pages and copies rows out
        hist_job = self._hist_executor().submit(self._load_hist, halo, slot, n - B) \
            if self.hist_tables and len(halo) else None
        if self.x_index is not None:
            st.feature_bytes = 0  # read by the group's ordered pass (counted there)
        elif self.cache is not None:
            self.cache.gather(halo, x[B:], lambda ids, out: self._gather(self.x_t, ids, out))
            st.feature_bytes = (B + self.cache.last_misses) * self.x_row_bytes
        else:
            self._gather(self.x_t, halo, x[B:])
            st.feature_bytes = n * self.x_row_bytes
        hist, st.history_bytes = hist_job.result() if hist_job is not None else self._load_hist(halo, slot, n - B)
        return Prepared(sub, slot, x, hist, snap, st)

    def _staged_index(self, n_id: np.ndarray) -> np.ndarray:
        """Rows of the staged table that hold nodes ``n_id`` (every one must be staged)."""
        pos = self.x_index[n_id]
        if len(pos) and int(pos.min()) < 0:
            raise RuntimeError("a scanned sweep's group did not stage every row its batch reads (a bug: please "
                               "report it; --stream-inference off gathers instead)")
        return pos.astype(np.int64)

    def _hist_executor(self) -> ThreadPoolExecutor:
        if self._hist_pool is None:
            self._hist_pool = ThreadPoolExecutor(1, thread_name_prefix="oocgnn-hist-gather")
        return self._hist_pool

    def _load_hist(self, halo: np.ndarray, slot: Slot, h_rows: int) -> tuple[list[torch.Tensor], int]:
        """Halo rows of every history table into ``slot`` (through its cache, if any); (views, bytes read).

        Waits until the slot's history buffers are writable: a slot handed back after its
        previous batch's input layer still holds that batch's halo rows until its forward
        pass has read them.
        """
        hist, nbytes = [], 0
        if self.hist_tables:
            slot.hist_writable.wait()
            slot.hist_writable.clear()
            slot.ensure_hist()
        for t in self.hist_tables:
            table = self.histories.tables[t]
            h = slot.hist[t][:h_rows]
            hc = self.hist_caches[t] if self.hist_caches else None
            if hc is not None:  # hits are as fresh as the table at the snapshot (see HistoryCache)
                hc.gather(halo, h, lambda ids, out, src=table._t: self._gather(src, ids, out))
                nbytes += hc.last_misses * table.row_bytes
            else:
                self._gather(table._t, halo, h)
                nbytes += h_rows * table.row_bytes
            hist.append(h)
        return hist, nbytes


class Prefetcher:
    """Iterate a plan of batches, reading ``depth`` batches ahead (0 = synchronous).

    Yields :class:`SubgraphBatch` objects whose tensors live in ring slots (host memory): a
    batch is valid until the next one is requested, or until the trainer hands its slot
    back early (``early_release``, CPU only, inside :func:`~oocgnn.staging.saved_storages`):
    ``batch.release_staging("x", held)`` after the input layer gives the slot to the
    loader, which reads the next batch's feature rows into it at once, and
    ``batch.release_staging("all", held)`` after the forward pass lets it write the halo
    history rows too; each only if nothing autograd saved for backward, nor a tensor in
    ``held``, lives in the buffers it frees.  So the next batch is read while this one
    computes; at ``depth`` 0 that is the only overlap of reads with compute, and it
    costs no second slot.  ``close()`` joins the coordinator; a worker exception is
    re-raised in the iterating thread (a bad file or a full disk as itself).
    ``edge_index``: build ``batch.edge_index`` (16 bytes per edge on the iterating
    thread; only models with ``uses_edge_index`` read it), else it is None.

    Two steps per batch, so a device transfer stage (:class:`oocgnn.train.feed.DeviceFeed`)
    can copy a batch before its turn: :meth:`staged` yields it as read (halo history rows as
    of its gather), and :meth:`finish`, at the batch's turn, brings those rows up to date
    (:meth:`HistorySet.patch_rows`) and takes their ages.  Iterating the prefetcher itself
    does both back to back.  Slots with an arena (asynchronous devices) get every tensor of
    the batch written into it by the loading thread.
    """

    def __init__(self, loader: BatchLoader, plan: list[Ranges], slots: list[Slot], depth: int,
                 labels: np.ndarray, train_mask: np.ndarray, device: torch.device, staleness_bound: int = 0,
                 step_fn=None, edge_index: bool = True, early_release: bool = False) -> None:
        assert len(slots) >= depth + 1, "ring needs depth + 1 slots"
        self.loader, self.plan, self.slots, self.depth = loader, plan, slots, depth
        #: slots go back to the loader during the forward pass when nothing saved for backward is in them
        self.early_release = early_release and device.type == "cpu"
        self._x_back: Slot | None = None     #: the current batch's slot, if the loader has it (input rows read)
        self._all_back: Slot | None = None   #: ... and may write its halo history rows too
        self.labels, self.train_mask = labels, train_mask
        self.bound = staleness_bound
        self.with_edge_index = edge_index
        self.step_fn = step_fn or (lambda: 0)
        self.stats = IOStats()
        self._ready: queue.Queue = queue.Queue()
        self._free: queue.Queue = queue.Queue()
        for s in slots[: depth + 1]:
            self._free.put(s)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _load(self, ranges: Ranges, slot: Slot) -> Prepared:
        prep = self.loader.load(ranges, slot)
        if slot.arena is not None:  # on the loading thread, off the trainer's
            prep.host = self._host_arrays(prep, slot.arena.take)
        return prep

    def _run(self) -> None:
        try:
            for ranges in self.plan:
                slot = None
                while slot is None:
                    if self._stop.is_set():
                        return
                    try:
                        slot = self._free.get(timeout=0.1)
                    except queue.Empty:
                        pass
                self._ready.put(self._load(ranges, slot))
        except BaseException as exc:
            self._ready.put(exc)

    def _next_prepared(self, i: int) -> Prepared:
        if self.depth == 0 and not self.early_release:
            return self._load(self.plan[i], self._free.get())
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="oocgnn-prefetch", daemon=True)
            self._thread.start()
        item = self._ready.get()
        if isinstance(item, (OocgnnError, OSError)):
            raise item  # a bad file or a full disk: the CLI says it in one line, as from the trainer's thread
        if isinstance(item, BaseException):
            raise RuntimeError("prefetch worker failed") from item
        return item

    def __iter__(self) -> Iterator[SubgraphBatch]:
        for prep in self.staged():
            self.finish(prep)
            yield prep.batch

    def staged(self) -> Iterator[Prepared]:
        """The plan's batches as read (``prep.batch``, halo rows not yet patched); the previous one's slot
        goes back to the loader when the next is asked for."""
        prev: Slot | None = None
        try:
            for i in range(len(self.plan)):
                if prev is not None:
                    if prev is not self._x_back:
                        self._free.put(prev)
                    if prev is not self._all_back:  # else set already, maybe taken by the next load
                        prev.hist_writable.set()
                self._x_back = self._all_back = None
                t0 = time.perf_counter()
                prep = self._next_prepared(i)
                prep.stats.io_wait_s = time.perf_counter() - t0
                prep.batch = self._to_batch(prep)
                prev = prep.slot
                yield prep
        finally:
            self.close()

    def finish(self, prep: Prepared, apply: bool = True) -> list[tuple[np.ndarray, torch.Tensor | None]]:
        """At the batch's turn: its halo rows as fresh as a read now (``apply``: written into the slot),
        their ages, its I/O counters.  Returns per table the patched ``(rows, values)``."""
        t0 = time.perf_counter()
        st, sub, batch = prep.stats, prep.sub, prep.batch
        halo = sub.n_id[sub.batch_size:]
        patches = []
        hs = self.loader.histories
        if hs is not None:
            for t, h in zip(self.loader.hist_tables, prep.hist):
                rows, values, r = hs.patch_rows(t, halo, prep.snap_seq, self.bound)
                st.patched_pending += r["patched_pending"]
                st.patched_table += r["patched_table"]
                st.stale_rows += r["stale_rows"]
                if apply and len(rows):
                    h[torch.from_numpy(rows)] = values
                patches.append((rows, values))
            step = self.step_fn()
            batch.hist_age = [torch.from_numpy(hs.age(t, halo, step)) for t in self.loader.hist_tables]
        st.io_wait_s += time.perf_counter() - t0
        self.stats.add(st)
        return patches

    def _host_arrays(self, prep: Prepared, take) -> dict[str, np.ndarray]:
        """Labels, training mask and positions, and edges of the batch rows, allocated by ``take``."""
        sub = prep.sub
        B = sub.batch_size
        rows = sub.n_id[:B]
        y = take(B, np.int64)
        y[:] = self.labels[rows]
        mask = take(B, np.bool_)
        mask[:] = self.train_mask[rows]
        where = np.flatnonzero(mask)
        index = take(len(where), np.int64)
        index[:] = where
        out = {"y": y, "train_mask": mask, "train_index": index}
        if self.with_edge_index:
            out["edge_index"] = sub.make_edge_index(take)
        return out

    def _to_batch(self, prep: Prepared) -> SubgraphBatch:
        sub = prep.sub
        B = sub.batch_size
        host = prep.host if prep.host is not None else self._host_arrays(prep, np.empty)
        tensors = {k: torch.from_numpy(v) for k, v in host.items()}
        tensors.setdefault("edge_index", None)
        release = (lambda part, held, slot=prep.slot: self._release(slot, part, held)) if self.early_release else None
        return SubgraphBatch(n_id=sub.n_id, batch_size=B, ranges=sub.ranges, x=prep.x, adj_t=sub.adj_t(),
                             deg=torch.from_numpy(sub.deg), halo_hist=list(prep.hist), adj_t_T=sub.adj_t_transposed(),
                             num_labelled=len(host["train_index"]), release_staging=release, **tensors)

    def _release(self, slot: Slot, part: str, held: list) -> bool:
        """Hand ``slot``'s input rows (``part="x"``) or all of it (``"all"``) to the loader, unless autograd
        saved, or ``held`` holds, a tensor living in what would be freed; True if it went."""
        saved = saved_so_far()
        if saved is None or self._all_back is slot:
            return False
        busy = saved | storages_of(held)
        if self._x_back is not slot:
            if slot.x_storage() in busy:
                return False
            self._x_back = slot
            self._free.put(slot)  # the loader reads the next batch's feature rows into it now
        if part == "all":
            if slot.hist_storages() & busy:
                return False
            self._all_back = slot
            self.stats.early_releases += 1
            slot.hist_writable.set()
        return True

    def close(self) -> None:
        self._stop.set()
        for slot in self.slots:  # the iteration is over: no batch reads its slot any more (the next
            slot.hist_writable.set()  # prefetcher, or a load still waiting here, may write them)
        if self._thread is not None:
            self._thread.join()
            self._thread = None
