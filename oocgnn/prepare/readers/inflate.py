"""Read one member of a zip (``.npz``) as a bounded stream, with the fastest inflater installed.

Why not ``zipfile.ZipFile.open``: it inflates with stdlib zlib only, in small
reads, through a Python-level read loop and CRC bookkeeping.  papers100M's
``data.npz`` is 84 GB of DEFLATE, and DEFLATE is serial, so the inflater's speed
is the ceiling of the whole conversion.  Measured on this box (one core, raw
members of a ``savez_compressed`` npz, streamed in chunks;
``benchmarks/bench_prepare.py --inflaters`` repeats it):

=================  ==================  ================
inflater           float32 features    int64 edges
=================  ==================  ================
zipfile (zlib)     231-248 MB/s        385-392 MB/s
zlib, raw member   271-292             414-420
isal (ISA-L)       381-382             670-678
zlib-ng            387-389             543-557
libdeflate         380-393             546-557 (whole member in RAM: not usable)
=================  ==================  ================

So: ``isal`` first, then ``zlib-ng``, then stdlib ``zlib`` (always there, so a
store converts without either package).  All three release the GIL while they
inflate (checked in their C sources and by running two members on two threads),
so two members inflate on two cores from threads.  ``OOCGNN_INFLATER`` =
``isal`` / ``zlib-ng`` / ``zlib`` forces one (benchmarks, and tests of the fallback).

The member is located from the central directory (``zipfile`` parses it, zip64
included); its raw DEFLATE bytes start after the *local* header, whose name and
extra fields may differ in length from the central ones.  Size and CRC-32 are
checked at the end, as ``zipfile`` does.  Errors are raised as the types
:func:`oocgnn.prepare.readers.npy_stream._translated` turns into one-line
:class:`~oocgnn.errors.InputError`\\ s (``zlib.error``, ``EOFError``, ``BadZipFile``).
"""
from __future__ import annotations

import os
import struct
import zipfile
import zlib
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable

from oocgnn.errors import ConfigError

#: Preference order of the inflaters (fastest first).
BACKENDS = ("isal", "zlib-ng", "zlib")
#: Compressed bytes read per call, and most inflated bytes returned per call:
#: small enough that transient buffers stay tiny, large enough that per-call
#: overhead is negligible (measured: 512 KiB / 4 MiB are within noise of larger chunks).
_IN_CHUNK = 512 << 10
_OUT_CHUNK = 4 << 20
_LOCAL_HEADER = struct.Struct("<IHHHHHIIIHH")
_LOCAL_SIG = 0x04034B50


@dataclass(frozen=True)
class Inflater:
    """One DEFLATE implementation: ``decompressobj(wbits)`` and ``crc32(data, value)``."""

    name: str
    decompressobj: Callable[..., Any]
    crc32: Callable[..., int]
    error: type[BaseException]


def _load(name: str) -> Inflater | None:
    try:
        if name == "isal":
            from isal import isal_zlib as mod
        elif name == "zlib-ng":
            from zlib_ng import zlib_ng as mod
        else:
            mod = zlib
    except ImportError:
        return None
    return Inflater(name, mod.decompressobj, mod.crc32, mod.error)


@lru_cache(maxsize=None)
def get_inflater(name: str | None = None) -> Inflater:
    """The inflater named ``name`` (or ``$OOCGNN_INFLATER``), else the fastest installed."""
    name = name or os.environ.get("OOCGNN_INFLATER") or "auto"
    if name == "auto":
        for cand in BACKENDS:
            found = _load(cand)
            if found is not None:
                return found
    if name not in BACKENDS:
        raise ConfigError(f"OOCGNN_INFLATER={name!r} is not one of {', '.join(BACKENDS)}, auto; "
                          f"unset it or pick one of those")
    found = _load(name)
    if found is None:
        pkg = {"isal": "isal", "zlib-ng": "zlib-ng"}[name]
        raise ConfigError(f"OOCGNN_INFLATER={name} but the package {pkg!r} is not installed; "
                          f"pip install {pkg} or unset OOCGNN_INFLATER")
    return found


def member_data_offset(fh, zinfo: zipfile.ZipInfo) -> int:
    """Offset of a member's first compressed byte, from its local file header."""
    fh.seek(zinfo.header_offset)
    raw = fh.read(_LOCAL_HEADER.size)
    if len(raw) != _LOCAL_HEADER.size:
        raise EOFError(f"local header of {zinfo.filename} is cut off")
    sig, *_, name_len, extra_len = _LOCAL_HEADER.unpack(raw)
    if sig != _LOCAL_SIG:
        raise zipfile.BadZipFile(f"bad local header signature for {zinfo.filename}")
    return zinfo.header_offset + _LOCAL_HEADER.size + name_len + extra_len


