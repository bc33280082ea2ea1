"""Token Expansion and Region Fusion against small cases worked out by hand."""

from __future__ import annotations

import pytest
import torch

from pixelmamba.configs import TokenExpansionSpec
from pixelmamba.layers import merge_count, region_fusion, shift_merge, token_expansion

# One region, 2x4 tokens of 1 channel:      0 1 2 3
#                                           4 5 6 7
X = torch.arange(8.0).view(1, 1, 2, 4, 1)
ALL = torch.ones(1, 1, 2, 4, dtype=torch.bool)
CLS = torch.tensor([[[7.0]]])


def grid(t: torch.Tensor) -> list:
    return t[0, 0].squeeze(-1).tolist() if t.shape[-1] == 1 else t[0, 0].tolist()


def test_shift_merge_by_hand() -> None:
    # horizontal: each token averaged with its left neighbour, zero left of column 0
    assert grid(shift_merge(X, "h")) == [[0.0, 0.5, 1.5, 2.5], [2.0, 4.5, 5.5, 6.5]]
    # vertical: each token averaged with the one above, zero above row 0
    assert grid(shift_merge(X, "v")) == [[0.0, 0.5, 1.0, 1.5], [2.0, 3.0, 4.0, 5.0]]


@pytest.mark.parametrize(
    "axis, join, expected, cls",
    [
        # shift-merged rows [0 .5 1.5 2.5], [2 4.5 5.5 6.5]; pairs (0,1), (2,3) along the width
        ("h", "cat", [[[0.0, 0.5], [1.5, 2.5]], [[2.0, 4.5], [5.5, 6.5]]], [7.0, 7.0]),
        ("h", "avg", [[0.25, 2.0], [3.25, 6.0]], [7.0]),
        # shift-merged columns; the pair is (row 0, row 1), row 0 first in the channels
        ("v", "cat", [[[0.0, 2.0], [0.5, 3.0], [1.0, 4.0], [1.5, 5.0]]], [7.0, 7.0]),
        ("v", "avg", [[1.0, 1.75, 2.5, 3.25]], [7.0]),
    ],
)
def test_token_expansion_by_hand(axis: str, join: str, expected: list, cls: list) -> None:
    out, out_cls, valid = token_expansion(X, CLS, ALL, TokenExpansionSpec(axis, join))  # type: ignore[arg-type]
    assert grid(out) == expected
    assert out_cls.view(-1).tolist() == cls  # CLS joined with itself: duplicated or unchanged
    assert valid.all() and valid.shape == out.shape[:-1]


def test_token_expansion_ignores_padding() -> None:
    """Last column is padding (zero): the avg of (real, pad) is the real token, a cat keeps the
    pad half at zero, and the joined token is real."""
    x = X.clone()
    x[..., 3, :] = 0
    valid = ALL.clone()
    valid[..., 3] = False
    out, _, v = token_expansion(x, CLS, valid, TokenExpansionSpec("h", "avg"))
    # shift-merged: [0 .5 1.5 (1.0 pad)], [2 4.5 5.5 (3.0 pad)]
    assert grid(out) == [[0.25, 1.5], [3.25, 5.5]]
    assert v.all()
    out, _, _ = token_expansion(x, CLS, valid, TokenExpansionSpec("h", "cat"))
    assert grid(out) == [[[0.0, 0.5], [1.5, 0.0]], [[2.0, 4.5], [5.5, 0.0]]]


def test_token_expansion_rejects_odd_sides() -> None:
    with pytest.raises(ValueError, match="even token height"):
        token_expansion(torch.zeros(1, 1, 3, 2, 1), CLS, torch.ones(1, 1, 3, 2, dtype=torch.bool),
                        TokenExpansionSpec("v", "cat"))


@pytest.mark.parametrize(
    "n0, alpha, depth, n_now, k",
    [
        (6, 0.8, 24, 6, 1),  # ceil(0.2)
        (100, 0.8, 24, 100, 4),  # ceil(3.33)
        (100, 0.8, 24, 5, 2),  # capped at one merge per probe (5 // 2)
        (300, 0.4, 24, 300, 5),
        (1, 0.8, 24, 1, 0),  # a single region is never merged away
        (2, 1.0, 24, 2, 1),
        (6, 0.0, 24, 6, 0),
    ],
)
def test_merge_count(n0: int, alpha: float, depth: int, n_now: int, k: int) -> None:
    assert merge_count(n0, alpha, depth, n_now) == k


