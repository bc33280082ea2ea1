"""Whole slides at a magnification for the end-to-end models: size from mpp, cached once, never stale."""

import os

import numpy as np

from bench.data.demo import write_pyramid_tiff
from feature_cache.slide_cache import SlideImageCache


def slide(path, w=1024, h=768, value=None):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (h, w, 3), dtype=np.uint8) if value is None else np.full((h, w, 3), value, np.uint8)
    write_pyramid_tiff(path, rgb, mpp=0.5)  # 20x at level 0
    return path


def test_size_follows_mpp_and_aspect(tmp_path):
    p = slide(tmp_path / "s.tiff")
    c = SlideImageCache(tmp_path / "cache")
    a = c.get("s", p, 2.5)  # 20x -> 2.5x: /8
    assert a.shape == (96, 128, 3) and a.dtype == np.uint8
    assert c.get("s", p, 5.0).shape == (192, 256, 3)


def test_cached_once_and_refreshed_when_the_file_changes(tmp_path):
    p = slide(tmp_path / "s.tiff", value=200)
    c = SlideImageCache(tmp_path / "cache")
    first = c.path("s", 2.5, p)
    c.get("s", p, 2.5)
    mtime = first.stat().st_mtime_ns
    c.get("s", p, 2.5)
    assert first.stat().st_mtime_ns == mtime  # not rewritten
    slide(p, value=30)  # replaced under the same id
    os.utime(p, ns=(mtime + 10**9, mtime + 10**9))
    assert c.path("s", 2.5, p) != first
    assert abs(int(c.get("s", p, 2.5).mean()) - 30) <= 2


def test_unreadable_slide_is_reported_not_raised(tmp_path):
    bad = tmp_path / "bad.tiff"
    bad.write_bytes(b"II*\x00garbage")
    failed = SlideImageCache(tmp_path / "cache").ensure({"bad": bad}, 2.5, progress=False)
    assert "bad" in failed and "bad.tiff" in failed["bad"]


def test_tissue_mask_aligned_with_the_cached_image(tmp_path):
    """The mask at a magnification has the image's shape and marks the drawn tissue block."""
    rgb = np.full((1536, 2048, 3), 236, np.uint8)
    rgb[384:1152, 512:1536] = (205, 120, 170)  # tissue: rows 384-1152, cols 512-1536 at 20x
    p = tmp_path / "t.tiff"
    write_pyramid_tiff(p, rgb, mpp=0.5)
    c = SlideImageCache(tmp_path / "cache")
    img, mask = c.get("t", p, 2.5), c.mask("t", p, 2.5)  # /8: block at rows 48-144, cols 64-192
    assert mask.shape == img.shape[:2] == (192, 256) and mask.dtype == bool
    truth = np.zeros_like(mask)
    truth[48:144, 64:192] = True
    assert (mask & truth).sum() / (mask | truth).sum() > 0.95
    assert c.mask("t", p, 2.5) is not None and any(c.dir_for(2.5).glob("t.*.mask.npy"))
