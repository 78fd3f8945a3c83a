"""Dropout into reused buffers, with torch's own random stream, bitwise equal to ``F.dropout``.

Why: on a CPU without MKL's vectorised generator (this AMD box), ``F.dropout`` draws its
mask with ``bernoulli_`` in a serial loop over torch's Mersenne Twister (~24 ns per
element: 4.4 s for a 1.4 M x 128 batch) and allocates two fresh tensors of the input's
size (first touch ~1.2 GiB/s).  Two dropouts per step made it the largest CPU cost of a
large-batch epoch.  :func:`dropout` instead

- draws the mask with a nopython MT19937 (:func:`_mt_mask`) that continues torch's CPU
  generator: it reads the state from ``torch.get_rng_state()``, draws exactly what
  ``bernoulli_(1 - p)`` draws (two 32-bit words -> a 53-bit uniform, kept iff ``< 1 - p``)
  and writes the advanced state back, so the masks *and* every later random number are
  the same as before (seeded runs and resume stay bitwise);
- writes the scaled mask and the product into buffers owned by the module and reused
  across steps (regrown when a batch is larger, never shrunk).

:func:`fast_mask_ok` checks once per process, against ``bernoulli_`` itself, that the
generator and its layout are what the kernel assumes; where they are not (e.g. torch's
MKL path on Intel CPUs, or another torch build) the mask comes from ``bernoulli_`` into
the reused buffer instead: slower, still identical.

A buffer is reused by the next forward, so the autograd graph of one step must be
finished (backward run) before the next forward: true of every trainer here.  Between
reading and writing back the generator state no other thread may draw from torch's
CPU generator (the prefetch and I/O threads never do).
"""
from __future__ import annotations

import logging
import threading

import numpy as np
import torch
from numba import njit

log = logging.getLogger(__name__)

_N, _M = 624, 397
#: byte layout of torch's CPUGeneratorImplState (legacy pod first): seed u64, left i32,
#: seeded i32, next u64, state u64[624], normal x/y/rho f64, normal valid i32 (+pad),
#: next float normal f32, valid bool (+pad)
_LEFT, _NEXT, _STATE = 8, 16, 24
_STATE_BYTES = 5056

_check_lock = threading.Lock()
_fast_ok: bool | None = None


@njit(nogil=True, cache=True)
def _mt_next_state(mt: np.ndarray) -> None:
    for k in range(_N):
        y = (mt[k] & np.uint32(0x80000000)) | (mt[(k + 1) % _N] & np.uint32(0x7FFFFFFF))
        v = mt[(k + _M) % _N] ^ (y >> np.uint32(1))
        if mt[(k + 1) % _N] & np.uint32(1):
            v ^= np.uint32(0x9908B0DF)
        mt[k] = v


