"""CONCH v1's image tower (Lu et al., "A visual-language foundation model for computational
pathology", Nature Medicine 2024; mahmoodlab/CONCH).

The release, ``MahmoodLab/conch`` ``pytorch_model.bin``, is the whole open_clip-style CoCa model as a
bare state dict: ``visual.trunk.*`` (timm ViT-B/16 at 448 px), ``visual.attn_pool_contrast.*``,
``visual.ln_contrast.*``, ``visual.proj_contrast``, ``visual.attn_pool_caption.*``,
``visual.ln_caption.*``, ``text.*``, ``text_decoder.*`` and ``logit_scale``. We keep the contrastive
pooler and its LayerNorm (the 512-d ``encode_image(proj_contrast=False)`` embedding); the caption
pooler, the contrastive projection, the text tower and the decoder are dropped on purpose.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from feature_cache.encoders.base import STANDIN_VIT

if TYPE_CHECKING:
    import torch


def build_conch_visual(**trunk_overrides: Any) -> "torch.nn.Module":
    """CONCH v1's image tower (mahmoodlab/CONCH ``conch_ViT-B-16.json``): a timm ViT-B/16 trunk at
    448 px (no classifier) -> attentional pooler (1 query, 512-d, 8 heads, keys/values 768-d) ->
    LayerNorm. This is ``encode_image(x, proj_contrast=False, normalize=False)``, the 512-d
    embedding TRIDENT and the CONCH authors use for slide tasks. Module names mirror the
    checkpoint's ``visual.*`` keys, so the released ``pytorch_model.bin`` loads as is."""
    import torch
    from open_clip.transformer import AttentionalPooler
    from timm.models.vision_transformer import VisionTransformer

    trunk_cfg = dict(embed_dim=768, depth=12, num_heads=12, mlp_ratio=4, img_size=448,
                     patch_size=16, num_classes=0, dynamic_img_size=True)
    trunk_cfg.update(trunk_overrides)

    class ConchVisual(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.trunk = VisionTransformer(**trunk_cfg)
            self.attn_pool_contrast = AttentionalPooler(d_model=512, context_dim=trunk_cfg["embed_dim"],
                                                        n_head=8, n_queries=1)
            self.ln_contrast = torch.nn.LayerNorm(512)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            tokens = self.trunk.forward_features(x)  # (B, 1 + h*w, 768)
            pooled = self.attn_pool_contrast(tokens)[:, 0]  # (B, 512): the single query
            return self.ln_contrast(pooled)

    return ConchVisual()


def build_conch_standin() -> "torch.nn.Module":
    """CONCH's image tower with a 2-block, 192-wide ViT/16 trunk at 448 px (same attentional
    pooler to 512 and LayerNorm)."""
    return build_conch_visual(**STANDIN_VIT)
