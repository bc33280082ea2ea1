"""Vision Mamba (Vim-Ti) on whole slides, at token scale 16, 32, or both.

Implements Zhu, Liao, Zhang et al., "Vision Mamba: Efficient Visual Representation Learning with
Bidirectional State Space Model" (ICML 2024; hustvl/Vim ``vim/models_mamba.py``,
``vim_tiny_patch16_224_bimambav2_final_pool_mean_abs_pos_embed_with_midclstok_div2``), the
end-to-end baseline of Pixel-Mamba's Tables 3–4 ("Vision-Mamba-Surv", token scale 16, 32, 16 + 32).

Vim-Ti: patch embedding (conv, patch 16, 192-d), a learned CLS token inserted in the *middle* of
the token sequence, learned absolute positions, 24 blocks ``x ← x + Mixer(RMSNorm(x))`` with the
residual stream kept in float32 and the bidirectional "v2" Mamba mixer (``pixelmamba.mixer.
BiMambaMixer``: its own conv/x_proj/dt_proj/A/D for the reversed sequence, shared in/out
projections, ``(y_f + flip(y_b)) / 2``), a final RMSNorm and the CLS token → linear head.
7,148,008 parameters with a 1000-class head, as Vim-Ti. (Vim's fused add+norm block returns the
mixer output and the residual separately; summed, it is the same pre-norm residual stream.)

What whole slides change, and the choices made:

* **Any slide size.** The slide is zero-padded (the ImageNet mean colour after normalisation) to
  multiples of the patch; a patch with at least one real pixel is a token, so the aspect ratio is
  kept and nothing is resized. Tokens follow Vim's raster order (row-major). When the caller
  passes a pixel ``mask`` (several slides on one canvas), tokens made only of padding are *left
  out of the sequence* — a state-space scan has no attention mask, and a padding token would
  still move the state — so each sample is then scanned on its own.
* **Positions**: Vim's learned table for a 224² image (14² patch entries + one for the CLS) is
  kept — its checkpoints load and the parameter count is Vim-Ti's — and its patch part is resized
  bicubically, per axis, to each slide's token grid (DeiT/timm's recipe for other resolutions).
  The CLS keeps its own entry. A 2-D sin-cos table would need no resizing but would drop the
  pre-trained positions.
* **Long sequences.** A slide at 2.5× has 10⁴–10⁵ tokens at patch 16. Each block runs under
  activation checkpointing (only its float32 input is kept: 768 B per token per block) once the
  input holds more than ``UNCHECKPOINTED_TOKENS`` tokens (``checkpointing="auto"``), and the
  mixer streams the sequence in ``chunk_size`` pieces with carried state, so what one block
  needs while it runs is bounded by the chunk, not the slide (the scan's internals take
  ~240 KB per token of a piece on CPU: 2048 tokens keep them near 0.5 GB).
* **Token scale 16 + 32** (``VimMultiScale``): two independent Vim-Ti streams, one per patch size,
  each reading the whole slide; their final (RMSNorm'ed) CLS tokens are *concatenated* (2 × 192)
  and one linear head reads both. Concatenation lets the head weigh the scales; an average would
  add two unrelated feature spaces coordinate by coordinate. The streams share no weights, so the
  model has twice Vim-Ti's backbone.

Not carried over: drop path (stochastic depth), RoPE and the other ablation switches of
``models_mamba.py``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from pixelmamba.mixer import BiMambaMixer

from .checkpointing import checkpointing_option, recomputes

logger = logging.getLogger(__name__)

# ``checkpointing="auto"`` keeps every block's internals for backward up to this many tokens
# (batch included) and recomputes the blocks above it. Measured without checkpointing: Vim-Ti
# keeps ~485 KB per token for backward (saved tensors 154 MB at 256 tokens, 526 MB at 1024), so
# 2048 tokens stay near 1 GB; recomputing costs a second forward in backward (a demo unit of
# vim-ti, 16-25 tokens per slide: 40.6 s with it, 27.7 s without, same predictions), which only
# pays when memory is the limit.
UNCHECKPOINTED_TOKENS = 2048

PRETRAIN_IMG_SIZE = 224  # Vim's position table covers a 224² image


class Tokens(NamedTuple):
    """What :meth:`VisionMamba.tokens` returns."""

    tokens: Tensor  # (B, h·w, C) patch tokens with positions, raster order
    h: int
    w: int


class VimBlock(nn.Module):
    """``x + Mixer(RMSNorm(x))``; ``x`` is the float32 residual stream."""

    def __init__(self, dim: int, d_state: int = 16, norm_eps: float = 1e-5, backend: str = "auto") -> None:
        super().__init__()
        self.norm = nn.RMSNorm(dim, eps=norm_eps)
        self.mixer = BiMambaMixer(dim, d_state=d_state, backend=backend)

    def forward(self, x: Tensor, chunk_size: int | None = None) -> Tensor:  # (B, L, C)
        return x + self.mixer(self.norm(x), chunk_size=chunk_size).to(x.dtype)


def _head(num_features: int, num_classes: int) -> nn.Module:
    """Vim's classifier: truncated-normal weights, zero bias; ``0`` classes gives the identity."""
    if num_classes <= 0:
        return nn.Identity()
    head = nn.Linear(num_features, num_classes)
    nn.init.trunc_normal_(head.weight, std=0.02)
    nn.init.zeros_(head.bias)
    return head


