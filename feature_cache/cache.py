"""The HDF5 feature cache: one CLAM-compatible file per slide, under a fingerprinted directory.

Layout::

    <root>/<encoder>/ps<patch>_mag<mag>_<key-hash>/
        key.json              everything the hash covers, for humans and audits
        <slide_id>.h5         datasets `features` (N, D) float32, `coords` (N, 2) int64
        <slide_id>.h5.lock    per-slide lock (fcntl; released by the OS if a worker dies)
        <slide_id>.h5.lock.info  who holds it: pid, host, since (JSON), for the workers that wait

Why each piece:

* The directory hash covers everything that changes the numbers (encoder name, a fingerprint of
  its weight *values*, preprocessing version, patch size, magnification, tissue threshold, format
  version), so a changed parameter can never reuse stale features.
* "Done" means the final ``.h5`` exists and opens with its datasets. It is written through a
  temporary file and renamed (``feature_cache.io.atomic_path``): a killed writer leaves only a
  ``.<slide_id>.h5.*.tmp`` that is never taken for a result. Its arrays' sha256 is written with them
  and checked on every load.
* A per-slide ``filelock`` lets several processes share one cache: a worker that finds a slide
  locked moves on and comes back to it at the end, then skips it if the other worker finished it.
* A worker waiting on a slide lock says who holds it, every ``lock_report_s`` seconds of
  :meth:`FeatureCache.extract` (``feature_cache.locks``); a dead holder's lock is broken.
* Each file records the slide's fingerprint (:func:`feature_cache.slide.slide_fingerprint`: size,
  first and last 64 KiB of each file); a cached file made from a different file under the same id
  (a regenerated demo, a re-scanned slide) is extracted again instead of being trusted.
* A slide with no tissue gets an empty-but-valid file: ``features`` (0, D), ``coords`` (0, 2) and
  the attribute ``no_tissue=True``. It counts as done (a rerun does not segment it again), it is
  listed in ``ExtractReport.no_tissue`` on every run, and :meth:`FeatureCache.load` returns the
  empty arrays -- callers must treat N = 0 as "no bag" (a warning is logged at extraction).
* Coordinates are level-0 pixels of each patch's top-left corner, as in CLAM and TRIDENT; the
  ``coords`` dataset carries CLAM's ``patch_level``/``patch_size`` and TRIDENT's
  ``patch_size_level0``/``level0_magnification``/``target_magnification`` attributes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import h5py
import numpy as np
from filelock import FileLock

from feature_cache.encoders import Encoder
from feature_cache.loader import default_threads, default_workers
from feature_cache.io import atomic_path, atomic_write_text, non_finite_rows
from feature_cache.locks import acquire_talking, release_talking
from feature_cache.slide import SlideError, mag_to_mpp, mpp_to_mag, open_slide, slide_fingerprint, slide_stat
from feature_cache.tissue import patch_grid, patch_size_level0, segment_tissue

__all__ = ["FeatureCache", "ExtractReport", "CacheMissError", "CACHE_FORMAT_VERSION"]

log = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = 3  # 2: ink/artefact-aware tissue mask; 3: red/purple ink too. Bump when the file layout or the tissue/grid algorithm changes
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


class CacheMissError(FileNotFoundError):
    """No finished features for a slide under this cache key; the message says how to make them."""


class FeatureFileCorrupt(ValueError):
    """A cached feature file's arrays are not what was written (NaN/inf, or a checksum mismatch)."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


