"""Whole-slide serialization of Pixel-Mamba (paper Sec. 3.2, Fig. 2a).

The image is cut into ``n`` square regions of the scan window (224 by default). Inside a region,
pixels are read in zigzag (boustrophedon) order: row 0 left to right, row 1 right to left, and so
on, so that consecutive tokens are always spatial neighbours. The region's CLS token is inserted in
the middle of its local sequence (after ``h*w // 2`` tokens, as Vim places its middle CLS), giving
``h*w + 1`` tokens per region. Regions follow each other in the same zigzag order over the region
grid, so the whole image is one sequence of ``H*W + n`` tokens (for sides that are multiples of the
window).

Between Mamba blocks the network keeps tokens as a region grid ``(B, n, h, w, C)`` plus the CLS
tokens ``(B, n, C)``, where the region axis is already in zigzag scan order: Token Expansion and
Region Fusion are per-region operations that want the grid, and only the Mamba block wants the
sequence. ``serialize``/``deserialize`` convert between the two for every block.

Padding (a choice the paper leaves open): sides that are not multiples of the window are padded
at the bottom and right with zeros — the ImageNet mean colour once the input is normalized — and a
boolean ``valid`` grid ``(B, n, h, w)`` marks the real pixels. The padded tokens are still read by
the scan (a sequence cannot skip steps without changing the mixer), but the network keeps them at
zero outside the Mamba block and leaves them out of Region Fusion's averages and of the final
average, so they act like the blank border the paper's own shift-merge pads with.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def region_grid(height: int, width: int, window: int) -> tuple[int, int]:
    """Regions per column and per row: the padded image is ``rows*window × cols*window``."""
    if height < 1 or width < 1:
        raise ValueError(f"image must be at least 1x1, got {height}x{width}")
    return math.ceil(height / window), math.ceil(width / window)


def zigzag_indices(rows: int, cols: int, device: torch.device | None = None) -> Tensor:
    """Row-major flat indices of a ``rows × cols`` grid in boustrophedon order.

    ``zigzag_indices(2, 3)`` is ``[0, 1, 2, 5, 4, 3]``. The permutation is its own inverse
    (reversing a row twice is the identity), which ``deserialize`` relies on.
    """
    idx = torch.arange(rows * cols, device=device).view(rows, cols)
    idx[1::2] = idx[1::2].flip(1)
    return idx.reshape(-1)


def image_to_regions(x: Tensor, window: int, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Cut ``x (B, C, H, W)`` into regions in zigzag region order.

    Returns ``tokens (B, n, window, window, C)`` (pixel grid per region, not yet zigzagged: that is
    ``serialize``'s job) and ``valid (B, n, window, window)``, False on padding. ``mask (B, H, W)``,
    if given, marks further pixels as padding (e.g. several slides padded to one canvas).
    """
    B, C, H, W = x.shape
    n_rows, n_cols = region_grid(H, W, window)
    pad_h, pad_w = n_rows * window - H, n_cols * window - W
    if mask is None:
        valid = torch.ones(B, H, W, dtype=torch.bool, device=x.device)
    else:
        if mask.shape != (B, H, W):
            raise ValueError(f"mask must be (B, H, W) = {(B, H, W)}, got {tuple(mask.shape)}")
        valid = mask.bool()
        x = x * valid[:, None]
    if pad_h or pad_w:  # zeros outside the image; each copy of a slide costs 12 bytes/pixel
        x = F.pad(x, (0, pad_w, 0, pad_h))  # (B, C, Hp, Wp)
        valid = F.pad(valid, (0, pad_w, 0, pad_h))  # (B, Hp, Wp)
    order = zigzag_indices(n_rows, n_cols, x.device)
    rows, cols = order // n_cols, order % n_cols
    # One gather straight from a view: (B, n_rows, n_cols, s, s, C) indexed by (row, col) pairs.
    tokens = x.view(B, C, n_rows, window, n_cols, window).permute(0, 2, 4, 3, 5, 1)[:, rows, cols]
    valid = valid.view(B, n_rows, window, n_cols, window).permute(0, 1, 3, 2, 4)[:, rows, cols]
    return tokens, valid


def regions_to_image(
    tokens: Tensor, n_rows: int, n_cols: int, height: int | None = None, width: int | None = None
) -> Tensor:
    """Inverse of ``image_to_regions``: ``(B, n, h, w, C)`` → ``(B, C, n_rows*h, n_cols*w)``,
    cropped to ``height × width`` when given. Works at any layer's token grid (one pixel per
    token only at layer 1), which makes it useful for looking at intermediate token maps."""
    B, n, h, w, C = tokens.shape
    if n != n_rows * n_cols:
        raise ValueError(f"{n} regions cannot fill a {n_rows}x{n_cols} region grid")
    order = zigzag_indices(n_rows, n_cols, tokens.device)
    tokens = tokens[:, order]  # zigzag is an involution: back to row-major regions
    image = tokens.view(B, n_rows, n_cols, h, w, C).permute(0, 5, 1, 3, 2, 4)
    image = image.reshape(B, C, n_rows * h, n_cols * w)
    return image[:, :, : height or n_rows * h, : width or n_cols * w]


def cls_position(h: int, w: int) -> int:
    """Index of the CLS token inside a region's ``h*w + 1`` sequence (the middle)."""
    return (h * w) // 2


def serialize(tokens: Tensor, cls: Tensor) -> Tensor:
    """Region grids ``(B, n, h, w, C)`` + CLS ``(B, n, C)`` → one sequence ``(B, n*(h*w+1), C)``."""
    B, n, h, w, C = tokens.shape
    mid = cls_position(h, w)
    flat = tokens.reshape(B, n, h * w, C)[:, :, zigzag_indices(h, w, tokens.device)]  # (B, n, hw, C)
    seq = torch.cat([flat[:, :, :mid], cls[:, :, None].to(flat.dtype), flat[:, :, mid:]], dim=2)
    return seq.reshape(B, n * (h * w + 1), C)  # (B, L, C)


def deserialize(seq: Tensor, n: int, h: int, w: int) -> tuple[Tensor, Tensor]:
    """Inverse of ``serialize``: ``(B, L, C)`` → tokens ``(B, n, h, w, C)``, CLS ``(B, n, C)``."""
    B, L, C = seq.shape
    if L != n * (h * w + 1):
        raise ValueError(f"sequence of {L} tokens is not {n} regions of {h}x{w} tokens + CLS")
    mid = cls_position(h, w)
    seq = seq.view(B, n, h * w + 1, C)
    cls = seq[:, :, mid]  # (B, n, C)
    flat = torch.cat([seq[:, :, :mid], seq[:, :, mid + 1 :]], dim=2)  # (B, n, hw, C) zigzag
    tokens = flat[:, :, zigzag_indices(h, w, seq.device)].view(B, n, h, w, C)
    return tokens, cls


def serial_order(height: int, width: int, window: int) -> Tensor:
    """Which pixel sits at each position of the layer-1 sequence: ``y*width + x`` for pixels,
    -1 for CLS tokens, -2 for padding. For documentation and tests; runs the real code path on an
    image whose values are pixel indices (shifted by 2 so that padding is 0 and CLS is 1)."""
    index = torch.arange(height * width, dtype=torch.float64).view(1, 1, height, width) + 2
    tokens, _ = image_to_regions(index, window)
    cls = torch.ones(1, tokens.shape[1], 1, dtype=torch.float64)
    return serialize(tokens, cls).view(-1).long() - 2
