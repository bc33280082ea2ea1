"""Tissue segmentation on synthetic slides with pen marks (blue, green, black), shaded and dark
background, a scanner border and tiny fragments, against the mask the slide was drawn from;
and the overview thumbnails `bench extract --visualize` writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import feature_cache as fc
from bench.data.demo import write_pyramid_tiff
from feature_cache.visualize import write_overview

W, H = 3072, 2048  # level 0 at 0.5 um/px (20x)
BLUE, GREEN, BLACK = (40, 70, 170), (60, 160, 80), (22, 22, 28)


_GRID = np.mgrid[0:H, 0:W].astype(np.float32)


def _ellipse(cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    yy, xx = _GRID
    return ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1.0


def _stroke(p0: tuple[int, int], p1: tuple[int, int], width: int) -> np.ndarray:
    yy, xx = _GRID
    (x0, y0), (x1, y1) = p0, p1
    d = np.array([x1 - x0, y1 - y0], np.float64)
    t = np.clip(((xx - x0) * d[0] + (yy - y0) * d[1]) / (d @ d), 0, 1)
    return np.hypot(xx - (x0 + t * d[0]), yy - (y0 + t * d[1])) <= width / 2


def render(pen: bool = True, tissue: bool = True, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rgb, tissue truth, ink-on-background mask)."""
    rng = np.random.default_rng(seed)
    # background: glass shading from light to mid grey, scanner noise, a dark border on the left
    shade = np.linspace(238, 196, W, dtype=np.float32)[None, :, None]
    rgb = np.broadcast_to(shade, (H, W, 3)).copy() + rng.normal(0, 2, (H, W, 3))
    rgb[:, :70] = 28
    truth = np.zeros((H, W), bool)
    if tissue:
        truth = _ellipse(900, 1000, 520, 700) | _ellipse(2150, 900, 450, 380)
        stain = np.where(rng.random((H, W, 1)) < 0.25, np.array([120, 70, 165]),  # nuclei
                         np.array([225, 140, 185]))  # eosin
        rgb[truth] = stain[truth] + rng.normal(0, 8, (int(truth.sum()), 3))
        # tiny fragments: 8 specks of ~20 um, far below the 10,000 um^2 minimum
        for x, y in rng.integers([1400, 200], [2900, 1900], size=(8, 2)):
            speck = _ellipse(x, y, 20, 20) & ~truth
            rgb[speck] = (215, 130, 180)
    ink = np.zeros((H, W), bool)
    if pen:
        blue = _stroke((300, 150), (2900, 1950), 60)  # crosses glass and the first tissue piece
        green = _ellipse(2150, 900, 560, 490) & ~_ellipse(2150, 900, 525, 455)  # circled region
        black = _stroke((1500, 1750), (2500, 1800), 50) | _ellipse(2700, 300, 60, 60)
        for m, colour in ((blue, BLUE), (green, GREEN), (black, BLACK)):
            rgb[m] = np.array(colour) + rng.normal(0, 6, (int(m.sum()), 3))
        truth &= ~(blue | green | black)  # ink hides the tissue under it
        ink = (blue | green | black) & ~truth
    return np.clip(rgb, 0, 255).astype(np.uint8), truth, ink


@pytest.fixture(scope="module")
def marked(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, np.ndarray]:
    rgb, truth, ink = render()
    p = tmp_path_factory.mktemp("tissue") / "PEN-00-0000-01Z-00-DX1.tiff"
    write_pyramid_tiff(p, rgb, mpp=0.5)
    return p, truth, ink


