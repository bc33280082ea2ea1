"""LongNet dilated attention (against dense attention and hand-drawn sparsity patterns) and
LongViT (parameter count, training, non-square slides, padding)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from baselines.dilated_attention import DilatedAttention, dilated_attention, segment_lengths_for
from baselines.longvit import LongViT, count_without_positions, longvit_s
from toy_task import check_auto_checkpointing, toy_losses

F64 = torch.float64


def _qkv(B: int, L: int, H: int, D: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, L, H, D, dtype=F64, generator=g).requires_grad_() for _ in range(3)]


def _dense(q, k, v, pad=None):
    mask = None if pad is None else ~pad[:, None, None, :]  # (B, 1, 1, L) True = attend
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                         attn_mask=mask)
    return out.transpose(1, 2)


def _grads(out, inputs):
    return torch.autograd.grad((out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype)
                                .view_as(out)).sum(), inputs)


# -- dilated attention against dense attention ----------------------------------------------------

@pytest.mark.parametrize("segment", [37, 64])
def test_one_branch_covering_the_sequence_is_dense_attention(segment):
    q, k, v = _qkv(2, 37, 4, 8)
    out = dilated_attention(q, k, v, [segment], [1])
    ref = _dense(q, k, v)
    print("max |diff|", (out - ref).abs().max().item())
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    for a, b in zip(_grads(out, (q, k, v)), _grads(ref, (q, k, v))):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_dense_branch_with_key_padding_equals_dense_attention_on_the_real_tokens():
    q, k, v = _qkv(2, 29, 2, 8)
    pad = torch.zeros(2, 29, dtype=torch.bool)
    pad[0, 20:] = True
    pad[1, ::3] = True
    out = dilated_attention(q, k, v, [29], [1], key_padding_mask=pad)
    torch.testing.assert_close(out, _dense(q, k, v, pad), rtol=1e-10, atol=1e-12)


# -- which keys each query sees, one branch at a time ---------------------------------------------

def _seen(L: int, H: int, segment: int, ratio: int) -> list[list[set[int]]]:
    """Keys each (head, query) sees in one branch, read off the output: values are one-hot key
    indicators, so the output row is the attention distribution over keys."""
    g = torch.Generator().manual_seed(1)
    q = torch.randn(1, L, H, L, dtype=F64, generator=g)
    k = torch.randn(1, L, H, L, dtype=F64, generator=g)
    v = torch.eye(L, dtype=F64).view(1, L, 1, L).expand(1, L, H, L).contiguous()
    out = dilated_attention(q, k, v, [segment], [ratio])[0]  # (L, H, L)
    return [[set(torch.nonzero(out[i, h] > 1e-12).flatten().tolist()) for i in range(L)]
            for h in range(H)]


E: set[int] = set()  # a query the branch does not cover sees nothing

# (L, heads, segment, ratio) -> per head, per query, the keys it sees (drawn by hand)
PATTERNS = {
    # dense inside segments of 4
    (8, 2, 4, 1): [[{0, 1, 2, 3}] * 4 + [{4, 5, 6, 7}] * 4] * 2,
    # ratio 2: head 0 keeps even positions of each segment, head 1 odd ones
    (8, 2, 4, 2): [[{0, 2}, E, {0, 2}, E, {4, 6}, E, {4, 6}, E],
                   [E, {1, 3}, E, {1, 3}, E, {5, 7}, E, {5, 7}]],
    # ratio 4 with only 2 heads (head padding): head 0 offset 0, head 1 offset 1; offsets 2, 3 unused
    (8, 2, 8, 4): [[{0, 4}, E, E, E, {0, 4}, E, E, E],
                   [E, {1, 5}, E, E, E, {1, 5}, E, E]],
    # segments of 3 that do not divide 8: [0 1 2] [3 4 5] [6 7]; offsets count from each segment
    (8, 2, 3, 2): [[{0, 2}, E, {0, 2}, {3, 5}, E, {3, 5}, {6}, E],
                   [E, {1}, E, E, {4}, E, E, {7}]],
    # 4 heads, ratio 2: heads 0-1 offset 0, heads 2-3 offset 1 (torchscale's head grouping)
    (4, 4, 4, 2): [[{0, 2}, E, {0, 2}, E]] * 2 + [[E, {1, 3}, E, {1, 3}]] * 2,
    # a segment longer than the sequence is the whole sequence
    (5, 1, 16, 2): [[{0, 2, 4}, E, {0, 2, 4}, E, {0, 2, 4}]],
}


@pytest.mark.parametrize("case", list(PATTERNS), ids=lambda c: "L{}-H{}-s{}-r{}".format(*c))
def test_branch_sparsity_pattern(case):
    assert _seen(*case) == PATTERNS[case]


# -- the combination of branches -------------------------------------------------------------------

def _reference(q, k, v, segments, ratios, pad):
    """Explicit masks per branch, log-sum-exp per branch, softmax over branches (LongNet Eq. 8–10)."""
    B, L, H, D = q.shape
    scores = torch.einsum("bihd,bjhd->bhij", q, k) / math.sqrt(D)  # (B, H, L, L)
    idx = torch.arange(L)
    outs, lses = [], []
    for s, r in zip(segments, ratios):
        s = min(s, L)
        same_seg = (idx[:, None] // s) == (idx[None, :] // s)
        per_head = []
        for h in range(H):
            j = h // math.ceil(H / r)
            kept = (idx % s) % r == j
            per_head.append(same_seg & kept[:, None] & kept[None, :])
        mask = torch.stack(per_head)[None] & ~pad[:, None, None, :]  # (B, H, L, L)
        sc = scores.masked_fill(~mask, float("-inf"))
        lse = torch.logsumexp(sc, -1)  # (B, H, L), -inf where the query sees nothing
        p = torch.exp(sc - lse.unsqueeze(-1)).nan_to_num(0.0)
        outs.append(torch.einsum("bhij,bjhd->bihd", p, v))
        lses.append(lse.transpose(1, 2))  # (B, L, H)
    w = torch.softmax(torch.stack(lses), 0).nan_to_num(0.0)  # (nb, B, L, H)
    return sum(wb.unsqueeze(-1) * o for wb, o in zip(w, outs))


def test_five_branches_match_explicit_masks_and_lse_softmax():
    """LongViT's ratios on a sequence that fits no segment evenly, 16 heads, padded keys."""
    q, k, v = _qkv(2, 45, 16, 4, seed=3)
    pad = torch.zeros(2, 45, dtype=torch.bool)
    pad[1, 40:] = True
    segments, ratios = [4, 8, 16, 32, 64], [1, 2, 4, 8, 16]
    out = dilated_attention(q, k, v, segments, ratios, key_padding_mask=pad)
    ref = _reference(q, k, v, segments, ratios, pad)
    print("max |diff|", (out - ref).abs().max().item())
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-11)
    for a, b in zip(_grads(out, (q, k, v)), _grads(ref, (q, k, v))):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


