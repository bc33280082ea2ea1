"""Prov-GigaPath's tile encoder (Xu et al., Nature 2024): timm ``vit_giant_patch14_dinov2`` with
patch 16, 1536-d, 40 blocks, SwiGLU MLP, LayerScale.

The release, ``prov-gigapath/prov-gigapath`` ``pytorch_model.bin``, is a timm hub checkpoint: a bare
state dict with timm's names (``cls_token``, ``pos_embed``, ``patch_embed.proj.*``,
``blocks.N.{norm1,attn.qkv,attn.proj,ls1.gamma,norm2,mlp.fc1,mlp.fc2,ls2.gamma}.*``, ``norm.*``).
timm also accepts DINOv2's original layout (``mask_token``, ``mlp.w12`` / ``mlp.w3``) for this
architecture and converts it by renaming; so does the second key map here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from feature_cache.encoders.base import STANDIN_VIT

if TYPE_CHECKING:
    import torch


GIGAPATH_TIMM = dict(img_size=224, in_chans=3, patch_size=16, embed_dim=1536, depth=40,
                     num_heads=24, init_values=1e-5, mlp_ratio=5.33334, num_classes=0)


def build_gigapath(**overrides: Any) -> "torch.nn.Module":
    """Prov-GigaPath tile encoder: timm ``vit_giant_patch14_dinov2`` with the hub config's
    arguments (patch 16, 1536-d, 40 blocks, 24 heads, LayerScale 1e-5), CLS token out."""
    import timm

    return timm.create_model("vit_giant_patch14_dinov2", pretrained=False,
                             **{**GIGAPATH_TIMM, **overrides})


def build_gigapath_standin() -> "torch.nn.Module":
    """GigaPath's timm DINOv2-style ViT (patch 16, SwiGLU MLP) with 2 blocks of 192, average-pooled
    patch tokens and a linear head to 1536 (the real network's output dim).

    Two departures, both because the weights are random: the CLS token of a randomly initialised
    timm ViT hardly depends on the image (measured: between-patch std / mean |x| = 1e-5 on demo
    patches, i.e. constant features), so the tokens are averaged instead; and LayerScale (1e-5 in
    GigaPath) is off so the random blocks contribute at all."""
    return build_gigapath(**STANDIN_VIT, init_values=None, num_classes=1536, global_pool="avg")
