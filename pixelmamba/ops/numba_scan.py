"""Compiled CPU selective scan (numba): fused forward and backward kernels, O(L·D) memory.

Why numba rather than a C++ extension: it is a pip dependency with wheels for every platform,
so users get a compiled kernel without a compiler or a build step at install time, and the
kernel compiles once on first use and is cached on disk (`cache=True`).

Work split: one (batch, channel) pair is an independent recurrence over L with an N-vector state,
so pairs are spread over Python threads (the kernels release the GIL) and the N-loop is the
inner (SIMD) loop.

Fusion: the D skip and the SiLU(z) gate are applied inside the kernels (forward and backward),
so a call allocates only its output, the Δ it needs, the checkpoints and, in backward, one
gradient per (B, D, L) input. Done in PyTorch instead, they cost about a dozen further (B, D, L)
temporaries per call, each freshly page-faulted at long lengths (the allocator hands tensors
over 32 MB straight back to the OS), which would cost more time than the scan itself at 65K tokens.
Δ = softplus(delta + delta_bias) is computed once with PyTorch's vectorised ops and kept for
backward, where sigmoid(delta + delta_bias) = −expm1(−Δ) gives the softplus derivative.

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
import torch
import torch.nn.functional as F
from numba.extending import overload
from torch import Tensor

CKPT = 256  # steps between saved states; the backward's recompute buffer is (CKPT+1, W, N)
BWD_BLOCK = 8  # channels per backward work unit (W): buffers of ~260 KB stay in L2
_FM = {"reassoc", "nsz", "contract"}  # vectorisable reductions/FMA; keeps inf/nan semantics
_LN2_HI, _LN2_LO, _INV_LN2 = 0.6931471803691238, 1.9082149292705877e-10, 1.4426950408889634


def fast_exp(x):
    """exp that LLVM can vectorise (libm's exp is a scalar call, ~6x slower here)."""
    return math.exp(x)


# Compiled as its own function (LLVM inlines it) *without* "reassoc": with it, LLVM folds the
# Cody–Waite split k·ln2_hi + k·ln2_lo back into k·ln2 and the float32 result loses ~4 digits.
@overload(fast_exp, jit_options={"fastmath": {"nsz", "contract"}})
def _exp_impl(x):
    """Cody–Waite reduction x = k·ln2 + r, |r| <= ln2/2, a Taylor polynomial for exp(r), and
    2^k assembled in the exponent bits. float64: degree 13 (max relative error vs numpy 2.4e-14
    over [-708, 0]); float32: degree 7 in float32 (8 SIMD lanes instead of 4). Inputs are clamped
    to the normal range (a decay below 1e-38 is 0 for every purpose here, and no denormals slow
    the loop down). k is rounded by truncating a shifted, positive value to int32: AVX2 converts
    float<->int32 in SIMD but float<->int64 only one lane at a time."""
    if x == numba.types.float32:
        f = np.float32

        def impl32(x):
            x = min(max(x, f(-87.0)), f(88.0))
            kb = np.int32(x * f(_INV_LN2) + f(128.5))  # round(x / ln2) + 128, always > 0
            k = f(kb) - f(128.0)
            r = x - k * f(0.693359375) - k * f(-2.12194440e-4)
            p = f(1.0 / 5040.0)
            p = p * r + f(1.0 / 720.0)
            p = p * r + f(1.0 / 120.0)
            p = p * r + f(1.0 / 24.0)
            p = p * r + f(1.0 / 6.0)
            p = p * r + f(0.5)
            p = p * r + f(1.0)
            p = p * r + f(1.0)
            return p * np.int32((kb - 1) << 23).view(np.float32)  # 2^k: exponent bits k + 127

        return impl32

    def impl64(x):
        x = min(max(x, -708.0), 709.0)
        kb = np.int32(x * _INV_LN2 + 1024.5)  # round(x / ln2) + 1024, always > 0
        k = np.float64(kb) - 1024.0
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
        return p * np.int64((np.int64(kb) - 1) << 52).view(np.float64)  # exponent bits k + 1023

    return impl64


def fast_expm1(x):
    """exp(x) − 1 that LLVM can vectorise, accurate also near 0 (libm's expm1 is a scalar call:
    one per (step, channel) in the backward cost ~1 ns per state, a fifth of the kernel)."""
    return math.expm1(x)


@overload(fast_expm1, jit_options={"fastmath": {"nsz", "contract"}})
def _expm1_impl(x):
    """|x| < 1/2: Taylor series of e^x − 1, Horner form (float64: degree 16, truncation below
    1e-17 relative; float32: degree 9, below 2e-10), exact in its first term, so there is no
    cancellation as x → 0; elsewhere ``fast_exp(x) − 1``, whose rounding error relative to
    |e^x − 1| ≥ 0.39 is a few ulps. Both branches are computed and one is selected (no branch
    in the vectorised loop)."""
    if x == numba.types.float32:
        f = np.float32

        def impl32(x):
            p = f(1.0 / 362880.0)
            p = p * x + f(1.0 / 40320.0)
            p = p * x + f(1.0 / 5040.0)
            p = p * x + f(1.0 / 720.0)
            p = p * x + f(1.0 / 120.0)
            p = p * x + f(1.0 / 24.0)
            p = p * x + f(1.0 / 6.0)
            p = p * x + f(0.5)
            small = x + x * x * p
            big = fast_exp(x) - f(1.0)
            return small if abs(x) < f(0.5) else big

        return impl32

    def impl64(x):
        p = 1.0 / 20922789888000.0
        p = p * x + 1.0 / 1307674368000.0
        p = p * x + 1.0 / 87178291200.0
        p = p * x + 1.0 / 6227020800.0
        p = p * x + 1.0 / 479001600.0
        p = p * x + 1.0 / 39916800.0
        p = p * x + 1.0 / 3628800.0
        p = p * x + 1.0 / 362880.0
        p = p * x + 1.0 / 40320.0
        p = p * x + 1.0 / 5040.0
        p = p * x + 1.0 / 720.0
        p = p * x + 1.0 / 120.0
        p = p * x + 1.0 / 24.0
        p = p * x + 1.0 / 6.0
        p = p * x + 0.5
        small = x + x * x * p
        big = fast_exp(x) - 1.0
        return small if abs(x) < 0.5 else big

    return impl64


def _zero(x):
    """A zero of x's float type (a bare 0.0 literal would make accumulators float64)."""
    return 0.0


def _one(x):
    """A one of x's float type."""
    return 1.0


@overload(_zero, inline="always")
def _zero_impl(x):
    if x == numba.types.float32:
        return lambda x: np.float32(0.0)
    return lambda x: 0.0


@overload(_one, inline="always")
def _one_impl(x):
    if x == numba.types.float32:
        return lambda x: np.float32(1.0)
    return lambda x: 1.0


@numba.njit(nogil=True, fastmath=_FM, cache=True)
def fwd_kernel(
    u, dt, A, Bt, Ct, Dv, z, h0, has_D, has_z, K, out, last, ckpt, lo, hi
):  # pragma: no cover - compiled
    """Scan the (batch, channel) pairs with flat index in [lo, hi); out = (y + D·u)·SiLU(z)."""
    Dm, L = u.shape[1], u.shape[2]
    G, N = Bt.shape[1], A.shape[1]
    H = Dm // G
    h = np.empty(N, dtype=u.dtype)
    one = _one(u[0, 0, 0])
    for idx in range(lo, hi):
        b, d = idx // Dm, idx % Dm
        g = d // H
        h[:] = h0[b, d]
        a = A[d]
        Dd = Dv[d] if has_D else _zero(one)
        for t in range(L):
            if t % K == 0:
                ckpt[b, d, t // K] = h
            dtt = dt[b, d, t]
            ut = u[b, d, t]
            du = dtt * ut
            acc = _zero(dtt)
            Bv = Bt[b, g, t]
            Cv = Ct[b, g, t]
            for n in range(N):
                hn = fast_exp(dtt * a[n]) * h[n] + du * Bv[n]
                h[n] = hn
                acc += hn * Cv[n]
            out[b, d, t] = acc + Dd * ut
        last[b, d] = h
        if has_z:  # the gate in a pass of its own, over 1-D views: vectorised over t
            zr, outr = z[b, d], out[b, d]
            for t in range(L):
                zt = zr[t]
                outr[t] = outr[t] * zt / (one + fast_exp(-zt))


@numba.njit(nogil=True, fastmath=_FM, cache=True, inline="always")
def _bwd_body(
    u, dt, A, Bt, Ct, Dv, z, has_D, has_z, softplus, ckpt, gout, glast, K, W,
    gu, gdelta, gz, gA_bd, gD_bd, gbias_bd, gB_part, gC_part, gh0, lo, hi, p, N,
):  # pragma: no cover - compiled
    """Adjoint scan of work units [lo, hi); a unit is up to W channels of one (batch, group).
    ``N`` is the state size (``A.shape[1]``), an argument so that ``bwd_kernel_n16`` can
    inline this body with a constant.

    Channels of a unit share B_t and C_t, so their B/C gradients are summed in registers and
    written to this worker's buffer p once per step (instead of once per channel and step).
    The gate needs y_t = ⟨h_t, C_t⟩ + D·u_t, which the recompute pass rebuilds alongside h_t.
    With softplus, dΔ/d(delta) = sigmoid(delta + bias) = −expm1(−Δ) (no second input needed).
    """
    Dm, L = u.shape[1], u.shape[2]
    G = Bt.shape[1]
    H = Dm // G
    nblk = (H + W - 1) // W
    nck = (L + K - 1) // K
    hseg = np.empty((K + 1, W, N), dtype=u.dtype)
    dAseg = np.empty((K, W, N), dtype=u.dtype)
    yseg = np.empty((W, K), dtype=u.dtype)
    gyseg = np.empty((W, K), dtype=u.dtype)
    gh = np.empty((W, N), dtype=u.dtype)
    gAacc = np.empty((W, N), dtype=u.dtype)
    gDacc = np.empty(W, dtype=u.dtype)
    gbacc = np.empty(W, dtype=u.dtype)
    gBacc = np.empty(N, dtype=u.dtype)
    gCacc = np.empty(N, dtype=u.dtype)
    one = _one(u[0, 0, 0])
    for unit in range(lo, hi):
        b = unit // (G * nblk)
        g = (unit // nblk) % G
        d0 = g * H + (unit % nblk) * W
        nw = min(W, g * H + H - d0)
        for w in range(nw):
            gh[w] = glast[b, d0 + w]
            gAacc[w] = 0.0
            gDacc[w] = 0.0
            gbacc[w] = 0.0
        for j in range(nck - 1, -1, -1):
            t0 = j * K
            t1 = min(L, t0 + K)
            for w in range(nw):
                hseg[0, w] = ckpt[b, d0 + w, j]
            for t in range(t0, t1):  # recompute this segment's states (and y_t for the gate)
                k = t - t0
                Bv = Bt[b, g, t]
                Cv = Ct[b, g, t]
                for w in range(nw):
                    d = d0 + w
                    dtt = dt[b, d, t]
                    du = dtt * u[b, d, t]
                    acc = _zero(dtt)
                    a, hp, hq, ek = A[d], hseg[k, w], hseg[k + 1, w], dAseg[k, w]
                    for n in range(N):
                        e = fast_exp(dtt * a[n])
                        ek[n] = e
                        hn = e * hp[n] + du * Bv[n]
                        hq[n] = hn
                        acc += hn * Cv[n]
                    yseg[w, k] = acc
            for w in range(nw):  # gate backward, vectorised over t: gradient reaching y_t
                d = d0 + w
                gor, gys, ys = gout[b, d, t0:t1], gyseg[w], yseg[w]  # 1-D views (see below)
                if has_z:
                    zr, ur, gzr = z[b, d, t0:t1], u[b, d, t0:t1], gz[b, d, t0:t1]
                    Dd = Dv[d] if has_D else _zero(one)
                    for t in range(t1 - t0):
                        zt = zr[t]
                        s = one / (one + fast_exp(-zt))
                        gyt = gor[t]
                        yt = ys[t] + Dd * ur[t]
                        gzr[t] = gyt * yt * s * (one + zt * (one - s))
                        gys[t] = gyt * zt * s
                else:
                    for t in range(t1 - t0):
                        gys[t] = gor[t]
            for t in range(t1 - 1, t0 - 1, -1):  # adjoint recurrence through it
                k = t - t0
                Bv = Bt[b, g, t]
                Cv = Ct[b, g, t]
                gBacc[:] = 0.0
                gCacc[:] = 0.0
                for w in range(nw):
                    d = d0 + w
                    ut = u[b, d, t]
                    gyt = gyseg[w, k]
                    dtt = dt[b, d, t]
                    dtu = dtt * ut
                    a = A[d]
                    hp = hseg[k, w]  # h_{t-1}
                    hq = hseg[k + 1, w]  # h_t
                    ek = dAseg[k, w]
                    ghw = gh[w]
                    gAw = gAacc[w]
                    # Four short loops rather than one: each stores to one or two arrays, and
                    # LLVM vectorises them; the fused loop ran ~25% slower.
                    for n in range(N):
                        ghw[n] += gyt * Cv[n]  # adjoint of h_t
                    for n in range(N):
                        gCacc[n] += gyt * hq[n]
                    for n in range(N):
                        gBacc[n] += ghw[n] * dtu
                    gdu = _zero(dtt)
                    gdA = _zero(dtt)
                    for n in range(N):
                        ghn = ghw[n]
                        gdu += ghn * Bv[n]
                        x = ghn * ek[n] * hp[n]  # d/d(Δ·A_n) of h_t
                        gdA += x * a[n]
                        gAw[n] += x * dtt
                        ghw[n] = ghn * ek[n]  # adjoint passed on to h_{t-1}
                    if has_D:
                        gu[b, d, t] = gdu * dtt + gyt * Dv[d]
                        gDacc[w] += gyt * ut
                    else:
                        gu[b, d, t] = gdu * dtt
                    gdelta[b, d, t] = gdA + gdu * ut  # with respect to Δ; softplus below
                for n in range(N):
                    gB_part[p, b, g, t, n] += gBacc[n]
                    gC_part[p, b, g, t, n] += gCacc[n]
            for w in range(nw):  # through the softplus, vectorised over t; the bias gradient
                d = d0 + w
                acc = _zero(one)
                gdr = gdelta[b, d, t0:t1]  # 1-D views: LLVM vectorises loops over them, not
                if softplus:  # over 3-D indexing (measured 1.2 vs 6.5 ns per element here)
                    dtr = dt[b, d, t0:t1]
                    for t in range(t1 - t0):
                        gd = -gdr[t] * fast_expm1(-dtr[t])
                        gdr[t] = gd
                        acc += gd
                else:
                    for t in range(t1 - t0):
                        acc += gdr[t]
                gbacc[w] += acc
        for w in range(nw):
            gh0[b, d0 + w] = gh[w]
            gA_bd[b, d0 + w] = gAacc[w]
            gD_bd[b, d0 + w] = gDacc[w]
            gbias_bd[b, d0 + w] = gbacc[w]


@numba.njit(nogil=True, fastmath=_FM, cache=True)
def bwd_kernel(
    u, dt, A, Bt, Ct, Dv, z, has_D, has_z, softplus, ckpt, gout, glast, K, W,
    gu, gdelta, gz, gA_bd, gD_bd, gbias_bd, gB_part, gC_part, gh0, lo, hi, p,
):  # pragma: no cover - compiled
    """``_bwd_body`` for any state size."""
    _bwd_body(u, dt, A, Bt, Ct, Dv, z, has_D, has_z, softplus, ckpt, gout, glast, K, W,
              gu, gdelta, gz, gA_bd, gD_bd, gbias_bd, gB_part, gC_part, gh0, lo, hi, p, A.shape[1])


@numba.njit(nogil=True, fastmath=_FM, cache=True)
def bwd_kernel_n16(
    u, dt, A, Bt, Ct, Dv, z, has_D, has_z, softplus, ckpt, gout, glast, K, W,
    gu, gdelta, gz, gA_bd, gD_bd, gbias_bd, gB_part, gC_part, gh0, lo, hi, p,
):  # pragma: no cover - compiled
    """``_bwd_body`` compiled for state size 16 (Mamba's default, Vim's and Pixel-Mamba's): with
    the trip count of the state loops a constant, LLVM unrolls them. Measured against the
    generic kernel on one core, interleaved runs at 6–384 channels: 1–13% faster, about 8% on
    average (the adjoint loop's vector version, with a runtime trip count, only runs from 24
    iterations on: below, its runtime alias checks do not pay)."""
    _bwd_body(u, dt, A, Bt, Ct, Dv, z, has_D, has_z, softplus, ckpt, gout, glast, K, W,
              gu, gdelta, gz, gA_bd, gD_bd, gbias_bd, gB_part, gC_part, gh0, lo, hi, p, 16)


def _np(t: Tensor) -> np.ndarray:
    return t.detach().contiguous().numpy()


_POOL: ThreadPoolExecutor | None = None


def run_parallel(kernel, args: tuple, total: int, parts: int) -> None:
    """Run kernel(*args, lo, hi, [p]) over `parts` slices of [0, total) on Python threads.

    The kernels release the GIL (nogil), so plain threads run them in parallel; this avoids
    numba's parallel=True (slower to compile, and an OpenMP pool of its own next to PyTorch's).
    """
    global _POOL
    bounds = [(p * total // parts, (p + 1) * total // parts, p) for p in range(parts)]
    with_p = kernel is bwd_kernel or kernel is bwd_kernel_n16
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
    def forward(ctx, u, delta, A, Bm, Cm, D, z, delta_bias, h0, softplus):  # noqa: D102
        Bsz, Dm, L = u.shape
        N = A.shape[1]
        dt = delta if delta_bias is None else delta + delta_bias[:, None]
        if softplus:
            dt = F.softplus(dt)
        dt = dt.contiguous()
        Bt = Bm.detach().transpose(-1, -2).contiguous()  # (B, G, L, N)
        Ct = Cm.detach().transpose(-1, -2).contiguous()
        has_z = z is not None
        # C-contiguous everywhere: a strided array would compile a second kernel signature
        u, A = u.contiguous(), A.contiguous()
        z = z.contiguous() if has_z else u.new_zeros(1, 1, 1)
        Dv = D.contiguous() if D is not None else u.new_zeros(1)
        out = u.new_empty(Bsz, Dm, L)
        last = u.new_empty(Bsz, Dm, N)
        ckpt = u.new_empty(Bsz, Dm, max(1, -(-L // CKPT)), N)
        args = (_np(u), dt.numpy(), _np(A), Bt.numpy(), Ct.numpy(), Dv.numpy(), z.numpy(),
                _np(h0), D is not None, has_z, CKPT,
                out.numpy(), last.numpy(), ckpt.numpy())
        run_parallel(fwd_kernel, args, Bsz * Dm, _parts(Bsz * Dm))
        ctx.flags = (D is not None, has_z, softplus, delta_bias is not None)
        ctx.save_for_backward(u, dt, A, Bt, Ct, Dv, z, ckpt)
        return out, last

    @staticmethod
    def backward(ctx, gout, glast):  # noqa: D102
        u, dt, A, Bt, Ct, Dv, z, ckpt = ctx.saved_tensors
        has_D, has_z, softplus, has_bias = ctx.flags
        Bsz, Dm, L = u.shape
        G, N = Bt.shape[1], A.shape[1]
        gout = torch.zeros_like(u) if gout is None else gout.to(u.dtype).contiguous()
        glast = u.new_zeros(Bsz, Dm, N) if glast is None else glast.to(u.dtype).contiguous()
        W = BWD_BLOCK
        units = Bsz * G * -(-(Dm // G) // W)
        P = _parts(units)
        gu, gdelta = torch.empty_like(u), torch.empty_like(u)
        gz = torch.empty_like(u) if has_z else u.new_zeros(1, 1, 1)
        gA_bd = u.new_empty(Bsz, Dm, N)
        gD_bd = u.new_empty(Bsz, Dm)
        gbias_bd = u.new_empty(Bsz, Dm)
        gB_part = u.new_zeros(P, Bsz, G, L, N)
        gC_part = u.new_zeros(P, Bsz, G, L, N)
        gh0 = u.new_empty(Bsz, Dm, N)
        args = (u.numpy(), dt.numpy(), A.numpy(), Bt.numpy(), Ct.numpy(), Dv.numpy(), z.numpy(),
                has_D, has_z, softplus, ckpt.numpy(), gout.numpy(), glast.numpy(), CKPT, W,
                gu.numpy(), gdelta.numpy(), gz.numpy(), gA_bd.numpy(), gD_bd.numpy(),
                gbias_bd.numpy(), gB_part.numpy(), gC_part.numpy(), gh0.numpy())
        run_parallel(bwd_kernel_n16 if N == 16 else bwd_kernel, args, units, P)
        gB = gB_part.sum(0).transpose(-1, -2)  # (B, G, N, L)
        gC = gC_part.sum(0).transpose(-1, -2)
        return (gu, gdelta, gA_bd.sum(0), gB, gC, gD_bd.sum(0) if has_D else None,
                gz if has_z else None, gbias_bd.sum(0) if has_bias else None, gh0, None)


def scan_numba(
    u: Tensor,  # (B, D, L) compute dtype, CPU
    delta: Tensor,  # (B, D, L) compute dtype, before bias and softplus
    A: Tensor,  # (D, N)
    Bm: Tensor,  # (B, G, N, L)
    Cm: Tensor,  # (B, G, N, L)
    D: Tensor | None,  # (D,)
    z: Tensor | None,  # (B, D, L)
    delta_bias: Tensor | None,  # (D,)
    h0: Tensor,  # (B, D, N)
    softplus: bool,
) -> tuple[Tensor, Tensor]:
    """Return (out = (⟨h_t, C_t⟩ + D·u_t)·SiLU(z_t) (B, D, L), last state (B, D, N))."""
    if u.shape[-1] == 0:
        return u.new_zeros(u.shape), h0
    return _NumbaScan.apply(u, delta, A, Bm, Cm, D, z, delta_bias, h0, softplus)