def _lecun_normal(w: Tensor) -> None:
    """timm's ``lecun_normal_`` (Vim's patch-embedding init): truncated normal, var 1/fan_in."""
    fan_in = w[0].numel()
    std = math.sqrt(1.0 / fan_in) / 0.87962566103423978  # std of a unit normal truncated at ±2
    nn.init.trunc_normal_(w, std=std, a=-2 * std, b=2 * std)


class VisionMamba(nn.Module):
    """Vim on whole slides, with the timm-style face used across wsi-bench.

    ``chunk_size``: stream each mixer's sequence in pieces of this many tokens (None: one piece).
    ``checkpointing``: recompute each block in backward instead of keeping its internals;
    ``"auto"`` (default) does so only for inputs of more than ``UNCHECKPOINTED_TOKENS`` tokens.
    ``pos_grid``: side of the learned position table (default ``224 // patch_size``, Vim's).
    """

    def __init__(
        self,
        num_classes: int = 1000,
        embed_dim: int = 192,
        depth: int = 24,
        patch_size: int = 16,
        in_chans: int = 3,
        d_state: int = 16,
        pos_grid: int | None = None,
        norm_eps: float = 1e-5,
        chunk_size: int | None = 2048,
        checkpointing: bool | str = "auto",
        backend: str = "auto",
    ) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.num_features = self.embed_dim = embed_dim
        self.chunk_size = chunk_size
        self.set_grad_checkpointing(checkpointing)  # validates
        self.pos_grid = pos_grid or PRETRAIN_IMG_SIZE // patch_size
        self.patch_embed = nn.Conv2d(in_chans, embed_dim, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        # Vim's layout: [first half of the patches, CLS, second half], as the CLS sits mid-sequence
        self.pos_embed = nn.Parameter(torch.zeros(1, self.pos_grid**2 + 1, embed_dim))
        self.layers = nn.ModuleList(
            VimBlock(embed_dim, d_state, norm_eps, backend) for _ in range(depth)
        )
        self.norm_f = nn.RMSNorm(embed_dim, eps=norm_eps)
        self.head: nn.Module = nn.Identity()
        _lecun_normal(self.patch_embed.weight)
        nn.init.zeros_(self.patch_embed.bias)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        with torch.no_grad():  # mamba-ssm's GPT-2 style rescale of the residual-branch output
            for layer in self.layers:
                layer.mixer.out_proj.weight /= math.sqrt(depth)
        self.reset_classifier(num_classes)

    # -- the common face -----------------------------------------------------------------------

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the head (``0``: identity, ``forward`` returns the CLS features)."""
        self.head = _head(self.num_features, num_classes)

    def set_grad_checkpointing(self, enable: bool | str = True) -> None:
        """``True``/``False`` force it; ``"auto"`` restores the default (``checkpoints``)."""
        self.checkpointing = checkpointing_option(enable)

    def checkpoints(self, tokens: int) -> bool:
        """Whether a training pass over ``tokens`` tokens (batch included) recomputes its blocks
        in backward."""
        return recomputes(self.checkpointing, tokens, UNCHECKPOINTED_TOKENS)

    def positions(self, h: int, w: int) -> Tensor:
        """Position table of the patches for an ``h × w`` token grid, ``(1, h·w, C)`` row-major
        (the CLS's own entry, mid-table, is left out)."""
        n = self.pos_grid**2
        table = self.pos_embed
        grid = torch.cat([table[:, : n // 2], table[:, n // 2 + 1:]], 1)  # (1, G², C)
        if (h, w) != (self.pos_grid, self.pos_grid):
            grid = grid.view(1, self.pos_grid, self.pos_grid, -1).permute(0, 3, 1, 2)
            grid = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False)
            grid = grid.flatten(2).transpose(1, 2)  # (1, h·w, C)
        return grid

    def tokens(self, x: Tensor) -> Tokens:
        """Patch tokens with positions ``(B, h·w, C)`` in raster order, and the grid ``h, w``."""
        H, W = x.shape[-2:]
        p = self.patch_size
        x = F.pad(x, (0, -W % p, 0, -H % p))  # zeros = the mean colour of the normalised input
        tok = self.patch_embed(x)  # (B, C, h, w)
        h, w = tok.shape[-2:]
        return Tokens(tok.flatten(2).transpose(1, 2) + self.positions(h, w), h, w)  # (B, h·w, C)

    def _encode(self, tok: Tensor) -> Tensor:
        """Tokens ``(B, M, C)`` with positions → final CLS ``(B, C)``: CLS inserted at ``M // 2``,
        24 blocks on the float32 residual stream, RMSNorm."""
        B, M, _ = tok.shape
        n = self.pos_grid**2
        cls = (self.cls_token + self.pos_embed[:, n // 2: n // 2 + 1]).expand(B, -1, -1)  # (B, 1, C)
        mid = M // 2
        x = torch.cat([tok[:, :mid], cls.to(tok.dtype), tok[:, mid:]], 1)  # (B, M+1, C)
        x = x.to(torch.promote_types(x.dtype, torch.float32))  # residual stream in >= float32
        ckpt = torch.is_grad_enabled() and self.checkpoints(B * (M + 1))
        for layer in self.layers:
            if ckpt:
                x = checkpoint(layer, x, self.chunk_size, use_reentrant=False)
            else:
                x = layer(x, self.chunk_size)
        return self.norm_f(x[:, mid])  # (B, C)

    def forward_features(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """``x (B, 3, H, W)`` → final CLS ``(B, num_features)``.

        ``mask (B, H, W)``, optional, True on padding pixels: tokens with no real pixel are left
        out of that sample's sequence (samples are then scanned one by one).
        """
        tok, h, w = self.tokens(x)  # (B, h·w, C)
        if mask is None:
            return self._encode(tok)
        p = self.patch_size
        m = F.pad(mask.to(torch.bool), (0, w * p - mask.shape[-1], 0, h * p - mask.shape[-2]),
                  value=True)
        real = ~m.view(-1, h, p, w, p).all(4).all(2).flatten(1)  # (B, h·w)
        return torch.cat([self._encode(t[r].unsqueeze(0)) for t, r in zip(tok, real)])

    def forward_head(self, feats: Tensor) -> Tensor:
        return self.head(feats)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        return self.forward_head(self.forward_features(x, mask))


class VimMultiScale(nn.Module):
    """Token scale "16 + 32": one Vim stream per patch size, final CLS tokens concatenated."""

    def __init__(self, num_classes: int = 1000, patch_sizes: Sequence[int] = (16, 32),
                 **vim_kwargs: object) -> None:
        super().__init__()
        self.streams = nn.ModuleList(
            VisionMamba(num_classes=0, patch_size=p, **vim_kwargs)  # type: ignore[arg-type]
            for p in patch_sizes
        )
        self.num_features = sum(s.num_features for s in self.streams)
        self.head: nn.Module = nn.Identity()
        self.reset_classifier(num_classes)

    def reset_classifier(self, num_classes: int) -> None:
        self.head = _head(self.num_features, num_classes)

    def set_grad_checkpointing(self, enable: bool | str = True) -> None:
        for s in self.streams:
            s.set_grad_checkpointing(enable)

    def forward_features(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """``(B, 3, H, W)`` → ``(B, Σ C)``: the streams' CLS features side by side."""
        return torch.cat([s.forward_features(x, mask) for s in self.streams], dim=-1)

    def forward_head(self, feats: Tensor) -> Tensor:
        return self.head(feats)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        return self.forward_head(self.forward_features(x, mask))


def vim_ti(n_out: int, patch_size: int = 16, **overrides: object) -> VisionMamba:
    """Vim-Ti (registry builder): 192-d, 24 blocks; ``patch_size`` 16 (``vim-ti``) or 32
    (``vim-ti-32``). Overrides: any ``VisionMamba`` argument (e.g. ``chunk_size``)."""
    model = VisionMamba(num_classes=n_out, patch_size=patch_size, **overrides)  # type: ignore[arg-type]
    logger.debug("built vim-ti patch %d: %d parameters", patch_size,
                 sum(p.numel() for p in model.parameters()))
    return model


def vim_ti_multiscale(n_out: int, patch_sizes: Sequence[int] = (16, 32),
                      **overrides: object) -> VimMultiScale:
    """Vim-Ti at token scales 16 + 32 (registry builder for ``vim-ti-16+32``)."""
    return VimMultiScale(num_classes=n_out, patch_sizes=patch_sizes, **overrides)
