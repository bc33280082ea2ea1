"""Tissue segmentation at thumbnail scale and the patch grid at a physical resolution.

Tissue: Otsu on HSV saturation (stained tissue is saturated, glass and background are not; CLAM
and TRIDENT's classical path do the same) after removing marker ink and near-black artefacts,
floored at an absolute saturation so an empty slide
gives an empty mask instead of Otsu splitting scanner noise; then closing/opening, tiny fragments
dropped and small holes filled, with sizes in um^2 so they mean the same at any thumbnail scale.

Grid: patch size is given in pixels *at the target magnification*, converted to level-0 pixels
through the slide's mpp (never through the pyramid level: a TCGA level 0 is 40x on some slides and
20x on others).
"""

from __future__ import annotations

import logging

import numpy as np
from scipy import ndimage as ndi

from feature_cache.slide import Slide, mag_to_mpp

__all__ = ["segment_tissue", "tissue_mask_from_rgb", "patch_grid", "patch_size_level0",
           "tissue_fractions"]

log = logging.getLogger(__name__)

ASSUMED_MPP = 0.5  # only for sizing morphology when a slide has no mpp; never for the grid


def _disk(radius: int) -> np.ndarray:
    r = max(int(radius), 0)
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    return (xx * xx + yy * yy) <= r * r


