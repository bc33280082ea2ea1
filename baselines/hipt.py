"""HIPT — Chen et al., "Scaling Vision Transformers to Gigapixel Images via Hierarchical
Self-Supervised Learning", CVPR 2022.

Three stages, as mahmoodlab/HIPT builds its weakly-supervised model (``HIPT_LGP_FC``):

1. ViT-256-16: a DINO ViT-S/16 over the 16×16-px tokens of each 256² patch at 20× → 384-d CLS.
   Frozen in HIPT; here it is the ``hipt-vit256`` patch encoder of ``feature_cache``, whose
   outputs the region cache stores as 256 × 384-d per 4096² region (``feature_cache.region_features``).
2. ViT-4K-256 (:class:`ViT4K`): Linear(384, 192) + GELU, a CLS token, 6 pre-norm blocks (192-d, 6
   heads, MLP ×4, qkv bias, LayerNorm eps 1e-6) over the 16×16 grid of patch embeddings of a
   region → 192-d CLS. Its position table is the release's 14×14 (+CLS) one, resized bicubically
   to 16×16 as DINO's ``interpolate_pos_encoding`` does. Positions without a patch (a region cut by
   the slide's edge) are masked out of attention; HIPT itself cropped or zero-padded them.
3. Slide level: Linear(192, 192) + ReLU + Dropout(0.25); a 2-layer Transformer encoder (192-d, 3
   heads, FFN 192, dropout 0.25, ReLU, post-norm — PyTorch's defaults, as HIPT); CLAM's gated
   attention pooling (192 → 192, tanh ⊙ sigmoid → 1); Linear(192, 192) + ReLU + Dropout(0.25);
   Linear(192, n_out).

``freeze_4k`` (default True) keeps the ViT-4K fixed, as HIPT's released fine-tuning command does
when it loads the pretrained ViT-4K (``--pretrain_4k vit4k_xs_dino --freeze_4k``); a frozen stage
runs in eval mode without gradients. Parameters: ViT-4K 2,781,504; slide level 595,397 with 4
outputs (the paper's Table 2 says "24M + 2.2M"; see docs/hierarchical.md).
"""

from __future__ import annotations

import math
import os
from functools import partial

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block
from torch import nn

from .mil.abmil import GatedAttention
from .mil.base import Bag, MILModel
from feature_cache.weights import find_weights, kind_for_path, record

from .weights import HIPT_VIT4K, load

VIT4K_WEIGHTS_ENV = HIPT_VIT4K.env
GRID = 16  # 4096 / 256 patches per region side


def find_vit4k_weights(weights: str | os.PathLike | None = None):
    """(path, how) of HIPT's ``vit4k_xs_dino.pth``: explicit path, then ``$BENCH_WEIGHTS_HIPT_VIT4K``.
    The release lives in the HIPT GitHub repository (``HIPT_4K/Checkpoints``), not on the hub."""
    path, _, how = find_weights(weights, HIPT_VIT4K)
    return path, how


