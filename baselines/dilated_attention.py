"""LongNet dilated attention, written on PyTorch's ``scaled_dot_product_attention``.

Implements the attention of Ding, Ma, Dong et al., "LongNet: Scaling Transformers to
1,000,000,000 Tokens" (2023), as microsoft/torchscale ``component/dilated_attention.py`` computes
it for LongViT (Wang et al., 2023) and the Prov-GigaPath slide encoder (Xu et al., 2024).

One *branch* per pair (segment length ``s``, dilation ratio ``r``): the sequence is cut into
segments of ``min(s, L)`` tokens (the last one padded); inside a segment, the heads are split into
``r`` groups and head group ``j`` keeps the positions ``j, j + r, j + 2r, …`` (torchscale pads the
head count up to a multiple of ``r`` first, so with 16 heads and ``r = 16`` every head has its own
offset). Each kept query attends densely to the kept keys of its segment. A query absent from a
branch gets nothing from it. The branches are then combined per query and head with weights
``softmax_b(lse_b)``, ``lse_b`` being the log-sum-exp of that query's scores in branch ``b`` —
which is exactly softmax attention over the (multi)set union of the keys the branches showed it.

How the log-sum-exp comes out of a fused kernel: the public ``scaled_dot_product_attention``
returns only the normalised output. Every segment gets one extra *sink* key and two extra value
columns, one that is 1 on the real keys and one that is 1 on the sink. With ``c`` the sink's
score and ``Z`` the softmax denominator of the real keys, the kernel returns
``o' = Z/(Z+e^c) · o``, ``w_real = Z/(Z+e^c)`` and ``w_sink = e^c/(Z+e^c)``, so
``Z·e^-c = w_real / w_sink`` and ``Z·o·e^-c = o' / w_sink``: the combination
``Σ_b Z_b o_b / Σ_b Z_b`` needs no logarithm and no attention matrix, runs on CPU and GPU
(flash / memory-efficient kernels when present: no ``attn_mask`` is passed), and differentiates
exactly (torchscale takes the lse from flash-attn and detaches the branch weights; here the
gradient flows through them too). The sink key is the segment's mean key, so ``c`` is the
query's mean score and ``Z·e^-c`` stays within float32's range unless a query's best key beats
its mean score by ~80 nats. Padded keys are removed with one more query/key column that gives
them a score of −10⁴.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

DEFAULT_RATIOS: tuple[int, ...] = (1, 2, 4, 8, 16)
_PAD_SCORE = -1.0e4  # score of a padded key: exp(-1e4 - max) is exactly 0 in float32


def segment_lengths_for(
    n_tokens: int, ratios: Sequence[int] = DEFAULT_RATIOS, min_keys: int = 64
) -> list[int]:
    """Segment lengths scaled to a sequence of ``n_tokens``: the last branch covers the whole
    sequence, each earlier one a quarter of the next, and none shows a query fewer than
    ``min_keys`` keys (``s_i ≥ min_keys · r_i``), all capped at ``n_tokens``.

    With five ratios this is ``s_i = max(64·r_i, N / 4^(4−i))``: it reproduces torchscale's LongViT
    tables for 1024² and 16384² inputs exactly ([64 … 1024] for N = 1024 tokens, [1024, 4096,
    16384, 65536, 262144] for N = 262144); branch ``i`` shows each query ``N · 2^(i−8)`` keys.
    """
    if n_tokens < 1:
        raise ValueError(f"n_tokens must be positive, got {n_tokens}")
    last = len(ratios) - 1
    return [
        min(n_tokens, max(min_keys * r, math.ceil(n_tokens / 4 ** (last - i))))
        for i, r in enumerate(ratios)
    ]


def _head_offsets(n_heads: int, ratio: int, device: torch.device) -> Tensor:
    """Offset (position mod ``ratio``) each head reads in a branch: heads are grouped in
    ``ceil(H / r)`` consecutive heads per offset, as torchscale's head padding does."""
    return torch.arange(n_heads, device=device) // math.ceil(n_heads / ratio)


