"""The region feature cache: per slide, every 4096² region at 20× as the 16 × 16 grid of its 256-px patch
embeddings -- the input of HIPT's ViT-4K (Chen et al., CVPR 2022).

Layout (same fingerprinted directory scheme, locks and atomic writes as :class:`FeatureCache`)::

    <root>/region_features/<encoder>/ps<patch>_mag<mag>_<key-hash>/<slide_id>.h5
        features  (M, 256, D) float32   patch embeddings, row-major in the region (index = row·16 + col)
        mask      (M, 256)    bool      True where the region has a patch; False = padding (zeros)
        coords    (M, 2)      int64     level-0 (x, y) of each region's top-left corner

How regions are cut, and where this differs from HIPT's own pipeline:

* Regions tile the slide from its top-left corner in steps of ``region_size`` px at the target
  magnification. A region is kept when at least one of its 256-px patches has a tissue fraction
  of ``min_tissue`` or more (same tissue mask as the patch cache). HIPT tiles 4096² regions with
  CLAM's contour-based patcher; the regions it keeps are the same idea, their offsets may differ.
* Inside a kept region *every* 256-px patch is encoded, background included, as HIPT encodes the
  whole 4096² image. Patches that would cross the slide's right or bottom edge are not read: their
  grid positions stay zero and ``mask`` is False there, and the model masks them out of attention.
  HIPT read such regions padded with whatever the reader returned beyond the edge (black) and
  encoded that; padding-and-masking keeps a non-tissue artefact out of the embedding.

The stage-1 encoder (HIPT's ViT-256, ``hipt-vit256``) is frozen, as in HIPT, so its outputs can be
cached like any patch encoder's.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Mapping

import h5py
import numpy as np

from feature_cache.cache import (CACHE_FORMAT_VERSION, CacheMissError, FeatureCache, slide_stem,
                                 cache_code_version, read_batches, slide_identity_attrs)
from feature_cache.encoders import Encoder
from feature_cache.slide import mag_to_mpp, mpp_to_mag, open_slide
from feature_cache.tissue import patch_grid, patch_size_level0, segment_tissue, tissue_fractions

__all__ = ["RegionFeatureCache", "REGION_FORMAT_VERSION", "regions_from_patches"]

REGION_FORMAT_VERSION = 1


def regions_from_patches(grid_xy: np.ndarray, keep_patch: np.ndarray, per_side: int
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Group patches (integer grid positions ``(N, 2)`` = (col, row) of 256-px patches) into regions
    of ``per_side``² patches; a region is kept if any of its patches has ``keep_patch``.

    Returns ``region_xy (M, 2)`` (region col, row; row-major order), and for the patches that fall
    into kept regions: their indices into ``grid_xy``, their region index and their slot
    ``row·per_side + col`` inside the region.
    """
    r = grid_xy // per_side  # (N, 2) region (col, row) of each patch
    kept = np.unique(r[keep_patch][:, ::-1], axis=0)[:, ::-1] if keep_patch.any() else np.zeros((0, 2), np.int64)
    lookup = {(int(x), int(y)): i for i, (x, y) in enumerate(kept)}
    region_of = np.array([lookup.get((int(x), int(y)), -1) for x, y in r], dtype=np.int64)
    sel = np.nonzero(region_of >= 0)[0]
    local = grid_xy[sel] % per_side
    slots = local[:, 1] * per_side + local[:, 0]
    return kept.astype(np.int64), sel, region_of[sel], slots.astype(np.int64)


