"""A small node-classification dataset from ``torch_geometric.datasets``.

Why it exists: Cora, CiteSeer, Amazon Photo and Coauthor CS have published
accuracies, so a store built from them checks the whole pipeline (store, batching,
histories, training) against known numbers.  They fit in RAM, so this source simply
loads the PyG ``Data`` object and slices it into blocks.

Assumptions, in order of importance:

* The user's dataset folder is read-only to us.  PyG writes ``processed/`` next to
  ``raw/``, so :meth:`PygSource.prepare_scratch` copies the raw files into the build's
  scratch folder (resumably: files already copied, same size and mtime, are kept) and
  PyG loads and processes *there*.  PyG never downloads: a missing raw file is an
  :class:`~oocgnn.errors.InputNotFoundError` naming the folder.
* Where PyG expects the raw files is learnt from the dataset class itself: we
  instantiate it in an empty folder with ``download`` replaced by a probe that
  reports ``raw_dir`` and ``raw_file_names``.  ``root`` may be the folder passed to
  the PyG class (``datasets/Planetoid``) or its parent (``datasets``).
* Single-graph, single-label node classification only.  A public split (boolean
  ``train_mask``/``val_mask``/``test_mask``; 2-D masks pick column ``split_seed``) is
  kept; otherwise a seeded split of 20 per class train, 30 per class valid, the rest
  test (Shchur et al. 2018).
* Features are yielded raw as float32 (no row normalisation; models may normalise).
"""
from __future__ import annotations

import contextlib
import inspect
import io
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from oocgnn.errors import ConfigError, InputError, InputNotFoundError
from oocgnn.prepare.source import SourceInfo

log = logging.getLogger(__name__)

#: Classes known to work; shown when the requested one does not exist.
KNOWN_CLASSES = ("Planetoid", "Amazon", "Coauthor", "CitationFull")
#: Seeded split used when the dataset has no public split (Shchur et al. 2018).
TRAIN_PER_CLASS, VALID_PER_CLASS = 20, 30


class _RawProbe(Exception):
    """Raised by the probe ``download`` to report where PyG expects raw files."""

    def __init__(self, raw_dir: str, raw_file_names: list[str]) -> None:
        super().__init__(raw_dir)
        self.raw_dir, self.raw_file_names = raw_dir, raw_file_names


def _no_download(self: Any) -> None:
    names = self.raw_file_names
    raise _RawProbe(self.raw_dir, [names] if isinstance(names, str) else list(names))


def _copy_tree(src: Path, dst: Path) -> int:
    """Copy files under ``src`` to ``dst``, skipping those already there (same size and mtime)."""
    copied = 0
    for path in sorted(src.rglob("*")):
        if not path.is_file():
            continue
        target = dst / path.relative_to(src)
        st = path.stat()
        if target.is_file() and (target.stat().st_size, target.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns):
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        shutil.copy2(path, tmp)  # keeps the mtime, which the skip test above compares
        os.replace(tmp, target)
        copied += 1
    return copied