class ViT4K(nn.Module):
    """HIPT's ViT-4K-256 (``vit4k_xs``), parameter names as the release's checkpoint."""

    def __init__(self, in_dim: int = 384, dim: int = 192, depth: int = 6, heads: int = 6,
                 mlp_ratio: float = 4.0, pos_grid: int = 14, dropout: float = 0.0) -> None:
        super().__init__()
        self.num_features = dim
        self.pos_grid = pos_grid
        self.phi = nn.Sequential(nn.Linear(in_dim, dim), nn.GELU(), nn.Dropout(dropout))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, pos_grid * pos_grid + 1, dim))
        norm = partial(nn.LayerNorm, eps=1e-6)
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio=mlp_ratio, qkv_bias=True, norm_layer=norm)
                                    for _ in range(depth))
        self.norm = norm(dim)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def pos_for(self, h: int, w: int) -> torch.Tensor:
        """(1, 1 + h·w, dim): the table resized to h × w with DINO's bicubic ``scale_factor`` (+0.1)."""
        n = self.pos_grid
        if (h, w) == (n, n):
            return self.pos_embed
        grid = self.pos_embed[:, 1:].reshape(1, n, n, -1).permute(0, 3, 1, 2)  # (1, dim, n, n)
        grid = F.interpolate(grid, scale_factor=((h + 0.1) / n, (w + 0.1) / n), mode="bicubic")
        assert grid.shape[-2:] == (h, w)
        return torch.cat([self.pos_embed[:, :1], grid.permute(0, 2, 3, 1).reshape(1, h * w, -1)], dim=1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x (M, 256, in_dim)`` in row-major grid order, ``mask (M, 256)`` True on real patches
        → ``(M, dim)``, each region's CLS token."""
        M, L, _ = x.shape
        side = math.isqrt(L)
        if side * side != L:
            raise ValueError(f"a region must hold a square grid of patches, got {L}")
        tokens = torch.cat([self.cls_token.expand(M, -1, -1), self.phi(x)], dim=1)  # (M, 1 + L, dim)
        tokens = tokens + self.pos_for(side, side)
        attn_mask = None
        if mask is not None and not bool(mask.all()):
            keep = torch.cat([mask.new_ones(M, 1), mask.bool()], dim=1)  # the CLS token is always there
            attn_mask = torch.zeros(M, 1, 1, L + 1, dtype=tokens.dtype, device=tokens.device)
            attn_mask = attn_mask.masked_fill(~keep[:, None, None, :], float("-inf"))  # (M, 1, 1, 1 + L)
        for block in self.blocks:
            tokens = block(tokens, attn_mask=attn_mask)
        return self.norm(tokens)[:, 0]  # (M, dim)


class HIPT(MILModel):
    """ViT-4K over each region's 256 patch embeddings, then the slide-level transformer and gated
    attention pooling over regions. Input: a :class:`Bag` of ``features (M, 256, 384)`` and
    ``mask (M, 256)``, or a bare ``(M, 256, 384)`` tensor (every patch present)."""

    def __init__(self, n_out: int, in_dim: int = 384, dim: int = 192, freeze_4k: bool = True,
                 weights_4k: str | os.PathLike | None = None, dropout: float = 0.25,
                 global_layers: int = 2, global_heads: int = 3) -> None:
        super().__init__()
        self.num_features = dim
        self.local_vit = ViT4K(in_dim, dim)
        self.weights_4k = None
        if weights_4k is not None:
            path = os.fspath(weights_4k)
            record(self, load(self.local_vit, path, HIPT_VIT4K, kind=kind_for_path(path, HIPT_VIT4K)))
            self.weights_4k = path
        self.freeze_4k = freeze_4k
        if freeze_4k:
            self.local_vit.requires_grad_(False)
        self.global_phi = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Dropout(dropout))
        layer = nn.TransformerEncoderLayer(dim, global_heads, dim_feedforward=dim, dropout=dropout,
                                           activation="relu", batch_first=True)
        self.global_transformer = nn.TransformerEncoder(layer, global_layers, enable_nested_tensor=False)
        self.global_attn_pool = GatedAttention(dim, dim, dropout)
        self.global_rho = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Dropout(dropout))
        self.head = nn.Linear(dim, n_out)

    def train(self, mode: bool = True) -> "HIPT":
        super().train(mode)
        if self.freeze_4k:
            self.local_vit.eval()  # a frozen stage stays in inference mode
        return self

    def region_embeddings(self, x: Bag | torch.Tensor) -> torch.Tensor:
        """(M, dim): ViT-4K's CLS token of every region."""
        feats, mask = (x.features, x.mask) if isinstance(x, Bag) else (x, None)
        if feats.dim() == 4 and feats.shape[0] == 1:  # (1, M, 256, D): a batch of one slide
            feats, mask = feats[0], None if mask is None else mask[0]
        if feats.dim() != 3 or feats.shape[0] == 0:
            raise ValueError(f"HIPT takes regions (M, 256, D) with M >= 1, got {tuple(feats.shape)}")
        if self.freeze_4k:
            with torch.no_grad():
                return self.local_vit(feats, mask)
        return self.local_vit(feats, mask)

    def forward_features(self, x: Bag | torch.Tensor) -> torch.Tensor:
        h = self.global_phi(self.region_embeddings(x))  # (M, dim)
        h = self.global_transformer(h.unsqueeze(0))[0]  # (M, dim): attention across regions
        a = torch.softmax(self.global_attn_pool(h).squeeze(-1), dim=0)  # (M,)
        return self.global_rho((a @ h).unsqueeze(0))  # (1, dim)
