"""MambaMIL — Yang, Wang, Chen, "MambaMIL: Enhancing Long Sequence Modeling with Sequence
Reordering in Computational Pathology", MICCAI 2024 (the Pixel-Mamba paper's supplement row).

Dimensions as in isyangshu/MambaMIL ``models/MambaMIL.py`` with ``type="SRMamba"``: Linear(in, 512)
+ ReLU + Dropout; two layers x + SRMamba(LN x) (d_model 512, d_state 16, d_conv 4, expand 2); LN;
attention pooling Linear(512, 128) + Tanh + Linear(128, 1) (ungated), softmax over patches;
Linear(512, n_out). 4,228,869 parameters over 1024-d features with 4 outputs.

SRMamba (``mamba/mamba_ssm/modules/srmamba.py``) shares one in_proj and one out_proj between two
selective-scan branches with their own conv1d, x_proj, dt_proj, A_log, D: the forward branch reads
the bag in its order; the reordered branch pads the projected sequence with zeros to a multiple of
``rate`` and reads it column-wise as a (length / rate, rate) matrix, so patches ``rate`` apart
become neighbours. Its outputs are put back in order, un-padded, and *summed* (not averaged) with
the forward branch's before out_proj. SRMamba's parameter names match the original's.

The original runs only on mamba-ssm's CUDA kernels; here both branches run on
``pixelmamba.ops.selective_scan`` (numba or chunked-torch on CPU, mamba-ssm's kernel on CUDA).
Initialisation: the SSM branches use mamba-ssm's (S4D-real A, D = 1, dt bias = softplus⁻¹ of
log-uniform dt); the other linear layers get MambaMIL's Xavier-normal weights and zero biases.
(The original applies that Xavier/zero init to *every* Linear, including dt_proj, which resets the
dt bias to 0 — i.e. dt = softplus(0) ≈ 0.69 everywhere — so the Mamba init is kept here.)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from pixelmamba.ops import selective_scan

from .base import MILModel


def sr_reorder(x: torch.Tensor, rate: int) -> torch.Tensor:
    """The reordered branch's input: (B, C, L) -> (B, C, P), P = ceil(L / rate) · rate.

    Zero-pads the sequence to P and reads it column-wise as a (P / rate, rate) matrix, so position
    j of the result is position (j mod rows) · rate + j div rows of the padded sequence. A reshape
    rather than a gather: indexing a long last axis is several times slower on CPU.
    """
    rows = -(-x.shape[-1] // rate)
    x = F.pad(x, (0, rows * rate - x.shape[-1]))  # (B, C, P)
    return x.unflatten(-1, (rows, rate)).transpose(-1, -2).flatten(-2)


def sr_restore(y: torch.Tensor, rate: int, length: int) -> torch.Tensor:
    """Inverse of :func:`sr_reorder`: (B, C, P) -> (B, C, length), padding dropped."""
    return y.unflatten(-1, (rate, -1)).transpose(-1, -2).flatten(-2)[..., :length]


class SRMamba(nn.Module):
    """Mamba mixer with a forward and a sequence-reordered selective-scan branch."""

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 rate: int = 10, dt_min: float = 1e-3, dt_max: float = 1e-1,
                 dt_init_floor: float = 1e-4, backend: str = "auto") -> None:
        super().__init__()
        if rate < 1:
            raise ValueError(f"rate must be a positive int, got {rate}")
        self.d_state, self.rate, self.backend = d_state, rate, backend
        self.d_inner = expand * d_model
        self.dt_rank = math.ceil(d_model / 16)
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=False)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)
        for sfx in ("", "_b"):  # "" = forward branch, "_b" = reordered branch (original names)
            setattr(self, "conv1d" + sfx, nn.Conv1d(self.d_inner, self.d_inner, d_conv,
                                                    groups=self.d_inner, padding=d_conv - 1))
            setattr(self, "x_proj" + sfx,
                    nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False))
            dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)
            std = self.dt_rank**-0.5
            nn.init.uniform_(dt_proj.weight, -std, std)
            dt = torch.exp(torch.rand(self.d_inner) * (math.log(dt_max) - math.log(dt_min))
                           + math.log(dt_min)).clamp(min=dt_init_floor)
            with torch.no_grad():
                dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus⁻¹(dt)
            dt_proj.bias._no_reinit = True
            setattr(self, "dt_proj" + sfx, dt_proj)
            A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32))
                                 .repeat(self.d_inner, 1))  # S4D-real, (d_inner, d_state)
            A_log._no_weight_decay = True
            setattr(self, "A" + sfx + "_log", A_log)
            D = nn.Parameter(torch.ones(self.d_inner))
            D._no_weight_decay = True
            setattr(self, "D" + sfx, D)

    def scan_branch(self, x: torch.Tensor, z: torch.Tensor, sfx: str) -> torch.Tensor:
        """One unidirectional Mamba scan: causal conv + SiLU, input-dependent Δ/B/C, gated by z.

        x, z: (B, E, L) in scan order -> (B, E, L).
        """
        L = x.shape[-1]
        x = F.silu(getattr(self, "conv1d" + sfx)(x)[..., :L])  # causal: drop the right overhang
        dt, B, C = torch.split(getattr(self, "x_proj" + sfx)(x.transpose(1, 2)),
                               [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt_proj: nn.Linear = getattr(self, "dt_proj" + sfx)
        A_log: torch.Tensor = getattr(self, "A" + sfx + "_log")
        pdt = torch.float64 if x.dtype == torch.float64 else torch.float32
        return selective_scan(
            x, F.linear(dt, dt_proj.weight).transpose(1, 2), -torch.exp(A_log.to(pdt)),
            B.transpose(1, 2), C.transpose(1, 2), D=getattr(self, "D" + sfx).to(pdt), z=z,
            delta_bias=dt_proj.bias.to(pdt), delta_softplus=True, backend=self.backend)

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # (B, L, d_model) -> (B, L, d_model)
        L = h.shape[1]
        xz = self.in_proj(h).transpose(1, 2)  # (B, 2E, L)
        x, z = xz.chunk(2, dim=1)  # (B, E, L) each
        y = self.scan_branch(x, z, "")
        xz_r = sr_reorder(xz, self.rate)  # (B, 2E, P), zero tokens padded
        y_r = self.scan_branch(*xz_r.chunk(2, dim=1), "_b")  # (B, E, P) in reordered order
        y = y + sr_restore(y_r, self.rate, L)  # (B, E, L)
        return self.out_proj(y.transpose(1, 2))


class MambaMIL(MILModel):
    def __init__(self, in_dim: int, n_out: int, dim: int = 512, num_layers: int = 2,
                 rate: int = 10, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 attn_dim: int = 128, dropout: float = 0.25, backend: str = "auto") -> None:
        """``rate``: the reordering stride; the original uses 10, and 5 for survival."""
        super().__init__()
        self.num_features = dim
        self.fc = nn.Sequential(nn.Linear(in_dim, dim), nn.ReLU(), nn.Dropout(dropout))
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(num_layers))
        self.mixers = nn.ModuleList(SRMamba(dim, d_state, d_conv, expand, rate, backend=backend)
                                    for _ in range(num_layers))
        self.norm = nn.LayerNorm(dim)
        self.attention = nn.Sequential(nn.Linear(dim, attn_dim), nn.Tanh(), nn.Linear(attn_dim, 1))
        self.head = nn.Linear(dim, n_out)
        for m in (*self.fc, *self.attention, self.head):
            if isinstance(m, nn.Linear):
                nn.init.xavier_normal_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(self.as_bag(x)).unsqueeze(0)  # (1, N, dim)
        for norm, mixer in zip(self.norms, self.mixers):
            h = h + mixer(norm(h))  # (1, N, dim)
        h = self.norm(h)[0]  # (N, dim)
        a = torch.softmax(self.attention(h).squeeze(-1), dim=0)  # (N,)
        return (a @ h).unsqueeze(0)  # (1, dim)