class PygSource:
    """Streams ``torch_geometric.datasets.<class_name>(root, name)`` (see module docstring)."""

    def __init__(self, class_name: str, name: str, root: str | Path, split_seed: int = 0) -> None:
        import torch_geometric.datasets as pyg_datasets
        from torch_geometric.data import InMemoryDataset

        cls = getattr(pyg_datasets, class_name, None)
        if not (isinstance(cls, type) and issubclass(cls, InMemoryDataset)):
            raise ConfigError(
                f"pyg: unknown dataset class {class_name!r}; use a torch_geometric.datasets class "
                f"taking (root, name), e.g. {', '.join(KNOWN_CLASSES)}"
            )
        if "name" not in inspect.signature(cls.__init__).parameters:
            raise ConfigError(f"pyg: {class_name} takes no dataset name; use one of {', '.join(KNOWN_CLASSES)}")
        if split_seed < 0:
            raise ConfigError(f"pyg: --split-seed must be >= 0, got {split_seed}")
        self.class_name, self.name, self.root, self.split_seed = class_name, name, Path(root), int(split_seed)
        # A subclass whose download reports instead of fetching; PyG still finds
        # `process` through the base class, so loading works unchanged.
        self._cls = type(class_name, (cls,), {"download": _no_download})
        self._layout: tuple[Path, list[str]] | None = None
        self._workdir: Path | None = None
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._loaded: dict[str, Any] | None = None

    # -- locating and copying raw files ------------------------------------------
    def _instantiate(self, root: Path, probe: bool = False) -> Any:
        """Construct the PyG dataset at ``root``; while probing an empty folder, PyG's
        rejections mean a bad name, afterwards they mean unreadable raw files."""
        chatter = io.StringIO()  # PyG prints "Processing..." to stderr; the CLI owns the terminal
        try:
            with contextlib.redirect_stderr(chatter):
                return self._cls(str(root), self.name)
        except _RawProbe:
            raise
        except (AssertionError, ValueError, KeyError) as exc:
            if not probe:
                raise self._unreadable(exc) from exc
            raise ConfigError(
                f"pyg: {self.class_name} has no dataset named {self.name!r} ({exc or 'rejected by PyG'}); "
                f"check the name's spelling in the torch_geometric docs"
            ) from None
        except Exception as exc:  # PyG's readers raise pickle, zip, numpy errors on bad files
            if probe:
                raise
            raise self._unreadable(exc) from exc
        finally:
            if chatter.getvalue().strip():
                log.debug("torch_geometric: %s", chatter.getvalue().strip())

    def _unreadable(self, exc: BaseException) -> InputError:
        return InputError(
            f"pyg: cannot read the raw files of {self.class_name}/{self.name} copied from "
            f"{self.raw_folder()} ({type(exc).__name__}: {exc}); replace them with a fresh download"
        )

    def _raw_layout(self) -> tuple[Path, list[str]]:
        """(raw dir relative to the PyG root, raw file names), learnt from the class."""
        if self._layout is None:
            with tempfile.TemporaryDirectory(prefix="oocgnn-pyg-probe-") as tmp:
                try:
                    self._instantiate(Path(tmp), probe=True)
                except _RawProbe as probe:
                    self._layout = (Path(probe.raw_dir).relative_to(tmp), probe.raw_file_names)
                else:  # a class without raw files: nothing to copy
                    self._layout = (Path("raw"), [])
        return self._layout

    def raw_folder(self) -> Path:
        """The user's folder holding the raw files (``root`` or ``root/<class_name>``)."""
        rel, names = self._raw_layout()
        candidates = [self.root / rel, self.root / self.class_name / rel]
        for folder in candidates:
            if folder.is_dir() and all((folder / n).is_file() for n in names):
                return folder
        folder = next((c for c in candidates if c.is_dir()), candidates[0])
        missing = [n for n in names if not (folder / n).is_file()]
        raise InputNotFoundError(
            f"pyg: raw files of {self.class_name}/{self.name} not found in {folder} (missing: "
            f"{', '.join(missing[:4])}); point --root at the folder passed to torch_geometric.datasets."
            f"{self.class_name}(root, name) on a machine that downloaded it"
        )

    def prepare_scratch(self, workdir: Path) -> None:
        """Copy the raw files into ``workdir`` (resumable) so PyG writes only there."""
        src = self.raw_folder()
        root = Path(workdir) / "pyg"
        copied = _copy_tree(src, root / self._raw_layout()[0])
        log.debug("copied %d raw files from %s to %s", copied, src, root)
        if self._workdir != root:
            self._workdir, self._loaded = root, None

    # -- loading --------------------------------------------------------------------
    def _data(self) -> dict[str, Any]:
        if self._loaded is None:
            if self._workdir is None:  # used outside a build: load from a private temp dir
                self._tmp = tempfile.TemporaryDirectory(prefix="oocgnn-pyg-")
                self.prepare_scratch(Path(self._tmp.name))
            assert self._workdir is not None
            try:
                dataset = self._instantiate(self._workdir)
            except _RawProbe:  # raw files vanished between copy and load
                raise InputNotFoundError(
                    f"pyg: raw files missing in {self._workdir}; re-run to copy them again") from None
            self._loaded = self._convert(dataset)
        return self._loaded

    def _convert(self, dataset: Any) -> dict[str, Any]:
        what = f"pyg: {self.class_name}/{self.name}"
        if len(dataset) != 1:
            raise ConfigError(
                f"{what} holds {len(dataset)} graphs; only single-graph node classification is supported")
        data = dataset[0]
        if data.x is None or data.y is None:
            raise ConfigError(f"{what} has no node features or labels; only node classification is supported")
        y = data.y
        if y.dim() > 1 and y.size(-1) > 1 or y.is_floating_point():
            raise ConfigError(f"{what} is multi-label or regression (y shape {tuple(y.shape)}); "
                              f"only single-label node classification is supported")
        if y.numel() != data.num_nodes:
            raise ConfigError(f"{what}: labels are not per node; only node classification is supported")
        from torch_geometric.utils import is_undirected

        x = data.x.to_dense() if data.x.is_sparse else data.x
        labels = y.reshape(-1).long().numpy().astype(np.int64)
        labels[labels < 0] = -1
        splits, note = self._public_split(data)
        if splits is None:
            splits, note = self._seeded_split(labels), (
                f"seeded split (seed {self.split_seed}): {TRAIN_PER_CLASS} per class train, "
                f"{VALID_PER_CLASS} per class valid, rest test (Shchur et al. 2018)"
            )
        return {
            "x": np.ascontiguousarray(x.numpy(), dtype=np.float32),
            "edge_index": data.edge_index.numpy().astype(np.int64),
            "labels": labels,
            "num_classes": int(labels.max()) + 1,
            "directed": not bool(is_undirected(data.edge_index, num_nodes=data.num_nodes)),
            "splits": splits,
            "split_note": note,
        }

    def _public_split(self, data: Any) -> tuple[dict[str, np.ndarray] | None, str]:
        pyg_names = {"train": "train_mask", "valid": "val_mask", "test": "test_mask"}
        masks = {k: getattr(data, m, None) for k, m in pyg_names.items()}
        if any(m is None for m in masks.values()):
            return None, ""
        note = "public split"
        if masks["train"].dim() == 2:  # several public splits, one per column
            col = self.split_seed % masks["train"].size(1)
            masks = {k: m[:, col] for k, m in masks.items()}
            note = f"public split {col} of {data.train_mask.size(1)}"
        return {k: m.nonzero().reshape(-1).numpy().astype(np.int64) for k, m in masks.items()}, note

    def _seeded_split(self, labels: np.ndarray) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(self.split_seed)
        parts: dict[str, list[np.ndarray]] = {"train": [], "valid": [], "test": []}
        for c in range(int(labels.max()) + 1):
            ids = rng.permutation(np.flatnonzero(labels == c))
            parts["train"].append(ids[:TRAIN_PER_CLASS])
            parts["valid"].append(ids[TRAIN_PER_CLASS:TRAIN_PER_CLASS + VALID_PER_CLASS])
            parts["test"].append(ids[TRAIN_PER_CLASS + VALID_PER_CLASS:])
        return {k: np.sort(np.concatenate(v)).astype(np.int64) for k, v in parts.items()}

    # -- GraphSource --------------------------------------------------------------------
    def info(self) -> SourceInfo:
        d = self._data()
        return SourceInfo(
            name=f"pyg:{self.class_name}/{self.name}", num_nodes=d["x"].shape[0],
            num_features=d["x"].shape[1], num_classes=d["num_classes"], feature_dtype="float32",
            num_edges_hint=d["edge_index"].shape[1], directed=d["directed"], split_note=d["split_note"],
            extra={"pyg_class": self.class_name, "pyg_name": self.name, "split_seed": self.split_seed,
                   "features": "raw (not row-normalised)"},
        )

    def fingerprint(self) -> dict[str, Any]:
        folder = self.raw_folder()
        files = sorted(p for p in folder.rglob("*") if p.is_file())
        return {
            "source": "pyg", "class": self.class_name, "name": self.name, "split_seed": self.split_seed,
            "raw_folder": str(folder.resolve()),
            "files": [[str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns] for p in files],
        }

    def iter_edges(self, block_edges: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        if block_edges < 1:
            raise ConfigError(f"block_edges must be >= 1, got {block_edges}")
        ei = self._data()["edge_index"]
        for lo in range(0, ei.shape[1], block_edges):
            yield ei[0, lo:lo + block_edges].copy(), ei[1, lo:lo + block_edges].copy()

    def iter_features(self, block_rows: int) -> Iterator[np.ndarray]:
        if block_rows < 1:
            raise ConfigError(f"block_rows must be >= 1, got {block_rows}")
        x = self._data()["x"]
        for lo in range(0, x.shape[0], block_rows):
            yield x[lo:lo + block_rows]

    def labels(self) -> np.ndarray:
        return self._data()["labels"].copy()

    def splits(self) -> dict[str, np.ndarray]:
        return {k: v.copy() for k, v in self._data()["splits"].items()}