def test_large_logits_stay_finite_in_float32():
    """Logits around 150 (a shared direction in q and k): exp(150) overflows float32, so the
    branch weights must be formed relative to each query's own scale."""
    q, k, v = (t.detach().float() for t in _qkv(1, 64, 2, 8, seed=5))
    q, k = q + 6.0, k + 6.0  # every logit ≈ 36·8/√8 ≈ 100–200, spread of a few tens
    out = dilated_attention(q, k, v, [16, 64], [1, 2])
    ref = _reference(q.double(), k.double(), v.double(), [16, 64], [1, 2],
                     torch.zeros(1, 64, dtype=torch.bool))
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-4)


def test_segment_lengths_scale_with_the_sequence():
    # torchscale's LongViT tables for 1024² and 16384² inputs at patch 32
    assert segment_lengths_for(32 * 32) == [64, 128, 256, 512, 1024]
    assert segment_lengths_for(512 * 512) == [1024, 4096, 16384, 65536, 262144]
    assert segment_lengths_for(30) == [30] * 5  # never longer than the sequence
    for n in (100, 5000, 77777):
        s = segment_lengths_for(n)
        assert s[-1] == n and s == sorted(s)


def test_attention_module_output_shape_and_sub_ln():
    attn = DilatedAttention(32, 4, ratios=(1, 2), segment_lengths=(8, 16)).double()
    assert attn.inner_attn_ln is not None
    x = torch.randn(2, 21, 32, dtype=F64)
    assert attn(x).shape == (2, 21, 32)


