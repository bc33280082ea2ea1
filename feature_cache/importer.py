"""Import feature directories made by CLAM or TRIDENT into the cache instead of recomputing them.

Accepted layouts (``src`` is the directory given to ``bench extract --import``):

* CLAM: ``src/h5_files/<slide>.h5`` (datasets ``features`` (N, D), ``coords`` (N, 2)) and/or
  ``src/pt_files/<slide>.pt`` (a (N, D) tensor; coordinates then come from the matching
  ``h5_files/<slide>.h5``, or from the patch-coordinate h5 CLAM wrote in ``patches/``);
* TRIDENT: ``src/<slide>.h5`` (e.g. ``.../20x_256px_0px_overlap/features_conch_v1/``), same
  datasets, ``features`` possibly with a leading batch axis of 1.

Why validation is strict: imported files are trusted as if this cache had made them (same
directory key as the encoder's own extraction), so a wrong encoder, a wrong patch size or
magnification, or coordinates from another slide would silently poison every result. Each file
must have the encoder's dim, finite values, integer non-negative (N, 2) coordinates matching the
feature count, coordinates inside the slide when the slide is known, and -- when the file's
``coords`` attributes say so -- the cache's patch size and magnification.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import h5py
import numpy as np

from .io import non_finite_rows

__all__ = ["ImportReport", "ImportError_", "import_features", "find_feature_files", "PreExtracted",
           "ReleaseEncoder", "release_files"]

log = logging.getLogger(__name__)


class ImportError_(ValueError):
    """An imported feature file is invalid; the message names the file, the problem and the fix."""


@dataclass
class ImportReport:
    cache_dir: Path
    imported: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # already in the cache
    failed: dict[str, str] = field(default_factory=dict)
    unknown: list[str] = field(default_factory=list)  # files whose id is not in `slides`
    missing: list[str] = field(default_factory=list)  # slides with no file in `src`
    seconds: float = 0.0

    def summary(self) -> str:
        parts = [f"{len(self.imported)} imported", f"{len(self.skipped)} already cached"]
        if self.failed:
            parts.append(f"{len(self.failed)} invalid ({', '.join(self.failed)})")
        if self.missing:
            parts.append(f"{len(self.missing)} slides without a file")
        if self.unknown:
            parts.append(f"{len(self.unknown)} files for unknown slides")
        return f"{'; '.join(parts)} in {self.seconds:.1f}s -> {self.cache_dir}"


def find_feature_files(src: Path) -> dict[str, dict[str, Path]]:
    """{slide_id: {"h5": path, "pt": path}} for every feature file under ``src`` (see module)."""
    src = Path(src)
    if not src.is_dir():
        raise ImportError_(f"{src}: not a directory. Fix: pass a CLAM features directory (with "
                           f"h5_files/ or pt_files/) or a TRIDENT features_<encoder>/ directory.")
    found: dict[str, dict[str, Path]] = {}
    for kind, folders in (("h5", (src / "h5_files", src)), ("pt", (src / "pt_files", src))):
        for folder in folders:
            for p in sorted(folder.glob(f"*.{kind}")) if folder.is_dir() else ():
                found.setdefault(p.stem, {}).setdefault(kind, p)
    if not found:
        raise ImportError_(f"{src}: no .h5 or .pt feature files (looked in {src}, "
                           f"{src / 'h5_files'}, {src / 'pt_files'}).")
    return found


def _coords_from_patches(src: Path, sid: str) -> Path | None:
    for cand in (src / "patches" / f"{sid}.h5", src.parent / "patches" / f"{sid}.h5"):
        if cand.is_file():
            return cand
    return None


def _read(sid: str, files: dict[str, Path], src: Path) -> tuple[np.ndarray, np.ndarray,
                                                                  dict[str, Any], Path]:
    """(features (N, D) float32, coords (N, 2) int64, coords attrs, file used for features)."""
    feats = coords = None
    attrs: dict[str, Any] = {}
    h5 = files.get("h5")
    origin = files.get("pt") or h5
    if "pt" in files:
        import torch

        try:
            obj = torch.load(str(files["pt"]), map_location="cpu", weights_only=True)
        except Exception as err:
            raise ImportError_(f"{files['pt']}: cannot read ({type(err).__name__}: {err})") from err
        if isinstance(obj, dict) and "features" in obj:
            obj = obj["features"]
        feats = np.asarray(obj.float().numpy() if hasattr(obj, "numpy") else obj)
        if h5 is None:
            h5 = _coords_from_patches(src, sid)
    if h5 is not None:
        try:
            with h5py.File(h5, "r") as f:
                if feats is None:
                    if "features" not in f:
                        raise ImportError_(f"{h5}: no 'features' dataset (has {list(f)})")
                    feats = np.asarray(f["features"])
                if "coords" in f:
                    coords = np.asarray(f["coords"])
                    attrs = {k: (v.item() if hasattr(v, "item") else v)
                             for k, v in f["coords"].attrs.items()}
        except OSError as err:
            raise ImportError_(f"{h5}: not a readable HDF5 file ({err}); it may be truncated. "
                               f"Fix: re-copy it, or remove it and extract that slide.") from err
    if coords is None:
        raise ImportError_(f"{origin}: no patch coordinates for slide {sid!r}. Fix: put the "
                           f"matching h5 (with 'coords') in h5_files/ or patches/ next to it.")
    assert feats is not None and origin is not None
    while feats.ndim == 3 and feats.shape[0] == 1:  # TRIDENT/CLAM batch axis
        feats = feats[0]
    return feats, coords, attrs, origin


def _validate(sid: str, origin: Path, feats: np.ndarray, coords: np.ndarray,
              attrs: Mapping[str, Any], dim: int, encoder: str, patch_size: int, mag: float,
              slide_size: tuple[int, int] | None, side0: int | None) -> tuple[np.ndarray, np.ndarray]:
    def bad(why: str, fix: str) -> ImportError_:
        return ImportError_(f"{origin} (slide {sid!r}): {why}. Fix: {fix}.")

    if feats.ndim != 2:
        raise bad(f"features have shape {feats.shape}, expected (N, D)", "export per-slide 2-D features")
    if feats.shape[1] != dim:
        raise bad(f"features are {feats.shape[1]}-d but encoder {encoder!r} is {dim}-d",
                  "import them with the encoder that made them (--encoders)")
    if coords.ndim != 2 or coords.shape[1] != 2 or len(coords) != len(feats):
        raise bad(f"coords have shape {coords.shape} for {len(feats)} feature rows",
                  "use the coords written with these features")
    if non_finite_rows(feats):
        raise bad(f"features contain NaN or inf in {non_finite_rows(feats)}", "re-extract this slide")
    if not np.all(np.asarray(coords) == np.round(coords)) or (coords < 0).any():
        raise bad("coords are not non-negative integers (level-0 pixels)", "re-extract this slide")
    if "patch_size_level0" in attrs and side0 is not None and int(attrs["patch_size_level0"]) != side0:
        raise bad(f"patches are {int(attrs['patch_size_level0'])} level-0 px but {patch_size} px "
                  f"at {mag:g}x is {side0} on this slide", "import into the matching patch size "
                  "and magnification (--patch-size/--magnification), or re-extract")
    if "target_magnification" in attrs and float(attrs["target_magnification"]) != float(mag):
        raise bad(f"features were extracted at {float(attrs['target_magnification']):g}x, this "
                  f"cache is {mag:g}x", "import with the matching magnification")
    if slide_size is not None and len(coords):
        w, h = slide_size
        if coords[:, 0].max() >= w or coords[:, 1].max() >= h:
            raise bad(f"coords reach ({coords[:, 0].max()}, {coords[:, 1].max()}) outside the "
                      f"{w}x{h} slide", "check the slide id matches the file (another slide's "
                      "features?)")
    return feats.astype(np.float32), coords.astype(np.int64)


def import_features(cache: Any, src: str | os.PathLike, encoder: Any, *,
                    slides: Mapping[str, str | os.PathLike] | None = None,
                    patch_size: int | None = None, magnification: float | None = None,
                    min_tissue: float = 0.5, skip_errors: bool = True,
                    mpp: float | None = None, reader: str = "auto") -> ImportReport:
    """Copy valid CLAM/TRIDENT feature files into ``cache`` under ``encoder``'s key.

    ``slides`` ({id: slide path}) restricts the import to a cohort and enables the checks that
    need the slide (coordinates inside it, patch size in level-0 px) and the slide identity that
    re-extracts when a slide file changes (``mpp`` and ``reader`` open those slides, as
    :func:`~feature_cache.slide.open_slide`'s ``mpp`` and ``backend``). Files already cached are
    left alone.
    """
    from feature_cache.cache import (CACHE_FORMAT_VERSION, slide_stem, cache_code_version,
                                     slide_identity_attrs, write_h5)
    from feature_cache.slide import SlideError, mag_to_mpp, open_slide
    from feature_cache.tissue import patch_size_level0

    t0 = time.perf_counter()
    if getattr(encoder, "random_weights", False):
        raise ImportError_(f"encoder {encoder.name!r} has random weights here: imported features "
                           f"would be filed as random-weights features. Fix: make the real weights "
                           f"available (see the weights order in docs/feature_cache.md).")
    ps = int(patch_size if patch_size is not None else encoder.patch_size)
    mag = float(magnification if magnification is not None else encoder.magnification)
    out_dir = cache.dir_for(encoder, ps, mag, min_tissue)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = ImportReport(cache_dir=out_dir)
    src = Path(src)
    found = find_feature_files(src)
    if slides is not None:
        report.unknown = sorted(set(found) - set(slides))
        report.missing = sorted(set(slides) - set(found))
        todo = [sid for sid in found if sid in slides]
    else:
        todo = sorted(found)
    for sid in todo:
        out = out_dir / f"{slide_stem(sid)}.h5"
        if cache.is_done(out):
            report.skipped.append(sid)
            continue
        try:
            feats, coords, attrs, origin = _read(sid, found[sid], src)
            slide_size = side0 = None
            extra: dict[str, Any] = {}
            if slides is not None:
                spath = Path(slides[sid])
                with open_slide(spath, backend=reader, mpp=mpp) as s:
                    slide_size = s.dimensions
                    side0 = patch_size_level0(s, ps, mag)
                    extra = {"slide_path": str(spath.resolve()), **slide_identity_attrs(spath),
                             "mpp": float(s.require_mpp()), "patch_size_level0": side0}
            feats, coords = _validate(sid, origin, feats, coords, attrs, encoder.dim, encoder.name,
                                      ps, mag, slide_size, side0)
        except (ImportError_, SlideError) as err:
            if not skip_errors:
                raise
            log.error("not imported: %s", err)
            report.failed[sid] = str(err)
            continue
        file_attrs = {
            "slide_id": sid, **extra,
            "encoder": encoder.name, "encoder_fingerprint": encoder.fingerprint,
            "weights_source": encoder.weights_source, "random_weights": False,
            "patch_size": ps, "magnification": mag, "target_mpp": mag_to_mpp(mag),
            "min_tissue": min_tissue, "code_version": cache_code_version(),
            "cache_format": CACHE_FORMAT_VERSION,
            "no_tissue": len(coords) == 0, "imported_from": str(origin.resolve()),
            "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        coord_attrs = {k: v for k, v in attrs.items() if isinstance(v, (int, float, str, np.number))}
        coord_attrs.setdefault("target_magnification", mag)
        write_h5(out, feats, coords, file_attrs, coord_attrs)
        report.imported.append(sid)
    report.seconds = time.perf_counter() - t0
    log.info("feature import: %s", report.summary())
    return report


# ---------------------------------------------------------------------------------------------
# Public pre-extracted releases read in place (no copy, no slide, no encoder weights)

@dataclass(frozen=True)
class ReleaseEncoder:
    """What a run needs to know of the encoder that made a public feature release: its name,
    dim, patch size and magnification as declared; it never runs (the release has no weights)."""

    name: str
    dim: int
    patch_size: int
    magnification: float
    release: str  # the encoder the release names (e.g. "resnet50", "conch_v1")
    fingerprint: str
    source: str  # the folder
    random_weights: bool = False
    standin: bool = False

    @property
    def weights_label(self) -> str:
        return f"pre-extracted {self.release} features ({self.source})"

    @property
    def weights_source(self) -> str:
        return self.weights_label

    @property
    def weights_provenance(self) -> list[Any]:
        """No weights were loaded: the features were read from the release (the encoders' face)."""
        return []


def release_files(root: Path) -> dict[str, Path]:
    """{slide id: .h5} under ``root`` at any depth (per-project folders, CLAM's ``h5_files/``,
    TRIDENT's ``features_<encoder>/``), symlinked folders followed once. The slide id is the
    file stem: the full slide barcode, e.g. ``TCGA-05-4244-01Z-00-DX1.<UUID>``."""
    out: dict[str, Path] = {}
    seen: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        st = os.stat(dirpath)
        if (st.st_dev, st.st_ino) in seen:
            dirnames[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirnames.sort()
        for fn in sorted(filenames):
            if fn.endswith(".h5") and not fn.startswith("."):
                sid = fn[:-3]
                if sid in out:
                    raise ImportError_(f"feature file for slide {sid!r} appears twice: {out[sid]} and "
                                       f"{Path(dirpath) / fn}. Fix: keep one copy, or point `path:` at one "
                                       f"project folder.")
                out[sid] = Path(dirpath) / fn
    return out


def _attr(attrs: Mapping[str, Any], *names: str) -> Any:
    for n in names:
        if n in attrs:
            v = attrs[n]
            return v.decode() if isinstance(v, bytes) else (v.item() if hasattr(v, "item") else v)
    return None


class PreExtracted:
    """A TRIDENT/CLAM-format feature release used in place of the feature cache: the same
    ``extract`` / ``load`` / ``load_attrs`` / ``path_for`` / ``dir_for`` face as
    :class:`~feature_cache.cache.FeatureCache`, but ``extract`` only checks the files (shape,
    dim, and the declared encoder, patch size and magnification against the attributes a file
    carries) and never opens a slide."""

    def __init__(self, root: str | os.PathLike, encoder: ReleaseEncoder,
                 files: Mapping[str, Path] | None = None) -> None:
        self.root = Path(root)
        self.encoder = encoder
        self.files = dict(files) if files is not None else release_files(self.root)
        self.aliases: dict[str, str] = {}  # slide id -> the file id it was matched to by barcode
        self.ambiguous: dict[str, list[str]] = {}  # slide id -> files sharing its barcode, not matched
        self.note: str | None = None  # what the last `extract` matched by barcode (:meth:`match`)

    def match(self, slide_ids: list[str]) -> str | None:
        """Match the slides that have no file of their exact name to the one file named by the same
        slide barcode (the id before the GDC UUID: ``TCGA-05-4244-01Z-00-DX1.h5`` for the slide
        ``TCGA-05-4244-01Z-00-DX1.<UUID>.svs``, or the other way round), when exactly one file and one
        slide share that barcode. Returns the line that says so (None when every name matched)."""
        def barcode(sid: str) -> str:
            return sid.split(".", 1)[0]

        self.aliases, self.ambiguous = {}, {}
        files_of: dict[str, list[str]] = {}
        for fid in self.files:
            files_of.setdefault(barcode(fid), []).append(fid)
        slides_of: dict[str, list[str]] = {}
        for sid in slide_ids:
            slides_of.setdefault(barcode(sid), []).append(sid)
        for sid in slide_ids:
            fids = [f for f in files_of.get(barcode(sid), []) if f not in slide_ids]
            if sid in self.files or not fids:
                continue
            if len(fids) == 1 and len(slides_of[barcode(sid)]) == 1:
                self.aliases[sid] = fids[0]
            else:
                self.ambiguous[sid] = fids
        if not self.aliases:
            return None
        sid, fid = next(iter(self.aliases.items()))
        return (f"{self.root}: {len(self.aliases)} slide(s) have no feature file of their exact name; each is "
                f"matched to the one file named by the same slide barcode (e.g. {self.files[fid].name} for "
                f"slide {sid}). Fix, to match by name instead: rename the files to the slide file names "
                f"(e.g. {sid}.h5)")

    def dir_for(self, encoder: Any = None, *args: Any, **kwargs: Any) -> Path:
        return self.root / f"pre-extracted-{self.encoder.release}-{self.encoder.fingerprint}"

    def path_for(self, slide_id: str, encoder: Any = None, *args: Any, **kwargs: Any) -> Path:
        if slide_id in self.ambiguous:
            names = ", ".join(self.files[f].name for f in self.ambiguous[slide_id])
            raise CacheMiss_(f"no pre-extracted feature file named for slide {slide_id!r} under {self.root}, and "
                             f"the file(s) of its barcode ({names}) cannot be told apart (several slides or "
                             f"files share it). Fix: rename the right file to {slide_id}.h5")
        slide_id = self.aliases.get(slide_id, slide_id)
        if slide_id not in self.files:
            raise CacheMiss_(f"no pre-extracted feature file for slide {slide_id!r} under {self.root}. "
                             f"Fix: download that slide's .h5 from the release, or leave the slide out.")
        return self.files[slide_id]

    def has(self, slide_id: str, encoder: Any = None, *args: Any, **kwargs: Any) -> bool:
        return self.aliases.get(slide_id, slide_id) in self.files

    def check(self, slide_id: str) -> None:
        """ImportError_ naming the file when it is not what the dataset declares."""
        path = self.path_for(slide_id)
        enc = self.encoder

        def bad(why: str, fix: str) -> ImportError_:
            return ImportError_(f"{path} (slide {slide_id!r}): {why}. Fix: {fix}.")

        try:
            with h5py.File(path, "r") as f:
                if "features" not in f or "coords" not in f:
                    raise bad(f"no 'features' and 'coords' datasets (has {sorted(f)})",
                              "use the release's per-slide .h5 files (TRIDENT/CLAM layout)")
                fshape, cshape = f["features"].shape, f["coords"].shape
                attrs = {**dict(f.attrs), **dict(f["features"].attrs), **dict(f["coords"].attrs)}
                nonfinite = non_finite_rows(np.asarray(f["features"], dtype=np.float32))
        except OSError as err:
            raise bad(f"not a readable HDF5 file ({err}); it may be truncated",
                      "download it again") from err
        if len(fshape) == 3 and fshape[0] == 1:
            fshape = fshape[1:]
        if len(fshape) != 2 or fshape[1] != enc.dim:
            raise bad(f"features have shape {fshape}, expected (N, {enc.dim}) for encoder {enc.name!r}",
                      f"point `features: {{{enc.name}: {{path: ...}}}}` at a release made with {enc.name} "
                      "(its dim must match the methods that read it)")
        if len(cshape) != 2 or cshape[1] != 2 or cshape[0] != fshape[0]:
            raise bad(f"coords have shape {cshape} for {fshape[0]} feature rows",
                      "use the coords written with these features")
        if nonfinite:
            raise bad(f"features contain NaN/inf in {nonfinite}", "download that file again (or leave the slide out)")
        name = _attr(attrs, "encoder", "patch_encoder", "encoder_name")
        if name is not None and str(name).lower() != enc.release.lower():
            raise bad(f"made with encoder {name!r}, the dataset declares {enc.release!r}",
                      "correct `encoder:` under `features:` in the dataset config, or use the matching release")
        ps = _attr(attrs, "patch_size")
        if ps is not None and int(ps) != enc.patch_size:
            raise bad(f"patches of {int(ps)} px, the dataset declares patch_size {enc.patch_size}",
                      "correct `patch_size:` under `features:` (or use the matching release)")
        mag = _attr(attrs, "target_magnification", "magnification")
        if mag is not None and float(mag) != enc.magnification:
            raise bad(f"extracted at {float(mag):g}x, the dataset declares magnification {enc.magnification:g}",
                      "correct `magnification:` under `features:` (or use the matching release)")

    def extract(self, slides: Mapping[str, Any], encoder: Any = None, **kwargs: Any) -> Any:
        """Check the files of ``slides`` (ids; the paths are not opened): missing or invalid ones
        are in ``report.failed`` with the reason, like slides that fail extraction. Files named by
        the slide barcode alone are matched first (:meth:`match`; ``self.note`` says so)."""
        from feature_cache.cache import ExtractReport

        report = ExtractReport(cache_dir=self.dir_for())
        self.note = self.match(list(slides))
        for sid in slides:
            try:
                self.check(sid)
            except (ImportError_, CacheMiss_) as err:
                report.failed[sid] = str(err)
                continue
            report.skipped.append(sid)
        return report

    def load(self, slide_id: str, encoder: Any = None, *args: Any, **kwargs: Any
             ) -> tuple[np.ndarray, np.ndarray]:
        with h5py.File(self.path_for(slide_id), "r") as f:
            feats = np.asarray(f["features"], dtype=np.float32)
            coords = np.asarray(f["coords"], dtype=np.int64)
        while feats.ndim == 3 and feats.shape[0] == 1:
            feats = feats[0]
        bad = non_finite_rows(feats)
        if bad:
            raise ImportError_(f"{self.path_for(slide_id)} (slide {slide_id!r}): features contain NaN/inf in {bad}. "
                               "Fix: download that file again (or leave the slide out).")
        return feats, coords

    def load_attrs(self, slide_id: str, encoder: Any = None, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """The file's attributes, with ``patch_size_level0`` filled in when the file lacks it
        (from ``level0_magnification``, else the smallest step between coordinates)."""
        path = self.path_for(slide_id)
        with h5py.File(path, "r") as f:
            attrs = {k: _attr(dict(f.attrs), k) for k in f.attrs}
            cattrs = {k: _attr(dict(f["coords"].attrs), k) for k in f["coords"].attrs}
            coords = np.asarray(f["coords"], dtype=np.int64)
        out = {**attrs, **cattrs, "encoder": self.encoder.name, "random_weights": False}
        if "patch_size_level0" not in out:
            l0 = out.get("level0_magnification")
            if l0:
                out["patch_size_level0"] = int(round(self.encoder.patch_size * float(l0) / self.encoder.magnification))
            else:
                steps = np.diff(np.unique(coords[:, 0])) if len(coords) > 1 else np.array([])
                out["patch_size_level0"] = int(steps.min()) if len(steps) else self.encoder.patch_size
        return out


class CacheMiss_(FileNotFoundError):
    """A slide has no file in a pre-extracted release."""