def _branch(
    q: Tensor, k: Tensor, v: Tensor, pad: Tensor, segment: int, ratio: int, scale: float
) -> tuple[Tensor, Tensor]:
    """One branch. ``q, k, v (B, L, H, D)``, ``pad (B, L)`` True on padded keys.

    Returns ``num (B, L, H, D) = Z·o·e^-c``, ``den (B, L, H) = Z·e^-c`` and the sink logit
    ``c (B, L, H)`` on the queries the branch covers, zeros elsewhere (``Z``: the query's softmax
    denominator over the branch's keys, ``o`` its attention output).
    """
    B, L, H, D = q.shape
    s = min(segment, L)
    n = -(-L // s)  # segments
    m = -(-s // ratio)  # kept positions per segment and head
    span = m * ratio  # segment length padded to a multiple of the ratio
    offsets = _head_offsets(H, ratio, q.device)  # (H,)
    heads = torch.arange(H, device=q.device)

    def pad_dim(x: Tensor, dim: int, extra: int, fill: float | bool) -> Tensor:
        """Pad ``extra`` entries at the end of ``dim`` in one contiguous copy (none if 0); moving
        the dim last to pad it would cost two strided copies of the whole sequence."""
        return F.pad(x, (0, 0) * (x.dim() - 1 - dim) + (0, extra), value=fill) if extra else x

    def sparse(x: Tensor, fill: float | bool) -> Tensor:
        """(B, L, H, …) → (B·n, H, m, …): each head's kept positions of every segment."""
        x = pad_dim(x, 1, n * s - L, fill)  # (B, n·s, H, …)
        x = pad_dim(x.reshape(B, n, s, *x.shape[2:]), 2, span - s, fill)  # (B, n, span, H, …)
        if ratio > 1:  # (ratio 1 keeps every position: no gather)
            x = x.reshape(B, n, m, ratio, *x.shape[3:])[:, :, :, offsets, heads]  # (B, n, m, H, …)
        return x.reshape(B * n, m, H, *x.shape[4:]).transpose(1, 2)  # (B·n, H, m, …)

    qs, ks, vs = sparse(q, 0.0), sparse(k, 0.0), sparse(v, 0.0)  # (B·n, H, m, D)
    ps = sparse(pad.unsqueeze(-1).expand(B, L, H), True)  # (B·n, H, m) True on padding
    real = (~ps).unsqueeze(-1).to(ks.dtype)  # (B·n, H, m, 1)
    # The sink key is the mean real key of the segment (no gradient: the result does not depend
    # on it), so its score is each query's mean score: within log(m) + (max − mean score) of the
    # log-sum-exp, which keeps Z / e^sink inside float32's range.
    k_sink = ((ks * real).sum(2, keepdim=True) / real.sum(2, keepdim=True).clamp(min=1)).detach()
    sink_score = (qs * k_sink).sum(-1) * scale  # (B·n, H, m), the kernel's own sink logit
    dp = D + 2
    if q.is_cuda:
        dp = -(-dp // 8) * 8  # fused GPU kernels want head dims in multiples of 8
    # queries: [q, 1/scale]; keys: [k, 0] / padding [0, -1e4] / sink [k̄, 0];
    # values: [v, 1, 0] / padding 0 / sink [0, 0, 1]
    qa = F.pad(torch.cat([qs, torch.ones_like(qs[..., :1]) / scale], -1), (0, dp - D - 1))
    ka = F.pad(torch.cat([ks * real, (1 - real) * _PAD_SCORE], -1), (0, dp - D - 1))
    va = F.pad(torch.cat([vs * real, real], -1), (0, dp - D - 1))
    sink_k = F.pad(k_sink, (0, dp - D))  # (B·n, H, 1, dp)
    sink_v = torch.zeros_like(va[..., :1, :])
    sink_v[..., D + 1] = 1.0
    out = F.scaled_dot_product_attention(
        qa, torch.cat([sink_k, ka], 2), torch.cat([sink_v, va], 2), scale=scale
    )  # (B·n, H, m, dp)
    w_sink = out[..., D + 1]  # e^sink / (Z + e^sink) > 0
    num = out[..., :D] / w_sink.unsqueeze(-1)  # Z·o / e^sink
    den = out[..., D] / w_sink  # Z / e^sink

    def dense(x: Tensor) -> Tensor:
        """Inverse of ``sparse`` for outputs, zeros where the head keeps no position."""
        x = x.transpose(1, 2).reshape(B, n, m, H, *x.shape[3:])  # (B, n, m, H, …)
        if ratio == 1:
            full = x  # span = s = m
        else:
            full = x.new_zeros(B, n, m, ratio, H, *x.shape[4:])
            full[:, :, :, offsets, heads] = x
            full = full.reshape(B, n, span, H, *x.shape[4:])[:, :, :s]  # (B, n, s, H, …)
        return full.reshape(B, n * s, H, *x.shape[4:])[:, :L]  # (B, L, H, …)

    return dense(num), dense(den), dense(sink_score)


def dilated_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    segment_lengths: Sequence[int],
    ratios: Sequence[int],
    key_padding_mask: Tensor | None = None,
    scale: float | None = None,
) -> Tensor:
    """LongNet attention of ``q, k, v (B, L, H, D)`` → ``(B, L, H, D)``.

    ``key_padding_mask (B, L)`` is True on tokens that are padding: no query sees them. A query
    that no branch covers (or that sees only padding) gets zeros.
    """
    if len(segment_lengths) != len(ratios) or not ratios:
        raise ValueError(f"need one segment length per ratio, got {segment_lengths} and {ratios}")
    if q.dim() != 4 or k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"q, k, v must share one (B, L, H, D) shape, got {q.shape}, {k.shape}, {v.shape}")
    B, L, H, D = q.shape
    scale = D**-0.5 if scale is None else scale
    pad = (torch.zeros(B, L, dtype=torch.bool, device=q.device)
           if key_padding_mask is None else key_padding_mask.to(torch.bool))
    branches = []
    for s, r in zip(segment_lengths, ratios):
        if s < 1 or r < 1:
            raise ValueError(f"segment length and ratio must be positive, got {s}, {r}")
        branches.append(_branch(q, k, v, pad, int(s), int(r), scale))
    # Σ_b Z_b o_b / Σ_b Z_b, every term rescaled by e^(c_b − c_max); the common factor cancels,
    # so c_max needs no gradient.
    logits = [torch.where(d_b > 0, c, float("-inf")) for _, d_b, c in branches]  # -inf: not covered
    c_max = torch.stack(logits).amax(0).detach().clamp(min=torch.finfo(q.dtype).min)  # (B, L, H)
    num, den = q.new_zeros(B, L, H, D), q.new_zeros(B, L, H)
    for (n_b, d_b, _), c in zip(branches, logits):
        f = torch.exp(c - c_max)  # (B, L, H), 0 where the branch does not cover the query
        num, den = num + n_b * f.unsqueeze(-1), den + d_b * f
    return num / den.clamp(min=torch.finfo(den.dtype).tiny).unsqueeze(-1)


class DilatedAttention(nn.Module):
    """Multi-head self-attention with LongNet's dilated pattern and torchscale's sub-LN.

    q/k/v/out projections with biases (torchscale ``MultiheadAttention``); with ``subln`` a
    LayerNorm sits between the attention output and ``out_proj`` (Magneto's sub-LN, torchscale's
    default and LongViT's). ``segment_lengths=None`` scales them to each input's length
    (``segment_lengths_for``).
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        ratios: Sequence[int] = DEFAULT_RATIOS,
        segment_lengths: Sequence[int] | None = None,
        subln: bool = True,
        layernorm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not a multiple of num_heads {num_heads}")
        if segment_lengths is not None and len(segment_lengths) != len(ratios):
            raise ValueError("need one segment length per ratio")
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.head_dim = embed_dim // num_heads
        self.ratios = tuple(int(r) for r in ratios)
        self.segment_lengths = None if segment_lengths is None else tuple(int(s) for s in segment_lengths)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        self.inner_attn_ln = nn.LayerNorm(embed_dim, eps=layernorm_eps) if subln else None

    def segments_for(self, n_tokens: int) -> list[int]:
        if self.segment_lengths is not None:
            return list(self.segment_lengths)
        return segment_lengths_for(n_tokens, self.ratios)

    def forward(self, x: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        """``x (B, L, C)`` → ``(B, L, C)``; ``key_padding_mask (B, L)`` True on padding."""
        B, L, C = x.shape
        shape = (B, L, self.num_heads, self.head_dim)
        q = self.q_proj(x).view(shape)  # (B, L, H, D)
        k = self.k_proj(x).view(shape)
        v = self.v_proj(x).view(shape)
        attn = dilated_attention(q, k, v, self.segments_for(L), self.ratios, key_padding_mask)
        attn = attn.reshape(B, L, C)
        if self.inner_attn_ln is not None:
            attn = self.inner_attn_ln(attn)
        return self.out_proj(attn)