# -- LongViT ---------------------------------------------------------------------------------------

def _tiny(**kw) -> LongViT:
    cfg = dict(num_classes=2, embed_dim=32, depth=2, num_heads=4, patch_size=8, pos_grid=4,
               ratios=(1, 2, 4))
    cfg.update(kw)
    torch.manual_seed(0)
    return LongViT(**cfg)


def test_longvit_s_parameter_count():
    with torch.device("meta"):  # shapes only: initialising 23M weights takes long on a busy CPU
        model = longvit_s(n_out=4)
    # patch conv 1,180,032 + 12 × 1,778,304 (4 projections, 4 LayerNorms incl. the two sub-LNs,
    # FFN) + encoder LN 768 + fc_norm 768
    assert count_without_positions(model) == 22_521_216
    assert model.pos_embed.numel() == 32 * 32 * 384
    assert sum(p.numel() for p in model.head.parameters()) == 384 * 4 + 4
    assert model.num_features == 384


def test_longvit_non_square_slide_finite_and_every_parameter_learns():
    model = _tiny()
    x = torch.randn(1, 3, 96, 160)
    out = model(x)
    assert out.shape == (1, 2) and torch.isfinite(out).all()
    out.sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing
    assert model.forward_features(x).shape == (1, 32)
    model.reset_classifier(0)
    assert model(x).shape == (1, 32)


def test_longvit_keeps_the_aspect_ratio():
    """A 96×160 slide is a 12×20 token grid (patch 8), padded to whole patches, never resized."""
    model = _tiny()
    tok, pad, h, w = model.tokens(torch.randn(1, 3, 90, 155))
    assert (h, w) == (12, 20) and tok.shape == (1, 240, 32) and not pad.any()


def test_longvit_masked_pixels_are_never_seen():
    model = _tiny().eval()
    x = torch.randn(1, 3, 64, 96)
    mask = torch.zeros(1, 64, 96, dtype=torch.bool)
    mask[:, :, 64:] = True  # the right third is padding (whole patches)
    y = x.clone()
    y[:, :, :, 64:] = torch.randn(1, 3, 64, 32) * 5
    with torch.no_grad():
        torch.testing.assert_close(model(x, mask), model(y, mask))
        assert not torch.allclose(model(x), model(y))


def test_longvit_checkpointing_gives_the_same_output_and_gradients():
    model = _tiny()
    x = torch.randn(1, 3, 40, 72)
    outs, grads = [], []
    for ckpt in (True, False):
        model.zero_grad()
        model.set_grad_checkpointing(ckpt)
        out = model(x)
        out.sum().backward()
        outs.append(out.detach())
        grads.append([p.grad.clone() for p in model.parameters()])
    torch.testing.assert_close(outs[0], outs[1])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


def test_longvit_auto_checkpointing_only_above_the_token_threshold(monkeypatch):
    """``checkpointing="auto"`` (the default) recomputes the layers in backward only for inputs of
    more than ``UNCHECKPOINTED_TOKENS`` tokens, batch included, and never without gradients; both
    paths give the same output and gradients."""
    import baselines.longvit as lv

    with torch.device("meta"):
        full = longvit_s(n_out=2)
    assert full.checkpointing == "auto" and lv.UNCHECKPOINTED_TOKENS == 1024
    assert not full.checkpoints(32 * 32) and full.checkpoints(32 * 32 + 1)  # 1024² at patch 32: plain
    model = _tiny()
    # 5x9 tokens per sample, 90 in the batch
    check_auto_checkpointing(monkeypatch, lv, model, torch.randn(2, 3, 40, 72), tokens=90, depth=len(model.layers))
    with pytest.raises(ValueError, match="checkpointing"):
        LongViT(checkpointing="yes")


def test_longvit_trains_on_a_tiny_task():
    """The toy task (tests/helpers/toy_task.py): the loss must go down."""
    losses = toy_losses(_tiny(depth=1), lr=3e-3)
    assert losses[-1] < 0.5 * losses[0]
