"""Thumbnails of the tissue mask and the patch grid, so a user can look before trusting features.

One PNG per slide: the slide thumbnail on the left with the mask's outline and tinted tissue, and
the same thumbnail on the right with every kept patch drawn as a square. Cheap (thumbnail scale
only), so ``bench extract --visualize`` can write them for every slide.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage as ndi

from feature_cache.slide import Slide, open_slide
from feature_cache.tissue import patch_grid, patch_size_level0, segment_tissue

__all__ = ["render_overview", "write_overview"]

log = logging.getLogger(__name__)


def render_overview(thumb: np.ndarray, mask: np.ndarray, coords: np.ndarray, side0: int,
                    downsample: float) -> Image.Image:
    """Side-by-side RGB image: tinted mask with outline | kept patches as squares."""
    h, w = mask.shape
    base = Image.fromarray(np.ascontiguousarray(thumb[:h, :w])).convert("RGB")
    if base.size != (w, h):
        base = base.resize((w, h))
    arr = np.asarray(base).astype(np.float32)
    tint = arr.copy()
    tint[mask] = 0.6 * tint[mask] + 0.4 * np.array([0, 200, 0], np.float32)
    edge = mask & ~ndi.binary_erosion(mask, iterations=max(1, round(min(h, w) / 400)))
    tint[edge] = (0, 120, 0)
    left = Image.fromarray(tint.astype(np.uint8))
    right = base.copy()
    draw = ImageDraw.Draw(right)
    s = side0 / downsample
    for x, y in np.asarray(coords, dtype=np.float64):
        x0, y0 = x / downsample, y / downsample
        draw.rectangle([x0, y0, x0 + s - 1, y0 + s - 1], outline=(0, 0, 255))
    out = Image.new("RGB", (2 * w + 8, h), (255, 255, 255))
    out.paste(left, (0, 0))
    out.paste(right, (w + 8, 0))
    return out


def write_overview(slide: Slide | str | os.PathLike, out_png: str | os.PathLike,
                   patch_size: int = 256, magnification: float = 20.0, min_tissue: float = 0.5,
                   mpp: float | None = None, backend: str = "auto") -> Path:
    """Segment, grid and write the overview PNG of one slide (atomically); returns its path.
    ``mpp`` and ``backend`` open a slide given by path (:func:`~feature_cache.slide.open_slide`)."""
    own = not isinstance(slide, Slide)
    s = open_slide(slide, backend=backend, mpp=mpp) if own else slide
    try:
        mask, ds = segment_tissue(s)
        coords = patch_grid(s, mask, ds, patch_size, magnification, min_tissue)
        side0 = patch_size_level0(s, patch_size, magnification)
        thumb = np.asarray(s.get_thumbnail((mask.shape[1], mask.shape[0])))
    finally:
        if own:
            s.close()
    img = render_overview(thumb, mask, coords, side0, ds)
    out = Path(out_png)
    from feature_cache.io import atomic_path

    with atomic_path(out, suffix=".tmp.png") as tmp:
        img.save(tmp)
    log.info("%s: %d patches; overview written to %s", s.path, len(coords), out)
    return out
