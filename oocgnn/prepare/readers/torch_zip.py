"""Read small ``torch.save`` files (``meta.pt``, ``split_dict.pt``) without running foreign code.

Why: OGB stores MAG240M's ``meta.pt``/``split_dict.pt`` (and optionally an OGB
``split/*/split_dict.pt``) as pickles holding numpy arrays.  ``torch.load`` with
``weights_only=True`` (the default since torch 2.6) rejects them, and
``weights_only=False`` executes whatever the pickle names: unacceptable for files
downloaded from the internet.  A torch >= 1.6 file is a zip whose
``<archive>/data.pkl`` keeps numpy arrays *inline*, so we unpickle that member
with an allow-list of exactly the globals numpy arrays, dtypes and scalars need.

If the pickle references tensor storages (``persistent_load``), the file holds
real torch tensors; those are read with ``torch.load(weights_only=True)``, which
is safe, and converted to numpy.
"""
from __future__ import annotations

import io
import logging
import os
import pickle
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from oocgnn.errors import InputError, InputNotFoundError

log = logging.getLogger(__name__)

#: (module, name) pairs a numpy-only pickle may reference -> the object to use.
_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy._core.multiarray", "_reconstruct"): np._core.multiarray._reconstruct,
    ("numpy.core.multiarray", "_reconstruct"): np._core.multiarray._reconstruct,
    ("numpy._core.multiarray", "scalar"): np._core.multiarray.scalar,
    ("numpy.core.multiarray", "scalar"): np._core.multiarray.scalar,
    ("_codecs", "encode"): __import__("_codecs").encode,  # protocol-2 pickles encode bytes this way
    ("collections", "OrderedDict"): __import__("collections").OrderedDict,
}
for _mod in ("builtins", "__builtin__"):  # protocol 2 names plain containers this way
    for _t in (bytes, bytearray, set, frozenset, complex):
        _ALLOWED[(_mod, _t.__name__)] = _t


class _NeedsTorch(Exception):
    """The pickle references tensor storages; only torch can rebuild those."""


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, label: str) -> None:
        super().__init__(io.BytesIO(data))
        self._label = label

    def find_class(self, module: str, name: str) -> Any:
        obj = _ALLOWED.get((module, name))
        if obj is None and module == "numpy.dtypes" and name.endswith("DType"):
            obj = getattr(__import__("numpy.dtypes").dtypes, name, None)
        if obj is None and (module == "torch" or module.startswith("torch.")):
            raise _NeedsTorch()  # tensors: torch's own weights_only loader is safe for those
        if obj is None:
            raise InputError(
                f"{self._label} contains a pickled object of type {module}.{name} that oocgnn will not "
                f"unpickle; it should hold only numbers and numpy arrays - re-download the dataset")
        return obj

    def persistent_load(self, pid: Any) -> Any:
        raise _NeedsTorch()


def _to_numpy(obj: Any) -> Any:
    """Recursively turn torch tensors into numpy arrays (dicts, lists, tuples kept)."""
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().numpy()
    if isinstance(obj, dict):
        return type(obj)((k, _to_numpy(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_numpy(v) for v in obj)
    return obj


def _torch_weights_only(path: Path) -> Any:
    import torch

    try:
        return _to_numpy(torch.load(path, map_location="cpu", weights_only=True))
    except Exception as exc:  # torch raises many types for a bad file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(
            f"{path} is not a readable torch file with plain tensors ({first[:200]}); "
            f"re-download the dataset") from exc


def load_torch_pickle(path: str | os.PathLike) -> Any:
    """Load a ``torch.save``'d object made of numbers, strings, dicts and numpy arrays.

    Tensors are returned as numpy arrays.  Anything else raises :class:`InputError`.
    """
    path = Path(path)
    if not path.is_file():
        raise InputNotFoundError(f"{path} does not exist; download and extract the dataset first")
    if not zipfile.is_zipfile(path):
        log.debug("%s is not a torch zip file; trying torch.load(weights_only=True)", path)
        return _torch_weights_only(path)
    try:
        with zipfile.ZipFile(path) as zf:
            names = [n for n in zf.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
            if not names:
                raise InputError(f"{path} is a zip without data.pkl, not a torch file; re-download the dataset")
            data = zf.read(min(names, key=len))
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError) as exc:
        raise InputError(f"{path} is corrupted or truncated ({exc}); re-download the dataset") from exc
    try:
        return _NumpyOnlyUnpickler(data, str(path)).load()
    except _NeedsTorch:
        return _torch_weights_only(path)
    except InputError:
        raise
    except Exception as exc:  # UnpicklingError, EOFError, ValueError, TypeError from a bad state
        raise InputError(
            f"{path} has an unreadable pickle ({type(exc).__name__}: {exc}); re-download the dataset") from exc