def _saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation in 0..255 (float32), computed directly to avoid a full HSV conversion."""
    rgb = rgb.astype(np.float32)
    mx = rgb.max(axis=-1)
    mn = rgb.min(axis=-1)
    return np.where(mx > 0, (mx - mn) / np.maximum(mx, 1e-6) * 255.0, 0.0).astype(np.float32)


def _hue_deg(rgb: np.ndarray) -> np.ndarray:
    """HSV hue in degrees (0..360), float32."""
    r, g, b = (rgb[..., i].astype(np.float32) for i in range(3))
    mx = np.maximum(np.maximum(r, g), b)
    d = mx - np.minimum(np.minimum(r, g), b)
    safe = np.maximum(d, 1e-6)
    h = np.where(mx == r, ((g - b) / safe) % 6.0,
                 np.where(mx == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0))
    return np.where(d > 0, h * 60.0, 0.0).astype(np.float32)


# Red pen: the RGB boxes of python-wsi-preprocessing's ``filter_red_pen`` (also histolab's
# ``RedPenFilter``): a pixel is red ink when R > r, G < g and B < b for any (r, g, b) below.
# Eosin keeps G and B far higher (pink ~ (225, 140, 185)); haemorrhage (dense red cells) can fall in
# the deepest boxes and is then dropped with the ink -- little diagnostic tissue is lost that way.
RED_PEN_RGB = ((150, 80, 90), (110, 20, 30), (185, 65, 105), (195, 85, 125), (220, 115, 145),
               (125, 40, 70), (200, 120, 150), (100, 50, 65), (85, 25, 45))


def _local_std(x: np.ndarray, size: int = 3) -> np.ndarray:
    mean = ndi.uniform_filter(x, size=size)
    return np.sqrt(np.maximum(ndi.uniform_filter(x * x, size=size) - mean * mean, 0.0))


def _stain_hued_ink(rgb: np.ndarray, *, purple_min_sat: float = 150.0,
                    purple_max_std: float = 6.0) -> np.ndarray:
    """Red and purple marker ink: the colours of the stains, so colour alone is not enough.

    * red ink: the published red-pen RGB boxes (:data:`RED_PEN_RGB`): red far above green and
      blue, which eosin never is;
    * purple/violet ink: hue 250-320 deg like haematoxylin, but far more saturated (HSV
      saturation >= ``purple_min_sat``/255, where stained tissue at thumbnail scale, nuclei mixed
      with pink stroma, stays below ~0.55) *and* flat: the 3x3 local standard deviation of the
      brightest channel is below ``purple_max_std`` (marker ink is a uniform film, tissue is
      textured). Both must hold, so densely nuclear tissue is kept.
    """
    r, g, b = (rgb[..., i].astype(np.float32) for i in range(3))
    red = np.zeros(r.shape, bool)
    for tr, tg, tb in RED_PEN_RGB:
        red |= (r > tr) & (g < tg) & (b < tb)
    hue = _hue_deg(rgb)
    mx = np.maximum(np.maximum(r, g), b)
    purple = ((hue >= 250.0) & (hue <= 320.0) & (_saturation(rgb) >= purple_min_sat)
              & (_local_std(mx) < purple_max_std))
    return red | purple


def artefact_mask(rgb: np.ndarray, *, max_dark: float = 60.0) -> np.ndarray:
    """Pixels that are ink or scanner artefacts rather than H&E tissue.

    H&E stains sit on the red side of the hue circle: eosin pink (~330-360 deg and 0-20 deg) and
    haematoxylin purple (~260-300 deg); even dense nuclei keep red above green. Blue and green
    marker ink is hue 75-245 deg with red well below blue (blue ink) or green above red (green
    ink). Black ink, out-of-focus debris and the dark border some scanners leave are near black
    (max channel below ``max_dark``), where saturation is pure noise. Red and purple ink: see
    :func:`_stain_hued_ink`.
    """
    r, g, b = (rgb[..., i].astype(np.float32) for i in range(3))
    hue = _hue_deg(rgb)
    inked = (hue >= 75.0) & (hue <= 245.0) & ((r < 0.75 * b) | (g > r + 10.0))
    dark = np.maximum(np.maximum(r, g), b) < max_dark
    return inked | dark | _stain_hued_ink(rgb)


def _otsu(values: np.ndarray) -> float:
    from skimage.filters import threshold_otsu

    if values.size == 0 or float(values.max() - values.min()) < 1e-6:
        return float("inf")  # uniform image: nothing to separate
    return float(threshold_otsu(values))


def _drop_small(mask: np.ndarray, min_px: float) -> np.ndarray:
    lab, n = ndi.label(mask)
    if n == 0:
        return mask
    sizes = np.bincount(lab.ravel())
    keep = sizes >= min_px
    keep[0] = False
    return keep[lab]


def _fill_small_holes(mask: np.ndarray, max_px: float) -> np.ndarray:
    lab, n = ndi.label(~mask)
    if n == 0:
        return mask
    sizes = np.bincount(lab.ravel())
    border = np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))
    fill = sizes <= max_px
    fill[0] = False
    fill[border] = False  # background connected to the edge is never a hole
    return mask | fill[lab]


def segment_tissue(
    slide: Slide,
    *,
    min_downsample: float = 8.0,
    max_side: int = 2048,
    min_saturation: float = 20.0,
    max_dark: float = 60.0,
    smooth_um: float = 8.0,
    min_fragment_um2: float = 10_000.0,
    max_hole_um2: float = 10_000.0,
) -> tuple[np.ndarray, float]:
    """Tissue mask at thumbnail scale and its downsample (level-0 px per mask px).

    The thumbnail is at least ``min_downsample`` and at most ``max_side`` px on its long side:
    fine enough that a 256-px patch at 20x spans many mask pixels, small enough to stay cheap on
    a 100k-px slide. A slide without tissue yields an all-False mask (and a logged warning).

    Pen marks and scanner artefacts are removed before thresholding (see :func:`artefact_mask`), so
    they neither count as tissue nor drag Otsu's threshold: blue and green ink is as saturated as
    eosin and would otherwise be kept. Background shades (grey glass, vignetting) have low
    saturation whatever their brightness and fall below the threshold.
    """
    w0, h0 = slide.dimensions
    ds = max(float(min_downsample), max(w0, h0) / float(max_side))
    tw, th = max(1, int(round(w0 / ds))), max(1, int(round(h0 / ds)))
    thumb = np.asarray(slide.get_thumbnail((tw, th)))
    th, tw = thumb.shape[:2]
    ds = float(np.mean([w0 / tw, h0 / th]))

    mask = tissue_mask_from_rgb(thumb, (slide.mpp or ASSUMED_MPP) * ds, name=str(slide.path),
                                min_saturation=min_saturation, max_dark=max_dark,
                                smooth_um=smooth_um, min_fragment_um2=min_fragment_um2,
                                max_hole_um2=max_hole_um2)
    return mask, ds


def tissue_mask_from_rgb(
    rgb: np.ndarray,
    um_per_px: float,
    *,
    name: str = "image",
    min_saturation: float = 20.0,
    max_dark: float = 60.0,
    smooth_um: float = 8.0,
    min_fragment_um2: float = 10_000.0,
    max_hole_um2: float = 10_000.0,
    ink_margin_um: float = 8.0,
) -> np.ndarray:
    """The tissue mask of an RGB image whose pixels are ``um_per_px`` wide (the algorithm of
    :func:`segment_tissue`; also used on cached whole-slide images at a magnification)."""
    sat = ndi.median_filter(_saturation(rgb), size=5)
    artefact = ndi.median_filter(artefact_mask(rgb, max_dark=max_dark), size=3)
    # a stroke's blurred rim is a paler mix of ink and glass/tissue that no colour rule catches,
    # and red/purple rims are tissue-coloured: grow those detections by ink_margin_um
    grow = max(1, int(round(ink_margin_um / um_per_px)))
    stain_hued = ndi.median_filter(_stain_hued_ink(rgb), size=3)
    if stain_hued.any():
        artefact |= ndi.binary_dilation(stain_hued, structure=_disk(grow))
    thr = max(_otsu(sat[~artefact]), float(min_saturation))
    mask = (sat > thr) & ~artefact
    r = int(round(smooth_um / um_per_px))
    if r >= 1 and mask.any():
        fp = _disk(r)
        mask = ndi.binary_closing(mask, structure=fp, border_value=0)
        mask = ndi.binary_opening(mask, structure=fp, border_value=0)
    px_area = um_per_px**2
    mask = _drop_small(mask, min_fragment_um2 / px_area)
    mask = _fill_small_holes(mask, max_hole_um2 / px_area)
    if not mask.any():
        log.warning("%s: no tissue found (saturation threshold %.1f)", name, thr)
    return mask.astype(bool)


def patch_size_level0(slide: Slide, patch_size: int, magnification: float) -> int:
    """Side in level-0 px of a ``patch_size``-px patch at ``magnification`` (from mpp)."""
    mpp0 = slide.require_mpp()
    return max(1, int(round(patch_size * mag_to_mpp(magnification) / mpp0)))


def tissue_fractions(
    mask: np.ndarray, downsample: float, coords: np.ndarray, side0: int
) -> np.ndarray:
    """Fraction of each patch (level-0 top-left ``coords``, side ``side0``) covered by ``mask``,
    via an integral image so it costs O(1) per patch."""
    ii = np.pad(mask.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    h, w = mask.shape
    x0 = np.clip(np.floor(coords[:, 0] / downsample).astype(int), 0, w)
    y0 = np.clip(np.floor(coords[:, 1] / downsample).astype(int), 0, h)
    x1 = np.clip(np.ceil((coords[:, 0] + side0) / downsample).astype(int), 0, w)
    y1 = np.clip(np.ceil((coords[:, 1] + side0) / downsample).astype(int), 0, h)
    area = np.maximum((x1 - x0) * (y1 - y0), 1)
    inside = ii[y1, x1] - ii[y0, x1] - ii[y1, x0] + ii[y0, x0]
    return inside / area


def patch_grid(
    slide: Slide,
    mask: np.ndarray,
    downsample: float,
    patch_size: int = 256,
    magnification: float = 20.0,
    min_tissue: float = 0.5,
) -> np.ndarray:
    """Level-0 top-left (x, y) of non-overlapping ``patch_size``-px patches at ``magnification``
    whose tissue fraction is at least ``min_tissue``; int64 (N, 2), row-major order.

    Raises SlideError (from ``require_mpp``) when the slide has no resolution: guessing would
    silently mix magnifications.
    """
    side0 = patch_size_level0(slide, patch_size, magnification)
    w0, h0 = slide.dimensions
    xs = np.arange(0, w0 - side0 + 1, side0, dtype=np.int64)
    ys = np.arange(0, h0 - side0 + 1, side0, dtype=np.int64)
    if len(xs) == 0 or len(ys) == 0:
        return np.zeros((0, 2), np.int64)
    gy, gx = np.meshgrid(ys, xs, indexing="ij")
    coords = np.stack([gx.ravel(), gy.ravel()], axis=1)
    frac = tissue_fractions(mask, downsample, coords, side0)
    return coords[frac >= min_tissue].astype(np.int64)
