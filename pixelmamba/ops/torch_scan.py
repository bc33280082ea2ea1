"""Pure-PyTorch chunked selective scan: any device, hand-written backward, O(L·D) memory.

Layout of the work:
- the sequence is cut into *spans* (default 256 tokens) processed one after another with the
  state carried. Forward keeps only each span's starting state; backward walks the spans from
  the end, recomputes a span's states from its starting state and runs the adjoint recurrence
  over it. Memory is O(L·D + (L/span)·D·N) instead of O(L·D·N);
- inside a span the linear recurrence runs either as a Python loop over the tokens (CPU, when a
  step has enough state elements to amortise the per-op cost) or in *blocks* (default 64): all
  blocks of the span are scanned at once with a Hillis–Steele associative scan over (decay,
  input) pairs, then block-start states are chained sequentially and broadcast back.
- the adjoint of the states obeys the same kind of recurrence run backwards in time,
  ∂h_t = C_t·gy_t + exp(Δ_{t+1}A) ⊙ ∂h_{t+1}, so it reuses the same block scan on flipped inputs;
  every other gradient is then elementwise (or a sum) in ∂h_t, h_t and h_{t−1}. Autograd
  through the scan itself would keep a dozen (span, D, N) intermediates per span and run about
  three times as many full-size ops; the hand-written backward runs about as many as one forward.

Numerics: decays exp(Δ·A) lie in (0, 1] and are only ever multiplied together (the product
over a segment equals exp of that segment's sum of Δ·A), so nothing is exponentiated from a raw
cumulative sum and nothing can overflow in float32; long products underflow harmlessly to 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

SPAN = 256  # (span, B, D, N) working tensors of a few MB stay in cache and are reused
BLOCK = 64


# On CPU with at least this many state elements per step, a Python loop over the steps (one
# fused multiply-add each, no log-factor of extra work) beats the blocked associative scan;
# below, per-op overhead dominates the loop. On GPUs the blocked scan is always used (a loop
# would be one kernel launch per token).
SEQUENTIAL_MIN_STEP = 256


STRATEGIES = ("loop", "blocked")


def linear_scan_strategy(h0: Tensor) -> str:
    """How :func:`linear_scan` runs for a state like ``h0`` by default: ``"loop"`` on the CPU when a
    step has at least ``SEQUENTIAL_MIN_STEP`` state elements, else ``"blocked"``."""
    return "loop" if h0.device.type == "cpu" and h0.numel() >= SEQUENTIAL_MIN_STEP else "blocked"


def linear_scan(a: Tensor, x: Tensor, h0: Tensor, block: int = BLOCK, strategy: str = "auto") -> Tensor:
    """All states of h_t = a_t ⊙ h_{t−1} + x_t, time-major: a, x (T, ...); h0 (...).

    ``strategy``: ``"loop"`` (one fused multiply-add per step), ``"blocked"`` (an associative scan
    inside blocks of ``block`` steps, then the block starts chained), or ``"auto"``
    (:func:`linear_scan_strategy`). Both give the same states up to rounding; the torch backend's
    forward and backward run on this."""
    if strategy == "auto":
        strategy = linear_scan_strategy(h0)
    elif strategy not in STRATEGIES:
        raise ValueError(f"unknown linear scan strategy {strategy!r}; choose one of {STRATEGIES} or 'auto'")
    T = a.shape[0]
    if T <= 2 or strategy == "loop":
        hs = torch.empty_like(x)
        h = h0
        for t in range(T):
            h = torch.addcmul(x[t], a[t], h, out=hs[t])
        return hs
    nb = -(-T // block)
    pad = nb * block - T
    if pad:  # decay 1 and input 0 past the end: the state passes through unchanged
        a = torch.cat([a, a.new_ones(pad, *a.shape[1:])])
        x = torch.cat([x, x.new_zeros(pad, *x.shape[1:])])
    rest = a.shape[1:]
    a = a.reshape(nb, block, *rest)
    x = x.reshape(nb, block, *rest)
    k = 1
    while k < block:  # inclusive scan inside each block: (a, x)_t ∘= (a, x)_{t-k}
        x = torch.cat([x[:, :k], torch.addcmul(x[:, k:], a[:, k:], x[:, :-k])], dim=1)
        a = torch.cat([a[:, :k], a[:, k:] * a[:, :-k]], dim=1)
        k *= 2
    # a[j, t] is now the decay from block j's start to t, x[j, t] the state from a zero start
    starts = torch.empty_like(x[:, 0])
    h = h0
    for j in range(nb):
        starts[j] = h
        h = torch.addcmul(x[j, -1], a[j, -1], h)
    hs = torch.addcmul(x, a, starts[:, None])  # (nb, block, ...)
    return hs.reshape(nb * block, *rest)[:T]


def _span_inputs(u, dt, A, Bm):
    """Decays exp(Δ·A) and inputs Δ·u·B of one span, time-major (T, B, G, H, N)."""
    dtT = dt.permute(3, 0, 1, 2)[..., None]  # (T, B, G, H, 1)
    dA = torch.exp(dtT * A)
    x = (dtT * u.permute(3, 0, 1, 2)[..., None]) * Bm.permute(3, 0, 1, 2)[:, :, :, None]
    return dA, x


class _TorchScan(torch.autograd.Function):
    """(u, Δ, A, B, C, h0) -> (y = ⟨h_t, C_t⟩, h_L) in (B, G, H, L) layout, chunked in spans."""

    @staticmethod
    def forward(ctx, u, dt, A, Bm, Cm, h0, span, block):  # noqa: D102
        L = u.shape[-1]
        ys, starts = [], []
        h = h0
        for s in range(0, L, span):
            e = min(s + span, L)
            starts.append(h)
            dA, x = _span_inputs(u[..., s:e], dt[..., s:e], A, Bm[..., s:e])
            hs = linear_scan(dA, x, h, block)  # (T, B, G, H, N)
            ys.append(torch.einsum("tbghn,bgnt->bght", hs, Cm[..., s:e]))
            h = hs[-1].clone()  # a view would keep all of hs alive
        ctx.save_for_backward(u, dt, A, Bm, Cm, *starts)
        ctx.span, ctx.block = span, block
        y = torch.cat(ys, dim=-1) if ys else u.new_zeros(u.shape)
        return y, h

    @staticmethod
    def backward(ctx, gy, glast):  # noqa: D102
        u, dt, A, Bm, Cm, *starts = ctx.saved_tensors
        span, block = ctx.span, ctx.block
        L = u.shape[-1]
        gy = torch.zeros_like(u) if gy is None else gy
        g_next = torch.zeros_like(starts[0]) if glast is None else glast  # ∂ of the span's last h
        gu, gdt = torch.empty_like(u), torch.empty_like(u)
        gB, gC = torch.empty_like(Bm), torch.empty_like(Cm)
        gA = torch.zeros_like(A)
        for i in range((L + span - 1) // span - 1, -1, -1):
            s = i * span
            e = min(s + span, L)
            ut, dtt, Bt, Ct = u[..., s:e], dt[..., s:e], Bm[..., s:e], Cm[..., s:e]
            dA, x = _span_inputs(ut, dtt, A, Bt)
            hs = linear_scan(dA, x, starts[i], block)  # (T, B, G, H, N)
            gyt = gy[..., s:e]
            # adjoint recurrence, reversed in time: ∂h_t = C_t·gy_t + dA_{t+1} ⊙ ∂h_{t+1}
            g_in = gyt.permute(3, 0, 1, 2)[..., None] * Ct.permute(3, 0, 1, 2)[:, :, :, None]
            dA_next = torch.cat([dA[1:], dA.new_ones(1, *dA.shape[1:])])
            gh = linear_scan(dA_next.flip(0), g_in.flip(0), g_next, block).flip(0)
            hprev = torch.cat([starts[i][None], hs[:-1]])
            gC[..., s:e] = torch.einsum("tbghn,bght->bgnt", hs, gyt)
            ghB = torch.einsum("tbghn,bgnt->bght", gh, Bt)  # ∂ of Δ·u through the input term
            gB[..., s:e] = torch.einsum("tbghn,bght->bgnt", gh, dtt * ut)
            q = gh * dA * hprev  # ∂ of Δ·A_n through the decay, (T, B, G, H, N)
            gu[..., s:e] = ghB * dtt
            gdt[..., s:e] = ghB * ut + torch.einsum("tbghn,ghn->bght", q, A)
            gA += torch.einsum("tbghn,bght->ghn", q, dtt)
            g_next = dA[0] * gh[0]  # ∂ of the span's starting state
        return gu, gdt, gA, gB, gC, g_next, None, None


def scan_torch(
    u: Tensor,  # (B, D, L) compute dtype
    dt: Tensor,  # (B, D, L) biased and softplus-ed
    A: Tensor,  # (D, N)
    Bm: Tensor,  # (B, G, N, L)
    Cm: Tensor,  # (B, G, N, L)
    h0: Tensor,  # (B, D, N)
    span: int = SPAN,
    block: int = BLOCK,
) -> tuple[Tensor, Tensor]:
    """Return (y without D-skip and gate (B, D, L), last state (B, D, N))."""
    Bsz, Dm, L = u.shape
    G, N = Bm.shape[1], A.shape[-1]
    H = Dm // G
    if L == 0:
        return u.new_zeros(u.shape), h0
    y, h = _TorchScan.apply(
        u.reshape(Bsz, G, H, L), dt.reshape(Bsz, G, H, L), A.reshape(G, H, N), Bm, Cm,
        h0.reshape(Bsz, G, H, N), span, block,
    )
    return y.reshape(Bsz, Dm, L), h.reshape(Bsz, Dm, N)