def arrays_sha256(feats: np.ndarray, coords: np.ndarray) -> str:
    """Checksum of a feature file's two arrays (dtype, shape and bytes), written with them."""
    h = hashlib.sha256()
    for a in (np.ascontiguousarray(feats, dtype=np.float32), np.ascontiguousarray(coords, dtype=np.int64)):
        h.update(f"{a.dtype}|{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


@dataclass
class ExtractReport:
    """What one :meth:`FeatureCache.extract` call did, per slide id."""

    cache_dir: Path
    done: list[str] = field(default_factory=list)  # extracted now
    skipped: list[str] = field(default_factory=list)  # already in the cache
    failed: dict[str, str] = field(default_factory=dict)  # id -> error message
    no_tissue: list[str] = field(default_factory=list)  # no tissue: empty file (N = 0)
    n_patches: dict[str, int] = field(default_factory=dict)  # for `done` slides
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed

    def summary(self) -> str:
        parts = [f"{len(self.done)} extracted", f"{len(self.skipped)} already cached"]
        if self.no_tissue:
            parts.append(f"{len(self.no_tissue)} without tissue ({', '.join(self.no_tissue)})")
        if self.failed:
            parts.append(f"{len(self.failed)} failed ({', '.join(self.failed)})")
        return f"{'; '.join(parts)} in {self.seconds:.1f}s -> {self.cache_dir}"


def slide_stem(slide_id: str) -> str:
    """The file stem of a slide id (DESIGN §6: ids never become paths unsanitized).

    A plain id (letters, digits, '.', '_', '-', not starting with '.') is its own stem, as CLAM and
    TRIDENT name their files. Any other id that can come from a file name (spaces, accents, a
    leading dot) gets a readable ASCII stem plus a hash of the id, so two ids never share a file.
    An id that is a path ('../x', '/abs', 'a/b') or '.'/'..' cannot be a file name at all and is
    refused.
    """
    if not isinstance(slide_id, str) or not slide_id:
        raise ValueError(f"slide id {slide_id!r} is not a safe file name. Fix: give every slide a "
                         f"non-empty id.")
    if _SAFE_ID.match(slide_id):
        return slide_id
    if any(c in slide_id for c in "/\\\0") or slide_id.strip(".") == "":
        raise ValueError(f"slide id {slide_id!r} is not a safe file name (it is a path, or '.'/'..'). "
                         f"Fix: ids are file names without directories -- rename it in the cohort table.")
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", slide_id).strip("._-")[:150] or "slide"
    return f"{readable}-{hashlib.sha256(slide_id.encode('utf-8')).hexdigest()[:8]}"


def _atomic_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=True))


