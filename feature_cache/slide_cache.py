"""Whole slides at a fixed magnification, cached once, for the end-to-end models.

End-to-end networks (Pixel-Mamba, Vim, LongViT) read the entire slide at 0.625×–5×. Resampling a
gigapixel pyramid each epoch would dominate training time, so each slide is read once per
magnification (``Slide.read_at_mpp``: nearest pyramid level above, area resize, aspect kept) and
stored as an uncompressed ``.npy`` (memory-mappable) under a directory named by magnification and
code version. Writes are atomic (temp file + rename) and serialised per slide with a file lock.
The ``.npy`` is read lazily (``mmap_mode="r"``), so a model can take tiles of a large slide without
loading it whole. :meth:`SlideImageCache.mask` gives the tissue mask at the same magnification
(same algorithm as the patch grid's, pixel-aligned with the image), cached beside it.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Mapping

import numpy as np
from filelock import FileLock

from feature_cache.slide import SlideError, mag_to_mpp, open_slide, slide_stat

log = logging.getLogger(__name__)

FORMAT_VERSION = 2  # 2: red/purple ink left out of the stored tissue mask


class SlideImageCache:
    def __init__(self, root: Path | str) -> None:
        self.root = Path(root) / "slides"

    def dir_for(self, magnification: float) -> Path:
        return self.root / f"mag{magnification:g}-v{FORMAT_VERSION}"

    def path(self, slide_id: str, magnification: float, slide_path: str | Path) -> Path:
        """The cache file names the slide file's identity (size, mtime), so a slide replaced under
        the same id is read again instead of served stale."""
        from feature_cache.cache import _check_id  # the feature cache's id -> file-stem rule

        stem = _check_id(slide_id)
        size, mtime_ns = slide_stat(slide_path)  # MIRAX: its Slidedat.ini and Index.dat too
        ident = hashlib.sha256(f"{size}:{mtime_ns}".encode()).hexdigest()[:10]
        return self.dir_for(magnification) / f"{stem}.{ident}.npy"

    def get(self, slide_id: str, slide_path: str | Path, magnification: float,
            mpp_override: float | None = None) -> np.ndarray:
        """(H, W, 3) uint8 of the slide at ``magnification`` (20× ≡ 0.5 µm/px), memory-mapped."""
        p = self.path(slide_id, magnification, slide_path)
        if not p.is_file():
            p.parent.mkdir(parents=True, exist_ok=True)
            with FileLock(str(p) + ".lock"):
                if not p.is_file():
                    with open_slide(slide_path, mpp=mpp_override) as s:
                        arr = s.read_at_mpp(mag_to_mpp(magnification))
                    save_npy_atomic(p, np.ascontiguousarray(arr, dtype=np.uint8))
        return np.load(p, mmap_mode="r")

    def mask(self, slide_id: str, slide_path: str | Path, magnification: float,
             mpp_override: float | None = None) -> np.ndarray:
        """(H, W) bool tissue mask aligned with :meth:`get`'s image, computed once and cached."""
        from feature_cache.tissue import tissue_mask_from_rgb

        img_path = self.path(slide_id, magnification, slide_path)
        p = img_path.with_name(img_path.name[: -len(".npy")] + ".mask.npy")
        if not p.is_file():
            img = self.get(slide_id, slide_path, magnification, mpp_override)
            with FileLock(str(p) + ".lock"):
                if not p.is_file():
                    m = tissue_mask_from_rgb(np.asarray(img), mag_to_mpp(magnification),
                                             name=f"{slide_id} at {magnification:g}x")
                    save_npy_atomic(p, m)
        return np.load(p)

    def ensure(self, slides: Mapping[str, str | Path], magnification: float, progress: bool = True,
               mpp_override: float | None = None) -> dict[str, str]:
        """Cache every slide; returns {slide_id: error message} for those that failed."""
        from tqdm.auto import tqdm

        failed: dict[str, str] = {}
        todo = []
        for sid, path in slides.items():
            try:
                if not self.path(sid, magnification, path).is_file():
                    todo.append((sid, path))
            except (OSError, ValueError) as exc:  # unreadable file, or an id that is a path
                failed[sid] = f"{path}: {exc}"
        for sid, path in tqdm(todo, desc=f"slides @ {magnification:g}x", unit="slide", disable=None if progress and todo else True):
            try:
                self.get(sid, path, magnification, mpp_override)
            except SlideError as exc:
                log.warning("slide %s skipped: %s", sid, exc)
                failed[sid] = str(exc)
        return failed


def save_npy_atomic(path: Path, arr: np.ndarray) -> None:
    """np.save through a temp file + rename, so a half-written array is never taken for a cached one."""
    from feature_cache.io import atomic_path

    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.save(f, arr)
    except OSError as err:  # disk full...: name the file
        raise OSError(err.errno, f"cannot write {path}: {err}", str(path)) from err
