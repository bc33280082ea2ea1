"""Triton selective scan: the core recurrence with a carried state and its gradient, on CUDA.

Why hand-written: no library offers this. mamba-ssm's CUDA kernel has no initial state and
ignores a gradient arriving at its last state; its Triton kernels (Mamba-2's SSD) are a
different recurrence (scalar A per head); flash-linear-attention's scans have no selective Δ.
Pixel-Mamba streams a whole slide through each block in pieces with the state carried from
piece to piece, and trains through it, so it needs both state gradients (docs/scan.md).

Work layout (the torch backend's, on registers): one program per (batch, block of channels)
keeps the (channels, N) state in registers and walks the sequence in chunks of T tokens. Inside
a chunk the linear recurrence h_t = exp(Δ_t A) ⊙ h_{t−1} + Δ_t B_t u_t runs as one
`tl.associative_scan` over the (channels, N, T) tile of (decay, input) pairs; the entering
state is applied afterwards (h_t = decay product · h_in + zero-start state). Forward writes y
and, when a gradient is wanted, only the state at each chunk's start: (L/T)·D·N numbers, N/T
per (token, channel). Backward walks the chunks in reverse: it recomputes the chunk's states
from its stored start state, runs the adjoint ∂h_t = C_t·gy_t + exp(Δ_{t+1}A) ⊙ ∂h_{t+1} as a
reversed scan, and forms every gradient from ∂h_t, h_t and the step's input, as the torch
backend does. B/C gradients are summed over a group's channels with atomic adds (channel blocks
of one group run in different programs); the A gradient is written per batch and summed here.

Semantics equal the other backends' core: (u, Δ, A, B, C, h0) -> (⟨h_t, C_t⟩, h_L) with Δ
already biased and softplus-ed, B/C grouped (B, G, N, L); D skip and gate stay in PyTorch
(`selective_scan`). Decays exp(Δ·A) lie in (0, 1] and are only multiplied, as in the torch
backend, so nothing overflows in float32.

On CPU the kernels run only under Triton's interpreter (`TRITON_INTERPRET=1` set before this
module is imported: `triton.jit` reads it when it decorates), which is how the tests run them.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

# Tokens per chunk (the register tile's time extent and the spacing of the stored states) and
# the most channels one program takes. Untuned guesses for a GPU (no GPU was at hand when this
# was written: benchmarks/gpu_check.py measures it); the tests use tiny values.
CHUNK = 64
BLOCK_D = 4
NUM_WARPS = 4

# triton.jit made interpreted functions (CPU-capable) iff TRITON_INTERPRET was set at import
INTERPRETED = bool(triton.knobs.runtime.interpret)


@triton.jit
def _combine(a_l, b_l, a_r, b_r):
    # (a_l, b_l) applied first, then (a_r, b_r): h -> a_r·(a_l·h + b_l) + b_r. A reversed scan
    # combines its accumulated suffix (left) with the next earlier element (right), which is
    # the same formula for the adjoint recurrence ∂h_t = a'_t·∂h_{t+1} + g_t.
    return a_l * a_r, a_r * b_l + b_r


@triton.jit
def fwd_kernel(
    u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, h0_ptr, y_ptr, last_ptr, states_ptr,
    L, D, N, H, n_chunks,
    su_b, su_d, su_l, sdt_b, sdt_d, sdt_l,
    sB_b, sB_g, sB_n, sB_l, sC_b, sC_g, sC_n, sC_l, sh_b, sh_d, sh_n,
    T: tl.constexpr, BD: tl.constexpr, BN: tl.constexpr, SAVE: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    d0 = tl.program_id(1).to(tl.int64) * BD
    d = d0 + tl.arange(0, BD)  # (BD,) int64: offsets pass 2^31 at long L
    g = d0 // H  # a channel block never straddles two groups (BD divides H)
    n = tl.arange(0, BN)
    nm = n < N
    j = tl.arange(0, T)
    A = tl.load(A_ptr + d[:, None] * N + n[None, :], mask=nm[None, :], other=0.0)  # (BD, BN)
    h = tl.load(h0_ptr + b * sh_b + d[:, None] * sh_d + n[None, :] * sh_n, mask=nm[None, :],
                other=0.0)
    for c in range(n_chunks):
        t = c * T + j
        tm = t < L
        if SAVE:
            tl.store(states_ptr + ((b * n_chunks + c) * D + d[:, None]) * N + n[None, :], h,
                     mask=nm[None, :])
        # past the end: Δ = 0, so the decay is 1 and the input 0, the state passes through
        u = tl.load(u_ptr + b * su_b + d[:, None] * su_d + t[None, :] * su_l, mask=tm[None, :],
                    other=0.0)  # (BD, T)
        dt = tl.load(dt_ptr + b * sdt_b + d[:, None] * sdt_d + t[None, :] * sdt_l,
                     mask=tm[None, :], other=0.0)
        bcm = nm[:, None] & tm[None, :]
        Bt = tl.load(B_ptr + b * sB_b + g * sB_g + n[:, None] * sB_n + t[None, :] * sB_l,
                     mask=bcm, other=0.0)  # (BN, T)
        Ct = tl.load(C_ptr + b * sC_b + g * sC_g + n[:, None] * sC_n + t[None, :] * sC_l,
                     mask=bcm, other=0.0)
        dA = tl.exp(dt[:, None, :] * A[:, :, None])  # (BD, BN, T)
        x = (dt * u)[:, None, :] * Bt[None, :, :]
        pa, px = tl.associative_scan((dA, x), 2, _combine)
        hs = pa * h[:, :, None] + px
        y = tl.sum(hs * Ct[None, :, :], axis=1)  # (BD, T)
        tl.store(y_ptr + (b * D + d[:, None]) * L + t[None, :], y, mask=tm[None, :])
        h = tl.sum(tl.where(j[None, None, :] == T - 1, hs, 0.0), axis=2)
    tl.store(last_ptr + (b * D + d[:, None]) * N + n[None, :], h, mask=nm[None, :])


@triton.jit
def bwd_kernel(
    u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, states_ptr, gy_ptr, glast_ptr,
    gu_ptr, gdt_ptr, gA_ptr, gB_ptr, gC_ptr, gh0_ptr,
    L, D, N, H, G, n_chunks,
    su_b, su_d, su_l, sdt_b, sdt_d, sdt_l,
    sB_b, sB_g, sB_n, sB_l, sC_b, sC_g, sC_n, sC_l,
    T: tl.constexpr, BD: tl.constexpr, BN: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    d0 = tl.program_id(1).to(tl.int64) * BD
    d = d0 + tl.arange(0, BD)
    g = d0 // H
    n = tl.arange(0, BN)
    nm = n < N
    j = tl.arange(0, T)
    dn = (b * D + d[:, None]) * N + n[None, :]  # (BD, BN) offsets into (B, D, N)
    A = tl.load(A_ptr + d[:, None] * N + n[None, :], mask=nm[None, :], other=0.0)
    # k: gradient reaching the state before the next chunk (the last state's, to begin with)
    k = tl.load(glast_ptr + dn, mask=nm[None, :], other=0.0)
    gA = k * 0.0
    for i in range(n_chunks):
        c = n_chunks - 1 - i
        t = c * T + j
        tm = t < L
        u = tl.load(u_ptr + b * su_b + d[:, None] * su_d + t[None, :] * su_l, mask=tm[None, :],
                    other=0.0)
        dt = tl.load(dt_ptr + b * sdt_b + d[:, None] * sdt_d + t[None, :] * sdt_l,
                     mask=tm[None, :], other=0.0)
        # Δ one step later, inside this chunk only: the step after the chunk is already in k
        nxt = (j < T - 1) & (t + 1 < L)
        dtn = tl.load(dt_ptr + b * sdt_b + d[:, None] * sdt_d + (t[None, :] + 1) * sdt_l,
                      mask=nxt[None, :], other=0.0)
        gy = tl.load(gy_ptr + (b * D + d[:, None]) * L + t[None, :], mask=tm[None, :], other=0.0)
        bcm = nm[:, None] & tm[None, :]
        Bt = tl.load(B_ptr + b * sB_b + g * sB_g + n[:, None] * sB_n + t[None, :] * sB_l,
                     mask=bcm, other=0.0)
        Ct = tl.load(C_ptr + b * sC_b + g * sC_g + n[:, None] * sC_n + t[None, :] * sC_l,
                     mask=bcm, other=0.0)
        h_in = tl.load(states_ptr + ((b * n_chunks + c) * D + d[:, None]) * N + n[None, :],
                       mask=nm[None, :], other=0.0)
        # recompute the chunk's states from its stored start state
        dA = tl.exp(dt[:, None, :] * A[:, :, None])  # (BD, BN, T)
        du = dt * u
        x = du[:, None, :] * Bt[None, :, :]
        pa, px = tl.associative_scan((dA, x), 2, _combine)
        hs = pa * h_in[:, :, None] + px
        # adjoint, reversed in time: ∂h_t = C_t·gy_t + exp(Δ_{t+1}A) ⊙ ∂h_{t+1}, ∂h_end = k
        a_next = tl.exp(dtn[:, None, :] * A[:, :, None])
        g_in = gy[:, None, :] * Ct[None, :, :]
        pg, sg = tl.associative_scan((a_next, g_in), 2, _combine, reverse=True)
        gh = sg + pg * k[:, :, None]
        # ∂ of Δ_t·A through the decay: ∂h_t ⊙ exp(Δ_t A) ⊙ h_{t−1}, and exp(Δ_t A) ⊙ h_{t−1}
        # is h_t − x_t (a subtraction, so no shifted copy of the states is needed)
        q = gh * (hs - x)
        ghB = tl.sum(gh * Bt[None, :, :], axis=1)  # (BD, T): ∂ of Δ·u through the input term
        tl.store(gu_ptr + (b * D + d[:, None]) * L + t[None, :], ghB * dt, mask=tm[None, :])
        gdt = ghB * u + tl.sum(q * A[:, :, None], axis=1)
        tl.store(gdt_ptr + (b * D + d[:, None]) * L + t[None, :], gdt, mask=tm[None, :])
        gA += tl.sum(q * dt[:, None, :], axis=2)
        bc_off = ((b * G + g) * N + n[:, None]) * L + t[None, :]  # (BN, T) into (B, G, N, L)
        tl.atomic_add(gB_ptr + bc_off, tl.sum(gh * du[:, None, :], axis=0), mask=bcm,
                      sem="relaxed")
        tl.atomic_add(gC_ptr + bc_off, tl.sum(hs * gy[:, None, :], axis=0), mask=bcm,
                      sem="relaxed")
        k = tl.sum(tl.where(j[None, None, :] == 0, gh * dA, 0.0), axis=2)
    tl.store(gh0_ptr + dn, k, mask=nm[None, :])
    tl.store(gA_ptr + dn, gA, mask=nm[None, :])


def _block_d(H: int, cap: int) -> int:
    """Largest power of two <= cap dividing H, so that a channel block lies in one group."""
    bd = 1
    while bd * 2 <= cap and H % (bd * 2) == 0:
        bd *= 2
    return bd


def _strides(*ts: Tensor) -> list[int]:
    return [s for t in ts for s in t.stride()]


class _TritonScan(torch.autograd.Function):
    """(u, Δ, A, B, C, h0) -> (y = ⟨h_t, C_t⟩, h_L); B, C (B, G, N, L)."""

    @staticmethod
    def forward(ctx, u, dt, A, Bm, Cm, h0, chunk, block_d):  # noqa: D102
        Bsz, Dm, L = u.shape
        G, N = Bm.shape[1], A.shape[1]
        H = Dm // G
        bd = _block_d(H, block_d)
        n_chunks = triton.cdiv(L, chunk)
        save = any(ctx.needs_input_grad[:6])
        A = A.contiguous()
        y = u.new_empty(Bsz, Dm, L)
        last = u.new_empty(Bsz, Dm, N)
        states = u.new_empty(Bsz, n_chunks, Dm, N) if save else u.new_empty(1)
        fwd_kernel[(Bsz, Dm // bd)](
            u, dt, A, Bm, Cm, h0, y, last, states, L, Dm, N, H, n_chunks,
            *_strides(u, dt, Bm, Cm, h0),
            T=chunk, BD=bd, BN=triton.next_power_of_2(N), SAVE=save, num_warps=NUM_WARPS,
        )
        if save:
            ctx.save_for_backward(u, dt, A, Bm, Cm, states)
            ctx.chunk, ctx.bd = chunk, bd
        return y, last

    @staticmethod
    def backward(ctx, gy, glast):  # noqa: D102
        u, dt, A, Bm, Cm, states = ctx.saved_tensors
        Bsz, Dm, L = u.shape
        G, N = Bm.shape[1], A.shape[1]
        gy = torch.zeros_like(u) if gy is None else gy.contiguous()
        glast = u.new_zeros(Bsz, Dm, N) if glast is None else glast.contiguous()
        gu, gdt = torch.empty_like(u), torch.empty_like(u)
        gA = u.new_empty(Bsz, Dm, N)  # per batch, summed below
        gB = u.new_zeros(Bsz, G, N, L)  # atomically summed over each group's channel blocks
        gC = u.new_zeros(Bsz, G, N, L)
        gh0 = u.new_empty(Bsz, Dm, N)
        bwd_kernel[(Bsz, Dm // ctx.bd)](
            u, dt, A, Bm, Cm, states, gy, glast, gu, gdt, gA, gB, gC, gh0,
            L, Dm, N, Dm // G, G, states.shape[1],
            *_strides(u, dt, Bm, Cm),
            T=ctx.chunk, BD=ctx.bd, BN=triton.next_power_of_2(N), num_warps=NUM_WARPS,
        )
        return gu, gdt, gA.sum(0), gB, gC, gh0, None, None


def scan_triton(
    u: Tensor,  # (B, D, L) compute dtype
    dt: Tensor,  # (B, D, L) biased and softplus-ed
    A: Tensor,  # (D, N)
    Bm: Tensor,  # (B, G, N, L)
    Cm: Tensor,  # (B, G, N, L)
    h0: Tensor,  # (B, D, N)
    chunk: int | None = None,
    block_d: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Return (y without D-skip and gate (B, D, L), last state (B, D, N))."""
    if not (u.is_cuda or INTERPRETED):
        raise ValueError(
            "backend='triton' needs CUDA tensors (on CPU it runs only under TRITON_INTERPRET=1, "
            "set before pixelmamba.ops.triton_scan is imported); use backend='numba' or 'torch'"
        )
    chunk = CHUNK if chunk is None else chunk
    if chunk < 1 or chunk & (chunk - 1):
        raise ValueError(f"chunk must be a power of two, got {chunk}")
    if u.shape[-1] == 0:
        return u.new_zeros(u.shape), h0
    return _TritonScan.apply(u, dt, A, Bm, Cm, h0, chunk, BLOCK_D if block_d is None else block_d)