class FeatureCache:
    """Per-slide patch features for any registered encoder, shared safely between processes."""

    def __init__(self, root: str | os.PathLike, mpp: float | None = None):
        self.root = Path(root)
        # a level-0 resolution that overrides every slide's metadata (the dataset's mpp_override):
        # part of the key, so features at another resolution never share a directory
        self.mpp = None if mpp is None else float(mpp)

    # ------------------------------------------------------------------ keys and paths

    def key(self, encoder: Encoder, patch_size: int | None = None,
            magnification: float | None = None, min_tissue: float = 0.5) -> dict[str, Any]:
        """Everything that changes the cached numbers."""
        from feature_cache import encoders

        return {
            "cache_format": CACHE_FORMAT_VERSION,
            "encoder": encoder.name,
            "encoder_fingerprint": encoder.fingerprint,
            "encoder_code_version": encoders.ENCODER_CODE_VERSION,
            "random_weights": bool(encoder.random_weights),
            "patch_size": int(patch_size if patch_size is not None else encoder.patch_size),
            "magnification": float(magnification if magnification is not None
                                   else encoder.magnification),
            "min_tissue": float(min_tissue),
            **({"mpp_override": self.mpp} if self.mpp is not None else {}),  # absent: existing keys unchanged
        }

    def dir_for(self, encoder: Encoder, patch_size: int | None = None,
                magnification: float | None = None, min_tissue: float = 0.5) -> Path:
        """The directory holding this configuration's files (not created)."""
        key = self.key(encoder, patch_size, magnification, min_tissue)
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
        return (self.root / encoder.name
                / f"ps{key['patch_size']}_mag{key['magnification']:g}_{digest}")

    def path_for(self, slide_id: str, encoder: Encoder, patch_size: int | None = None,
                 magnification: float | None = None, min_tissue: float = 0.5) -> Path:
        return self.dir_for(encoder, patch_size, magnification, min_tissue) / f"{slide_stem(slide_id)}.h5"

    @staticmethod
    def _done_count(path: Path) -> int | None:
        """Patch count of a finished file (0 for a no-tissue slide), None if not finished: a
        finished file exists and opens with both datasets of matching length."""
        if not path.is_file():
            return None
        try:
            with h5py.File(path, "r") as f:
                n = f["features"].shape[0]
                return n if f["coords"].shape[0] == n else None
        except (OSError, KeyError):
            log.warning("%s is unreadable; it will be extracted again", path)
            return None

    @classmethod
    def is_done(cls, path: Path) -> bool:
        return cls._done_count(path) is not None

    def has(self, slide_id: str, encoder: Encoder, patch_size: int | None = None,
            magnification: float | None = None, min_tissue: float = 0.5) -> bool:
        return self.is_done(self.path_for(slide_id, encoder, patch_size, magnification, min_tissue))

    def load(self, slide_id: str, encoder: Encoder, patch_size: int | None = None,
             magnification: float | None = None, min_tissue: float = 0.5
             ) -> tuple[np.ndarray, np.ndarray]:
        """(features float32 (N, D), coords int64 (N, 2) level-0 top-left x, y) of one slide;
        N = 0 for a slide without tissue."""
        path = self.path_for(slide_id, encoder, patch_size, magnification, min_tissue)
        if not path.is_file():
            raise CacheMissError(
                f"no cached features for slide {slide_id!r} with encoder {encoder.name!r} "
                f"({path} does not exist). Fix: run "
                f"`python -m bench extract --encoders {encoder.name}` for its dataset, or "
                f"FeatureCache.extract().")
        with h5py.File(path, "r") as f:
            feats = np.asarray(f["features"], dtype=np.float32)
            coords = np.asarray(f["coords"], dtype=np.int64)
            want = f.attrs.get("arrays_sha256")
        if non_finite_rows(feats):
            raise FeatureFileCorrupt(path, f"contain NaN/inf (in {non_finite_rows(feats)})")
        if want is not None and arrays_sha256(feats, coords) != str(want):
            raise FeatureFileCorrupt(path, "do not match the checksum written with them (the file was changed)")
        return feats, coords

    def load_attrs(self, slide_id: str, encoder: Encoder, patch_size: int | None = None,
                   magnification: float | None = None, min_tissue: float = 0.5) -> dict[str, Any]:
        """The file's attributes (encoder, weights fingerprint, random_weights, mpp, ...)."""
        path = self.path_for(slide_id, encoder, patch_size, magnification, min_tissue)
        with h5py.File(path, "r") as f:
            return {k: (v.item() if hasattr(v, "item") else v) for k, v in f.attrs.items()}

    # ------------------------------------------------------------------ extraction

    def extract(self, slides: Mapping[str, str | os.PathLike], encoder: Encoder, *,
                patch_size: int | None = None, magnification: float | None = None,
                min_tissue: float = 0.5, batch_size: int = 32, progress: bool = True,
                skip_errors: bool = False, mpp: float | None = None, reader: str = "auto",
                visualize: str | os.PathLike | None = None, num_workers: int | None = None,
                threads: int | None = None, lock_report_s: float = 60.0) -> ExtractReport:
        """Extract features for every slide not yet cached; resumable and multi-process safe.

        A failing slide raises :class:`SlideError` unless ``skip_errors``, in which case it is
        recorded in ``report.failed`` and the others go on. Either way, slides finished before the
        failure stay cached.

        ``mpp`` overrides every slide's level-0 resolution (for scans without metadata); ``reader``
        forces a slide reader (``openslide``/``tiffslide``); ``visualize`` is a directory that
        receives ``<slide_id>.png`` overviews of the tissue mask and the patch grid;
        ``num_workers`` DataLoader worker processes decode and transform tiles while the encoder
        runs (default :func:`~feature_cache.loader.default_workers`: cores - 1, 1 to 4);
        ``num_workers=0`` decodes in ``threads`` threads of this process instead (default
        ``min(4, cpu_count)``). Either way the lock, resume and ``skip_errors`` rules are the same:
        workers only read, this process writes. ``lock_report_s``: while a slide's lock is held by
        another process, how often to say who holds it (and to check whether it still runs).
        """
        from tqdm.auto import tqdm

        t0 = time.perf_counter()
        if mpp is not None and self.mpp is None:
            self.mpp = float(mpp)  # the override keys the directory (see __init__)
        elif mpp is not None and float(mpp) != self.mpp:
            raise ValueError(f"extract(mpp={mpp}) on a cache keyed by mpp {self.mpp}: make a FeatureCache(mpp={mpp})")
        mpp = self.mpp
        ps = int(patch_size if patch_size is not None else encoder.patch_size)
        mag = float(magnification if magnification is not None else encoder.magnification)
        out_dir = self.dir_for(encoder, ps, mag, min_tissue)
        out_dir.mkdir(parents=True, exist_ok=True)
        key_file = out_dir / "key.json"
        if not key_file.exists():
            _atomic_json(key_file, {**self.key(encoder, ps, mag, min_tissue),
                                    "weights_source": encoder.weights_source})
        report = ExtractReport(cache_dir=out_dir)
        items = []
        for sid, p in slides.items():
            try:
                slide_stem(sid)
            except ValueError as err:
                if not skip_errors:
                    raise
                log.error("skipping %s: %s", sid, err)
                report.failed[sid] = str(err)
                continue
            items.append((sid, Path(p)))
        if encoder.random_weights:
            log.warning("extracting with RANDOM %s weights into %s", encoder.name, out_dir)

        self._open = {"mpp": mpp, "backend": reader}
        self._visualize = Path(visualize) if visualize is not None else None
        self._lock_report_s = float(lock_report_s)
        self._workers = default_workers() if num_workers is None else max(0, int(num_workers))
        self._threads = default_threads() if threads is None else max(1, int(threads))
        bar = tqdm(total=len(items), unit="slide", disable=None if progress else True,
                   desc=f"extract {encoder.name}")
        try:
            deferred = []
            for sid, path in items:
                if not self._try_slide(sid, path, encoder, ps, mag, min_tissue, batch_size,
                                       skip_errors, report, out_dir, blocking=False):
                    deferred.append((sid, path))  # another worker holds it; come back later
                    continue
                bar.update(1)
                bar.set_postfix_str(f"{sid}")
            for sid, path in deferred:
                self._try_slide(sid, path, encoder, ps, mag, min_tissue, batch_size,
                                skip_errors, report, out_dir, blocking=True)
                bar.update(1)
        finally:
            bar.close()
            report.seconds = time.perf_counter() - t0
        log.info("feature extraction: %s", report.summary())
        return report

    def _loader(self) -> tuple[int, int]:
        """(worker processes, threads) for reading patches, as the current ``extract`` set them."""
        return getattr(self, "_workers", 0), getattr(self, "_threads", default_threads())

    def _try_slide(self, sid: str, path: Path, encoder: Encoder, ps: int, mag: float,
                   min_tissue: float, batch_size: int, skip_errors: bool,
                   report: ExtractReport, out_dir: Path, *, blocking: bool) -> bool:
        """Process one slide under its lock; False if the lock is held and ``blocking`` is off."""
        out = out_dir / f"{slide_stem(sid)}.h5"
        if self._skip_if_done(sid, out, report, path):
            self._overview(sid, path, ps, mag, min_tissue, report)
            return True
        lock = FileLock(str(out) + ".lock")
        if not acquire_talking(lock, f"slide {sid}", blocking, getattr(self, "_lock_report_s", 60.0)):
            return False
        try:
            if self._skip_if_done(sid, out, report, path):  # another worker finished it
                return True
            try:
                n = self._extract_slide(sid, path, encoder, ps, mag, min_tissue, batch_size, out)
            except SlideError as err:
                if not skip_errors:
                    raise
                log.error("skipping %s: %s", sid, err)
                report.failed[sid] = str(err)
                return True
            self._overview(sid, path, ps, mag, min_tissue, report)
            if n == 0:
                report.no_tissue.append(sid)
            else:
                report.done.append(sid)
                report.n_patches[sid] = n
            return True
        finally:
            release_talking(lock)

    def _overview(self, sid: str, path: Path, ps: int, mag: float, min_tissue: float,
                  report: ExtractReport) -> None:
        """Write the mask/grid thumbnail when asked and missing (also for cached slides, so a
        user can look at an existing cache). A failure here never fails the slide."""
        vis = getattr(self, "_visualize", None)
        if vis is None or (vis / f"{sid}.png").is_file():
            return
        from feature_cache.visualize import write_overview

        try:
            write_overview(path, vis / f"{sid}.png", ps, mag, min_tissue,
                           **getattr(self, "_open", {}))
        except SlideError as err:
            log.warning("%s: no overview (%s)", sid, err)

    def _skip_if_done(self, sid: str, out: Path, report: ExtractReport, slide_path: Path) -> bool:
        n = self._done_count(out)
        if n is None:
            return False
        if not same_slide(out, slide_path):
            log.warning("%s: cached features were made from a different file than %s (the slide "
                        "changed); extracting again", out, slide_path)
            return False
        (report.no_tissue if n == 0 else report.skipped).append(sid)
        return True

    def _extract_slide(self, sid: str, path: Path, encoder: Encoder, ps: int, mag: float,
                       min_tissue: float, batch_size: int, out: Path) -> int:
        """Segment, grid, encode and write one slide; returns the patch count (0: no tissue)."""
        with open_slide(path, **getattr(self, "_open", {})) as slide:
            mask, ds = segment_tissue(slide)
            coords = patch_grid(slide, mask, ds, ps, mag, min_tissue)
            side0 = patch_size_level0(slide, ps, mag)
            level = slide.best_level_for_downsample(side0 / ps)
            read = max(1, int(round(side0 / slide.level_downsamples[level])))
            feats = np.empty((len(coords), encoder.dim), np.float32)
            if len(coords) == 0:
                log.warning("%s (%s): no tissue patches at %gx; writing an empty feature file",
                            sid, path, mag)
            else:
                for i, batch in read_batches(path, getattr(self, "_open", {}), coords, level,
                                              read, ps, batch_size, encoder, *self._loader()):
                    feats[i : i + len(batch)] = encoder(batch).numpy()  # (B, D)
            attrs = {
                "slide_id": sid,
                "slide_path": str(Path(path).resolve()),
                **slide_identity_attrs(Path(path)),
                "encoder": encoder.name,
                "encoder_fingerprint": encoder.fingerprint,
                "weights_source": encoder.weights_source,
                "random_weights": bool(encoder.random_weights),
                "patch_size": ps,
                "magnification": mag,
                "mpp": float(slide.require_mpp()),
                "target_mpp": mag_to_mpp(mag),
                "patch_size_level0": side0,
                "patch_level": level,
                "min_tissue": min_tissue,
                "tissue_downsample": ds,
                "code_version": cache_code_version(),
                "cache_format": CACHE_FORMAT_VERSION,
                "no_tissue": len(coords) == 0,
                "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            coord_attrs = {
                "patch_level": level,  # CLAM: read at this level ...
                "patch_size": read,  # ... with this size
                "patch_size_level0": side0,  # TRIDENT
                "level0_magnification": mpp_to_mag(slide.require_mpp()),
                "target_magnification": mag,
                "overlap": 0,
            }
        write_h5(out, feats, coords, attrs, coord_attrs)
        return len(coords)


