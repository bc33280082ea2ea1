"""Bidirectional Mamba mixer, Vision Mamba's "v2" variant, with a streaming mode.

Vision Mamba (Zhu et al., 2024, "Vision Mamba: Efficient Visual Representation Learning with
Bidirectional State Space Model"; hustvl/Vim `mamba-1p1p1/mamba_ssm/modules/mamba_simple.py`,
`bimamba_type="v2"`, `if_devide_out=True`): one shared input projection; the forward branch
(conv1d, x_proj, dt_proj, A_log, D) scans the sequence, the backward branch (conv1d_b, x_proj_b,
dt_proj_b, A_b_log, D_b) scans it reversed, both gated by the same z; out = out_proj((y_f +
flip(y_b)) / 2). Parameter names match Vim's so its checkpoints load. Initialisation follows
mamba-ssm's `Mamba` (S4D-real A, D = 1, dt bias = softplus⁻¹ of log-uniform dt).

``merge="sum"`` is the paper's Eq. 1 read literally instead: one conv ψ (``conv1d``) feeds both
branches — the backward branch scans the reversed ψ(x) — and their gated outputs are summed,
``out_proj(y_f + flip(y_b))``; there is no ``conv1d_b``.

Streaming (`forward(x, chunk_size=c)`): the sequence is processed in pieces of c tokens. A first
pass runs the forward branch over the pieces in order and keeps only the SSM state at each piece
boundary; a second pass walks the pieces in reverse, carrying the backward branch's state, and
produces each piece's output from both boundary states. The causal convolutions see the d_conv−1
neighbouring input tokens of each piece (the conv state), recomputed through in_proj. Under
autograd every piece runs inside activation checkpointing, so what is kept per layer is the
input, the output and (L/c)·2·d_inner·d_state of states: activation memory per piece is bounded
by c, at the price of roughly one extra forward in compute.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from .ops import selective_scan


class BiMambaMixer(nn.Module):
    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | str = "auto",
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        dt_init_floor: float = 1e-4,
        bias: bool = False,
        conv_bias: bool = True,
        backend: str = "auto",
        merge: str = "mean",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if merge not in ("mean", "sum"):
            raise ValueError(f"merge must be 'mean' (Vim v2) or 'sum' (Eq. 1), got {merge!r}")
        self.merge = merge
        self.scale = 0.5 if merge == "mean" else 1.0  # y = scale * (y_f + flip(y_b))
        fk = {"device": device, "dtype": dtype}
        self.d_model, self.d_state, self.d_conv = d_model, d_state, d_conv
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.backend = backend
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias, **fk)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **fk)
        for sfx in ("", "_b"):
            if not sfx or merge == "mean":  # Eq. 1: one conv for both branches
                conv = nn.Conv1d(
                    self.d_inner, self.d_inner, d_conv, groups=self.d_inner, bias=conv_bias,
                    padding=d_conv - 1, **fk,
                )  # padding kept for Vim state-dict compatibility; forward pads explicitly
                setattr(self, "conv1d" + sfx, conv)
            x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False, **fk)
            dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True, **fk)
            self._init_dt_proj(dt_proj, dt_min, dt_max, dt_init_floor)
            A = torch.arange(1, d_state + 1, dtype=torch.float32, device=device)
            A_log = nn.Parameter(torch.log(A).repeat(self.d_inner, 1))  # S4D-real, fp32
            A_log._no_weight_decay = True
            D = nn.Parameter(torch.ones(self.d_inner, device=device))
            D._no_weight_decay = True
            setattr(self, "x_proj" + sfx, x_proj)
            setattr(self, "dt_proj" + sfx, dt_proj)
            setattr(self, "A" + sfx + "_log", A_log)
            setattr(self, "D" + sfx, D)

    def _init_dt_proj(self, dt_proj: nn.Linear, dt_min: float, dt_max: float, floor: float) -> None:
        std = self.dt_rank**-0.5
        nn.init.uniform_(dt_proj.weight, -std, std)
        dt = torch.exp(
            torch.rand(self.d_inner, device=dt_proj.bias.device)
            * (math.log(dt_max) - math.log(dt_min))
            + math.log(dt_min)
        ).clamp(min=floor)
        inv_dt = dt + torch.log(-torch.expm1(-dt))  # softplus⁻¹
        with torch.no_grad():
            dt_proj.bias.copy_(inv_dt)
        dt_proj.bias._no_reinit = True

    # -- pieces ------------------------------------------------------------------------------

    def _xz(self, x: Tensor, pad_left: int, pad_right: int) -> tuple[Tensor, Tensor]:
        """in_proj of (B, l, d_model) -> xi, z (B, d_inner, l + pads); pads are zeros in xi."""
        xz = self.in_proj(x).transpose(1, 2)  # (B, 2E, l)
        xi, z = xz.chunk(2, dim=1)
        if pad_left or pad_right:
            xi = F.pad(xi, (pad_left, pad_right))
        return xi, z

    def causal_conv(self, xi: Tensor, backward: bool = False) -> Tensor:
        """SiLU(conv1d(xi)): (B, E, K−1 + l) with its halo first (scan order) → (B, E, l)."""
        conv: nn.Conv1d = getattr(self, "conv1d_b" if backward else "conv1d")
        return F.silu(F.conv1d(xi, conv.weight, conv.bias, groups=self.d_inner))

    def scan_branch(
        self, xi: Tensor | None, z: Tensor, h0: Tensor | None, backward: bool, want_state: bool,
        xc: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """One direction. xi: (B, E, K−1 + l) with its conv halo first (scan order), or ``xc`` the
        conv's output (B, E, l) already; z: (B, E, l)."""
        sfx = "_b" if backward else ""
        x_proj: nn.Linear = getattr(self, "x_proj" + sfx)
        dt_proj: nn.Linear = getattr(self, "dt_proj" + sfx)
        if xc is None:
            xc = self.causal_conv(xi, backward)  # (B, E, l)
        x_dbl = x_proj(xc.transpose(1, 2))  # (B, l, R + 2N)
        dt, Bm, Cm = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.linear(dt, dt_proj.weight).transpose(1, 2)  # (B, E, l)
        # SSM parameters in fp32 as mamba-ssm keeps them (fp64 when the activations are fp64)
        pdt = torch.float64 if xc.dtype == torch.float64 else torch.float32
        A = -torch.exp(getattr(self, "A" + sfx + "_log").to(pdt))  # (E, N)
        res = selective_scan(
            xc, dt, A, Bm.transpose(1, 2), Cm.transpose(1, 2),
            D=getattr(self, "D" + sfx).to(pdt), z=z, delta_bias=dt_proj.bias.to(pdt),
            delta_softplus=True, return_last_state=want_state, initial_state=h0,
            backend=self.backend,
        )
        return res if want_state else (res, None)

    def forward_piece_state(self, x: Tensor, pad_left: int, h0: Tensor | None) -> Tensor:
        """Forward-branch state after a piece; x holds the piece preceded by its conv halo."""
        xi, z = self._xz(x, pad_left, 0)
        k = self.d_conv - 1
        return self.scan_branch(xi, z[..., k - pad_left:], h0, False, True)[1]

    def forward_piece_share(self, x: Tensor, pad_left: int, h0: Tensor | None) -> tuple[Tensor, Tensor]:
        """The forward branch's share of ``piece``'s output, ``out_proj(scale * y_f)``, and its
        state after the piece; x holds the piece preceded by its conv halo. ``piece``'s output is
        ``out_proj(scale * (y_f + y_b))``, affine in ``y_f``, so its gradient with respect to the
        entering state ``h0`` is this share's (the backward branch does not depend on ``h0``)."""
        xi, z = self._xz(x, pad_left, 0)
        k = self.d_conv - 1
        y_f, h = self.scan_branch(xi, z[..., k - pad_left:], h0, False, True)
        return self.out_proj((y_f * self.scale).transpose(1, 2)), h

    def piece(
        self, x: Tensor, pad_left: int, pad_right: int, h_f: Tensor | None, h_b: Tensor | None,
        forward_state: bool = False,
    ) -> tuple[Tensor, ...]:
        """Output of a piece and the backward state before it; x has both halos.
        ``forward_state``: also return the forward branch's state after the piece (third)."""
        k = self.d_conv - 1
        xi, z = self._xz(x, pad_left, pad_right)  # xi: (B, E, k + l + k)
        z = z[..., k - pad_left: z.shape[-1] - (k - pad_right)]  # (B, E, l)
        if self.merge == "sum":  # one conv: the backward branch scans the reversed ψ(x)
            xc = self.causal_conv(xi[..., : xi.shape[-1] - k])  # (B, E, l)
            y_f, h_f_out = self.scan_branch(None, z, h_f, False, forward_state, xc=xc)
            y_b, h_b = self.scan_branch(None, z.flip(-1), h_b, True, True, xc=xc.flip(-1))
        else:
            y_f, h_f_out = self.scan_branch(xi[..., : xi.shape[-1] - k], z, h_f, False, forward_state)
            y_b, h_b = self.scan_branch(xi[..., k:].flip(-1), z.flip(-1), h_b, True, True)
        y = (y_f + y_b.flip(-1)) * self.scale  # (B, E, l)
        out = self.out_proj(y.transpose(1, 2))
        return (out, h_b, h_f_out) if forward_state else (out, h_b)

    # -- forward -----------------------------------------------------------------------------

    def forward(self, x: Tensor, chunk_size: int | None = None) -> Tensor:
        """(B, L, d_model) -> (B, L, d_model); `chunk_size` streams the sequence in pieces."""
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"expected (batch, seqlen, {self.d_model}), got {tuple(x.shape)}")
        L, k = x.shape[1], self.d_conv - 1
        if chunk_size is None or chunk_size >= L:
            xi, z = self._xz(x, k, 0)  # (B, E, k + L)
            if self.merge == "sum":  # Eq. 1: SSM_f(ψ(x)) ⊗ z + SSM_b(ψ(x)) ⊗ z, one ψ
                xc = self.causal_conv(xi)
                y_f, _ = self.scan_branch(None, z, None, False, False, xc=xc)
                y_b, _ = self.scan_branch(None, z.flip(-1), None, True, False, xc=xc.flip(-1))
            else:
                y_f, _ = self.scan_branch(xi, z, None, False, False)
                xb = F.pad(xi[..., k:].flip(-1), (k, 0))
                y_b, _ = self.scan_branch(xb, z.flip(-1), None, True, False)
            y = (y_f + y_b.flip(-1)) * self.scale  # (B, E, L)
            return self.out_proj(y.transpose(1, 2))
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive int, got {chunk_size}")
        use_ckpt = torch.is_grad_enabled() and (
            x.requires_grad or any(p.requires_grad for p in self.parameters())
        )

        def run(fn, *args):
            return checkpoint(fn, *args, use_reentrant=False) if use_ckpt else fn(*args)

        bounds = [(s, min(s + chunk_size, L)) for s in range(0, L, chunk_size)]
        h_f: list[Tensor | None] = [None]
        for s, e in bounds[:-1]:
            lo = max(0, s - k)
            h_f.append(run(self.forward_piece_state, x[:, lo:e], k - (s - lo), h_f[-1]))
        outs: list[Tensor] = [None] * len(bounds)  # type: ignore[list-item]
        h_b = None
        for i in range(len(bounds) - 1, -1, -1):
            s, e = bounds[i]
            lo, hi = max(0, s - k), min(L, e + k)
            outs[i], h_b = run(self.piece, x[:, lo:hi], k - (s - lo), k - (hi - e), h_f[i], h_b)
        return torch.cat(outs, dim=1)
