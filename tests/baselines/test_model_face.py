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


import pytest
import torch

from bench.registry import PAPER_ENCODERS, build_model, get_method, list_methods

from tiny_models import N_OUT, TINY, tiny_input


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Two intra-op threads on busy cores oversubscribe OpenMP (tests/pixelmamba/ops/conftest.py)."""
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