def slide_identity_attrs(path: Path) -> dict[str, Any]:
    """The slide attributes of a feature file: its content identity
    (:func:`~feature_cache.slide.slide_fingerprint`), with size and mtime for people."""
    size, mtime_ns = slide_stat(path)
    return {"slide_size": size, "slide_mtime_ns": mtime_ns, "slide_fingerprint": slide_fingerprint(path)}


def same_slide(out: Path, slide_path: Path) -> bool:
    """Was ``out`` extracted from this very file? Its stored slide fingerprint against the slide's
    now. A file written before fingerprints (``slide_hash`` only) is trusted while the slide's size
    and mtime are unchanged, so it is not extracted again for nothing. Files without slide
    attributes (imported from elsewhere) are trusted."""
    try:
        with h5py.File(out, "r") as f:
            stored, size, mtime = (f.attrs.get(k) for k in ("slide_fingerprint", "slide_size", "slide_mtime_ns"))
            legacy = f.attrs.get("slide_hash")
        if stored is not None:
            return str(stored) == slide_fingerprint(slide_path)
        now_size, now_mtime = slide_stat(slide_path)
    except OSError:
        return True  # slide unreachable now: the extraction step reports that, not the cache
    if legacy is None or size is None:
        return True
    return int(size) == now_size and mtime is not None and int(mtime) == now_mtime