def _at(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    return np.asarray(Image.fromarray(mask).resize(shape[::-1], Image.NEAREST))


def test_pen_marks_shades_and_fragments(marked) -> None:
    path, truth, ink = marked
    with fc.open_slide(path) as s:
        mask, ds = fc.segment_tissue(s)
    gt, pen = _at(truth, mask.shape), _at(ink, mask.shape)
    iou = (mask & gt).sum() / (mask | gt).sum()
    print(f"IoU {iou:.3f}; ink pixels called tissue: {(mask & pen).sum()} of {pen.sum()}")
    assert iou > 0.9
    assert (mask & pen).sum() <= 0.01 * pen.sum()  # ink is not tissue
    assert not mask[:, : int(80 / ds)].any()  # neither is the dark scanner border
    # tiny fragments are dropped: every mask component overlaps the real tissue
    from scipy import ndimage as ndi

    lab, n = ndi.label(mask)
    assert n >= 2 and all((gt[lab == i]).any() for i in range(1, n + 1))


def test_only_ink_and_shades_is_no_tissue(tmp_path: Path) -> None:
    rgb, truth, ink = render(tissue=False)
    assert not truth.any() and ink.any()
    p = tmp_path / "INK-00-0000-01Z-00-DX1.tiff"
    write_pyramid_tiff(p, rgb, mpp=0.5)
    with fc.open_slide(p) as s:
        mask, ds = fc.segment_tissue(s)
        assert not mask.any()  # blue/green ink is as saturated as eosin: it must not pass
        assert fc.patch_grid(s, mask, ds).shape == (0, 2)


def test_overview_thumbnail(marked, tmp_path: Path) -> None:
    path, truth, _ = marked
    out = write_overview(path, tmp_path / "viz" / "PEN.png", patch_size=256, magnification=20)
    img = np.asarray(Image.open(out).convert("RGB")).astype(int)
    with fc.open_slide(path) as s:
        mask, ds = fc.segment_tissue(s)
        coords = fc.patch_grid(s, mask, ds, 256, 20.0)
    h, w = mask.shape
    assert img.shape == (h, 2 * w + 8, 3)
    left, right = img[:, :w], img[:, w + 8 :]
    outline = (right[..., 2] > 200) & (right[..., 0] < 60) & (right[..., 1] < 60)
    # the right panel is the plain thumbnail except for the squares: the left one differs from it
    # exactly where the mask is (tint), nowhere else
    changed = (np.abs(left - right).max(-1) > 12) & ~outline
    assert (changed & mask).sum() > 0.8 * (mask & ~outline).sum()
    assert (changed & ~mask).sum() == 0
    assert len(coords) > 0 and outline.any()
    ys, xs = np.nonzero(outline)  # squares sit only where patches are
    x0, y0 = coords.min(0) / ds
    x1, y1 = (coords.max(0) + 256) / ds
    assert xs.min() >= x0 - 1 and xs.max() <= x1 + 1 and ys.min() >= y0 - 1 and ys.max() <= y1 + 1


RED_INK, PURPLE_INK = (195, 45, 60), (95, 50, 140)  # marker ink as scanned over glass
NUCLEI, EOSIN = np.array([120, 70, 165]), np.array([225, 140, 185])


def render_red_purple(seed: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(rgb, tissue truth, ink mask, densely nuclear region): H&E tissue with a region of 85 %
    nuclei (as purple as H&E gets), a red and a purple marker stroke across glass and tissue."""
    rng = np.random.default_rng(seed)
    shade = np.linspace(236, 205, W, dtype=np.float32)[None, :, None]
    rgb = np.broadcast_to(shade, (H, W, 3)).copy() + rng.normal(0, 2, (H, W, 3))
    truth = _ellipse(900, 1000, 520, 700) | _ellipse(2150, 900, 450, 380)
    dense = _ellipse(2150, 950, 250, 200)
    p_nuc = np.where(dense, 0.85, 0.25)[..., None]
    stain = np.where(rng.random((H, W, 1)) < p_nuc, NUCLEI, EOSIN)
    rgb[truth] = stain[truth] + rng.normal(0, 8, (int(truth.sum()), 3))
    red = _stroke((200, 300), (2900, 1700), 55)  # crosses glass and both pieces
    purple = _stroke((400, 1900), (1600, 150), 55) | (_ellipse(900, 1000, 600, 780)
                                                     & ~_ellipse(900, 1000, 570, 750))  # circled
    for m, colour in ((red, RED_INK), (purple, PURPLE_INK)):
        rgb[m] = np.array(colour) + rng.normal(0, 6, (int(m.sum()), 3))
    ink = red | purple
    return np.clip(rgb, 0, 255).astype(np.uint8), truth & ~ink, ink, dense & ~ink


def test_red_and_purple_ink_are_not_tissue_but_purple_tissue_is(tmp_path: Path) -> None:
    rgb, truth, ink, dense = render_red_purple()
    p = tmp_path / "RED-00-0000-01Z-00-DX1.tiff"
    write_pyramid_tiff(p, rgb, mpp=0.5)
    with fc.open_slide(p) as s:
        mask, ds = fc.segment_tissue(s)
    gt, pen, nuc = _at(truth, mask.shape), _at(ink, mask.shape), _at(dense, mask.shape)
    iou = (mask & gt).sum() / (mask | gt).sum()
    print(f"IoU {iou:.3f}; ink called tissue: {(mask & pen).sum()} of {pen.sum()}; dense-nuclei "
          f"region kept: {(mask & nuc).sum()} of {nuc.sum()}")
    assert iou > 0.9
    assert (mask & pen).sum() <= 0.02 * pen.sum()  # ink of the stains' hues is not tissue
    assert (mask & nuc).sum() >= 0.97 * nuc.sum()  # densely nuclear (purple) tissue is kept


def test_stain_colours_are_never_ink() -> None:
    """Every H&E mixture of nuclei, eosin and glass -- flat or textured -- passes the ink rules;
    the markers' colours do not."""
    from feature_cache.tissue import artefact_mask

    glass = np.array([235, 235, 235])
    colours = [a * NUCLEI + b * EOSIN + (1 - a - b) * glass
               for a in np.linspace(0, 1, 11) for b in np.linspace(0, 1, 11) if a + b <= 1 + 1e-9]
    flat = np.repeat(np.array(colours, np.float32)[:, None, None], 9, 1).repeat(9, 2)  # (N, 9, 9, 3)
    flat = np.clip(flat, 0, 255).astype(np.uint8).reshape(-1, 9, 3)
    assert not artefact_mask(flat).any()
    for ink in (RED_INK, PURPLE_INK, (160, 30, 40), (120, 40, 170)):
        assert artefact_mask(np.full((9, 9, 3), ink, np.uint8)).all(), ink
