"""TransMIL, ILRA-MIL and MambaMIL: REFERENCE.md's parameter counts, the shared face, and the
mechanism each one is named for (Nyström attention, gated low-rank latents, sequence reordering)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from baselines.mil.ilra import ILRA
from baselines.mil.mambamil import MambaMIL, SRMamba, sr_reorder, sr_restore
from baselines.mil.transmil import NystromAttention, TransMIL
from bench.registry import ENCODERS, PAPER_ENCODERS, build_model, count_parameters, list_methods

# REFERENCE.md, 4 outputs
PARAMS = {
    "transmil": {"resnet50": 2_673_172, "conch": 2_411_028, "gigapath": 2_935_316},
    "ilra": {"resnet50": 3_688_196, "conch": 3_163_908, "gigapath": 4_212_484},
    "mambamil": {"resnet50": 4_228_869, "conch": 3_966_725, "gigapath": 4_491_013},
}
CLASSES = {"transmil": TransMIL, "ilra": ILRA, "mambamil": MambaMIL}


@pytest.mark.parametrize("agg,enc", [(a, e) for a in PARAMS for e in PARAMS[a]])
def test_parameter_counts_match_reference(agg, enc):
    model = CLASSES[agg](in_dim=ENCODERS[enc]["dim"], n_out=4)
    assert count_parameters(model) == PARAMS[agg][enc]


@pytest.mark.parametrize("agg", PARAMS)
def test_registry_builds_the_same_model(agg):
    """Every encoder's row is registered (a missing registration fails) and builds this model."""
    assert {s.name for s in list_methods(f"{agg}.*")} == {f"{agg}.{enc}" for enc in PAPER_ENCODERS}
    for enc, n in PARAMS[agg].items():
        assert count_parameters(build_model(f"{agg}.{enc}", 4)) == n


# TransMIL: 1 patch (fewer than its 256 landmarks) and 300 (two tokens per landmark); its cost is
# dominated by the bag-size-independent 256×256 pseudo-inverse, so a third size would only add time.
BAGS = {"transmil": [1, 300], "ilra": [1, 37], "mambamil": [1, 37]}


@pytest.mark.parametrize("agg,n_patches", [(a, n) for a, sizes in BAGS.items() for n in sizes])
def test_shape_finite_and_every_parameter_learns(agg, n_patches):
    """One forward per case (TransMIL's is never cheap); ``(1, N, D)`` bags are the shared
    ``MILModel.as_bag``'s business, tested in test_mil.py over the registry."""
    torch.manual_seed(0)
    model = CLASSES[agg](in_dim=512, n_out=4)
    feats = model.forward_features(torch.randn(n_patches, 512))
    assert feats.shape == (1, model.num_features)
    out = model.forward_head(feats)
    assert out.shape == (1, 4) and torch.isfinite(out).all()
    out.sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    model.reset_classifier(2)
    assert model.forward_head(feats.detach()).shape == (1, 2)


@pytest.mark.slow
@pytest.mark.parametrize("agg", PARAMS)
def test_large_bag(agg):
    torch.manual_seed(0)
    model = CLASSES[agg](in_dim=512, n_out=4).eval()
    with torch.no_grad():
        out = model(torch.randn(50_000, 512))
    assert out.shape == (1, 4) and torch.isfinite(out).all()


# --- TransMIL ---------------------------------------------------------------------------------


def _exact_attention(attn: NystromAttention, x: torch.Tensor) -> torch.Tensor:
    """Softmax attention with the module's weights and value-conv residual, no approximation."""
    q, k, v = (t.unflatten(-1, (attn.heads, -1)).transpose(1, 2)
               for t in attn.to_qkv(x).chunk(3, dim=-1))  # (B, h, n, d)
    out = torch.softmax(q @ k.transpose(-1, -2) * attn.scale, dim=-1) @ v + attn.res_conv(v)
    return attn.to_out(out.transpose(1, 2).flatten(2))


@pytest.mark.parametrize("n,pad", [(16, 0), (11, 5)])
def test_nystrom_is_exact_softmax_attention_when_landmarks_cover_the_sequence(n, pad):
    """With as many landmarks as (padded) tokens each landmark is one token, so Nyström attention
    is softmax attention up to the pseudo-inverse; padding adds zero tokens in front, which take
    part as keys (TransMIL passes no mask) and are cut from the output."""
    torch.manual_seed(0)
    attn = NystromAttention(64, dim_head=16, heads=4, num_landmarks=16, pinv_iterations=25).eval()
    x = torch.randn(1, n, 64, dtype=torch.float64)
    attn.double()
    with torch.no_grad():
        got = attn(x)
        want = _exact_attention(attn, torch.cat([x.new_zeros(1, pad, 64), x], dim=1))[:, pad:]
    err = (got - want).abs().max().item()
    print(f"max |nystrom - exact| = {err:.2e}")
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("n", [1, 256, 300])
def test_nystrom_matches_the_package(n):
    package = pytest.importorskip("nystrom_attention")
    torch.manual_seed(0)
    ours = NystromAttention(512, dim_head=64, heads=8, num_landmarks=256, pinv_iterations=6).eval()
    theirs = package.NystromAttention(dim=512, dim_head=64, heads=8, num_landmarks=256,
                                      pinv_iterations=6, residual=True,
                                      residual_conv_kernel=33).eval()
    theirs.load_state_dict(ours.state_dict())  # same parameter names and shapes
    x = torch.randn(1, n, 512)
    with torch.no_grad():
        got, want = ours(x), theirs(x)
    print(f"n={n}: max |ours - package| = {(got - want).abs().max().item():.2e}")
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("n,side", [(1, 1), (2, 2), (5, 3), (16, 4), (17, 5)])
def test_transmil_squares_the_bag(n, side):
    """PPEG sees a side × side grid: the bag is completed by repeating its first patches."""
    seen = {}
    model = TransMIL(in_dim=8, n_out=4, num_landmarks=8).eval()
    model.pos_layer.register_forward_hook(lambda m, args, out: seen.update(shape=args[0].shape,
                                                                           side=args[1]))
    model(torch.randn(n, 8))
    assert seen == {"shape": (1, 1 + side * side, 512), "side": side}


