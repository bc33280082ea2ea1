"""Pixel-Mamba (Qiu, Chao, Lin et al., "From Pixels to Gigapixels ... with Pixel-Mamba").

``from pixelmamba import create_model`` needs nothing from the benchmark harness:
``create_model("pixelmamba-6m", num_classes=4)``; ``model.plan(H, W)`` shows the per-layer cost
of an input before running it. The selective scan lives in ``pixelmamba.ops``, the bidirectional
Mamba mixer in ``pixelmamba.mixer``.
"""

from .configs import CONFIGS, LayerRow, PixelMambaConfig, TokenExpansionSpec
from .model import PixelMamba, PlanRow, RegionTokens, create_model, list_models

__all__ = [
    "CONFIGS",
    "LayerRow",
    "PixelMamba",
    "PixelMambaConfig",
    "PlanRow",
    "RegionTokens",
    "TokenExpansionSpec",
    "create_model",
    "list_models",
]
