"""Vision Mamba on whole slides: Vim-Ti's parameter count, the block against the mixer it wraps,
streaming equals one-shot, non-square slides, padding, the 16 + 32 streams, and training."""

from __future__ import annotations

import pytest
import torch

from baselines.vim import VimBlock, VimMultiScale, VisionMamba, vim_ti, vim_ti_multiscale
from pixelmamba.mixer import BiMambaMixer
from toy_task import check_auto_checkpointing, toy_losses


def _tiny(**kw) -> VisionMamba:
    cfg = dict(num_classes=2, embed_dim=16, depth=2, patch_size=8, d_state=4, pos_grid=4,
               chunk_size=None)
    cfg.update(kw)
    torch.manual_seed(0)
    return VisionMamba(**cfg)


def test_vim_ti_parameter_count():
    with torch.device("meta"):
        model = vim_ti(n_out=1000)
    assert sum(p.numel() for p in model.parameters()) == 7_148_008  # Vim-Ti, 1000 classes
    assert model.num_features == 192 and len(model.layers) == 24
    assert model.pos_embed.shape == (1, 14 * 14 + 1, 192)  # Vim's 224² table, CLS entry included
    with torch.device("meta"):
        model32 = vim_ti(n_out=1000, patch_size=32)
    # patch conv grows by (32² − 16²)·3·192, the table shrinks from 197 to 7² + 1 entries
    assert sum(p.numel() for p in model32.parameters()) == 7_148_008 + 768 * 3 * 192 - 147 * 192


def test_multiscale_is_two_streams_and_a_head_on_both_cls_tokens():
    with torch.device("meta"):
        model = vim_ti_multiscale(n_out=4)
    assert [s.patch_size for s in model.streams] == [16, 32]
    assert model.num_features == 384 and model.head.in_features == 384
    backbone = [sum(p.numel() for p in s.parameters()) for s in model.streams]
    assert sum(p.numel() for p in model.parameters()) == sum(backbone) + 384 * 4 + 4


