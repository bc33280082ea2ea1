"""One face for whole-slide readers: OpenSlide by default, tiffslide as the fallback.

Why a wrapper: callers need the *physical* resolution (mpp) and must never infer magnification
from a pyramid level (CLAM's defect, REFERENCE.md); readers differ in property names and in how
they fail (OpenSlide may open a truncated file and fail only on the first read). Every failure
here becomes a :class:`SlideError` that names the file and the fix.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

__all__ = ["SlideError", "Slide", "open_slide", "mag_to_mpp", "mpp_to_mag", "slide_files", "slide_stat",
           "slide_fingerprint"]

log = logging.getLogger(__name__)

BACKENDS = ("openslide", "tiffslide")
# Plausible level-0 resolutions of a whole-slide scan, um/px: 0.05 (~200x, beyond any scanner) to
# 20 (0.5x, a macro photo). Outside it the file's resolution tags are not a scan's: a TIFF
# written with the 72-dpi default says 352.8 um/px, which would make every patch one pixel.
MPP_RANGE = (0.05, 20.0)


class SlideError(Exception):
    """A slide could not be opened or read; the message names the file and the fix."""


def mag_to_mpp(magnification: float) -> float:
    """Convention used throughout: 20x == 0.5 um/px, so magnification m == mpp 10/m."""
    return 10.0 / float(magnification)


def mpp_to_mag(mpp: float) -> float:
    return 10.0 / float(mpp)


def slide_files(path: str | Path) -> list[Path]:
    """The files whose change means a different slide. One file for TIFF-based formats; for
    MIRAX, whose ``.mrxs`` is a stub, also ``Slidedat.ini`` (it carries the scan's ``SLIDE_ID``)
    and ``Index.dat`` (where every tile is) from the slide's directory -- not the data files,
    which are large and change only with those two."""
    path = Path(path)
    files = [path]
    if path.suffix.lower() == ".mrxs":
        folder = path.with_suffix("")
        files += [f for f in (folder / "Slidedat.ini", folder / "Index.dat") if f.is_file()]
    return files


def slide_stat(path: str | Path) -> tuple[int, int]:
    """(total size, newest mtime in ns) over :func:`slide_files`: equal to the file's own
    ``st_size``/``st_mtime_ns`` for single-file slides."""
    stats = [f.stat() for f in slide_files(path)]
    return sum(int(st.st_size) for st in stats), max(int(st.st_mtime_ns) for st in stats)


FINGERPRINT_BYTES = 1 << 16  # read at each end of every file of a slide


def slide_fingerprint(path: str | Path) -> str:
    """The one identity of a slide's content, ``<total size>:<16 hex>``, used by the unit identity,
    the feature cache and the slide/region caches.

    It reads, for every file of the slide (the file itself; every file of a slide directory such as
    DICOM; a MIRAX ``.mrxs`` and every file of its data folder), the file's size and its first and
    last 64 KiB. A rescan rewrites the header (TIFF directory offsets, the scanner's description
    and date, MIRAX's ``Slidedat.ini``) and the tail, and a different slide has a different size:
    so a rescanned or replaced slide gets a new identity for ~128 KiB of reading per file. The
    modification time is not part of it, so a copy to another disk keeps its identity. It does not
    see a same-size edit confined to the middle of a file. ``"missing"`` when there is no file.
    """
    p = Path(path)
    if p.is_dir():
        files = sorted(q for q in p.rglob("*") if q.is_file())
    else:
        files = [p]
        folder = p.with_suffix("")  # MIRAX: slide.mrxs + slide/ (Slidedat.ini, Index.dat, Data*.dat)
        if p.suffix.lower() == ".mrxs" and folder.is_dir():
            files += sorted(q for q in folder.rglob("*") if q.is_file())
    if not files:
        return "missing"
    parts = []
    for f in files:
        st = f.stat()
        parts.append((st.st_size, _file_fingerprint(str(f), st.st_size, st.st_mtime_ns)))
    size = sum(s for s, _ in parts)
    h = hashlib.sha256("|".join(fp for _, fp in parts).encode()).hexdigest()[:16]
    return f"{size}:{h}"


@functools.lru_cache(maxsize=4096)
def _file_fingerprint(path: str, size: int, mtime_ns: int) -> str:
    """sha256 of one file's size, first and last 64 KiB; memoised per (path, size, mtime)."""
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(FINGERPRINT_BYTES))
        if size > 2 * FINGERPRINT_BYTES:
            f.seek(-FINGERPRINT_BYTES, os.SEEK_END)
            h.update(f.read(FINGERPRINT_BYTES))
    return h.hexdigest()[:16]


def _open_backend(path: Path, backend: str) -> Any:
    if backend == "openslide":
        import openslide

        return openslide.OpenSlide(str(path))
    import tiffslide

    return tiffslide.TiffSlide(str(path))


class Slide:
    """An open whole-slide image. Use :func:`open_slide` to get one; close it (or use ``with``).

    ``mpp`` is the level-0 resolution in um/px: from the reader's ``mpp-x`` property, else from the
    objective power (mpp = 10 / power), else ``None`` -- callers that need it call
    :meth:`require_mpp`, which fails with the override to use.
    """

    def __init__(self, path: Path, handle: Any, backend: str, mpp: float | None = None):
        self.path = Path(path)
        self.backend = backend
        self._h = handle
        try:
            self.dimensions: tuple[int, int] = tuple(int(v) for v in handle.dimensions)
            self.level_count: int = int(handle.level_count)
            self.level_dimensions: tuple[tuple[int, int], ...] = tuple(
                (int(w), int(h)) for w, h in handle.level_dimensions
            )
            self.level_downsamples: tuple[float, ...] = tuple(
                float(d) for d in handle.level_downsamples
            )
            self.properties: dict[str, str] = dict(handle.properties)
        except Exception as err:  # readers raise their own types; all mean "unreadable"
            raise self._error("cannot read the slide's header", err) from err
        self.mpp: float | None = float(mpp) if mpp is not None else self._mpp_from_properties()
        self.mpp_overridden = mpp is not None
        if self.dimensions[0] <= 0 or self.dimensions[1] <= 0:
            raise self._error(f"slide has empty dimensions {self.dimensions}")

    # ---------------------------------------------------------------- metadata

    def _mpp_from_properties(self) -> float | None:
        props = self.properties
        for prefix in (self.backend, "openslide", "tiffslide"):
            vals = [props.get(f"{prefix}.mpp-x"), props.get(f"{prefix}.mpp-y")]
            try:
                nums = [float(v) for v in vals if v not in (None, "")]
            except ValueError:
                continue
            nums = [v for v in nums if math.isfinite(v) and v > 0]
            if nums:
                return float(np.mean(nums))
        power = self.objective_power
        if power is not None:
            log.warning("%s: no mpp property, using objective power %gx -> %.3f um/px",
                        self.path, power, mag_to_mpp(power))
            return mag_to_mpp(power)
        return None

    @property
    def mpp_plausible(self) -> bool:
        """Is the level-0 mpp inside :data:`MPP_RANGE` (an override is trusted)?"""
        return self.mpp is not None and (self.mpp_overridden or MPP_RANGE[0] <= self.mpp <= MPP_RANGE[1])

    def require_mpp(self) -> float:
        """The level-0 mpp, or a SlideError saying how to supply it (also when the file's value is
        implausible for a slide scan, outside :data:`MPP_RANGE`)."""
        if self.mpp is not None and not self.mpp_plausible:
            dpi = 25400.0 / self.mpp
            raise SlideError(
                f"{self.path}: the file says {self.mpp:.4g} um/px at level 0 ({mpp_to_mag(self.mpp):.3g}x"
                f"{f', i.e. {dpi:.0f} dpi: a default image resolution, not a scan' if dpi < 1000 else ''}), "
                f"outside the {MPP_RANGE[0]:g}..{MPP_RANGE[1]:g} um/px of slide scanners, so patches "
                f"would be {'a pixel' if self.mpp > MPP_RANGE[1] else 'huge'}. Fix: give the real level-0 "
                f"resolution: `mpp_override: 0.25` in the dataset's YAML, `bench extract --mpp 0.25`, or "
                f"open_slide(path, mpp=0.25) (0.25 um/px = 40x, 0.5 um/px = 20x).")
        if self.mpp is None:
            raise SlideError(
                f"{self.path}: the slide has no resolution metadata (no mpp-x property, no "
                f"objective power), so magnification cannot be computed. Fix: give the level-0 "
                f"resolution explicitly: `mpp_override: 0.25` in the dataset's YAML, `bench extract "
                f"--mpp 0.25`, or open_slide(path, mpp=0.25) (0.25 um/px = 40x, 0.5 um/px = 20x)."
            )
        return self.mpp

    @property
    def vendor(self) -> str:
        """The format the reader recognised (``aperio``, ``generic-tiff``, ``dicom``, ...)."""
        return str(self.properties.get("openslide.vendor")
                   or self.properties.get("tiffslide.vendor") or "unknown")

    @property
    def objective_power(self) -> float | None:
        """The scanner's objective power, when the file records one (Aperio ``AppMag``, ...)."""
        for key in ("openslide.objective-power", "tiffslide.objective-power", "aperio.AppMag"):
            try:
                power = float(self.properties.get(key, ""))
            except (TypeError, ValueError):  # absent, None (tiffslide lists the key as None), or text
                continue
            if math.isfinite(power) and power > 0:
                return power
        return None

    @property
    def magnification(self) -> float | None:
        """Level-0 magnification implied by mpp (20x == 0.5 um/px)."""
        return None if self.mpp is None else mpp_to_mag(self.mpp)

    def best_level_for_downsample(self, downsample: float) -> int:
        """The coarsest level whose downsample is <= ``downsample`` (reading it and shrinking never
        upsamples). A small tolerance absorbs rounding in stored level sizes."""
        fits = [i for i, d in enumerate(self.level_downsamples) if d <= downsample * 1.01]
        return max(fits, key=lambda i: self.level_downsamples[i]) if fits else 0

    # ---------------------------------------------------------------- pixels

    def _error(self, what: str, err: BaseException | None = None) -> SlideError:
        detail = f" ({type(err).__name__}: {err})" if err is not None else ""
        what_file = "the file is"
        if self.path.suffix.lower() == ".mrxs":  # MIRAX: the pixels live in the directory
            what_file = f"a file in the slide's directory {self.path.with_suffix('')} is"
        return SlideError(
            f"{self.path}: {what}{detail}. Fix: {what_file} probably truncated or corrupt -- "
            f"re-download or re-copy it (compare its size/checksum with the source), or exclude "
            f"it (e.g. `bench extract --skip-errors`)."
        )

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> Image.Image:
        """RGB region of ``size`` at ``level``; ``location`` is level-0 x, y (OpenSlide's convention).
        Transparent (outside-slide) pixels come back white."""
        try:
            im = self._h.read_region((int(location[0]), int(location[1])), int(level),
                                     (int(size[0]), int(size[1])))
        except Exception as err:
            raise self._error(f"cannot read region {tuple(location)} level {level} size "
                              f"{tuple(size)}", err) from err
        return _to_rgb(im)

    def get_thumbnail(self, size: tuple[int, int]) -> Image.Image:
        """RGB thumbnail fitting in ``size``, aspect ratio kept."""
        try:
            im = self._h.get_thumbnail((int(size[0]), int(size[1])))
        except Exception as err:
            raise self._error("cannot read a thumbnail", err) from err
        return _to_rgb(im)

    def read_level(self, level: int) -> np.ndarray:
        """A whole pyramid level as (H, W, 3) uint8."""
        w, h = self.level_dimensions[level]
        return np.asarray(self.read_region((0, 0), level, (w, h)))

    def size_at_mpp(self, target_mpp: float) -> tuple[int, int]:
        """(H, W) of :meth:`read_at_mpp`'s image, from the header alone (no pixels read)."""
        ds = float(target_mpp) / self.require_mpp()
        w0, h0 = self.dimensions
        return max(1, round(h0 / ds)), max(1, round(w0 / ds))

    def read_at_mpp(self, target_mpp: float) -> np.ndarray:
        """The whole slide resampled to ``target_mpp`` um/px, aspect ratio kept: reads the pyramid
        level nearest above that resolution and resizes (area filter), so nothing is upsampled
        unless the slide itself is coarser than the target."""
        ds = float(target_mpp) / self.require_mpp()
        level = self.best_level_for_downsample(ds)
        arr = self.read_level(level)
        out_h, out_w = self.size_at_mpp(target_mpp)
        if (out_w, out_h) == (arr.shape[1], arr.shape[0]):
            return arr
        return np.asarray(Image.fromarray(arr).resize((out_w, out_h), Image.BOX
                                                      if out_w <= arr.shape[1] else Image.BICUBIC))

    def close(self) -> None:
        h, self._h = self._h, None
        if h is not None:
            h.close()

    def __enter__(self) -> "Slide":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"Slide({str(self.path)!r}, backend={self.backend!r}, dimensions={self.dimensions},"
                f" levels={self.level_count}, mpp={self.mpp})")


