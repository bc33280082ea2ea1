"""Whole-slide serialization: zigzag order, CLS placement, padding, and the inverses."""

from __future__ import annotations

import pytest
import torch

from pixelmamba.serialize import (
    cls_position,
    deserialize,
    image_to_regions,
    regions_to_image,
    serial_order,
    serialize,
    zigzag_indices,
)

# A 4x4 image, window 2, pixel (y, x) numbered y*4 + x:
#
#    0  1 |  2  3        regions, in zigzag order:   R0 R1
#    4  5 |  6  7                                    R3 R2
#   ------+------
#    8  9 | 10 11        inside a region: row 0 left→right, row 1 right→left,
#   12 13 | 14 15        CLS (-1) after h*w // 2 = 2 tokens.
HAND_4x4_W2 = [
    0, 1, -1, 5, 4,  # R0 (top-left)
    2, 3, -1, 7, 6,  # R1 (top-right)
    10, 11, -1, 15, 14,  # R2 (bottom-right: second region row runs right to left)
    8, 9, -1, 13, 12,  # R3 (bottom-left)
]


def test_zigzag_order_hand_drawn_4x4() -> None:
    assert serial_order(4, 4, 2).tolist() == HAND_4x4_W2


def test_serialize_reads_pixels_in_hand_order() -> None:
    """The same order through the tensors the network uses (values = pixel numbers)."""
    image = torch.arange(16.0).view(1, 1, 4, 4)
    tokens, _ = image_to_regions(image, 2)
    cls = torch.full((1, 4, 1), -1.0)
    assert serialize(tokens, cls).view(-1).long().tolist() == HAND_4x4_W2


def test_zigzag_indices_small() -> None:
    assert zigzag_indices(2, 3).tolist() == [0, 1, 2, 5, 4, 3]
    assert zigzag_indices(3, 1).tolist() == [0, 1, 2]


@pytest.mark.parametrize("h, w, mid", [(2, 2, 2), (3, 3, 4), (1, 1, 0), (224, 224, 25088)])
def test_cls_in_the_middle(h: int, w: int, mid: int) -> None:
    assert cls_position(h, w) == mid
    seq = serialize(torch.zeros(1, 1, h, w, 1), torch.ones(1, 1, 1)).view(-1)
    assert seq.nonzero().view(-1).tolist() == [mid]


@pytest.mark.parametrize("H, W, window", [(4, 4, 2), (64, 96, 32), (448, 672, 224)])
def test_length_is_pixels_plus_regions(H: int, W: int, window: int) -> None:
    n = (H // window) * (W // window)
    assert serial_order(H, W, window).numel() == H * W + n


def test_padding_is_marked_and_zero() -> None:
    """3x5 image, window 2: padded to 4x6, 6 regions; padding is -2 in the order and False in
    ``valid``; every real pixel appears exactly once."""
    order = serial_order(3, 5, 2)
    assert order.numel() == 4 * 6 + 6
    assert (order == -1).sum() == 6
    assert (order == -2).sum() == 4 * 6 - 15
    assert sorted(order[order >= 0].tolist()) == list(range(15))
    x = torch.randn(2, 3, 3, 5)
    tokens, valid = image_to_regions(x, 2)
    assert tokens.shape == (2, 6, 2, 2, 3) and valid.shape == (2, 6, 2, 2)
    assert valid.sum() == 2 * 15
    assert (tokens[~valid] == 0).all()
    # The region holding the bottom-right corner pixel (2, 4) has only that pixel real:
    # region grid 2x3, zigzag → row 1 runs right to left, so region (1, 2) is the 4th (index 3).
    assert valid[0, 3].tolist() == [[True, False], [False, False]]


def test_user_mask_marks_padding() -> None:
    x = torch.randn(1, 3, 4, 4)
    mask = torch.ones(1, 4, 4, dtype=torch.bool)
    mask[:, :, 2:] = False  # right half is padding: regions R1 and R2
    tokens, valid = image_to_regions(x, 2, mask)
    assert valid.flatten(2).any(-1).tolist() == [[True, False, False, True]]
    assert (tokens[:, 1:3] == 0).all()


@pytest.mark.parametrize("H, W, window", [(4, 4, 2), (70, 100, 32), (32, 32, 32)])
def test_round_trip(H: int, W: int, window: int) -> None:
    x = torch.randn(2, 3, H, W)
    tokens, valid = image_to_regions(x, window)
    n_rows, n_cols = -(-H // window), -(-W // window)
    assert torch.equal(regions_to_image(tokens, n_rows, n_cols, H, W), x)
    cls = torch.randn(2, tokens.shape[1], 3)
    seq = serialize(tokens, cls)
    assert seq.shape == (2, n_rows * n_cols * (window * window + 1), 3)
    back, back_cls = deserialize(seq, tokens.shape[1], window, window)
    assert torch.equal(back, tokens) and torch.equal(back_cls, cls)


def test_deserialize_rejects_wrong_length() -> None:
    with pytest.raises(ValueError, match="not 2 regions"):
        deserialize(torch.zeros(1, 9, 3), 2, 2, 2)
