"""Tiny networks of every registered method family and one slide's input in the form each takes:
the options that shrink each builder (keyed by builder), and an input per input kind."""

from __future__ import annotations

from typing import Any

import torch

from baselines.bag import Bag
from bench.registry import ENCODERS, MethodSpec

N_OUT = 3

# Smaller networks, keyed by builder: options each builder accepts (its docstring says what they do).
VIM_TINY = dict(embed_dim=16, depth=2, d_state=4, pos_grid=4, chunk_size=None)
PIXELMAMBA_TINY = dict(scan_window=32, d_state=4)  # a 64² image is 2 × 2 regions, 1 × 1 tokens at the end
TINY: dict[str, dict[str, Any]] = {
    "baselines.mil.abmil:ABMIL": dict(hidden=16, attn_dim=8),
    "baselines.mil.transmil:TransMIL": dict(dim=16, heads=2, num_landmarks=4),
    "baselines.mil.ilra:ILRA": dict(hidden=16, heads=2),
    "baselines.mil.mambamil:MambaMIL": dict(dim=16, d_state=4, attn_dim=8),
    "baselines.hipt:HIPT": dict(dim=24),  # ViT-4K's 6 heads and the slide transformer's 3 divide it
    "baselines.prov_gigapath:ProvGigaPath": dict(embed_dim=32, depth=2, heads=4, feat_layers=(1, 2),
                                                 segment_lengths=[8, 16, 32, 64, 128],
                                                 abmil_hidden=16, abmil_attn=8),
    "baselines.longvit:longvit_s": dict(embed_dim=32, depth=2, num_heads=4, pos_grid=4),
    "baselines.vim:vim_ti": VIM_TINY,
    "baselines.vim:vim_ti_multiscale": VIM_TINY,
    "bench.engine.models:pixelmamba": PIXELMAMBA_TINY,
}
# Width of the cached features the hierarchical rows read (feature_cache's encoder specs say the same).
SOURCE_DIM = {"hipt-vit256": 384, "gigapath": ENCODERS["gigapath"]["dim"]}


def tiny_input(spec: MethodSpec, gen: torch.Generator) -> torch.Tensor | Bag:
    """One slide's input in the form ``bench``'s inputs hand the method (``spec.input``)."""
    if spec.input == "features":  # a bag of patch features (N, D)
        return torch.randn(9, spec.feature_dim, generator=gen)
    if spec.input == "tiles":  # tile features and their (x, y) on the patch grid
        gx, gy = torch.meshgrid(torch.arange(4), torch.arange(3), indexing="ij")
        coords = torch.stack([gx, gy], -1).reshape(-1, 2)[:7]  # (7, 2)
        return Bag(torch.randn(7, SOURCE_DIM[spec.source], generator=gen), coords=coords)
    if spec.input == "region_features":  # 4096² regions of 16 × 16 patch features, edge patches missing
        mask = torch.ones(2, 256, dtype=torch.bool)
        mask[1, 128:] = False
        return Bag(torch.randn(2, 256, SOURCE_DIM[spec.source], generator=gen), mask=mask)
    if spec.input == "slide":  # raw RGB bytes for raw_rgb methods, else ImageNet-normalised floats
        if spec.raw_rgb:
            return torch.randint(0, 256, (1, 3, 64, 64), dtype=torch.uint8, generator=gen)
        return torch.randn(1, 3, 64, 64, generator=gen)
    raise AssertionError(f"{spec.name}: no tiny input for input kind {spec.input!r}")