@njit(nogil=True, cache=True)
def _mt_mask(mt: np.ndarray, pos: np.ndarray, keep: float, scale: np.float32, out: np.ndarray) -> None:
    """``out[i] = scale if uniform53() < keep else 0`` continuing MT19937 state ``mt``.

    ``pos`` = [left, next] as torch keeps them: a draw first decrements ``left`` and
    regenerates the block when it reaches 0, then returns the tempered ``mt[next++]``;
    so ``left - 1`` words are left in the block, and after a regeneration and ``k``
    draws ``next = k``, ``left = 625 - k``.  The uniform is
    ``((w1 << 32 | w2) & (2**53 - 1)) * 2**-53`` (torch's ``random64`` and
    ``uniform_real_distribution<double>``); ``u < keep`` is tested exactly in integers as
    ``x < ceil(keep * 2**53)`` (both scalings by 2**53 are exact).  Words are tempered a
    block at a time and pairs compared in a branch-free loop, which the compiler
    vectorises.
    """
    left, nxt = pos[0], pos[1]
    thr = np.uint64(np.ceil(keep * 9007199254740992.0))
    mask53 = np.uint64((1 << 53) - 1)
    zero = scale - scale  # 0 of out's type: float32 scaled masks or uint8 keep flags
    tw = np.empty(_N, np.uint32)
    avail = left - 1
    p = nxt
    regen = False
    hi = np.uint64(0)
    pending = False
    n = out.shape[0]
    i = 0
    while i < n:
        if avail <= 0:
            _mt_next_state(mt)
            p = 0
            avail = _N
            regen = True
        m = avail
        for k in range(m):
            y = mt[p + k]
            y ^= y >> np.uint32(11)
            y ^= (y << np.uint32(7)) & np.uint32(0x9D2C5680)
            y ^= (y << np.uint32(15)) & np.uint32(0xEFC60000)
            y ^= y >> np.uint32(18)
            tw[k] = y
        k = 0
        if pending:
            x = ((hi << np.uint64(32)) | np.uint64(tw[0])) & mask53
            out[i] = scale if x < thr else zero
            i += 1
            k = 1
            pending = False
        pairs = min((m - k) // 2, n - i)
        for j in range(pairs):
            x = ((np.uint64(tw[k + 2 * j]) << np.uint64(32)) | np.uint64(tw[k + 2 * j + 1])) & mask53
            out[i + j] = scale if x < thr else zero
        i += pairs
        k += 2 * pairs
        if i < n and k < m:  # one word left in the block: the high half of the next draw
            hi = np.uint64(tw[k])
            pending = True
            k += 1
        p += k
        avail -= k
    if regen:
        pos[0], pos[1] = 625 - p, p
    else:
        pos[0], pos[1] = left - (p - nxt), p


def _fast_mask(noise: torch.Tensor, keep: float, scale: float) -> None:
    """Fill contiguous ``noise`` with the mask, advancing torch's CPU generator.

    float32 ``noise`` gets the scaled mask (``scale`` or 0), uint8 the keep flags (1 or 0):
    the same draws either way.
    """
    state = torch.get_rng_state()
    raw = state.numpy()
    mt = raw[_STATE:_STATE + 8 * _N].view(np.uint64).astype(np.uint32)
    pos = np.array([raw[_LEFT:_LEFT + 4].view(np.int32)[0], raw[_NEXT:_NEXT + 8].view(np.uint64)[0]], np.int64)
    value = np.uint8(1) if noise.dtype == torch.uint8 else np.float32(scale)
    _mt_mask(mt, pos, keep, value, noise.view(-1).numpy())
    raw[_STATE:_STATE + 8 * _N].view(np.uint64)[:] = mt
    raw[_LEFT:_LEFT + 4].view(np.int32)[0] = pos[0]
    raw[_NEXT:_NEXT + 8].view(np.uint64)[0] = pos[1]
    torch.set_rng_state(state)


def _torch_mask(noise: torch.Tensor, keep: float, scale_div: float) -> None:
    """What ``F.dropout`` does on CPU: ``bernoulli_(1 - p)`` then ``div_(1 - p)`` (in place)."""
    noise.bernoulli_(keep)
    noise.div_(scale_div)


def fast_mask_ok() -> bool:
    """Whether :func:`_mt_mask` reproduces ``bernoulli_`` here (checked once per process).

    Compares masks and the generator state after drawing, from a state that starts
    mid-block, so both the block refill and the resume point are exercised, on a small
    and on a large (2**20 + 3 elements, ~30 ms) tensor in case a build switches generator
    by size.  The global generator is restored afterwards.
    """
    global _fast_ok
    with _check_lock:
        if _fast_ok is None:
            saved = torch.get_rng_state()
            try:
                ok = saved.numel() == _STATE_BYTES
                for n in (5000, (1 << 20) + 3) if ok else ():
                    torch.manual_seed(1234)
                    torch.rand(101)  # start mid-block, at an odd word
                    start = torch.get_rng_state()
                    ref = torch.empty(n).bernoulli_(0.7).div_(0.7)
                    ref_state = torch.get_rng_state()
                    torch.set_rng_state(start)
                    mine = torch.empty(n)
                    _fast_mask(mine, 0.7, float(torch.ones(1).div_(0.7)))
                    ok = ok and torch.equal(mine, ref) and torch.equal(torch.get_rng_state(), ref_state)
                _fast_ok = bool(ok)
            except Exception as exc:  # any surprise: use torch's own generator
                log.debug("fast dropout mask unavailable: %s", exc)
                _fast_ok = False
            finally:
                torch.set_rng_state(saved)
            if not _fast_ok:
                log.info("dropout masks come from torch's bernoulli_ (the fast MT19937 kernel does not match "
                         "this torch build's generator)")
    return _fast_ok


class DropoutBuffers:
    """Per-site reused buffers (float32 output, uint8 keep mask), regrown to fit when a batch is larger.

    Exactly the largest batch so far, no slack: the memory plan counts a dropout's output
    and mask among a step's activations (``oocgnn.train.budget``), and these buffers are
    those tensors, kept between steps instead of allocated in each.
    """

    def __init__(self) -> None:
        self._bufs: dict[tuple[str, str], torch.Tensor] = {}

    def get(self, site: str, kind: str, shape: torch.Size, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        n = int(np.prod(shape)) if len(shape) else 1
        buf = self._bufs.get((site, kind))
        if buf is None or buf.numel() < n or buf.dtype != dtype:
            with torch.inference_mode(False):  # usable by a training step even if first made in a refresh
                buf = torch.empty(n, dtype=dtype)
            self._bufs[(site, kind)] = buf
        return buf[:n].view(shape)

    def clear(self) -> None:
        self._bufs.clear()


#: elements per chunk when a uint8 keep mask is turned into the scaled float mask (4 MB of float32)
_CHUNK = 1 << 20


def _times_mask(x: torch.Tensor, keep: torch.Tensor, scale: torch.Tensor, out: torch.Tensor) -> None:
    """``out = x * (keep * scale)``, the float mask made a chunk at a time: bitwise ``x * noise``.

    The scaled mask holds exactly ``scale`` or 0 in float32, as ``bernoulli_(1 - p).div_(1 - p)``
    makes it, so the products are those of ``F.dropout``; only a chunk of it ever exists.
    """
    rows = max(1, _CHUNK // max(1, x[0].numel() if x.dim() > 1 and x.shape[0] else 1))
    for s in range(0, x.shape[0], rows):
        e = min(x.shape[0], s + rows)
        torch.mul(x[s:e], keep[s:e].to(torch.float32).mul_(scale), out=out[s:e])


class _Dropout(torch.autograd.Function):
    """``out = cat(parts) * noise`` into ``out``; backward ``grad * noise`` split back to the parts.

    The mask kept for backward is one byte per element (uint8 keep flags), not the float32
    scaled mask: a quarter of its memory (70 MB of a 183 k x 128 batch per hidden layer).
    """

    @staticmethod
    def forward(ctx, bufs: tuple[torch.Tensor, torch.Tensor], scale: torch.Tensor,
                *parts: torch.Tensor) -> torch.Tensor:
        keep, out = bufs
        o = 0
        for x in parts:
            n = x.shape[0]
            _times_mask(x, keep[o:o + n], scale, out[o:o + n])
            o += n
        ctx.save_for_backward(keep, scale)
        ctx.sizes = [x.shape[0] for x in parts]
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        keep, scale = ctx.saved_tensors
        g = torch.empty_like(grad)
        _times_mask(grad, keep, scale, g)
        grads, o = [], 0
        for n, need in zip(ctx.sizes, ctx.needs_input_grad[2:]):
            grads.append(g[o:o + n] if need else None)
            o += n
        return (None, None, *grads)


def dropout(parts: list[torch.Tensor], p: float, training: bool, bufs: DropoutBuffers, site: str) -> torch.Tensor:
    """``F.dropout(torch.cat(parts), p, training)``, bitwise, with reused buffers.

    Falls back to ``F.dropout`` itself where buffers do not pay or do not apply
    (evaluation, ``p == 0``, non-float32 or non-CPU inputs).
    """
    x0 = parts[0]
    if not training or p == 0.0 or x0.dtype != torch.float32 or x0.device.type != "cpu" \
            or any(x.dtype != torch.float32 or x.device.type != "cpu" for x in parts):
        x = parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)
        return torch.nn.functional.dropout(x, p, training)
    rows = sum(x.shape[0] for x in parts)
    shape = torch.Size((rows, *x0.shape[1:]))
    keep = 1.0 - p
    scale = torch.ones(1).div_(keep)  # 1 / (1 - p) rounded as F.dropout's div_ rounds it
    # without a gradient to carry (the input features) the mask is not kept: it is drawn
    # into the output buffer and multiplied in place (x * m == m * x bitwise), one buffer
    needs_grad = torch.is_grad_enabled() and any(x.requires_grad for x in parts)
    if not needs_grad:
        noise = bufs.get(site, "out", shape)
        if shape.numel() > 0:
            if fast_mask_ok():
                _fast_mask(noise, keep, float(scale))
            else:
                _torch_mask(noise, keep, keep)
        o = 0
        for x in parts:
            noise[o:o + x.shape[0]].mul_(x)
            o += x.shape[0]
        return noise
    flags = bufs.get(site, "mask", shape, torch.uint8)
    if shape.numel() > 0:
        if fast_mask_ok():
            _fast_mask(flags, keep, float(scale))
        else:  # bernoulli_'s draws depend on how it is called: draw as F.dropout does, keep the flags
            flags.copy_(torch.empty(shape).bernoulli_(keep))
    return _Dropout.apply((flags, bufs.get(site, "out", shape)), scale, *parts)
