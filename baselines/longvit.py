"""LongViT-S on whole slides, keeping the slide's aspect ratio.

Implements Wang, Ma, Bao et al., "When an Image is Worth 1,024 x 1,024 Words: A Case Study in
Computational Pathology" (LongViT, 2023; microsoft/torchscale ``examples/longvit``): a ViT-S
(384-d, 12 layers, 16 heads, FFN 1536, patch 32) whose attention is LongNet's dilated attention
(``baselines.dilated_attention``), torchscale's sub-LN encoder layers, no CLS token; the slide
representation is the mean of the final (LayerNorm'ed) tokens → LayerNorm → linear head.

Differences from the original, and why:

* **Aspect ratio.** LongViT's converter resizes every slide to a square (1024² … 32768²). Here the
  slide keeps its shape: it is zero-padded (the ImageNet mean colour after normalisation) to
  multiples of the patch, tokens are laid out row-major on the ``h × w`` grid, and tokens made
  only of padding (only when the caller passes a pixel ``mask``) are keys nobody attends to and
  are left out of the mean pool.
* **Positions.** A learnable ``pos_grid × pos_grid`` table (32², LongViT-S at 1024²) is resized
  bicubically to each slide's ``h × w`` token grid, as LongViT interpolates its table to the input
  size — per axis, so a wide slide gets a wide table instead of a squashed image.
* **Segment lengths** follow the sequence (``segment_lengths_for``) instead of five hand-set
  tables keyed by the square input size.
* **Attention kernel**: PyTorch's ``scaled_dot_product_attention`` (runs on CPU) instead of
  flash-attn; branch weights are differentiated instead of detached.

Parameters: 22,521,216 without the position table and the head (LongViT-S, "22M" in the paper).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from .checkpointing import checkpointing_option, recomputes
from .dilated_attention import DEFAULT_RATIOS, DilatedAttention

logger = logging.getLogger(__name__)

# ``checkpointing="auto"`` keeps every layer's internals for backward up to this many tokens (batch
# included) and recomputes the layers above it. Measured without checkpointing: LongViT-S keeps
# ~710 KB per token for backward (saved tensors 271 MB at 256 tokens, 815 MB at 1024), so 1024
# tokens (a 1024² input at patch 32, LongViT's smallest) stay under 1 GB. LongViT itself turns
# checkpointing on from 8192² up, on GPUs; 1024 suits a laptop's memory as well. Recomputing
# costs time that only pays when memory is the limit (a demo unit of longvit-s: 41.7 s with it,
# 18.9 s without, same predictions).
UNCHECKPOINTED_TOKENS = 1024


def _trunc_normal(t: Tensor, std: float = 0.02) -> None:
    """LongViT's initialiser: a normal truncated at ±1 std (not timm's ±2)."""
    nn.init.trunc_normal_(t, std=std, a=-std, b=std)


class Tokens(NamedTuple):
    """What :meth:`LongViT.tokens` returns."""

    tokens: Tensor  # (B, h·w, C) patch tokens with positions, row-major
    padding: Tensor  # (B, h·w) True on tokens with no real pixel
    h: int
    w: int


class LongViTLayer(nn.Module):
    """torchscale ``EncoderLayer`` with sub-LN: pre-LN attention (LN inside, before out_proj) and
    pre-LN FFN (LN between GELU and fc2), each added to the residual stream."""

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, ratios: Sequence[int],
                 segment_lengths: Sequence[int] | None, eps: float) -> None:
        super().__init__()
        self.self_attn_layer_norm = nn.LayerNorm(dim, eps=eps)
        self.self_attn = DilatedAttention(dim, num_heads, ratios, segment_lengths, subln=True,
                                          layernorm_eps=eps)
        self.final_layer_norm = nn.LayerNorm(dim, eps=eps)
        self.fc1 = nn.Linear(dim, ffn_dim)
        self.ffn_layernorm = nn.LayerNorm(ffn_dim, eps=eps)
        self.fc2 = nn.Linear(ffn_dim, dim)

    def forward(self, x: Tensor, key_padding_mask: Tensor | None) -> Tensor:  # (B, L, C)
        x = x + self.self_attn(self.self_attn_layer_norm(x), key_padding_mask)
        h = F.gelu(self.fc1(self.final_layer_norm(x)))  # (B, L, ffn_dim)
        return x + self.fc2(self.ffn_layernorm(h))


class LongViT(nn.Module):
    """LongViT with the timm-style face used across wsi-bench.

    ``checkpointing``: recompute each layer in backward, keeping only its input (LongViT turns it
    on from 8192² inputs up); ``"auto"`` (default) does so for inputs of more than
    ``UNCHECKPOINTED_TOKENS`` tokens. ``segment_lengths=None`` scales them to each slide's token count.
    """

    def __init__(
        self,
        num_classes: int = 1000,
        embed_dim: int = 384,
        depth: int = 12,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        patch_size: int = 32,
        in_chans: int = 3,
        ratios: Sequence[int] = DEFAULT_RATIOS,
        segment_lengths: Sequence[int] | None = None,
        pos_grid: int = 32,
        layernorm_eps: float = 1e-5,
        checkpointing: bool | str = "auto",
    ) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.num_features = self.embed_dim = embed_dim
        self.set_grad_checkpointing(checkpointing)  # validates
        self.patch_embed = nn.Conv2d(in_chans, embed_dim, patch_size, stride=patch_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, embed_dim, pos_grid, pos_grid))
        self.layers = nn.ModuleList(
            LongViTLayer(embed_dim, num_heads, int(embed_dim * mlp_ratio), ratios, segment_lengths,
                         layernorm_eps)
            for _ in range(depth)
        )
        self.layer_norm = nn.LayerNorm(embed_dim, eps=layernorm_eps)  # encoder output norm
        self.fc_norm = nn.LayerNorm(embed_dim, eps=layernorm_eps)  # after the mean pool
        self.head: nn.Module = nn.Identity()
        _trunc_normal(self.pos_embed)
        self.apply(self._init_weights)  # LongViT re-initialises every Linear after the encoder's init
        self.reset_classifier(num_classes)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            _trunc_normal(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    # -- the common face -----------------------------------------------------------------------

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the head (``0``: identity, ``forward`` returns the pooled features)."""
        if num_classes > 0:
            self.head = nn.Linear(self.num_features, num_classes)
            self._init_weights(self.head)
        else:
            self.head = nn.Identity()

    def set_grad_checkpointing(self, enable: bool | str = True) -> None:
        """``True``/``False`` force it; ``"auto"`` restores the default (``checkpoints``)."""
        self.checkpointing = checkpointing_option(enable)

    def checkpoints(self, tokens: int) -> bool:
        """Whether a training pass over ``tokens`` tokens (batch included) recomputes its layers
        in backward."""
        return recomputes(self.checkpointing, tokens, UNCHECKPOINTED_TOKENS)

    def tokens(self, x: Tensor, mask: Tensor | None = None) -> Tokens:
        """Patch tokens with positions ``(B, h·w, C)``, their padding mask ``(B, h·w)`` (True on
        tokens with no real pixel) and the grid ``h, w``."""
        B, _, H, W = x.shape
        p = self.patch_size
        ph, pw = -H % p, -W % p
        x = F.pad(x, (0, pw, 0, ph))  # zeros = the mean colour of the normalised input
        tok = self.patch_embed(x)  # (B, C, h, w)
        h, w = tok.shape[-2:]
        pos = F.interpolate(self.pos_embed, size=(h, w), mode="bicubic", align_corners=False)
        tok = (tok + pos).flatten(2).transpose(1, 2)  # (B, h·w, C) row-major
        if mask is None:
            pad = torch.zeros(B, h * w, dtype=torch.bool, device=x.device)
        else:
            m = F.pad(mask.to(torch.bool), (0, pw, 0, ph), value=True)  # (B, H', W')
            pad = m.view(B, h, p, w, p).all(4).all(2).flatten(1)  # (B, h·w) all-padding tokens
        return Tokens(tok, pad, h, w)

    def forward_features(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """``x (B, 3, H, W)`` → ``(B, num_features)``; ``mask (B, H, W)`` True on padding pixels."""
        tok, pad, _, _ = self.tokens(x, mask)
        tok = tok * (~pad).unsqueeze(-1).to(tok.dtype)  # torchscale zeroes padded embeddings
        kpm = pad if bool(pad.any()) else None
        ckpt = torch.is_grad_enabled() and self.checkpoints(tok.shape[0] * tok.shape[1])
        for layer in self.layers:
            if ckpt:
                tok = checkpoint(layer, tok, kpm, use_reentrant=False)
            else:
                tok = layer(tok, kpm)
        tok = self.layer_norm(tok)  # (B, L, C)
        real = (~pad).unsqueeze(-1).to(tok.dtype)  # (B, L, 1)
        pooled = (tok * real).sum(1) / real.sum(1).clamp(min=1)  # (B, C) mean over real tokens
        return self.fc_norm(pooled)

    def forward_head(self, feats: Tensor) -> Tensor:
        return self.head(feats)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        return self.forward_head(self.forward_features(x, mask))


def longvit_s(n_out: int, **overrides: object) -> LongViT:
    """LongViT-S (registry builder): 384-d, 12 layers, 16 heads, FFN 1536, patch 32."""
    model = LongViT(num_classes=n_out, **overrides)  # type: ignore[arg-type]
    n_pos = model.pos_embed.numel()
    logger.debug("built longvit-s: %d parameters (%d in the position table)",
                 sum(p.numel() for p in model.parameters()), n_pos)
    return model


def count_without_positions(model: LongViT) -> int:
    """Parameters other than the position table and the head: LongViT-S's "22.5M"."""
    skip = {id(model.pos_embed)} | {id(p) for p in model.head.parameters()}
    return sum(p.numel() for p in model.parameters() if id(p) not in skip)


__all__ = ["LongViT", "LongViTLayer", "Tokens", "longvit_s", "count_without_positions"]
