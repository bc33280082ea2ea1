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

from feature_cache.encoders.base import (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, STANDIN_VIT, EncoderSpec,
                                         register_encoder)
from feature_cache.weights import KeyMap

if TYPE_CHECKING:
    import torch

CONCH_LAYOUT = KeyMap(
    name="conch open_clip CoCa",
    container=("", "state_dict"),
    renames=((r"^visual\.", ""),),
    drop=(r"^text\.", r"^text_decoder\.", r"^logit_scale$", r"^visual\.proj_contrast$",
          r"^visual\.attn_pool_caption\.", r"^visual\.ln_caption\."),
)


def _build_conch_visual(**trunk_overrides: Any) -> "torch.nn.Module":
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


def _build_conch_standin() -> "torch.nn.Module":
    """CONCH's image tower with a 2-block, 192-wide ViT/16 trunk at 448 px (same attentional
    pooler to 512 and LayerNorm)."""
    return _build_conch_visual(**STANDIN_VIT)


register_encoder(EncoderSpec(
    name="conch",
    dim=512,
    patch_size=256,
    magnification=20.0,
    input_size=448,  # CONCH's eval transform: Resize(448, bicubic) + CenterCrop(448)
    resize_size=448,
    interpolation="bicubic",
    mean=OPENAI_CLIP_MEAN,
    std=OPENAI_CLIP_STD,
    build=_build_conch_visual,
    weights_env="BENCH_WEIGHTS_CONCH",
    # the README's id, and the hub page's spelling (the cache directory keeps the case typed)
    hub_files=(("MahmoodLab/conch", "pytorch_model.bin"), ("MahmoodLab/CONCH", "pytorch_model.bin")),
    download=("MahmoodLab/conch", "pytorch_model.bin"),
    # bf16 on CUDA (TRIDENT runs conch_v1 in fp32): max relative change of a feature 0.6 %
    # against fp32, random stand-in weights, tests/test_encoders.py; fp32 without bf16
    fingerprint_by="values",  # 90M parameters: hashing values costs ~0.3 s
    keymaps=(CONCH_LAYOUT,),
    official="hf MahmoodLab/conch (gated), pytorch_model.bin; code github mahmoodlab/CONCH",
    description="CONCH v1 image tower (MahmoodLab/conch pytorch_model.bin)",
    extra={"gated": True},
    standin_build=_build_conch_standin,
    standin_arch="ViT/16 2x192 + attn-pool 512",
))