class RegionFeatureCache(FeatureCache):
    """HIPT's region inputs for any registered patch encoder (``hipt-vit256`` in practice)."""

    def __init__(self, root: str | os.PathLike, region_size: int = 4096, mpp: float | None = None) -> None:
        super().__init__(Path(root) / "region_features", mpp=mpp)
        self.region_size = int(region_size)

    def key(self, encoder: Encoder, patch_size: int | None = None,
            magnification: float | None = None, min_tissue: float = 0.5) -> dict[str, Any]:
        k = super().key(encoder, patch_size, magnification, min_tissue)
        k.update(layout="regions", region_size=self.region_size, region_format=REGION_FORMAT_VERSION)
        return k

    def load_regions(self, slide_id: str, encoder: Encoder, patch_size: int | None = None,
                     magnification: float | None = None, min_tissue: float = 0.5
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(features (M, 256, D) float32, mask (M, 256) bool, coords (M, 2) int64); M = 0 for a
        slide without tissue."""
        path = self.path_for(slide_id, encoder, patch_size, magnification, min_tissue)
        if not path.is_file():
            raise CacheMissError(
                f"no cached regions for slide {slide_id!r} with encoder {encoder.name!r} ({path} does "
                f"not exist). Fix: run `python -m bench run --methods hipt` for its dataset (it "
                f"extracts them), or RegionFeatureCache.extract().")
        with h5py.File(path, "r") as f:
            return (np.asarray(f["features"], dtype=np.float32), np.asarray(f["mask"], dtype=bool),
                    np.asarray(f["coords"], dtype=np.int64))

    def load(self, *args: Any, **kwargs: Any) -> tuple[np.ndarray, np.ndarray]:
        feats, _, coords = self.load_regions(*args, **kwargs)
        return feats, coords

    def _extract_slide(self, sid: str, path: Path, encoder: Encoder, ps: int, mag: float,
                       min_tissue: float, batch_size: int, out: Path) -> int:
        """Segment, cut regions, encode every in-slide patch of the kept ones, write; returns M."""
        if self.region_size % ps:
            raise ValueError(f"region size {self.region_size} is not a multiple of the patch size {ps}")
        per = self.region_size // ps
        with open_slide(path, **getattr(self, "_open", {})) as slide:
            tissue, ds = segment_tissue(slide)
            side0 = patch_size_level0(slide, ps, mag)
            every = patch_grid(slide, tissue, ds, ps, mag, min_tissue=0.0)  # (N, 2) all in-slide patches
            frac = tissue_fractions(tissue, ds, every, side0) if len(every) else np.zeros(0)
            region_xy, sel, region_of, slots = regions_from_patches(every // side0, frac >= min_tissue, per)
            feats = np.zeros((len(region_xy), per * per, encoder.dim), np.float32)
            mask = np.zeros((len(region_xy), per * per), bool)
            level = slide.best_level_for_downsample(side0 / ps)
            read = max(1, int(round(side0 / slide.level_downsamples[level])))
            coords = every[sel]
            for i, batch in read_batches(path, getattr(self, "_open", {}), coords, level, read, ps,
                                          batch_size, encoder, *self._loader()):
                j = slice(i, i + len(batch))
                feats[region_of[j], slots[j]] = encoder(batch).numpy()  # (B, D)
            mask[region_of, slots] = True
            attrs = {
                "slide_id": sid, "slide_path": str(Path(path).resolve()), **slide_identity_attrs(Path(path)),
                "encoder": encoder.name, "encoder_fingerprint": encoder.fingerprint,
                "weights_source": encoder.weights_source, "random_weights": bool(encoder.random_weights),
                "patch_size": ps, "magnification": mag, "region_size": self.region_size,
                "mpp": float(slide.require_mpp()), "target_mpp": mag_to_mpp(mag),
                "patch_size_level0": side0, "region_size_level0": side0 * per, "patch_level": level,
                "min_tissue": min_tissue, "tissue_downsample": ds, "code_version": cache_code_version(),
                "cache_format": CACHE_FORMAT_VERSION, "region_format": REGION_FORMAT_VERSION,
                "no_tissue": len(region_xy) == 0, "n_patches": int(len(sel)),
                "level0_magnification": mpp_to_mag(slide.require_mpp()),
                "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
        _write_regions(out, feats, mask, region_xy * side0 * per, attrs)
        return len(region_xy)


def _write_regions(out: Path, feats: np.ndarray, mask: np.ndarray, coords: np.ndarray,
                   attrs: Mapping[str, Any]) -> None:
    """Write to ``<out>.tmp`` and rename: the final name only ever holds a complete file."""
    slide_stem(out.stem)
    tmp = out.with_name(out.name + ".tmp")
    with h5py.File(tmp, "w") as f:
        f.create_dataset("features", data=feats)
        f.create_dataset("mask", data=mask)
        f.create_dataset("coords", data=coords.astype(np.int64))
        for k, v in attrs.items():
            f.attrs[k] = v
    os.replace(tmp, out)
