"""TransMIL — Shao et al., "TransMIL: Transformer based Correlated Multiple Instance Learning for
Whole Slide Image Classification", NeurIPS 2021.

Dimensions as in szc19990412/TransMIL ``models/TransMIL.py``: Linear(in, 512) + ReLU; a CLS token;
the bag is made square by repeating its first patches; two pre-norm layers x + Nyström
attention(LN x) (8 heads × 64, 256 landmarks, 6 pseudo-inverse iterations, residual depthwise
conv k=33 on the values) with the PPEG position encoder (depthwise 7/5/3 convolutions + identity
over the square) between them; LN; the CLS token → Linear. 2,673,172 parameters over 1024-d
features with 4 outputs.

Nyström attention (Xiong et al., "Nyströmformer", AAAI 2021) is written here rather than taken from
the ``nystrom-attention`` package: the original pins 0.0.9, whose output slice kept the padding
instead of the tokens, and the package (plus its ``einops`` dependency) would be a run-time
dependency for ~50 lines. The module keeps the package's parameter names (``to_qkv``, ``to_out``,
``res_conv``), so a state dict moves between the two, and ``tests/baselines/test_mil_aggregators.py`` checks
it against ``nystrom-attention==0.0.14`` on a fixed input when that package is installed.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .base import MILModel


def moore_penrose_pinv(x: torch.Tensor, iters: int) -> torch.Tensor:
    """Iterative pseudo-inverse of the (…, m, m) landmark kernel (Razavi et al. 2014, order 7).

    Initialised with xᵀ / (max column sum · max row sum), the maxima taken over the whole tensor
    (every head and batch) as nystrom-attention does, so the numbers match it.
    """
    abs_x = x.abs()
    z = x.transpose(-1, -2) / (abs_x.sum(dim=-1).max() * abs_x.sum(dim=-2).max())
    eye = torch.eye(x.shape[-1], device=x.device, dtype=x.dtype)
    for _ in range(iters):
        xz = x @ z
        z = 0.25 * z @ (13 * eye - xz @ (15 * eye - xz @ (7 * eye - xz)))
    return z


class NystromAttention(nn.Module):
    """Softmax attention approximated through ``num_landmarks`` segment-mean landmarks.

    The sequence is left-padded with zero tokens to a multiple of ``num_landmarks`` (no mask, as
    TransMIL calls it), so a bag shorter than the landmark count works: each landmark is then a
    single token and the approximation is exact up to the pseudo-inverse iterations.
    """

    def __init__(self, dim: int, dim_head: int = 64, heads: int = 8, num_landmarks: int = 256,
                 pinv_iterations: int = 6, residual_conv_kernel: int = 33,
                 dropout: float = 0.0) -> None:
        super().__init__()
        inner = heads * dim_head
        self.heads, self.num_landmarks, self.pinv_iterations = heads, num_landmarks, pinv_iterations
        self.scale = dim_head**-0.5
        self.to_qkv = nn.Linear(dim, 3 * inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, dim), nn.Dropout(dropout))
        pad = residual_conv_kernel // 2
        self.res_conv = nn.Conv2d(heads, heads, (residual_conv_kernel, 1), padding=(pad, 0),
                                  groups=heads, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, n, dim) -> (B, n, dim)
        b, n, _ = x.shape
        m, h = self.num_landmarks, self.heads
        x = F.pad(x, (0, 0, (-n) % m, 0))  # (B, P, dim), P a multiple of m, zeros first
        P = x.shape[1]
        q, k, v = (t.unflatten(-1, (h, -1)).transpose(1, 2)
                   for t in self.to_qkv(x).chunk(3, dim=-1))  # (B, h, P, d) each
        q = q * self.scale
        seg = P // m
        q_l = q.unflatten(2, (m, seg)).mean(dim=3)  # (B, h, m, d)
        k_l = k.unflatten(2, (m, seg)).mean(dim=3)  # (B, h, m, d)
        kernel_inv = moore_penrose_pinv((q_l @ k_l.transpose(-1, -2)).softmax(-1),
                                        self.pinv_iterations)  # (B, h, m, m)
        context = (q_l @ k.transpose(-1, -2)).softmax(-1) @ v  # (B, h, m, d)
        # attn1 @ (kernel_inv @ context) rather than (attn1 @ kernel_inv) @ context: the same
        # product, but never a second (P, m) matrix — that is what lets a 50,000-patch bag fit.
        out = (q @ k_l.transpose(-1, -2)).softmax(-1) @ (kernel_inv @ context)  # (B, h, P, d)
        out = out + self.res_conv(v)
        out = self.to_out(out.transpose(1, 2).flatten(2))  # (B, P, dim)
        return out[:, -n:]


class TransLayer(nn.Module):
    """Pre-norm attention with a residual; TransMIL has no feed-forward sub-layer."""

    def __init__(self, dim: int, heads: int, num_landmarks: int, pinv_iterations: int,
                 dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = NystromAttention(dim, dim_head=dim // heads, heads=heads,
                                     num_landmarks=num_landmarks,
                                     pinv_iterations=pinv_iterations, dropout=dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.attn(self.norm(x))


class PPEG(nn.Module):
    """Pyramid position encoding: depthwise 7×7, 5×5 and 3×3 convolutions over the square of
    patch tokens plus the identity; the CLS token passes through untouched."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(dim, dim, 7, 1, 3, groups=dim)
        self.proj1 = nn.Conv2d(dim, dim, 5, 1, 2, groups=dim)
        self.proj2 = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)

    def forward(self, x: torch.Tensor, side: int) -> torch.Tensor:  # (B, 1 + side², dim)
        cls, feat = x[:, :1], x[:, 1:]
        grid = feat.transpose(1, 2).unflatten(2, (side, side))  # (B, dim, side, side)
        grid = grid + self.proj(grid) + self.proj1(grid) + self.proj2(grid)
        return torch.cat([cls, grid.flatten(2).transpose(1, 2)], dim=1)


class TransMIL(MILModel):
    def __init__(self, in_dim: int, n_out: int, dim: int = 512, heads: int = 8,
                 num_landmarks: int = 256, pinv_iterations: int = 6,
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.num_features = dim
        self.fc = nn.Sequential(nn.Linear(in_dim, dim), nn.ReLU())
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.layer1 = TransLayer(dim, heads, num_landmarks, pinv_iterations, dropout)
        self.pos_layer = PPEG(dim)
        self.layer2 = TransLayer(dim, heads, num_landmarks, pinv_iterations, dropout)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, n_out)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(self.as_bag(x))  # (N, dim)
        n = h.shape[0]
        side = math.isqrt(n - 1) + 1  # ceil(sqrt(n)) without float rounding
        # PPEG needs a square: repeat the first side² − n patches (never more than n of them)
        h = torch.cat([h, h[: side * side - n]])  # (side², dim)
        h = torch.cat([self.cls_token[0], h]).unsqueeze(0)  # (1, 1 + side², dim)
        h = self.layer2(self.pos_layer(self.layer1(h), side))
        return self.norm(h)[:, 0]  # (1, dim)