def cache_code_version() -> str:
    import feature_cache

    return feature_cache.__version__


def read_batches(path: Path, open_kwargs: Mapping[str, Any], coords: np.ndarray, level: int,
                  read: int, ps: int, batch_size: int, encoder: Encoder, workers: int = 0,
                  threads: int | None = None) -> Iterator[tuple[int, Any]]:
    """(start index, transformed float batch (B, 3, S, S)) in order, decoded by ``workers``
    DataLoader processes (``0``: ``threads`` threads in this process) while the caller runs the
    encoder on the previous batch (feature_cache/loader.py)."""
    from feature_cache.loader import load_batches

    yield from load_batches(path, open_kwargs, coords, level, read, ps, batch_size,
                            encoder.preprocess, workers=workers, threads=threads,
                            pin_memory=getattr(encoder, "device", None) is not None
                            and encoder.device.type == "cuda")


def write_h5(out: Path, feats: np.ndarray, coords: np.ndarray, attrs: Mapping[str, Any],
              coord_attrs: Mapping[str, Any]) -> None:
    """Write through a temporary file and rename: the final name only ever holds a complete file."""
    try:
        with atomic_path(out) as tmp, h5py.File(tmp, "w") as f:
            f.create_dataset("features", data=feats)
            d = f.create_dataset("coords", data=coords.astype(np.int64))
            for k, v in coord_attrs.items():
                d.attrs[k] = v
            for k, v in attrs.items():
                f.attrs[k] = v
            f.attrs["arrays_sha256"] = arrays_sha256(feats, coords)  # verified by FeatureCache.load
    except OSError as err:  # disk full, quota...: no half file stays behind; the error names the file
        raise OSError(err.errno, f"cannot write {out}: {err}", str(out)) from err