def _to_rgb(im: Image.Image) -> Image.Image:
    """Flatten RGBA onto white: OpenSlide marks pixels outside the scanned area transparent."""
    if im.mode == "RGB":
        return im
    if im.mode == "RGBA":
        bg = Image.new("RGB", im.size, (255, 255, 255))
        bg.paste(im, mask=im.getchannel("A"))
        return bg
    return im.convert("RGB")


_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"BM", "a BMP image"),
    (b"\x00\x00\x00\x0cjP  ", "a JPEG 2000 image"),
    (b"ZISRAWFILE", "a Zeiss CZI file"),
    (b"PK\x03\x04", "a ZIP archive"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"%PDF", "a PDF document"),
    (b"<!DOCTYPE html", "an HTML page (a failed download?)"),
    (b"<html", "an HTML page (a failed download?)"),
    (b"<?xml", "an XML document"),
)


def _sniff(path: Path) -> str | None:
    """What a file that no slide reader opened is, from its first bytes (None: looks like a TIFF
    or is unknown, i.e. probably a damaged slide rather than another format)."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError:
        return None
    if not head:
        return None  # empty: a failed copy, reported as damaged
    for magic, kind in _MAGIC:
        if head.lstrip()[: len(magic)].lower() == magic.lower():
            return kind
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return None
    if all(32 <= c < 127 or c in (9, 10, 13) for c in head):
        return "a text file"
    return None


def open_slide(path: str | Path, backend: str = "auto", mpp: float | None = None) -> Slide:
    """Open a whole-slide image.

    ``backend="auto"`` picks a reader per file: OpenSlide when it recognises the format (SVS,
    generic tiled TIFF, NDPI, MRXS, DICOM, ...), else tiffslide (pure Python; reads TIFF/SVS
    variants OpenSlide rejects). ``backend="openslide"`` or ``"tiffslide"`` forces one reader.
    ``mpp`` overrides the file's resolution metadata (for slides without it).
    Raises :class:`SlideError` naming the file and the fix when no reader can open it.
    """
    path = Path(path)
    if not path.is_file():
        raise SlideError(f"{path}: no such file. Fix: check the dataset's slide directory "
                         f"(paths resolve against $BENCH_DATA) and the slide id.")
    if backend != "auto" and backend not in BACKENDS:
        raise ValueError(f"unknown slide backend {backend!r}; choose one of {BACKENDS} or 'auto'")
    order = BACKENDS if backend == "auto" else (backend,)
    errors = []
    for name in order:
        try:
            handle = _open_backend(path, name)
        except Exception as err:  # each reader has its own exception zoo
            errors.append(f"{name}: {type(err).__name__}: {err}")
            continue
        try:
            return Slide(path, handle, name, mpp=mpp)
        except SlideError as err:
            handle.close()
            errors.append(f"{name}: {err}")
    if path.suffix.lower() == ".mrxs":  # the stub is a text file; the slide is its directory
        folder = path.with_suffix("")
        raise SlideError(
            f"{path}: the MIRAX slide could not be opened ({'; '.join(errors)}). A MIRAX slide is "
            f"the .mrxs file plus the directory {folder} with Slidedat.ini, Index.dat and the "
            f"Data*.dat files{'' if folder.is_dir() else ', which does not exist'}. Fix: copy that "
            f"directory completely next to the .mrxs (a missing or partly copied file in it is the "
            f"usual cause), or exclude the slide (`bench extract --skip-errors`)."
        )
    kind = _sniff(path)
    if kind is not None:
        raise SlideError(
            f"{path}: unsupported format: the file is {kind}, not a whole-slide image a reader here "
            f"opens ({'; '.join(errors)}). Fix: convert it to a pyramidal tiled TIFF (e.g. `vips "
            f"tiffsave in out.tiff --tile --pyramid --compression jpeg`; bfconvert for CZI/LIF), "
            f"re-download it if it should be a slide, or remove it from the slide folder."
        )
    raise SlideError(
        f"{path}: no reader could open this file ({'; '.join(errors)}). Fix: check it is a "
        f"complete whole-slide image (SVS, tiled TIFF, NDPI, MRXS, DICOM...) -- re-download or "
        f"re-copy it if it is truncated, or exclude it (`bench extract --skip-errors`)."
    )
