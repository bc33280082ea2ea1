"""Compiled CPU selective scan (numba): forward and backward kernels, O(L·D) memory.

Why numba rather than a C++ extension: it is a pip dependency with wheels for every platform,
so users get a compiled kernel without a compiler or a build step at install time, and the
kernel compiles once on first use and is cached on disk (`cache=True`).

Work split: one (batch, channel) pair is an independent recurrence over L with an N-vector state,
so pairs are spread over Python threads (the kernels release the GIL) and the N-loop is the
inner (SIMD) loop.

Memory: the forward keeps only the state every `CKPT` steps (B, D, L/CKPT, N). The backward
walks the checkpoint segments from the end, `BWD_BLOCK` channels at a time: it recomputes a
segment's states from its checkpoint into a per-thread (CKPT+1, BWD_BLOCK, N) buffer and runs
the adjoint recurrence through it. Gradients for B and C, which are shared by all channels of a
group, are summed over the block, then into one buffer per thread (no races), added up at the
end, so nothing of size L·D·N is ever allocated.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
from numba.extending import overload
import torch
from torch import Tensor

CKPT = 256  # steps between saved states; the backward's recompute buffer is (CKPT+1, W, N)
BWD_BLOCK = 8  # channels per backward work unit (W): buffers of ~260 KB stay in L2
_FM = {"reassoc", "nsz", "contract"}  # vectorisable reductions/FMA; keeps inf/nan semantics
_LN2_HI, _LN2_LO, _INV_LN2 = 0.6931471803691238, 1.9082149292705877e-10, 1.4426950408889634


def _exp(x):
    """exp that LLVM can vectorise (libm's exp is a scalar call, ~6x slower here)."""
    return math.exp(x)


@overload(_exp, inline="always", fastmath=_FM)
def _exp_impl(x):
    """Cody–Waite reduction x = k·ln2 + r, |r| <= ln2/2, a Taylor polynomial for exp(r), and
    2^k assembled in the exponent bits. float64: degree 13 (max relative error vs numpy 2.4e-14
    over [-708, 0]); float32: degree 7 in float32 (8 SIMD lanes instead of 4). Inputs are clamped
    to the normal range (a decay below 1e-38 is 0 for every purpose here, and no denormals slow
    the loop down)."""
    if x == numba.types.float32:
        f = np.float32

        def impl32(x):
            x = min(max(x, f(-87.0)), f(88.0))
            k = f(math.floor(x * f(_INV_LN2) + f(0.5)))  # math.floor gives an int64
            r = x - k * f(0.693359375) - k * f(-2.12194440e-4)
            p = f(1.0 / 5040.0)
            p = p * r + f(1.0 / 720.0)
            p = p * r + f(1.0 / 120.0)
            p = p * r + f(1.0 / 24.0)
            p = p * r + f(1.0 / 6.0)
            p = p * r + f(0.5)
            p = p * r + f(1.0)
            p = p * r + f(1.0)
            scale = np.int32((np.int32(k) + np.int32(127)) << np.int32(23))
            return p * np.int32(scale).view(np.float32)

        return impl32

    def impl64(x):
        x = min(max(x, -708.0), 709.0)
        k = math.floor(x * _INV_LN2 + 0.5)
        r = x - k * _LN2_HI - k * _LN2_LO
        p = 1.0 / 6227020800.0
        p = p * r + 1.0 / 479001600.0
        p = p * r + 1.0 / 39916800.0
        p = p * r + 1.0 / 3628800.0
        p = p * r + 1.0 / 362880.0
        p = p * r + 1.0 / 40320.0
        p = p * r + 1.0 / 5040.0
        p = p * r + 1.0 / 720.0
        p = p * r + 1.0 / 120.0
        p = p * r + 1.0 / 24.0
        p = p * r + 1.0 / 6.0
        p = p * r + 0.5
        p = p * r + 1.0
        p = p * r + 1.0
        scale = np.int64((np.int64(k) + 1023) << 52)
        return p * np.int64(scale).view(np.float64)

    return impl64


@numba.njit(nogil=True, fastmath=_FM, cache=True)
def _fwd_kernel(u, dt, A, Bt, Ct, h0, K, y, last, ckpt, lo, hi):  # pragma: no cover - compiled
    """Scan the (batch, channel) pairs with flat index in [lo, hi)."""
    Dm, L = u.shape[1], u.shape[2]
    G, N = Bt.shape[1], A.shape[1]
    H = Dm // G
    for idx in range(lo, hi):
        b, d = idx // Dm, idx % Dm
        g = d // H
        h = h0[b, d].copy()
        a = A[d]
        for t in range(L):
            if t % K == 0:
                ckpt[b, d, t // K] = h
            dtt = dt[b, d, t]
            du = dtt * u[b, d, t]
            acc = 0.0
            for n in range(N):
                hn = _exp(dtt * a[n]) * h[n] + du * Bt[b, g, t, n]
                h[n] = hn
                acc += hn * Ct[b, g, t, n]
            y[b, d, t] = acc
        last[b, d] = h


@numba.njit(nogil=True, fastmath=_FM, cache=True)
def _bwd_kernel(
    u, dt, A, Bt, Ct, ckpt, gy, glast, K, W, gu, gdt, gA_bd, gB_part, gC_part, gh0, lo, hi, p
):  # pragma: no cover - compiled
    """Adjoint scan of work units [lo, hi); a unit is up to W channels of one (batch, group).

    Channels of a unit share B_t and C_t, so their B/C gradients are summed in registers and
    written to this worker's buffer p once per step (instead of once per channel and step).
    """
    Dm, L = u.shape[1], u.shape[2]
    G, N = Bt.shape[1], A.shape[1]
    H = Dm // G
    nblk = (H + W - 1) // W
    nck = (L + K - 1) // K
    hseg = np.empty((K + 1, W, N), dtype=u.dtype)
    dAseg = np.empty((K, W, N), dtype=u.dtype)
    gh = np.empty((W, N), dtype=u.dtype)
    gAacc = np.empty((W, N), dtype=u.dtype)
    gBacc = np.empty(N, dtype=u.dtype)
    gCacc = np.empty(N, dtype=u.dtype)
    for unit in range(lo, hi):
        b = unit // (G * nblk)
        g = (unit // nblk) % G
        d0 = g * H + (unit % nblk) * W
        nw = min(W, g * H + H - d0)
        for w in range(nw):
            gh[w] = glast[b, d0 + w]
            gAacc[w] = 0.0
        for j in range(nck - 1, -1, -1):
            t0 = j * K
            t1 = min(L, t0 + K)
            for w in range(nw):
                hseg[0, w] = ckpt[b, d0 + w, j]
            for t in range(t0, t1):  # recompute this segment's states
                k = t - t0
                for w in range(nw):
                    d = d0 + w
                    dtt = dt[b, d, t]
                    du = dtt * u[b, d, t]
                    for n in range(N):
                        e = _exp(dtt * A[d, n])
                        dAseg[k, w, n] = e
                        hseg[k + 1, w, n] = e * hseg[k, w, n] + du * Bt[b, g, t, n]
            for t in range(t1 - 1, t0 - 1, -1):  # adjoint recurrence through it
                k = t - t0
                gBacc[:] = 0.0
                gCacc[:] = 0.0
                for w in range(nw):
                    d = d0 + w
                    gyt = gy[b, d, t]
                    dtt = dt[b, d, t]
                    ut = u[b, d, t]
                    dtu = dtt * ut
                    gdu = 0.0
                    gdA = 0.0
                    for n in range(N):
                        ghn = gh[w, n] + gyt * Ct[b, g, t, n]  # adjoint of h_t
                        gCacc[n] += gyt * hseg[k + 1, w, n]
                        gBacc[n] += ghn * dtu
                        gdu += ghn * Bt[b, g, t, n]
                        x = ghn * dAseg[k, w, n] * hseg[k, w, n]  # d/d(Δ·A_n) of h_t
                        gdA += x * A[d, n]
                        gAacc[w, n] += x * dtt
                        gh[w, n] = ghn * dAseg[k, w, n]  # adjoint passed on to h_{t-1}
                    gu[b, d, t] = gdu * dtt
                    gdt[b, d, t] = gdA + gdu * ut
                for n in range(N):
                    gB_part[p, b, g, t, n] += gBacc[n]
                    gC_part[p, b, g, t, n] += gCacc[n]
        for w in range(nw):
            gh0[b, d0 + w] = gh[w]
            gA_bd[b, d0 + w] = gAacc[w]


def _np(t: Tensor) -> np.ndarray:
    return t.detach().contiguous().numpy()


_POOL: ThreadPoolExecutor | None = None


def _parallel(kernel, args: tuple, total: int, parts: int) -> None:
    """Run kernel(*args, lo, hi, [p]) over `parts` slices of [0, total) on Python threads.

    The kernels release the GIL (nogil), so plain threads run them in parallel; this avoids
    numba's parallel=True (slower to compile, and an OpenMP pool of its own next to PyTorch's).
    """
    global _POOL
    bounds = [(p * total // parts, (p + 1) * total // parts, p) for p in range(parts)]
    with_p = kernel is _bwd_kernel
    if parts == 1:
        lo, hi, p = bounds[0]
        kernel(*args, lo, hi, *((p,) if with_p else ()))
        return
    if _POOL is None or _POOL._max_workers < parts:  # noqa: SLF001
        _POOL = ThreadPoolExecutor(max_workers=parts, thread_name_prefix="selective_scan")
    futures = [_POOL.submit(kernel, *args, lo, hi, *((p,) if with_p else ())) for lo, hi, p in bounds]
    for f in futures:
        f.result()


def _parts(total: int) -> int:
    return max(1, min(torch.get_num_threads(), total))


class _NumbaScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, dt, A, Bm, Cm, h0):  # noqa: D102 - see scan_numba
        Bsz, Dm, L = u.shape
        N = A.shape[1]
        Bt = Bm.detach().transpose(-1, -2).contiguous()  # (B, G, L, N)
        Ct = Cm.detach().transpose(-1, -2).contiguous()
        K = CKPT
        y = u.new_empty(Bsz, Dm, L)
        last = u.new_empty(Bsz, Dm, N)
        ckpt = u.new_empty(Bsz, Dm, max(1, -(-L // K)), N)
        args = (_np(u), _np(dt), _np(A), Bt.numpy(), Ct.numpy(), _np(h0), K,
                y.numpy(), last.numpy(), ckpt.numpy())
        _parallel(_fwd_kernel, args, Bsz * Dm, _parts(Bsz * Dm))
        ctx.save_for_backward(u, dt, A, Bt, Ct, ckpt)
        return y, last

    @staticmethod
    def backward(ctx, gy, glast):  # noqa: D102
        u, dt, A, Bt, Ct, ckpt = ctx.saved_tensors
        Bsz, Dm, L = u.shape
        G, N = Bt.shape[1], A.shape[1]
        gy = torch.zeros_like(u) if gy is None else gy.to(u.dtype)
        glast = u.new_zeros(Bsz, Dm, N) if glast is None else glast.to(u.dtype)
        W = BWD_BLOCK
        units = Bsz * G * -(-(Dm // G) // W)
        P = _parts(units)
        gu, gdt = torch.empty_like(u), torch.empty_like(u)
        gA_bd = u.new_empty(Bsz, Dm, N)
        gB_part = u.new_zeros(P, Bsz, G, L, N)
        gC_part = u.new_zeros(P, Bsz, G, L, N)
        gh0 = u.new_empty(Bsz, Dm, N)
        args = (_np(u), _np(dt), _np(A), Bt.numpy(), Ct.numpy(), ckpt.numpy(), _np(gy),
                _np(glast), CKPT, W, gu.numpy(), gdt.numpy(), gA_bd.numpy(), gB_part.numpy(),
                gC_part.numpy(), gh0.numpy())
        _parallel(_bwd_kernel, args, units, P)
        gB = gB_part.sum(0).transpose(-1, -2)  # (B, G, N, L)
        gC = gC_part.sum(0).transpose(-1, -2)
        return gu, gdt, gA_bd.sum(0), gB, gC, gh0


def scan_numba(
    u: Tensor,  # (B, D, L) compute dtype, CPU
    dt: Tensor,  # (B, D, L)
    A: Tensor,  # (D, N)
    Bm: Tensor,  # (B, G, N, L)
    Cm: Tensor,  # (B, G, N, L)
    h0: Tensor,  # (B, D, N)
) -> tuple[Tensor, Tensor]:
    """Return (y without D-skip and gate (B, D, L), last state (B, D, N))."""
    if u.shape[-1] == 0:
        return u.new_zeros(u.shape), h0
    return _NumbaScan.apply(u, dt, A, Bm, Cm, h0)
