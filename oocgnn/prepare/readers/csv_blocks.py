"""Parse numeric ``.csv`` / ``.csv.gz`` files a block of rows at a time, and spill them to raw files once.

Why: OGB's csv downloads (``ogbn-products``: 2.4 M x 100 features, 62 M edges) and
users' own edge lists are text.  ``pd.read_csv`` on the whole file (what OGB's
loader does) holds the text's parsed frame and its float64 copy in RAM at once;
here pandas' C parser reads ``block_rows`` lines at a time from a gzip stream
(ISA-L's ``igzip`` when installed: ~3x stdlib's ``gzip`` on this box), so RAM is
one block whatever the file's size.  Values are parsed as pandas does for OGB
(float64, then cast), so our rows equal OGB's bit for bit.

A text file is slow to parse (tens of MB/s) and the builder reads edges twice and
features up to twice, so a source parses each file *once* into a raw binary file
in the build's scratch folder (:func:`spill_csv`): resumable (a ``.done`` marker
records the input's identity), written to a temp name and renamed, and checked
block by block on the way (``check`` sees every block with its first line number,
e.g. to name the line holding an out-of-range node id).
"""
from __future__ import annotations

import gzip
import logging
import os
import threading
import zlib
from pathlib import Path
from typing import IO, Callable, Iterator

import numpy as np

from oocgnn.errors import InputError, InputNotFoundError
from oocgnn.prepare.readers.npy_stream import SpillCancelled
from oocgnn.utils.atomic import atomic_output, atomic_write_json, read_json

log = logging.getLogger(__name__)

try:  # ISA-L inflate (a dependency; stdlib gzip is the fallback)
    from isal import igzip as _gzip
except ImportError:  # pragma: no cover - isal is in the dependencies
    _gzip = gzip

#: Check is called as ``check(first_line_index, block)`` and raises :class:`InputError`.
BlockCheck = Callable[[int, np.ndarray], None]


def open_text(path: str | os.PathLike) -> IO[bytes]:
    """A binary reader of ``path``, decompressing ``.gz`` on the fly."""
    path = Path(path)
    if not path.is_file():
        raise InputNotFoundError(f"{path} does not exist; check the path")
    return _gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")


def _line_problem(fields: list[bytes], columns: int, integer: bool, missing_is_nan: bool) -> str | None:
    """Why one csv line is unreadable, or None."""
    if len(fields) != columns:
        return f"has {len(fields)} fields, expected {columns}"
    for j, f in enumerate(fields):
        f = f.strip()
        if missing_is_nan and f.lower() in (b"", b"nan"):
            continue
        try:
            value = int(f) if integer else float(f)
        except ValueError:
            return f"field {j + 1} is {f.decode(errors='replace')[:40]!r}, not {'an integer' if integer else 'a number'}"
        if not integer and not np.isfinite(value):
            return f"field {j + 1} is {f.decode(errors='replace')!r}, not a finite number"
    return None


def _bad(path: Path, first: int, block_rows: int, columns: int, integer: bool, missing_is_nan: bool,
         exc: BaseException, expect: str) -> InputError:
    """One line naming the first unreadable line of the block that failed (found by re-reading it in
    Python, which is slow but runs only on error); pandas' own message if none is found."""
    row = 0
    try:
        with open_text(path) as fh:
            for line in fh:
                if not line.strip():
                    continue  # pandas skips blank lines; rows count the others
                if row >= first + block_rows:
                    break
                if row >= first:
                    problem = _line_problem(line.strip().split(b","), columns, integer, missing_is_nan)
                    if problem is not None:
                        return InputError(f"{path}: line {row + 1} {problem}; the file must hold {expect}")
                row += 1
    except (OSError, EOFError, zlib.error):
        pass
    detail = " ".join(str(exc).split())  # pandas' messages span lines
    return InputError(f"{path}: lines {first + 1}-{first + block_rows} cannot be parsed ({type(exc).__name__}: "
                      f"{detail}); expected {expect}")


