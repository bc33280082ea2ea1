"""Random tissue regions of a slide at a magnification, sampled once (seeded) and cached.

The CAMELYON16 protocol of the Pixel-Mamba supplement feeds an end-to-end model 100 random
2048×2048 regions at 20× per slide instead of the whole slide. This module draws such regions:

* **Where.** Candidate top-left corners are every pixel of the slide's tissue mask (the
  thumbnail-scale mask of :func:`feature_cache.tissue.segment_tissue`, ``ds`` level-0 px per mask
  px) whose region — ``side0 = size · mpp(mag) / mpp(level 0)`` level-0 px square — lies inside the
  slide and is covered by tissue for at least ``min_tissue`` of its area (integral image, as the
  patch grid). Corners are then jittered uniformly inside their mask pixel, never leaving the slide.
  If no corner reaches ``min_tissue`` (a slide with only small tissue fragments), the threshold
  drops to half the best coverage found and a warning says so; a slide with no tissue at all is a
  :class:`SlideError`. A slide smaller than one region yields regions at (0, 0), padded white.
* **How many.** ``n`` regions, drawn without replacement among the candidates (with replacement,
  and a warning, when there are fewer candidates than ``n``). Regions may overlap: they are random,
  not a tiling, as in the supplement.
* **Determinism.** The generator is seeded by ``(seed, sha256(slide_id))``: the same slide and seed
  give the same regions in every process, whatever else is in the cohort.

:class:`RegionCache` stores, per (slide, n, size, magnification, min_tissue, seed, slide fingerprint),
the coordinates (``.json``) and the pixels (``.npy``, ``(n, size, size, 3)`` uint8, memory-mapped —
1.26 GB per slide for 100 regions of 2048²; ``cache_pixels=False`` keeps only the coordinates and
reads the pixels from the slide at each use).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
from filelock import FileLock
from PIL import Image

from feature_cache.io import atomic_write_bytes
from feature_cache.slide import Slide, SlideError, mag_to_mpp, open_slide
from feature_cache.slide_cache import cached_array, slide_cache_stem

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


def region_side_level0(slide: Slide, size: int, magnification: float) -> int:
    return max(1, int(round(size * mag_to_mpp(magnification) / slide.require_mpp())))


def _slide_rng(seed: int, slide_id: str) -> np.random.Generator:
    h = int(hashlib.sha256(slide_id.encode()).hexdigest()[:12], 16)
    return np.random.default_rng(np.random.SeedSequence([int(seed), h]))


def sample_regions(slide: Slide, slide_id: str, n: int, size: int, magnification: float, *, seed: int = 0,
                   min_tissue: float = 0.5, mask: np.ndarray | None = None,
                   downsample: float | None = None) -> np.ndarray:
    """``(n, 2)`` int64 level-0 top-left (x, y) of random tissue regions (module docstring).

    ``mask``/``downsample`` (from :func:`segment_tissue`) are computed when not given.
    """
    if n < 1 or size < 1:
        raise ValueError(f"need n >= 1 and size >= 1, got n={n}, size={size}")
    if mask is None or downsample is None:
        from feature_cache.tissue import segment_tissue

        mask, downsample = segment_tissue(slide)
    if not mask.any():
        raise SlideError(f"{slide.path}: no tissue found, so no region can be sampled. Fix: check the slide "
                         "(blank or unreadable scan) or leave it out of the cohort.")
    side0 = region_side_level0(slide, size, magnification)
    w0, h0 = slide.dimensions
    mh, mw = mask.shape
    ii = np.pad(mask.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    r = max(1, int(round(side0 / downsample)))  # region side in mask px
    # corners (in mask px) whose region stays inside the slide; a slide smaller than a region: (0, 0) only
    max_x = max(0, int(np.floor((w0 - side0) / downsample)))
    max_y = max(0, int(np.floor((h0 - side0) / downsample)))
    ys, xs = np.mgrid[0:min(max_y, mh - 1) + 1, 0:min(max_x, mw - 1) + 1]
    x1, y1 = np.minimum(xs + r, mw), np.minimum(ys + r, mh)
    inside = ii[y1, x1] - ii[ys, x1] - ii[y1, xs] + ii[ys, xs]
    frac = (inside / float(r * r)).ravel()
    thr = float(min_tissue)
    if frac.max() < thr:
        thr = float(frac.max()) / 2
        log.warning("%s: no %d-px region at %gx is %.0f%% tissue (best %.0f%%); sampling regions with >= %.0f%%",
                    slide.path, size, magnification, 100 * min_tissue, 100 * frac.max(), 100 * thr)
    cand = np.flatnonzero(frac >= thr) if thr > 0 else np.flatnonzero(frac > 0)
    rng = _slide_rng(seed, slide_id)
    replace = len(cand) < n
    if replace:
        log.warning("%s: only %d distinct region positions for %d regions; drawing with replacement",
                    slide.path, len(cand), n)
    pick = cand[rng.choice(len(cand), size=n, replace=replace)]
    jitter = rng.uniform(0, 1, size=(n, 2))
    x = np.floor((xs.ravel()[pick] + jitter[:, 0]) * downsample)
    y = np.floor((ys.ravel()[pick] + jitter[:, 1]) * downsample)
    x = np.clip(x, 0, max(0, w0 - side0))
    y = np.clip(y, 0, max(0, h0 - side0))
    return np.stack([x, y], axis=1).astype(np.int64)


def read_region_at(slide: Slide, xy: tuple[int, int], size: int, magnification: float) -> np.ndarray:
    """``(size, size, 3)`` uint8: the square at level-0 top-left ``xy`` resampled to ``magnification``
    (the pyramid level nearest above that resolution, area-filtered down; white outside the slide)."""
    mpp0 = slide.require_mpp()
    ds = mag_to_mpp(magnification) / mpp0
    side0 = region_side_level0(slide, size, magnification)
    level = slide.best_level_for_downsample(ds)
    lds = float(slide.level_downsamples[level])
    s = max(1, int(np.ceil(side0 / lds)))
    im = slide.read_region((int(xy[0]), int(xy[1])), level, (s, s))
    if im.size != (size, size):
        im = im.resize((size, size), Image.BOX if s >= size else Image.BICUBIC)
    return np.asarray(im, dtype=np.uint8)


class RegionCache:
    """Seeded tissue regions per slide: coordinates and (optionally) pixels, cached on disk.
    ``reader``: the slide reader (:func:`~feature_cache.slide.open_slide`'s ``backend``)."""

    def __init__(self, root: Path | str, n: int, size: int, magnification: float, *, seed: int = 0,
                 min_tissue: float = 0.5, cache_pixels: bool = True, reader: str = "auto") -> None:
        self.root = Path(root) / "regions"
        self.reader = reader
        self.n, self.size, self.magnification = int(n), int(size), float(magnification)
        self.seed, self.min_tissue, self.cache_pixels = int(seed), float(min_tissue), bool(cache_pixels)

    def dir(self) -> Path:
        return self.root / (f"n{self.n}_s{self.size}_mag{self.magnification:g}_t{self.min_tissue:g}_seed{self.seed}"
                            f"-v{FORMAT_VERSION}")

    def _file(self, slide_id: str, slide_path: str | Path, suffix: str) -> Path:
        return slide_cache_stem(self.dir(), slide_id, slide_path, suffix)

    def coords(self, slide_id: str, slide_path: str | Path, mpp_override: float | None = None) -> np.ndarray:
        """The slide's region corners (level-0 x, y), sampled once."""
        p = self._file(slide_id, slide_path, ".json")
        if not p.is_file():
            p.parent.mkdir(parents=True, exist_ok=True)
            with FileLock(str(p) + ".lock"):
                if not p.is_file():
                    with open_slide(slide_path, backend=self.reader, mpp=mpp_override) as s:
                        xy = sample_regions(s, slide_id, self.n, self.size, self.magnification, seed=self.seed,
                                            min_tissue=self.min_tissue)
                        meta = {"slide_id": slide_id, "coords": xy.tolist(), "n": self.n, "size": self.size,
                                "magnification": self.magnification, "min_tissue": self.min_tissue,
                                "seed": self.seed, "side_level0": region_side_level0(s, self.size, self.magnification),
                                "mpp": s.require_mpp()}
                    atomic_write_bytes(p, json.dumps(meta).encode())
        return np.asarray(json.loads(p.read_text())["coords"], dtype=np.int64).reshape(-1, 2)

    def regions(self, slide_id: str, slide_path: str | Path, mpp_override: float | None = None) -> np.ndarray:
        """``(n, size, size, 3)`` uint8 (memory-mapped when cached)."""
        xy = self.coords(slide_id, slide_path, mpp_override)
        if not self.cache_pixels:
            with open_slide(slide_path, backend=self.reader, mpp=mpp_override) as s:
                return np.stack([read_region_at(s, tuple(c), self.size, self.magnification) for c in xy])

        def read() -> np.ndarray:
            with open_slide(slide_path, backend=self.reader, mpp=mpp_override) as s:
                return np.stack([read_region_at(s, tuple(c), self.size, self.magnification) for c in xy])

        return cached_array(self._file(slide_id, slide_path, ".npy"), read)

    def ensure(self, slides: dict[str, str | Path], progress: bool = True,
               mpp_override: float | None = None) -> dict[str, str]:
        """Sample (and cache) every slide's regions; returns {slide_id: error} for those that failed."""
        from tqdm.auto import tqdm

        failed: dict[str, str] = {}
        for sid, path in tqdm(list(slides.items()), desc=f"regions {self.n}x{self.size}px @ {self.magnification:g}x",
                              unit="slide", disable=None if progress else True):
            try:
                self.regions(sid, path, mpp_override)
            except (SlideError, OSError) as exc:
                log.warning("regions of slide %s unavailable: %s", sid, exc)
                failed[sid] = str(exc)
        return failed