def _regions(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Region i holds tokens 10*i + (0, 1, 2, 3) on a 2x2 grid."""
    tokens = (10.0 * torch.arange(n).view(n, 1, 1) + torch.arange(4.0).view(1, 2, 2)).view(1, n, 2, 2, 1)
    return tokens, torch.ones(1, n, 2, 2, dtype=torch.bool)


# gallery = even positions (0, 2, 4), probe = odd (1, 3, 5)
CLS6 = torch.tensor([[
    [1.0, 0.0, 0.0],  # g0
    [0.0, 0.1, 1.0],  # p1: best g4, cos 0.995
    [0.0, 1.0, 0.0],  # g2
    [1.0, 0.2, 0.0],  # p3: best g0, cos 0.981
    [0.0, 0.0, 1.0],  # g4
    [-1.0, -1.0, 0.2],  # p5: best g4, cos 0.14
]])


def test_region_fusion_merges_most_similar_pairs() -> None:
    tokens, valid = _regions(6)
    out, cls, v = region_fusion(tokens, CLS6, valid, k=2)
    # p1 -> g4 and p3 -> g0 merge (averaged); g2 and p5 stay; scan order is kept.
    assert out[0, :, 0, 0, 0].tolist() == [15.0, 20.0, 25.0, 50.0]
    assert out[0, 0].view(-1).tolist() == [15.0, 16.0, 17.0, 18.0]
    torch.testing.assert_close(cls[0, 0], (CLS6[0, 0] + CLS6[0, 3]) / 2)
    torch.testing.assert_close(cls[0, 2], (CLS6[0, 4] + CLS6[0, 1]) / 2)
    assert v.shape == (1, 4, 2, 2) and v.all()


def test_region_fusion_group_average_and_gradient() -> None:
    """k = 3: p5's best is also g4, so g4, p1 and p5 are averaged together."""
    tokens, valid = _regions(6)
    tokens.requires_grad_(True)
    out, _, _ = region_fusion(tokens, CLS6, valid, k=3)
    assert out[0, :, 0, 0, 0].tolist() == pytest.approx([15.0, 20.0, (40 + 10 + 50) / 3])
    out.sum().backward()
    assert tokens.grad[0, :, 0, 0, 0].tolist() == pytest.approx([0.5, 1 / 3, 1, 0.5, 1 / 3, 1 / 3])


def test_region_fusion_never_below_one_region() -> None:
    tokens, valid = _regions(2)
    out, _, _ = region_fusion(tokens, CLS6[:, :2], valid, k=1)
    assert out.shape[1] == 1
    with pytest.raises(ValueError, match="cannot merge"):
        region_fusion(tokens, CLS6[:, :2], valid, k=2)
    one, _, _ = region_fusion(tokens[:, :1], CLS6[:, :1], valid[:, :1], k=0)
    assert one.shape[1] == 1


def test_region_fusion_keeps_padding_away_from_real_regions() -> None:
    """R1 and R2 are padding-only. The pad pair (R1, R2) merges first; at k = 2, R3 merges
    with real R0 although its CLS equals pad R2's exactly (cos 1)."""
    tokens, valid = _regions(4)
    valid[:, 1:3] = False
    tokens[~valid] = 0
    cls = torch.tensor([[[1.0, 0.1], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0]]])
    out, _, v = region_fusion(tokens, cls, valid, k=1)
    assert v.flatten(2).any(-1).tolist() == [[True, False, True]]  # R0, R2(+R1), R3
    assert torch.equal(out[:, 0], tokens[:, 0]) and torch.equal(out[:, 2], tokens[:, 3])
    out, _, v = region_fusion(tokens, cls, valid, k=2)
    assert v.flatten(2).any(-1).tolist() == [[True, False]]
    assert out[0, 0].view(-1).tolist() == [15.0, 16.0, 17.0, 18.0]  # (R0 + R3) / 2, no padding


def test_region_fusion_forced_padding_merge_leaves_real_region_unchanged() -> None:
    tokens, valid = _regions(2)
    valid[:, 1] = False
    tokens[:, 1] = 0
    cls = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])
    out, out_cls, v = region_fusion(tokens, cls, valid, k=1)
    assert torch.equal(out, tokens[:, :1]) and torch.equal(out_cls, cls[:, :1]) and v.all()


def test_region_fusion_partial_regions_average_real_tokens_only() -> None:
    """A partly padded region (edge of the image) merged with a full one: tokens real in both
    are averaged, tokens real in one only keep that one's value."""
    tokens, valid = _regions(2)
    valid[0, 0, :, 1] = False  # right column of R0 is padding
    tokens[~valid] = 0
    cls = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])
    out, _, v = region_fusion(tokens, cls, valid, k=1)
    # R0 = [[0, pad], [2, pad]], R1 = [[10, 11], [12, 13]]
    assert out[0, 0].view(-1).tolist() == [5.0, 11.0, 7.0, 13.0]
    assert v.all()


@pytest.mark.parametrize("spec", [None, TokenExpansionSpec("h", "cat"), TokenExpansionSpec("v", "avg"),
                                  TokenExpansionSpec("v", "cat")])
@pytest.mark.parametrize("k", [0, 3])
@pytest.mark.parametrize("chunk", [1, 150, 1 << 20])
def test_fuse_and_expand_equals_fusion_then_expansion(spec, k, chunk, monkeypatch) -> None:
    """The lean, group-by-group path against the two functions composed by autograd: same
    tokens, CLS, validity and input gradient, on two slides with padding and padding-only regions,
    with groups cut into slabs of one row or column (chunk 1 byte), of two or three (150 bytes:
    rows of 6 tokens and columns of 4, 3 channels, one or two members), or whole groups of
    several output regions."""
    import pixelmamba.layers as layers

    monkeypatch.setattr(layers, "FUSE_CHUNK_BYTES", chunk)
    torch.manual_seed(0)
    tokens = torch.randn(2, 7, 4, 6, 3, dtype=torch.float64)
    valid = torch.rand(2, 7, 4, 6) > 0.3
    valid[1, 2:4] = False  # padding-only regions
    tokens = (tokens * valid[..., None]).requires_grad_(True)
    cls = torch.randn(2, 7, 3, dtype=torch.float64)
    ref, ref_cls, ref_valid = region_fusion(tokens, cls, valid, k) if k else (tokens, cls, valid)
    if spec is not None:
        ref, ref_cls, ref_valid = token_expansion(ref, ref_cls, ref_valid, spec)
    weight = torch.randn(ref.shape, dtype=torch.float64)
    (g_ref,) = torch.autograd.grad((ref * weight).sum(), tokens)
    out, out_cls, out_valid = layers.fuse_and_expand(tokens, cls, valid, k, spec, torch.float64)
    (g,) = torch.autograd.grad((out * weight).sum(), tokens)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out_cls, ref_cls, rtol=1e-12, atol=1e-12)
    assert torch.equal(out_valid, ref_valid)
    torch.testing.assert_close(g, g_ref, rtol=1e-12, atol=1e-12)