def iter_csv_blocks(path: str | os.PathLike, dtype: np.dtype | type, block_rows: int, *, columns: int,
                    missing_is_nan: bool = False, expect: str = "headerless comma-separated numbers",
                    ) -> Iterator[tuple[int, np.ndarray]]:
    """``(first line index, [k, columns] array)`` for consecutive blocks of at most ``block_rows`` lines.

    ``missing_is_nan``: empty fields and ``nan`` read as NaN (labels); otherwise they are errors.
    A header line, a non-numeric or non-finite field or a line of another width raises one
    :class:`InputError` naming the file and the line.
    """
    import pandas as pd

    path = Path(path)
    dtype = np.dtype(dtype)
    integer = dtype.kind in "iu"
    parse = np.int64 if integer else np.float64  # as OGB: float64 text, cast afterwards
    first = 0
    with open_text(path) as fh:
        try:
            reader = pd.read_csv(fh, header=None, dtype=parse, chunksize=block_rows, na_filter=missing_is_nan,
                                 engine="c")
            for frame in reader:
                block = frame.to_numpy(dtype=dtype, copy=False)
                if block.shape[1] != columns:
                    raise _bad(path, first, len(block), columns, integer, missing_is_nan, ValueError(), expect)
                yield first, block
                first += len(block)
        except pd.errors.EmptyDataError:
            if first == 0:
                raise InputError(f"{path} is empty; expected {expect}") from None
        except InputError:
            raise
        except (ValueError, pd.errors.ParserError) as exc:
            raise _bad(path, first, block_rows, columns, integer, missing_is_nan, exc, expect) from None
        except (OSError, EOFError, zlib.error) as exc:
            raise InputError(f"{path} is corrupted or truncated after line {first} ({type(exc).__name__}: "
                             f"{exc}); re-download or re-create it") from None


def csv_width(path: str | os.PathLike) -> int:
    """Number of comma-separated fields on the first line (reads one line)."""
    path = Path(path)
    try:
        with open_text(path) as fh:
            line = fh.readline()
    except (OSError, EOFError, zlib.error) as exc:
        raise InputError(f"{path} is corrupted ({type(exc).__name__}: {exc}); re-download or re-create it") from None
    if not line.strip():
        raise InputError(f"{path} is empty or starts with a blank line; expected comma-separated numbers")
    return line.count(b",") + 1


def read_csv_column(path: str | os.PathLike, dtype: np.dtype | type, *, missing_is_nan: bool = False,
                    expect: str = "one number per line") -> np.ndarray:
    """A whole one-column file (split ids, labels, counts) as a 1-D array, parsed in blocks."""
    parts = [b[:, 0] for _, b in iter_csv_blocks(path, dtype, 1 << 20, columns=1, missing_is_nan=missing_is_nan,
                                                 expect=expect)]
    return np.concatenate(parts) if parts else np.empty(0, dtype=dtype)


def _identity(path: Path, dtype: np.dtype, columns: int) -> dict:
    st = path.stat()
    return {"source": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "dtype": dtype.str,
            "columns": columns}


def spilled_rows(path: str | os.PathLike, dest: str | os.PathLike, dtype: np.dtype | type, columns: int) -> int | None:
    """Rows of a finished spill of ``path`` at ``dest`` (its marker matches the input), else None."""
    path, dest, dtype = Path(path), Path(dest), np.dtype(dtype)
    marker = dest.with_name(dest.name + ".done")
    try:
        done = read_json(marker)
        rows = int(done.pop("rows"))
        if done == _identity(path, dtype, columns) and dest.stat().st_size == rows * columns * dtype.itemsize:
            return rows
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def spill_csv(path: str | os.PathLike, dest: str | os.PathLike, dtype: np.dtype | type, columns: int, *,
              block_rows: int = 1 << 18, check: BlockCheck | None = None, expect: str = "comma-separated numbers",
              stop: threading.Event | None = None, progress: Callable[[int], None] | None = None) -> int:
    """Parse ``path`` once into the raw C-ordered ``[rows, columns]`` file ``dest``; returns rows.

    Resumable: a finished spill of the same input is reused.  ``check`` validates each
    block before it is written; ``stop`` (set from another thread) abandons the spill.
    """
    path, dest, dtype = Path(path), Path(dest), np.dtype(dtype)
    rows = spilled_rows(path, dest, dtype, columns)
    if rows is not None:
        log.info("reusing the parsed %s at %s", path, dest)
        return rows
    marker = dest.with_name(dest.name + ".done")
    marker.unlink(missing_ok=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    log.info("parsing %s into %s", path, dest)
    rows = 0
    with atomic_output(dest, "parsing csv into") as tmp:
        with open(tmp, "wb") as out:
            for first, block in iter_csv_blocks(path, dtype, block_rows, columns=columns, expect=expect):
                if check is not None:
                    check(first, block)
                out.write(memoryview(np.ascontiguousarray(block)).cast("B"))
                rows += len(block)
                if progress is not None:
                    progress(len(block))
                if stop is not None and stop.is_set():
                    raise SpillCancelled(f"parsing {path} was cancelled")
    atomic_write_json(marker, {**_identity(path, dtype, columns), "rows": rows})
    return rows