# --- ILRA -------------------------------------------------------------------------------------


@pytest.mark.parametrize("topk", [1, 3])
def test_ilra_latent_count(topk):
    torch.manual_seed(0)
    model = ILRA(in_dim=64, n_out=4, topk=topk).eval()
    shapes = []
    for block in model.gab_blocks:
        assert block.latent.shape == (1, topk, 256)
        block.project_forward.register_forward_hook(lambda m, a, out: shapes.append(out.shape))
    assert model(torch.randn(20, 64)).shape == (1, 4)
    assert shapes == [(1, topk, 256)] * len(model.gab_blocks)  # the bag squeezed to topk tokens


def test_ilra_gates_are_applied():
    torch.manual_seed(0)
    model = ILRA(in_dim=64, n_out=4).eval()
    gates = [m.gate for b in model.gab_blocks for m in (b.project_forward, b.project_backward)]
    assert all(g is not None for g in gates) and model.pooling.gate is None  # pooling ungated
    calls = []
    for g in gates:
        g.register_forward_hook(lambda m, a, out: calls.append(m))
    x = torch.randn(20, 64)
    before = model(x)
    assert len(calls) == len(gates)
    # a gate of SiLU(0) = 0 must zero its block's output: the gate multiplies, it is not decor
    block = model.gab_blocks[1]
    nn.init.zeros_(block.project_backward.gate[0].weight)
    nn.init.zeros_(block.project_backward.gate[0].bias)
    h = torch.randn(1, 20, 256)
    assert torch.count_nonzero(block(h)) == 0
    assert not torch.allclose(model(x), before)


# --- MambaMIL ---------------------------------------------------------------------------------


@pytest.mark.parametrize("length", [1, 9, 10, 23, 100])
@pytest.mark.parametrize("rate", [1, 5, 10])
def test_sr_reorder_is_a_permutation_that_restores(length, rate):
    padded = math.ceil(length / rate) * rate
    pos = torch.arange(1, length + 1, dtype=torch.float64).view(1, 1, -1)  # 0 marks padding
    order = sr_reorder(pos, rate)[0, 0]
    assert order.numel() == padded
    assert sorted(order[order > 0].long().tolist()) == list(range(1, length + 1))
    assert torch.count_nonzero(order == 0) == padded - length
    x = torch.randn(2, 3, length)
    assert torch.equal(sr_restore(sr_reorder(x, rate), rate, length), x)


def test_sr_reorder_reads_column_wise():
    order = sr_reorder(torch.arange(1.0, 24.0).view(1, 1, -1), 10)[0, 0] - 1  # -1 = padding
    assert order.long().tolist() == [0, 10, 20, 1, 11, 21, 2, 12, 22, 3, 13, -1, 4, 14, -1,
                                     5, 15, -1, 6, 16, -1, 7, 17, -1, 8, 18, -1, 9, 19, -1]


def test_mambamil_reordered_branch_changes_the_output():
    torch.manual_seed(0)
    model = MambaMIL(in_dim=32, n_out=4, rate=10).eval()
    x = torch.randn(57, 32)
    with torch.no_grad():
        full = model(x)
        other_rate = MambaMIL(in_dim=32, n_out=4, rate=3).eval()
        other_rate.load_state_dict(model.state_dict())
        assert not torch.allclose(other_rate(x), full)  # the reading order matters
        for mixer in model.mixers:  # silence the reordered branch: SiLU(conv) = 0, D·0 = 0
            nn.init.zeros_(mixer.conv1d_b.weight)
            nn.init.zeros_(mixer.conv1d_b.bias)
        assert not torch.allclose(model(x), full)


def test_srmamba_is_two_forward_scans_when_the_reorder_is_the_identity():
    """rate ≥ length leaves the order alone (padding goes after the end, and the scan is causal),
    so with the branch weights tied SRMamba must equal out_proj(2 · forward branch)."""
    torch.manual_seed(0)
    mixer = SRMamba(16, rate=32).double()
    with torch.no_grad():
        for name in ("conv1d", "x_proj", "dt_proj"):
            getattr(mixer, name + "_b").load_state_dict(getattr(mixer, name).state_dict())
        mixer.A_b_log.copy_(mixer.A_log)
        mixer.D_b.copy_(mixer.D)
        h = torch.randn(1, 20, 16, dtype=torch.float64)
        x, z = mixer.in_proj(h).transpose(1, 2).chunk(2, dim=1)
        want = mixer.out_proj(2 * mixer.scan_branch(x, z, "").transpose(1, 2))
        torch.testing.assert_close(mixer(h), want)


def test_mambamil_scan_backends_agree():
    """The default CPU scan (what replaces the original's CUDA-only kernel) against the sequential
    reference scan, through the whole model."""
    torch.manual_seed(0)
    model = MambaMIL(in_dim=16, n_out=4, dim=32).eval()
    x = torch.randn(45, 16)
    with torch.no_grad():
        got = model(x)
        for mixer in model.mixers:
            mixer.backend = "ref"
        want = model(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
