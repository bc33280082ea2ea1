"""Towers no library builds by name, written with the released checkpoints' module names so the
files load strictly: CONCH v1.5 (MahmoodLab/conchv1_5, the image tower of TITAN, Ding et al. 2024)
and CTransPath (Wang et al., Medical Image Analysis 2022).

CONCH v1.5 (TRIDENT ``model_zoo/conchv1_5/conchv1_5.py``, ``CONCHVisionTower``): a ViT-L/16 trunk
(1024-d, 24 blocks, 16 heads, qkv bias, LayerScale initialised at 1.0) -> an attentional pooler with
one 768-d query over the tokens (``to_q``, ``to_kv``, ``to_out`` without bias; LayerNorms on keys
and query) -> LayerNorm: a 768-d embedding. The release is ``pytorch_model_vision.bin``.

CTransPath (TransPath ``ctran.py``): timm's Swin-T (patch 4, window 7) whose patch embedding is a
convolutional stem (two 3x3 stride-2 conv + BN + ReLU, then a 1x1 conv to 96 channels); 768-d
pooled output, classifier removed. The release ``CHIEF_CTransPath.pth`` (``{"model": ...}``) was
saved by timm 0.5 (timm_ctp); its key-map in the declaration renames the one layout difference.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def _pooler(d_model: int, context_dim: int, n_head: int) -> "torch.nn.Module":
    import torch
    from torch import nn

    class AttentionalPooler(nn.Module):
        """One learned query attends over the trunk's tokens (CoCa's pooler, CONCH v1.5's names)."""

        def __init__(self) -> None:
            super().__init__()
            self.query = nn.Parameter(torch.randn(1, d_model))
            self.heads = n_head
            self.ln_k = nn.LayerNorm(context_dim)
            self.ln_q = nn.LayerNorm(d_model)
            self.to_q = nn.Linear(d_model, d_model, bias=False)
            self.to_kv = nn.Linear(context_dim, d_model * 2, bias=False)
            self.to_out = nn.Linear(d_model, d_model, bias=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b, n, _ = x.shape  # (B, N, context_dim)
            x = self.ln_k(x)
            q = self.to_q(self.ln_q(self.query)).expand(b, -1, -1)  # (B, 1, d)
            k, v = self.to_kv(x).chunk(2, dim=-1)  # (B, N, d) each

            def heads(t: torch.Tensor) -> torch.Tensor:
                return t.reshape(b, t.shape[1], self.heads, -1).transpose(1, 2)  # (B, h, T, d/h)

            out = torch.nn.functional.scaled_dot_product_attention(heads(q), heads(k), heads(v))
            return self.to_out(out.transpose(1, 2).reshape(b, 1, -1))[:, 0]  # (B, d)

    return AttentionalPooler()


def build_conch_v15(**trunk_overrides: Any) -> "torch.nn.Module":
    """CONCH v1.5's image tower: ViT-L/16 trunk at 448 px -> attentional pooler -> LayerNorm (768)."""
    from torch import nn
    from timm.models.vision_transformer import VisionTransformer

    cfg = dict(img_size=448, patch_size=16, embed_dim=1024, depth=24, num_heads=16, mlp_ratio=4,
               qkv_bias=True, init_values=1.0, num_classes=0, dynamic_img_size=True)
    cfg.update(trunk_overrides)

    class ConchV15(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.trunk = VisionTransformer(**cfg)
            self.attn_pool_contrast = _pooler(768, cfg["embed_dim"], 8)
            self.ln_contrast = nn.LayerNorm(768)

        def forward(self, x):  # (B, 3, 448, 448) -> (B, 768)
            return self.ln_contrast(self.attn_pool_contrast(self.trunk.forward_features(x)))

    return ConchV15()


def _conv_stem() -> type:
    import torch
    from torch import nn

    class ConvStem(nn.Module):
        """CTransPath's patch embedding; emits NHWC as timm's Swin expects."""

        def __init__(self, img_size: Any = 224, patch_size: Any = 4, in_chans: int = 3, embed_dim: int = 96,
                     norm_layer: Any = None, **_: Any) -> None:
            super().__init__()
            layers: list[nn.Module] = []
            cin, cout = in_chans, embed_dim // 8
            for _i in range(2):
                layers += [nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(cout),
                           nn.ReLU(inplace=True)]
                cin, cout = cout, cout * 2
            layers.append(nn.Conv2d(cin, embed_dim, kernel_size=1))
            self.proj = nn.Sequential(*layers)
            self.norm = norm_layer(embed_dim) if norm_layer else nn.Identity()
            size = img_size if isinstance(img_size, (tuple, list)) else (img_size, img_size)
            self.grid_size = (size[0] // 4, size[1] // 4)
            self.num_patches = self.grid_size[0] * self.grid_size[1]
            self.patch_size = (4, 4)
            self.img_size = tuple(size)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.norm(self.proj(x).permute(0, 2, 3, 1))  # (B, H/4, W/4, C)

    return ConvStem


def build_ctranspath(**overrides: Any) -> "torch.nn.Module":
    """CTransPath: timm ``swin_tiny_patch4_window7_224`` with the convolutional stem, no head."""
    import timm

    return timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, embed_layer=_conv_stem(),
                             num_classes=0, **overrides)