def test_block_is_residual_plus_bimamba_mixer_on_rmsnorm():
    torch.manual_seed(0)
    block = VimBlock(16, d_state=4)
    assert isinstance(block.mixer, BiMambaMixer)
    with torch.no_grad():
        block.norm.weight.uniform_(0.5, 1.5)
    mixer = BiMambaMixer(16, d_state=4)
    mixer.load_state_dict(block.mixer.state_dict())
    x = torch.randn(2, 23, 16)
    normed = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * block.norm.weight
    torch.testing.assert_close(block(x), x + mixer(normed), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("chunk", [13, 50])
def test_streaming_equals_one_shot(chunk):
    """Chunked scan with carried state (under per-block checkpointing) = one pass, values and grads."""
    model = _tiny(depth=1)
    x = torch.randn(1, 3, 56, 72)  # 7×9 tokens + CLS = 64
    results = []
    for c in (None, chunk):
        model.zero_grad()
        model.chunk_size = c
        out = model(x)
        (out * torch.tensor([1.0, -2.0])).sum().backward()
        results.append((out.detach(), [p.grad.clone() for p in model.parameters()]))
    (o1, g1), (o2, g2) = results
    print("max |diff|", (o1 - o2).abs().max().item())
    torch.testing.assert_close(o1, o2, rtol=1e-5, atol=1e-6)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_checkpointing_gives_the_same_output_and_gradients():
    model = _tiny()
    x = torch.randn(1, 3, 40, 48)
    results = []
    for ckpt in (True, False):
        model.zero_grad()
        model.set_grad_checkpointing(ckpt)
        out = model(x)
        out.sum().backward()
        results.append((out.detach(), [p.grad.clone() for p in model.parameters()]))
    torch.testing.assert_close(results[0][0], results[1][0])
    for a, b in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(a, b)


def test_auto_checkpointing_only_above_the_token_threshold(monkeypatch):
    """``checkpointing="auto"`` (the default) recomputes the blocks in backward only for inputs of
    more than ``UNCHECKPOINTED_TOKENS`` tokens, batch and CLS included, and never without
    gradients; both paths give the same output and gradients (a demo slide at 0.625x is 16–25
    tokens and trains without recomputation, a slide at 2.5x is 10^4–10^5 tokens and keeps it)."""
    import baselines.vim as vim

    with torch.device("meta"):
        full = vim_ti(n_out=2)
    assert full.checkpointing == "auto" and vim.UNCHECKPOINTED_TOKENS == 2048
    assert not full.checkpoints(2048) and full.checkpoints(2049)
    # 3x4 tokens + CLS = 13 per sample, 26 in the batch; depth 2
    check_auto_checkpointing(monkeypatch, vim, _tiny(), torch.randn(2, 3, 24, 32), tokens=26, depth=2)
    with pytest.raises(ValueError, match="checkpointing"):
        VisionMamba(checkpointing="yes")


def test_cls_token_sits_mid_sequence_and_is_what_the_head_reads():
    """Changing only the first token changes the output; so does the last: the CLS in the
    middle reads both directions. With a single block, a one-directional scan would not see one
    of the ends."""
    model = _tiny(depth=1).eval()
    x = torch.randn(1, 3, 32, 32)  # 4×4 tokens
    with torch.no_grad():
        base = model.forward_features(x)
        for corner in ((slice(0, 8), slice(0, 8)), (slice(24, 32), slice(24, 32))):
            y = x.clone()
            y[:, :, corner[0], corner[1]] += 3.0
            assert not torch.allclose(model.forward_features(y), base)


def test_positions_keep_the_pretrained_table_at_its_own_grid_and_resize_per_axis():
    model = _tiny()
    n = model.pos_grid**2
    table = model.pos_embed[0]
    same = model.positions(4, 4)[0]
    torch.testing.assert_close(same, torch.cat([table[: n // 2], table[n // 2 + 1:]]))
    assert model.positions(6, 11).shape == (1, 66, 16)


@pytest.mark.parametrize("factory", [
    lambda: _tiny(),
    lambda: VimMultiScale(num_classes=2, patch_sizes=(8, 16), embed_dim=16, depth=2, d_state=4,
                          pos_grid=4, chunk_size=None),
], ids=["vim", "vim-16+32"])
def test_non_square_slide_finite_and_every_parameter_learns(factory):
    model = factory()
    x = torch.randn(1, 3, 96, 160)
    out = model(x)
    assert out.shape == (1, 2) and torch.isfinite(out).all()
    out.sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing
    model.reset_classifier(0)
    assert model(x).shape == (1, model.num_features)


def test_partial_patches_are_tokens_and_the_grid_keeps_the_aspect_ratio():
    model = _tiny()
    tok, h, w = model.tokens(torch.randn(1, 3, 90, 155))
    assert (h, w) == (12, 20) and tok.shape == (1, 240, 16)


def test_masked_pixels_are_left_out_of_the_sequence():
    """Fully masked patches are dropped: their content cannot matter, and a batch of two differently
    masked canvases gives each slide's own result."""
    model = _tiny().eval()
    x = torch.randn(2, 3, 48, 64)
    mask = torch.zeros(2, 48, 64, dtype=torch.bool)
    mask[0, :, 40:] = True  # slide 0 is 48×40 on the canvas
    y = x.clone()
    y[0, :, :, 40:] = 7.0
    with torch.no_grad():
        a, b = model(x, mask), model(y, mask)
        torch.testing.assert_close(a, b)
        torch.testing.assert_close(a[1:], model(x[1:]))  # an unmasked sample is unaffected


def test_vim_trains_on_a_tiny_task():
    """The toy task (tests/helpers/toy_task.py): the loss must go down."""
    losses = toy_losses(_tiny(depth=1), lr=1e-2)
    assert losses[-1] < 0.5 * losses[0]
