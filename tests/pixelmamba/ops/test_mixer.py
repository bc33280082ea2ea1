"""BiMambaMixer: Vim-v2 structure and init, backends agree, streaming equals one-shot."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pixelmamba.mixer import BiMambaMixer


def _mixer(d_model: int, backend: str, dtype=torch.float64, seed: int = 0) -> BiMambaMixer:
    torch.manual_seed(seed)
    return BiMambaMixer(d_model, backend=backend).to(dtype)


def _fwd_bwd(m: BiMambaMixer, x: torch.Tensor, chunk_size=None, seed: int = 1):
    m.zero_grad()
    x = x.detach().clone().requires_grad_()
    y = m(x, chunk_size=chunk_size)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed), dtype=y.dtype)
    (y * g).sum().backward()
    grads = {"x": x.grad}
    grads.update({n: p.grad.clone() for n, p in m.named_parameters()})
    return y.detach(), grads


def _close(name: str, got: torch.Tensor, want: torch.Tensor, rtol: float, atol: float) -> None:
    diff = (got - want).abs().max().item()
    tol = atol + rtol * want.abs().max().item()
    print(f"{name}: max diff {diff:.3e} (tol {tol:.3e})")
    assert diff <= tol


def test_vim_v2_parameters_and_init():
    m = BiMambaMixer(192, d_state=16)
    # per-layer mixer count of Vim-Ti (embed 192): in/out proj shared, 2 × (conv, x_proj, dt_proj,
    # A_log, D)
    assert sum(p.numel() for p in m.parameters()) == 281_856
    names = {n for n, _ in m.named_parameters()}
    for sfx in ("", "_b"):
        assert {f"conv1d{sfx}.weight", f"x_proj{sfx}.weight", f"dt_proj{sfx}.bias",
                f"A{sfx}_log", f"D{sfx}"} <= names
        A_log = getattr(m, f"A{sfx}_log")
        assert A_log.dtype == torch.float32
        assert torch.allclose(A_log, torch.log(torch.arange(1, 17.0)).expand(384, 16))
        assert torch.equal(getattr(m, f"D{sfx}").data, torch.ones(384))
        dt = F.softplus(getattr(m, f"dt_proj{sfx}").bias.detach())
        assert dt.min() >= 1e-3 * 0.999 and dt.max() <= 1e-1 * 1.001
        std = math.ceil(192 / 16) ** -0.5
        assert getattr(m, f"dt_proj{sfx}").weight.abs().max() <= std
    assert m.in_proj.bias is None and m.out_proj.weight.shape == (192, 384)


@pytest.mark.parametrize("backend", ["torch", "numba"])
def test_backends_agree_with_ref(backend):
    x = torch.randn(2, 70, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    y_ref, g_ref = _fwd_bwd(_mixer(6, "ref"), x)
    y, g = _fwd_bwd(_mixer(6, backend), x)
    _close("out", y, y_ref, 1e-10, 1e-12)
    for k in g_ref:
        _close(f"d{k}", g[k], g_ref[k], 1e-10, 1e-12)


def test_backward_direction_is_the_flipped_forward():
    """With the backward branch's weights copied from the forward branch, the mixer is
    symmetric: reversing the input reverses the output."""
    m = _mixer(4, "numba")
    with torch.no_grad():
        for a, b in (("conv1d", "conv1d_b"), ("x_proj", "x_proj_b"), ("dt_proj", "dt_proj_b")):
            getattr(m, b).load_state_dict(getattr(m, a).state_dict())
        m.A_b_log.copy_(m.A_log)
        m.D_b.copy_(m.D)
        x = torch.randn(1, 33, 4, dtype=torch.float64)
        _close("flip", m(x.flip(1)).flip(1), m(x), 1e-12, 1e-13)


@pytest.mark.parametrize("backend", ["torch", "numba"])
@pytest.mark.parametrize("chunk_size", [2, 16, 50, 102])
def test_streaming_equals_one_shot(backend, chunk_size):
    """Chunks carry SSM and conv state both ways; output and every gradient match one-shot.
    Lengths are not multiples of the chunk (103 tokens), chunks shorter than the conv too."""
    m = _mixer(8, backend)
    x = torch.randn(2, 103, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    y1, g1 = _fwd_bwd(m, x)
    y2, g2 = _fwd_bwd(m, x, chunk_size=chunk_size)
    _close("out", y2, y1, 1e-10, 1e-12)
    for k in g1:
        _close(f"d{k}", g2[k], g1[k], 1e-10, 1e-12)


def test_streaming_float32_no_grad():
    m = _mixer(48, "numba", torch.float32)
    x = torch.randn(1, 1000, 48, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        y1 = m(x)
        y2 = m(x, chunk_size=256)
    assert y1.shape == x.shape and y1.dtype == torch.float32
    _close("out", y2, y1, 1e-4, 1e-6)


def test_bad_inputs():
    m = BiMambaMixer(4)
    with pytest.raises(ValueError, match="expected"):
        m(torch.randn(1, 10, 5))
    with pytest.raises(ValueError, match="chunk_size"):
        m(torch.randn(1, 10, 4), chunk_size=0)
