"""HIPT's ViT-256-16 (Chen et al., CVPR 2022; mahmoodlab/HIPT): a DINO ViT-S/16 over 256-px patches.

The release, ``HIPT_4K/Checkpoints/vit256_small_dino.pth``, is a whole DINO training checkpoint:
``{"student", "teacher", "optimizer", "epoch", "args" (an argparse.Namespace), "dino_loss"}``.
HIPT loads the ``teacher`` (``backbone.*`` = the ViT, DINO's ``head.*`` projection head dropped
on purpose), as does this encoder.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from feature_cache.encoders.base import STANDIN_VIT

if TYPE_CHECKING:
    import torch


def build_hipt_vit256() -> "torch.nn.Module":
    """HIPT's ViT-256-16 (mahmoodlab/HIPT ``vit_small``, DINO): ViT-S/16, 384-d, 12 blocks, 6 heads,
    qkv bias, LayerNorm eps 1e-6, CLS token out. Its position table is for 224 px (14 × 14 + CLS,
    as the checkpoint's); timm resizes it bicubically for the 256-px patches HIPT feeds it."""
    from functools import partial

    import torch
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(img_size=224, patch_size=16, embed_dim=384, depth=12, num_heads=6,
                             mlp_ratio=4, qkv_bias=True, num_classes=0, dynamic_img_size=True,
                             norm_layer=partial(torch.nn.LayerNorm, eps=1e-6))


def build_hipt_vit256_standin() -> "torch.nn.Module":
    """HIPT ViT-256's family at 2 blocks of 192 (ViT/16 at 256 px, as ``STANDIN_VIT``), average-pooled
    patch tokens and a linear map to 384 (the real output dim): the same departures as GigaPath's
    stand-in, for the same reason (a random ViT's CLS token hardly depends on the image)."""
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(img_size=256, patch_size=16, qkv_bias=True, num_classes=384, global_pool="avg",
                             dynamic_img_size=True, **STANDIN_VIT)