class ZipMemberReader:
    """Sequential reads of one stored or DEFLATE member: ``read(n)``, ``readinto(buf)``, ``tell()``.

    Memory: one input chunk, one output chunk, and the inflater's 32 KiB window,
    whatever the member's size.  Reading past the end returns ``b""``; the end
    of the member checks its size and CRC-32.
    """

    def __init__(self, path: str | os.PathLike, zinfo: zipfile.ZipInfo, inflater: Inflater | None = None) -> None:
        if zinfo.flag_bits & 0x1:
            raise zipfile.BadZipFile(f"{zinfo.filename} is encrypted")
        if zinfo.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise zipfile.BadZipFile(f"{zinfo.filename} uses compression method {zinfo.compress_type}, "
                                     f"not DEFLATE or stored")
        self.zinfo = zinfo
        self.inflater = inflater or get_inflater()
        self._raw = open(path, "rb", buffering=0)
        try:
            self._raw.seek(member_data_offset(self._raw, zinfo))
        except BaseException:
            self._raw.close()
            raise
        self._in_left = zinfo.compress_size
        self._d = self.inflater.decompressobj(-15) if zinfo.compress_type == zipfile.ZIP_DEFLATED else None
        self._buf = b""        # inflated bytes not yet handed out ...
        self._buf_pos = 0      # ... starting here
        self._out = 0          # inflated bytes produced so far
        self._crc = 0
        self._pos = 0          # bytes handed out
        self._done = False

    # -- producing chunks ---------------------------------------------------------
    def _raw_read(self) -> bytes:
        data = self._raw.read(min(_IN_CHUNK, self._in_left))
        if not data:
            raise EOFError(f"{self.zinfo.filename}: compressed data end early (the file is truncated)")
        self._in_left -= len(data)
        return data

    def _next_chunk(self) -> bytes:
        """The next piece of the member's content (``b""`` at its verified end)."""
        while not self._done:
            if self._d is None:  # stored
                chunk = self._raw_read() if self._in_left else b""
            else:
                tail = self._d.unconsumed_tail
                if not tail and self._d.eof:
                    chunk = b""
                else:
                    data = tail if tail else (self._raw_read() if self._in_left else b"")
                    if not data:
                        raise EOFError(f"{self.zinfo.filename}: DEFLATE stream ends early (the file is truncated)")
                    try:
                        chunk = self._d.decompress(data, _OUT_CHUNK)
                    except self.inflater.error as exc:
                        raise zlib.error(f"{exc}") from exc
            if chunk:
                self._out += len(chunk)
                if self._out > self.zinfo.file_size:
                    raise zipfile.BadZipFile(f"{self.zinfo.filename} inflates to more than its "
                                             f"{self.zinfo.file_size} bytes")
                self._crc = self.inflater.crc32(chunk, self._crc)
                return chunk
            if self._d is None or self._d.eof:
                self._finish()
        return b""

    def _finish(self) -> None:
        if self._out != self.zinfo.file_size:
            raise EOFError(f"{self.zinfo.filename}: {self._out} of {self.zinfo.file_size} bytes (truncated)")
        if self._crc != self.zinfo.CRC:
            raise zipfile.BadZipFile(f"Bad CRC-32 for file {self.zinfo.filename!r}")
        self._done = True

    # -- file-like API ------------------------------------------------------------
    def readinto(self, buf) -> int:
        """Fill ``buf`` (any writable buffer) as far as the member allows; returns bytes written."""
        view = memoryview(buf).cast("B")
        got = 0
        while got < len(view):
            if self._buf_pos >= len(self._buf):
                self._buf, self._buf_pos = self._next_chunk(), 0
                if not self._buf:
                    break
            take = min(len(view) - got, len(self._buf) - self._buf_pos)
            view[got:got + take] = self._buf[self._buf_pos:self._buf_pos + take]
            self._buf_pos += take
            got += take
        self._pos += got
        return got

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = self.zinfo.file_size - self._pos
        out = bytearray(n)
        got = self.readinto(out)
        del out[got:]
        return bytes(out)

    def skip(self, n: int) -> int:
        """Discard up to ``n`` bytes without copying them anywhere; returns bytes skipped."""
        done = 0
        while done < n:
            if self._buf_pos >= len(self._buf):
                self._buf, self._buf_pos = self._next_chunk(), 0
                if not self._buf:
                    break
            take = min(n - done, len(self._buf) - self._buf_pos)
            self._buf_pos += take
            done += take
        self._pos += done
        return done

    def drain(self) -> None:
        """Inflate to the end, so size and CRC-32 are verified."""
        while self._next_chunk():
            pass
        self._buf, self._buf_pos = b"", 0

    def tell(self) -> int:
        return self._pos

    def close(self) -> None:
        self._raw.close()
        self._buf = b""

    def __enter__(self) -> "ZipMemberReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
