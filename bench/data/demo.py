"""The demo cohort: a small synthetic TCGA-style cohort generated deterministically from a seed.

Why it exists (DESIGN §7): ``--dataset demo`` must work on a fresh machine with no downloads, on
the same code paths as a real cohort -- real pyramidal tiled JPEG TIFFs that OpenSlide and
tiffslide open, with mpp, TCGA-style barcodes, several slides for some cases, and a normalized
clinical table -- and methods must be able to *differ* on it. So stage and survival are driven by
planted patterns, some visible inside one patch and some only across the whole slide.

Generative model (version ``DEMO_VERSION``; also written into ``MANIFEST.json``)
-------------------------------------------------------------------------------
Per case ``i`` (randomness from ``SeedSequence([seed, i])``, so a case does not change when
``n_cases`` does, except for the balanced stage/event draws below):

* ``stage`` in 0..3: a seeded permutation of ``arange(n) % 4`` -- every stage has ``n/4`` cases.
* **Local signal (texture, visible in a 256-px patch at 20x).** Part of the tissue is "tumour"
  (a smooth random region covering a fraction ``U(0.35, 0.8)`` of the tissue); its nuclei have
  density ``(30 + 15 * stage) * LogNormal(0, 0.3)`` per 256x256 px, radius
  ``3.2 + 0.8 * stage + N(0, 0.7)`` px and a hematoxylin colour that darkens with stage
  (``+ N(0, 12)`` per channel). Outside the tumour region nuclei are small, sparse and pale
  (stage-independent). Stain colour of the stroma varies per slide independently of stage
  (a nuisance, as in real cohorts).
* **Long-range signal (arrangement, invisible in any one patch).** A latent dispersion
  ``d ~ U(0, 1)`` sets how many separate tissue foci the slide has
  (``clip(1 + floor(4 d + N(0, 0.5)), 1, 4)``) and how far apart they lie (minimum gap
  ``60 + 500 d`` px; when the foci do not fit, the gap narrows before they shrink). Total
  tissue area is held roughly constant (about 24 patches of 256 px), so the patch count does not
  give the arrangement away: 12-28 tissue patches at 20x per slide (mean ~20), which keeps
  ResNet-50 extraction of the whole demo near 90 s on 2 CPU cores.
* **Survival.** log-hazard ``eta = 0.7 * stage + 1.6 * (d - 0.5) + N(0, 0.5)``; true time
  ``T = 30 * Exp(1) / exp(eta - 1)`` months. A seeded subset of ``round(0.45 n)`` cases have the
  death observed (``event = 1``, ``time = T``); the others are censored at ``T * U(0.2, 1)``.
  Times are clipped to >= 0.5 months and rounded to 0.1.
* About 20 % of cases get a second slide (``...-DX2``): same case-level parameters, a new layout.

Per slide: size ``W, H ~ U{1792..2560}`` px with ``|W - H| >= 128`` (non-square), level 0 at
0.5 um/px (20x), levels downsampled by 4 while the short side stays >= 64 px, 256-px JPEG tiles,
white background. Files are written with tifffile as successive pages (not SubIFDs), tiled,
``photometric='rgb'``, resolution tags in centimetres -- the layout OpenSlide 4.0.1 reads as
``generic-tiff`` with ``openslide.mpp-x`` set (REFERENCE.md).

Files: ``root/slides/<slide_id>.tiff``, ``root/clinical.csv`` (``case_id, stage, time, event``),
``root/MANIFEST.json`` (written last: seed, version, parameters, per-case truth, per-file sha256).
A matching manifest means "done": generation is then a no-op. Every file is written to a
temporary name and renamed, and a lock file serialises concurrent generators.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import tifffile
from filelock import FileLock
from PIL import Image

from ..io import atomic_path, atomic_write_text

__all__ = [
    "DEMO_VERSION",
    "CaseSpec",
    "SlideSpec",
    "generate_demo",
    "demo_specs",
    "render_slide",
    "is_demo_complete",
    "demo_label",
    "demo_truth",
]

log = logging.getLogger(__name__)

DEMO_VERSION = "2"  # bump whenever generated pixels or labels change: old demos then regenerate
MPP = 0.5  # um/px at level 0 (20x)
TILE = 256
PATCH_AREA = 256 * 256
TARGET_TISSUE_PATCHES = 22.0  # total tissue area, in 256-px patches at level 0
JPEG_QUALITY = 90
SITES = ("2F", "4Z", "BT", "DK", "FD", "GV", "XF", "ZF")

_WHITE = np.array([244.0, 243.0, 246.0], np.float32)
_HEMA_STAGE0 = np.array([125.0, 80.0, 165.0], np.float32)
_HEMA_STAGE3 = np.array([62.0, 28.0, 105.0], np.float32)
_HEMA_NORMAL = np.array([150.0, 110.0, 185.0], np.float32)


@dataclass(frozen=True)
class CaseSpec:
    """Everything that defines a case: its labels and the latent factors behind them."""

    case_id: str
    index: int
    stage: int
    dispersion: float
    time: float
    event: int
    nuclei_density: float  # tumour nuclei per 256x256 px
    nuclei_radius: float  # px at level 0
    hema_color: tuple[float, float, float]
    slide_ids: tuple[str, ...]


@dataclass(frozen=True)
class SlideSpec:
    """One slide of a case; ``rng_key`` makes its layout independent of every other slide."""

    slide_id: str
    case: CaseSpec
    rng_key: tuple[int, ...]


def _case_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, index]))


def demo_specs(seed: int = 0, n_cases: int = 48) -> list[CaseSpec]:
    """The cohort's cases, with labels, drawn from the generative model in the module docstring.

    Cheap (no pixels): tests and the manifest use it to know the ground truth.
    """
    if n_cases < 4:
        raise ValueError(f"n_cases must be >= 4 so every stage is present; got {n_cases}")
    cohort_rng = np.random.default_rng(np.random.SeedSequence([seed, 10**6]))
    stages = cohort_rng.permutation(np.arange(n_cases) % 4)
    n_events = int(round(0.45 * n_cases))
    events = np.zeros(n_cases, dtype=int)
    events[cohort_rng.choice(n_cases, size=n_events, replace=False)] = 1
    n_two = int(round(0.2 * n_cases))
    two_slides = set(cohort_rng.choice(n_cases, size=n_two, replace=False).tolist())

    cases = []
    for i in range(n_cases):
        rng = _case_rng(seed, i)
        stage = int(stages[i])
        site = SITES[int(rng.integers(len(SITES)))]
        case_id = f"DEMO-{site}-{i + 1:04d}"
        d = float(rng.uniform())
        eta = 0.7 * stage + 1.6 * (d - 0.5) + float(rng.normal(0, 0.5))
        t_true = 30.0 * float(rng.exponential()) / np.exp(eta - 1.0)
        if events[i]:
            time = t_true
        else:
            time = t_true * float(rng.uniform(0.2, 1.0))
        time = round(max(time, 0.5), 1)
        density = (30.0 + 15.0 * stage) * float(rng.lognormal(0.0, 0.3))
        radius = float(np.clip(3.2 + 0.8 * stage + rng.normal(0, 0.7), 2.0, 9.0))
        frac = stage / 3.0
        hema = (1 - frac) * _HEMA_STAGE0 + frac * _HEMA_STAGE3 + rng.normal(0, 12, 3)
        hema = np.clip(hema, 20, 230)
        n_slides = 2 if i in two_slides else 1
        slide_ids = tuple(f"{case_id}-01Z-00-DX{k + 1}" for k in range(n_slides))
        cases.append(
            CaseSpec(
                case_id=case_id,
                index=i,
                stage=stage,
                dispersion=round(d, 6),
                time=time,
                event=int(events[i]),
                nuclei_density=round(density, 4),
                nuclei_radius=round(radius, 4),
                hema_color=tuple(round(float(c), 3) for c in hema),
                slide_ids=slide_ids,
            )
        )
    return cases


def slide_specs(seed: int, cases: list[CaseSpec]) -> list[SlideSpec]:
    return [
        SlideSpec(slide_id=sid, case=c, rng_key=(seed, c.index, 1000 + k))
        for c in cases
        for k, sid in enumerate(c.slide_ids)
    ]


# --------------------------------------------------------------------------- rendering


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cell: int) -> np.ndarray:
    """Zero-mean, unit-ish smooth noise of ``shape`` (h, w), correlated over ~``cell`` px."""
    h, w = shape
    coarse = rng.standard_normal((max(2, h // cell + 2), max(2, w // cell + 2)), dtype=np.float32)
    img = Image.fromarray(coarse, mode="F").resize((w, h), Image.BICUBIC)
    return np.asarray(img, dtype=np.float32)


def _upsample(field: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    h, w = shape
    field = np.ascontiguousarray(field, dtype=np.float32)  # PIL mode F reads float32 only
    return np.asarray(Image.fromarray(field, mode="F").resize((w, h), Image.BILINEAR), np.float32)


def _place_foci(
    rng: np.random.Generator, w: int, h: int, n: int, gap: float
) -> list[tuple[float, float, float, float, float]]:
    """Ellipses (cx, cy, a, b, angle) of roughly equal area summing to the target tissue area,
    at least ``gap`` px apart. When they do not fit, the gap narrows first and only then the foci
    shrink, so tissue area (hence patch count) stays close to constant across arrangements."""
    total_area = TARGET_TISSUE_PATCHES * PATCH_AREA * 1.1  # edge patches fall under min_tissue
    scale = 1.0
    for _attempt in range(80):
        foci: list[tuple[float, float, float, float, float]] = []
        ok = True
        for _ in range(n):
            area = total_area / n * scale * float(rng.uniform(0.85, 1.15))
            ratio = float(rng.uniform(0.55, 1.0))
            a = np.sqrt(area / (np.pi * ratio))
            b = a * ratio
            ang = float(rng.uniform(0, np.pi))
            margin = a + 24
            if 2 * margin >= min(w, h):
                ok = False
                break
            for _try in range(60):
                cx = float(rng.uniform(margin, w - margin))
                cy = float(rng.uniform(margin, h - margin))
                if all(np.hypot(cx - fx, cy - fy) >= a + fa + gap for fx, fy, fa, _, _ in foci):
                    foci.append((cx, cy, a, b, ang))
                    break
            else:
                ok = False
                break
        if ok:
            return foci
        if gap > 40:
            gap *= 0.8
        else:
            scale *= 0.93
    raise RuntimeError("could not place tissue foci")  # unreachable with the sizes used here


@dataclass
class RenderedSlide:
    """A rendered slide: level-0 RGB pixels, the true tissue mask, and layout facts."""

    rgb: np.ndarray  # (H, W, 3) uint8
    tissue: np.ndarray  # (ceil(H/2), ceil(W/2)) bool: the true tissue mask at downsample 2
    n_foci: int
    tissue_downsample: int = 2
    tumour: np.ndarray | None = None  # same grid as ``tissue``: the region whose nuclei carry the stage


def render_slide(spec: SlideSpec) -> RenderedSlide:
    """Draw one slide at level 0. Pure function of ``spec`` (deterministic)."""
    case = spec.case
    rng = np.random.default_rng(np.random.SeedSequence(list(spec.rng_key)))
    while True:
        w, h = (int(v) for v in rng.integers(1792, 2561, size=2))
        if abs(w - h) >= 128:
            break
    n_foci = int(np.clip(1 + np.floor(4 * case.dispersion + rng.normal(0, 0.5)), 1, 4))
    gap = 60.0 + 500.0 * case.dispersion
    foci = _place_foci(rng, w, h, n_foci, gap)

    # Tissue field at 1/8 scale: > 0 inside a focus, with a wobbly boundary.
    s = 8
    hs, ws = h // s + 1, w // s + 1
    yy, xx = np.mgrid[0:hs, 0:ws].astype(np.float32)
    xx, yy = xx * s, yy * s
    field = np.full((hs, ws), -1.0, np.float32)
    for cx, cy, a, b, ang in foci:
        c, si = np.cos(ang), np.sin(ang)
        u = ((xx - cx) * c + (yy - cy) * si) / a
        v = (-(xx - cx) * si + (yy - cy) * c) / b
        field = np.maximum(field, 1.0 - np.sqrt(u * u + v * v))
    field += 0.12 * _smooth_noise(rng, (hs, ws), 12)

    # Tumour region: a smooth random subset of the tissue, covering ``tumour_frac`` of it.
    tumour_frac = float(rng.uniform(0.35, 0.8))
    tnoise = _smooth_noise(rng, (hs, ws), 20)
    inside = field > 0
    thr = float(np.quantile(tnoise[inside], 1 - tumour_frac)) if inside.any() else 0.0

    # Background and stroma are smooth, so they are computed at half resolution, one channel at
    # a time, and upsampled by pixel repetition: float work (or PIL's RGB resize) on every
    # level-0 pixel would cost most of the time budget.
    hh, wh = (h + 1) // 2, (w + 1) // 2
    field_h = _upsample(field, (hh, wh))
    tissue_h = field_h > 0  # ground truth, at downsample 2
    tumour_h = (_upsample(tnoise, (hh, wh)) > thr) & tissue_h
    soft = np.clip(field_h * 50.0, 0.0, 1.0)  # edge ramp of ~2 px
    eosin = np.array([236.0, 158.0, 198.0], np.float32) + rng.normal(0, 10, 3).astype(np.float32)
    mottle = _upsample(_smooth_noise(rng, (hs, ws), 6), (hh, wh))
    grain = rng.standard_normal((hh, wh), dtype=np.float32)
    p = soft * (1.0 + 0.05 * mottle)  # stroma weight, modulated
    q = soft * (4.0 * grain)
    bg = 1.0 - soft
    half = np.empty((hh, wh, 3), np.uint8)
    for c in range(3):
        ch = bg * _WHITE[c] + p * eosin[c] + q
        np.clip(ch, 0, 255, out=ch)
        half[..., c] = ch
    img = half.repeat(2, axis=0).repeat(2, axis=1)[:h, :w]  # (H, W, 3) uint8
    img = np.ascontiguousarray(img)

    _draw_nuclei(rng, img, tissue_h, tumour_h, case)
    return RenderedSlide(rgb=img, tissue=tissue_h, n_foci=n_foci, tumour=tumour_h)


def _draw_nuclei(rng: np.random.Generator, img: np.ndarray, tissue_h: np.ndarray, tumour_h: np.ndarray,
                 case: CaseSpec) -> None:
    """Soft dark nuclei alpha-blended one by one into ``img`` (in place), normal then tumour."""
    h, w = img.shape[:2]
    pad = 12
    area_t = 4.0 * float(tumour_h.sum())
    area_n = 4.0 * float(tissue_h.sum()) - area_t
    populations = (
        (tissue_h & ~tumour_h, area_n, 25.0, 2.6, _HEMA_NORMAL),
        (tumour_h, area_t, case.nuclei_density, case.nuclei_radius,
         np.asarray(case.hema_color, np.float32)),
    )
    stamps: dict[int, np.ndarray] = {}
    for region, area, density, radius, color in populations:
        n = int(rng.poisson(density * area / PATCH_AREA))
        if n == 0:
            continue
        m = 6 * n + 64  # candidates drawn uniformly, kept where they fall in the region
        cand = np.column_stack([rng.integers(pad, w - pad, m), rng.integers(pad, h - pad, m)])
        keep = cand[region[cand[:, 1] // 2, cand[:, 0] // 2]][:n]
        radii = np.clip(radius + rng.normal(0, 0.6, len(keep)), 1.5, pad - 1)
        for (x, y), r in zip(keep.tolist(), radii.tolist()):
            key = int(round(r * 2))
            if key not in stamps:
                rr = key / 2.0
                k = int(np.ceil(rr)) + 1
                gy, gx = np.mgrid[-k : k + 1, -k : k + 1]
                disk = np.clip(rr + 0.5 - np.hypot(gx, gy), 0, 1) * 0.9
                stamps[key] = disk.astype(np.float32)[..., None]
            stamp = stamps[key]
            k = stamp.shape[0] // 2
            win = img[y - k : y + k + 1, x - k : x + k + 1]
            win[:] = win + stamp * (color - win)


# --------------------------------------------------------------------------- writing


def _pyramid(rgb: np.ndarray) -> list[np.ndarray]:
    levels = [rgb]
    while min(levels[-1].shape[:2]) // 4 >= 64:
        a = levels[-1]
        im = Image.fromarray(a).resize((a.shape[1] // 4, a.shape[0] // 4), Image.BOX)
        levels.append(np.asarray(im))
    return levels


def write_pyramid_tiff(path: Path, rgb: np.ndarray, mpp: float | None = MPP) -> None:
    """Write a pyramidal tiled JPEG TIFF that OpenSlide 4.0.1 reads with ``openslide.mpp-x``
    (``mpp=None`` writes no resolution tags: a slide without mpp, for tests).

    Levels are successive pages (OpenSlide ignores SubIFDs), resolution in pixels per centimetre.
    Written to ``path.tmp`` and renamed, so a killed writer never leaves a file that looks done.
    """
    with atomic_path(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=False) as tw:
        for i, level in enumerate(_pyramid(rgb)):
            ds = 4**i
            res = {} if mpp is None else {"resolution": (1e4 / mpp / ds, 1e4 / mpp / ds),
                                          "resolutionunit": "CENTIMETER"}
            tw.write(level, tile=(TILE, TILE), photometric="rgb", planarconfig="contig", compression="jpeg",
                     compressionargs={"level": JPEG_QUALITY}, **res, subfiletype=0 if i == 0 else 1,
                     software="wsi-bench demo", metadata=None)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _manifest_key(seed: int, n_cases: int, binary_label: bool = False) -> dict:
    key = {"generator": "wsi-bench demo", "version": DEMO_VERSION, "seed": seed, "n_cases": n_cases}
    if binary_label:  # only when set, so manifests of the default demo stay valid
        key["binary_label"] = True
    return key


def is_demo_complete(root: Path, seed: int = 0, n_cases: int = 48, binary_label: bool = False) -> bool:
    """True when ``root`` holds a finished demo made with these parameters (manifest matches and
    every listed file exists)."""
    root = Path(root)
    try:
        manifest = json.loads((root / "MANIFEST.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    key = _manifest_key(seed, n_cases, binary_label)
    if any(manifest.get(k) != v for k, v in key.items()) or bool(manifest.get("binary_label")) != binary_label:
        return False
    return all((root / rel).is_file() for rel in manifest.get("files", {}))


def demo_truth(root: Path, slide_id: str) -> RenderedSlide:
    """A demo slide's ground truth (tissue and tumour masks at downsample 2), reproduced from the
    seed and case count in ``root/MANIFEST.json`` (the generator is a pure function of them)."""
    path = Path(root) / "MANIFEST.json"
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        seed, n_cases = int(manifest["seed"]), int(manifest["n_cases"])
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(f"{path}: not a demo manifest ({exc}); regenerate the demo (`bench doctor --dataset demo`)")
    if str(manifest.get("version")) != DEMO_VERSION:
        raise ValueError(f"{path}: demo version {manifest.get('version')!r}, this code draws version {DEMO_VERSION}: "
                         "its masks cannot be reproduced; regenerate the demo")
    for spec in slide_specs(seed, demo_specs(seed, n_cases)):
        if spec.slide_id == slide_id:
            return render_slide(spec)
    raise KeyError(f"slide {slide_id!r} is not in the demo at {root}")


def demo_label(case: CaseSpec) -> str:
    """The demo's binary label (``binary_label=True``): ``Tumor`` for stages III–IV, whose planted
    nuclei are denser, larger and darker, else ``Normal`` — strings, as in CAMELYON16 label files."""
    return "Tumor" if case.stage >= 2 else "Normal"


def _clinical_csv(cases: list[CaseSpec], with_label: bool = False) -> str:
    buf = io.StringIO()
    wr = csv.writer(buf, lineterminator="\n")
    wr.writerow(["case_id", "stage", "time", "event"] + (["label"] if with_label else []))
    for c in cases:
        wr.writerow([c.case_id, c.stage, f"{c.time:.1f}", c.event] + ([demo_label(c)] if with_label else []))
    return buf.getvalue()


def generate_demo(root: Path, seed: int = 0, n_cases: int = 48, binary_label: bool = False) -> Path:
    """Generate (or confirm) the demo cohort under ``root`` and return ``root``.

    Idempotent: when ``MANIFEST.json`` matches ``(version, seed, n_cases)`` and its files exist,
    nothing is done. Otherwise the old manifest is removed first (so a half-made cohort never
    looks finished), every slide is (re)written atomically, stale slides listed by an older
    manifest are removed, and the manifest is written last.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    if is_demo_complete(root, seed, n_cases, binary_label):
        log.info("demo cohort at %s is up to date (seed %d, %d cases)", root, seed, n_cases)
        return root
    with FileLock(str(root / ".demo.lock")):
        if is_demo_complete(root, seed, n_cases, binary_label):  # another process finished it meanwhile
            return root
        manifest_path = root / "MANIFEST.json"
        old_files: set[str] = set()
        if manifest_path.exists():
            try:
                old_files = set(json.loads(manifest_path.read_text(encoding="utf-8"))["files"])
            except (OSError, ValueError, KeyError):
                old_files = set()
            manifest_path.unlink()
        slides_dir = root / "slides"
        slides_dir.mkdir(exist_ok=True)
        cases = demo_specs(seed, n_cases)
        files: dict[str, str] = {}
        slide_truth = {}
        log.info("generating demo cohort: %d cases -> %s", n_cases, root)
        for spec in slide_specs(seed, cases):
            rendered = render_slide(spec)
            path = slides_dir / f"{spec.slide_id}.tiff"
            write_pyramid_tiff(path, rendered.rgb)
            rel = f"slides/{spec.slide_id}.tiff"
            files[rel] = _sha256(path)
            slide_truth[spec.slide_id] = {
                "case_id": spec.case.case_id,
                "width": int(rendered.rgb.shape[1]),
                "height": int(rendered.rgb.shape[0]),
                "n_foci": rendered.n_foci,
                "tissue_fraction": round(float(rendered.tissue.mean()), 4),
            }
        clinical = root / "clinical.csv"
        atomic_write_text(clinical, _clinical_csv(cases, binary_label))
        files["clinical.csv"] = _sha256(clinical)
        for rel in old_files - set(files):
            stale = root / rel
            if stale.parent == slides_dir and stale.suffix == ".tiff":
                stale.unlink(missing_ok=True)
        manifest = {
            **_manifest_key(seed, n_cases, binary_label),
            "mpp": MPP,
            "magnification": 20.0,
            "format": "pyramidal tiled JPEG TIFF (tifffile), levels downsampled by 4",
            "clinical": {"path": "clinical.csv", "format": "normalized",
                         "columns": ["case_id", "stage", "time", "event"]},
            "generative_model": (__doc__ or "").split("Generative model", 1)[-1].strip(),
            "cases": [asdict(c) for c in cases],
            "slides": slide_truth,
            "files": files,
        }
        atomic_write_text(manifest_path, json.dumps(manifest, indent=1))
    log.info("demo cohort written: %d slides", len(slide_truth))
    return root
