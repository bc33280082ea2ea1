"""Every registered method has the same face (STYLE.md, after timm's ``tests/test_models.py``):
``forward_features(x)`` → ``(1, num_features)``, ``forward_head`` → logits, ``forward`` chains the
two, ``reset_classifier(n)`` gives ``n`` outputs (``0``: the features), and every trainable
parameter learns.

Parametrized over ``list_methods()``, so a newly registered method is covered without editing this
file (it is built with its defaults until ``TINY`` names smaller options for its builder), and a
method whose builder no longer imports fails here instead of vanishing from a list. Sizes are
shrunk through the builders' own options; the registered choices that make a method what it is
(encoder width, patch size, Pixel-Mamba's layer table) are kept.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from baselines.bag import Bag
from bench.registry import ENCODERS, PAPER_ENCODERS, MethodSpec, build_model, get_method, list_methods

N_OUT = 3

# Smaller networks, keyed by builder: options each builder accepts (its docstring says what they do).
_VIM = dict(embed_dim=16, depth=2, d_state=4, pos_grid=4, chunk_size=None)
_PIXELMAMBA = dict(scan_window=32, d_state=4)  # a 64² image is 2 × 2 regions, 1 × 1 tokens at the end
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
    "baselines.vim:vim_ti": _VIM,
    "baselines.vim:vim_ti_multiscale": _VIM,
    "bench.engine.models:pixelmamba": _PIXELMAMBA,
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


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Two intra-op threads on busy cores oversubscribe OpenMP (tests/ops/conftest.py)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_every_family_is_registered():
    """An empty or half-empty registry must fail here, not shrink the parametrization below."""
    names = {s.name for s in list_methods()}
    for agg in ("meanmil", "maxmil", "abmil", "transmil", "ilra", "mambamil"):
        assert {f"{agg}.{enc}" for enc in PAPER_ENCODERS} <= names, agg
    assert {"hipt", "prov-gigapath-cls", "prov-gigapath-feat", "longvit-s", "vim-ti", "vim-ti-32",
            "vim-ti-16+32", "pixelmamba-6m", "pixelmamba-21m"} <= names


@pytest.mark.parametrize("name", [s.name for s in list_methods()])
def test_model_face(name: str) -> None:
    spec = get_method(name)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    model = build_model(name, N_OUT, **TINY.get(spec.builder, {}))
    x = tiny_input(spec, gen)

    # forward: (1, n_out), finite; every trainable parameter gets a finite gradient
    model.train()
    out = model(x)
    assert out.shape == (1, N_OUT)
    assert torch.isfinite(out).all()
    (out * torch.randn(out.shape, generator=gen)).sum().backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable
    no_grad = [n for n, p in trainable if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not no_grad, f"{name}: parameters without a finite gradient: {no_grad}"

    # forward = forward_head ∘ forward_features, through a (1, num_features) slide embedding
    model.eval()
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape == (1, model.num_features)
        assert torch.equal(model.forward_head(feats), model(x))

        model.reset_classifier(7)
        assert model(x).shape == (1, 7)
        assert model.forward_head(feats).shape == (1, 7)
        model.reset_classifier(0)  # timm's convention: no head, forward gives the embedding
        assert torch.equal(model(x), feats)
