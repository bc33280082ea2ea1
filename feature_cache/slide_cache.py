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
from typing import Callable, Mapping

import numpy as np
from filelock import FileLock

from feature_cache.slide import SlideError, mag_to_mpp, open_slide, slide_fingerprint

log = logging.getLogger(__name__)

FORMAT_VERSION = 2  # 2: red/purple ink left out of the stored tissue mask


class SlideImageCache:
    """Whole slides at one magnification as ``.npy`` files. ``reader``: the slide reader
    (:func:`~feature_cache.slide.open_slide`'s ``backend``)."""

    def __init__(self, root: Path | str, reader: str = "auto") -> None:
        self.root = Path(root) / "slides"
        self.reader = reader

    def dir_for(self, magnification: float) -> Path:
        return self.root / f"mag{magnification:g}-v{FORMAT_VERSION}"

    def path(self, slide_id: str, magnification: float, slide_path: str | Path) -> Path:
        """The cache file of a slide at ``magnification`` (:func:`slide_cache_stem`)."""
        return slide_cache_stem(self.dir_for(magnification), slide_id, slide_path, ".npy")

    def get(self, slide_id: str, slide_path: str | Path, magnification: float,
            mpp_override: float | None = None) -> np.ndarray:
        """(H, W, 3) uint8 of the slide at ``magnification`` (20× ≡ 0.5 µm/px), memory-mapped."""
        def read() -> np.ndarray:
            with open_slide(slide_path, backend=self.reader, mpp=mpp_override) as s:
                return np.ascontiguousarray(s.read_at_mpp(mag_to_mpp(magnification)), dtype=np.uint8)

        return cached_array(self.path(slide_id, magnification, slide_path), read)

    def mask(self, slide_id: str, slide_path: str | Path, magnification: float,
             mpp_override: float | None = None) -> np.ndarray:
        """(H, W) bool tissue mask aligned with :meth:`get`'s image, computed once and cached."""
        from feature_cache.tissue import tissue_mask_from_rgb

        img_path = self.path(slide_id, magnification, slide_path)

        def compute() -> np.ndarray:
            img = self.get(slide_id, slide_path, magnification, mpp_override)
            return tissue_mask_from_rgb(np.asarray(img), mag_to_mpp(magnification),
                                        name=f"{slide_id} at {magnification:g}x")

        return cached_array(img_path.with_name(img_path.name[: -len(".npy")] + ".mask.npy"), compute, mmap=False)

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


def slide_cache_stem(directory: Path, slide_id: str, slide_path: str | Path, suffix: str) -> Path:
    """``<directory>/<id stem>.<10 hex><suffix>``: the slide's file stem (:func:`feature_cache.cache.slide_stem`)
    and a hash of its content identity (:func:`feature_cache.slide.slide_fingerprint`), so a slide
    replaced under the same id is read again instead of served stale, and a copy keeps its cache."""
    from feature_cache.cache import slide_stem

    ident = hashlib.sha256(slide_fingerprint(slide_path).encode()).hexdigest()[:10]
    return directory / f"{slide_stem(slide_id)}.{ident}{suffix}"


def cached_array(path: Path, compute: Callable[[], np.ndarray], mmap: bool = True) -> np.ndarray:
    """The array stored at ``path``, computed and saved first (atomically, under a per-file lock,
    so concurrent workers compute it once) when absent; memory-mapped unless ``mmap`` is False."""
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(path) + ".lock"):
            if not path.is_file():
                save_npy_atomic(path, compute())
    return np.load(path, mmap_mode="r" if mmap else None)


def save_npy_atomic(path: Path, arr: np.ndarray) -> None:
    """np.save through a temp file + rename, so a half-written array is never taken for a cached one."""
    from feature_cache.io import atomic_path

    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.save(f, arr)
    except OSError as err:  # disk full...: name the file
        raise OSError(err.errno, f"cannot write {path}: {err}", str(path)) from err
