"""What a method consumes, prepared once per run and shared between methods that consume the same
thing: cached patch features of an encoder (a bag, tiles with positions, HIPT's regions), whole
slides at a magnification, or random tissue regions."""

from __future__ import annotations

import logging
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch

from ..data.datasets import Cohort
from ..data.features import pre_extracted
from ..data.schema import check_keys
from feature_cache.cache import FeatureFileCorrupt
from ..registry import MethodSpec
from feature_cache.weights import WeightsProvenance

from ..results.records import InputSpec
from ..results.identity import digest
from .settings import Settings
from .train import Bag, Sample

log = logging.getLogger(__name__)

class BagCache:
    """Patch-feature bags per case, loaded lazily from the feature cache and kept in memory up to a
    byte budget (LRU), so a 5-fold run reads each HDF5 file about once. A loader returns an array
    (a plain bag) or a :class:`Bag` (features with positions or a region mask)."""

    def __init__(self, loader: Callable[[str], "np.ndarray | Bag"], budget_bytes: int = 4 << 30) -> None:
        self.loader = loader
        self.budget = budget_bytes
        self._d: OrderedDict[str, "torch.Tensor | Bag"] = OrderedDict()
        self._bytes = 0

    @staticmethod
    def _size(x: "torch.Tensor | Bag") -> int:
        if isinstance(x, Bag):
            return sum(t.numel() * t.element_size() for t in (x.features, x.coords, x.mask) if t is not None)
        return x.numel() * x.element_size()

    def get(self, case_id: str) -> "torch.Tensor | Bag":
        if case_id in self._d:
            self._d.move_to_end(case_id)
            return self._d[case_id]
        loaded = self.loader(case_id)
        t = loaded if isinstance(loaded, Bag) else torch.from_numpy(np.ascontiguousarray(loaded, dtype=np.float32))
        self._d[case_id] = t
        self._bytes += self._size(t)
        while self._bytes > self.budget and len(self._d) > 1:
            _, old = self._d.popitem(last=False)
            self._bytes -= self._size(old)
        return t



def _slide_paths(cohort: Cohort, cases: Iterable[str] | None = None) -> dict[str, str]:
    t = cohort.table
    if cases is not None:
        t = t[t["case_id"].isin(set(cases))]
    return dict(zip(t["slide_id"], t["slide_path"]))


def _report_strays(release: Any, cohort: Cohort, name: str) -> None:
    """A release's files for slides outside the cohort are left out, and said so by file."""
    stray = sorted(set(release.files) - set(cohort.table["slide_id"]))
    if stray:
        files = ", ".join(str(release.files[s]) for s in stray[:5]) + (" ..." if len(stray) > 5 else "")
        log.warning("features %s: %d file(s) of the release are for slides not in the cohort %s (not used): %s",
                    name, len(stray), cohort.spec.name, files)


class FeatureInputs:
    """Two-stage inputs: one bag per case = the cached features of all its slides, concatenated
    (a case's slides are all used, not only the first)."""

    model_kwargs: dict[str, Any] = {}  # builder arguments the inputs decide (second-stage weights)

    def __init__(self, cohort: Cohort, encoder_name: str, cache_root: Path, allow_random: bool,
                 progress: bool, standin: bool = False, settings: Settings = Settings()) -> None:
        from feature_cache import get_encoder

        from ..encoders import ensure_registered

        ensure_registered([encoder_name])  # a declaration in the overlay, read now
        self.cohort = cohort
        release = pre_extracted(cohort.spec, encoder_name)  # a public feature release the dataset declares
        # features are extracted on the GPU when there is one (bf16 autocast where the encoder allows it:
        # another precision is another fingerprint, so CPU and GPU features never share a cache entry)
        self.encoder = release.encoder if release else get_encoder(
            encoder_name, allow_random=allow_random, standin=standin,
            device="cuda" if torch.cuda.is_available() else "cpu")
        log.info("%s features: %s weights", encoder_name, self.encoder.weights_label)
        if release:
            _report_strays(release, cohort, encoder_name)
        self.cache = release or self._make_cache(cache_root)
        self.progress, self.settings = progress, settings
        self.slides_of = cohort.slides_of()
        self.bags = BagCache(self._load_case)
        self.missing: set[str] = set()

    def _make_cache(self, cache_root: Path) -> Any:
        from feature_cache import FeatureCache

        return FeatureCache(cache_root, mpp=self.cohort.spec.mpp_override)

    kind = "features"

    @property
    def identity(self) -> dict[str, Any]:
        """What of the inputs enters the unit's identity: the encoder, its weights' fingerprint and the
        cache directory (keyed by everything that changes the features)."""
        return {"kind": self.kind, "encoder": self.encoder.name, "fingerprint": self.encoder.fingerprint,
                "features": str(self.cache.dir_for(self.encoder).name),
                "mpp_override": self.cohort.spec.mpp_override}

    @property
    def spec(self) -> InputSpec:
        release = getattr(self.encoder, "release", None)  # a public pre-extracted release read in place
        return InputSpec(self.kind, encoder=self.encoder.name, magnification=float(self.encoder.magnification),
                         source=f"pre-extracted:{self.encoder.source}" if release else "extracted")

    def provenance(self) -> list[WeightsProvenance]:
        e = self.encoder
        if e.standin:
            return [WeightsProvenance(f"encoder {e.name}", "standin",
                                      f"random stand-in ({e.standin}); no {e.name} weights found",
                                      sha256=e.fingerprint)]
        if e.random_weights:
            return [WeightsProvenance(f"encoder {e.name}", "random",
                                      f"random initialisation (no {e.name} weights found)", sha256=e.fingerprint)]
        if getattr(e, "release", None):  # a public feature release read in place: no weights ran here
            return [WeightsProvenance(f"encoder {e.name}", "release", e.weights_label, e.source, e.fingerprint)]
        loaded = e.weights_provenance[0]  # what feature_cache.weights recorded of the load
        path = loaded.path or e.weights_file
        return [WeightsProvenance(f"encoder {e.name}", "pretrained",
                                  f"pretrained ({e.weights_source}; fingerprint {e.fingerprint})",
                                  str(path) if path else None, loaded.sha256 or e.fingerprint, loaded.mapping)]

    def ensure(self, cases: Iterable[str] | None = None) -> None:
        """Features of every slide (of ``cases`` only, when given) are cached."""
        paths = _slide_paths(self.cohort, cases)
        workers = getattr(self.cohort.spec, "extract_workers", None)  # the dataset's, else $BENCH_EXTRACT_WORKERS
        report = self.cache.extract(paths, self.encoder, progress=self.progress, skip_errors=True,
                                    mpp=self.cohort.spec.mpp_override, reader=self.settings.slide_backend,
                                    num_workers=workers if workers is not None else self.settings.extract_workers,
                                    lock_report_s=self.settings.lock_report_s)
        failed = dict(getattr(report, "failed", {}) or {})
        if getattr(self.cache, "note", None):  # a release's files matched to the slides by barcode
            log.warning("%s", self.cache.note)
        for sid, msg in failed.items():
            log.warning("features of slide %s unavailable (its case is left out unless another of its "
                        "slides works): %s", sid, msg)
        for sid in getattr(report, "no_tissue", []):
            log.warning("slide %s (%s): no tissue found at %gx, so no features; its case is left out unless "
                        "another of its slides has tissue. Fix: look at it (`bench extract --visualize`); "
                        "if it holds tissue, the scan may be blank or out of focus -- rescan it",
                        sid, paths[sid], self.encoder.magnification)
        # slides that gave no features (unreadable, or no tissue) are left out of their cases
        self.missing |= set(failed) | set(getattr(report, "no_tissue", []))

    def _load_case(self, case_id: str) -> np.ndarray:
        feats = []
        for sid in self.slides_of[case_id]:
            if sid in self.missing:
                continue
            try:
                f, _ = self.cache.load(sid, self.encoder)
            except FeatureFileCorrupt as exc:
                log.warning("features of slide %s %s (%s is corrupt); the slide is left out. "
                            "Fix: delete that file and rerun to extract it again", sid, exc.reason, exc.path)
                self.missing.add(sid)
                continue
            if len(f):
                feats.append(f)
        if not feats:
            raise KeyError(case_id)
        return np.concatenate(feats, axis=0)

    def has(self, case_id: str) -> bool:
        try:
            self.bags.get(case_id)
            return True
        except KeyError:
            return False

    def sample(self, case_id: str, labels: dict[str, float]) -> Sample:
        return Sample(case_id, lambda c=case_id: self.bags.get(c), labels)


def _second_stage_weights(name: str, finder: Callable[[], tuple[Path | None, str]], env: str,
                          allow_random: bool) -> tuple[WeightsProvenance, dict[str, Any]]:
    """(provenance, builder kwargs) of a hierarchical row's pretrained second stage. No weights:
    random ones where the dataset allows them (marked in every table), else an error."""
    from feature_cache.encoders import file_sha256

    path, how = finder()
    if path is None:
        if not allow_random:
            raise FileNotFoundError(
                f"no weights for the {name}: set {env}=/path/to/the/released/file (see docs/hierarchical.md), "
                f"or use a dataset that allows random weights (results are then marked 'random weights')")
        log.warning("%s: no weights found (%s unset); using RANDOM weights -- results will say so", name, env)
        return WeightsProvenance(name, "random", f"random initialisation ({env} unset)"), {}
    sha = file_sha256(path)
    log.info("%s: weights from %s (%s)", name, path, how)
    return WeightsProvenance(name, "pretrained", f"{Path(path).name} ({how}; sha256 {sha[:16]})",
                             str(path), sha), {"path": str(path)}


class TileInputs(FeatureInputs):
    """Prov-GigaPath inputs: a case's tile features with their (x, y) positions on the patch grid
    (level-0 top-left corner // tile side). A case's slides are laid side by side on one canvas
    (each next slide starts two tiles right of the previous one's last column), so their
    positions never collide."""

    def __init__(self, cohort: Cohort, encoder_name: str, cache_root: Path, allow_random: bool,
                 progress: bool, standin: bool = False, settings: Settings = Settings()) -> None:
        super().__init__(cohort, encoder_name, cache_root, allow_random, progress, standin=standin, settings=settings)
        from baselines.prov_gigapath import SLIDE_WEIGHTS_ENV, find_slide_encoder_weights

        self._stage2, kw = _second_stage_weights("slide_encoder", find_slide_encoder_weights, SLIDE_WEIGHTS_ENV,
                                                 allow_random)
        self.model_kwargs = {"weights": kw["path"]} if kw else {}

    kind = "tiles"

    def provenance(self) -> list[WeightsProvenance]:
        return super().provenance() + [self._stage2]

    def _load_case(self, case_id: str) -> Bag:
        feats, grids, x0 = [], [], 0
        for sid in self.slides_of[case_id]:
            if sid in self.missing:
                continue
            f, c = self.cache.load(sid, self.encoder)
            if not len(f):
                continue
            side = int(self.cache.load_attrs(sid, self.encoder)["patch_size_level0"])
            g = c // side  # (N, 2) tile column, row
            g[:, 0] += x0 - g[:, 0].min()
            x0 = int(g[:, 0].max()) + 2
            feats.append(f)
            grids.append(g)
        if not feats:
            raise KeyError(case_id)
        return Bag(torch.from_numpy(np.concatenate(feats).astype(np.float32)),
                   coords=torch.from_numpy(np.concatenate(grids).astype(np.int64)))


class RegionFeatureInputs(FeatureInputs):
    """HIPT inputs: every 4096² region of a case's slides as 256 ViT-256 patch embeddings and a mask
    (``feature_cache.region_features``); the slide-level model attends across all of them."""

    def __init__(self, cohort: Cohort, encoder_name: str, cache_root: Path, allow_random: bool,
                 progress: bool, standin: bool = False, settings: Settings = Settings()) -> None:
        super().__init__(cohort, encoder_name, cache_root, allow_random, progress, standin=standin, settings=settings)
        from baselines.hipt import VIT4K_WEIGHTS_ENV, find_vit4k_weights

        self._stage2, kw = _second_stage_weights("vit4k", find_vit4k_weights, VIT4K_WEIGHTS_ENV, allow_random)
        self.model_kwargs = {"weights_4k": kw["path"]} if kw else {}

    def _make_cache(self, cache_root: Path) -> Any:
        from feature_cache import RegionFeatureCache

        return RegionFeatureCache(cache_root, mpp=self.cohort.spec.mpp_override)

    kind = "region_features"

    def provenance(self) -> list[WeightsProvenance]:
        return super().provenance() + [self._stage2]

    def _load_case(self, case_id: str) -> Bag:
        feats, masks = [], []
        for sid in self.slides_of[case_id]:
            if sid in self.missing:
                continue
            f, m, _ = self.cache.load_regions(sid, self.encoder)
            if len(f):
                feats.append(f)
                masks.append(m)
        if not feats:
            raise KeyError(case_id)
        return Bag(torch.from_numpy(np.concatenate(feats)), mask=torch.from_numpy(np.concatenate(masks)))


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class SlideInputs:
    """End-to-end inputs: the whole slide at one magnification, ``(1, 3, H, W)`` normalised with
    ImageNet statistics (the end-to-end models start from ImageNet pre-training), or as uint8 RGB
    for a model that normalises itself (``raw_rgb``: Pixel-Mamba, 3 bytes per pixel instead of 12). A case with several
    slides trains on one of them per step (drawn at random) and is predicted by averaging the
    logits of all of them."""

    def __init__(self, cohort: Cohort, magnification: float, cache_root: Path, progress: bool,
                 raw_rgb: bool = False, settings: Settings = Settings()) -> None:
        from feature_cache.slide_cache import SlideImageCache

        self.raw_rgb = raw_rgb  # hand the model uint8 RGB (it normalises itself: MethodSpec.raw_rgb)
        self.cohort = cohort
        self.magnification = float(magnification)
        self.cache = SlideImageCache(cache_root, reader=settings.slide_backend)
        self.progress = progress
        self.slides_of = cohort.slides_of()
        self.paths = dict(zip(cohort.table["slide_id"], cohort.table["slide_path"]))
        self.missing: set[str] = set()

    @property
    def identity(self) -> dict[str, Any]:
        return {"kind": "slide", "magnification": self.magnification, "raw_rgb": self.raw_rgb,
                "mpp_override": self.cohort.spec.mpp_override}

    @property
    def spec(self) -> InputSpec:
        return InputSpec("slide", magnification=self.magnification)

    def provenance(self) -> list[WeightsProvenance]:
        return []  # the end-to-end network's own weights: ModelRecipe.provenance

    def ensure(self, cases: Iterable[str] | None = None) -> None:
        """Every slide (of ``cases`` only, when given) is cached at the magnification."""
        self.missing = set(self.cache.ensure(_slide_paths(self.cohort, cases), self.magnification,
                                             progress=self.progress, mpp_override=self.cohort.spec.mpp_override))

    def _slides(self, case_id: str) -> list[str]:
        return [s for s in self.slides_of[case_id] if s not in self.missing]

    def has(self, case_id: str) -> bool:
        return bool(self._slides(case_id))

    def _tensor(self, slide_id: str) -> torch.Tensor:
        arr = self.cache.get(slide_id, self.paths[slide_id], self.magnification)
        return model_input(arr, self.raw_rgb)

    def sample(self, case_id: str, labels: dict[str, float]) -> Sample:
        slides = self._slides(case_id)

        def one() -> torch.Tensor:
            return self._tensor(slides[int(torch.randint(len(slides), (1,)))])

        return Sample(case_id, one, labels, views=lambda: [self._tensor(s) for s in slides])


REGION_DEFAULTS = {"n": 100, "size": 2048, "magnification": 20.0, "voting": "majority", "seed": 0,
                   "min_tissue": 0.5, "cache_pixels": True}


class RegionInputs(SlideInputs):
    """End-to-end inputs as random tissue regions (the CAMELYON16 protocol of the Pixel-Mamba
    supplement: 100 regions of 2048² px at 20× per slide). Each training step sees one region of one
    of the case's slides, drawn at random and labelled with the case's label; at test time every
    region of every slide of the case is predicted and a voting ensemble gives the case's prediction
    (``bench.engine.train.vote``). Regions are sampled once per slide (seeded, in tissue) and cached by
    ``feature_cache.regions.RegionCache``."""

    def __init__(self, cohort: Cohort, regions: dict[str, Any], cache_root: Path, progress: bool,
                 raw_rgb: bool = False, settings: Settings = Settings()) -> None:
        from feature_cache.regions import RegionCache

        self.raw_rgb = raw_rgb
        from .train import VOTING

        check_keys(regions, sorted(REGION_DEFAULTS), "input option regions")
        self.opts = {**REGION_DEFAULTS, **regions}
        if self.opts["voting"] not in VOTING:
            raise ValueError(f"regions.voting must be one of {VOTING}, got {self.opts['voting']!r}")
        self.cohort = cohort
        self.progress = progress
        self.slides_of = cohort.slides_of()
        self.paths = dict(zip(cohort.table["slide_id"], cohort.table["slide_path"]))
        self.missing: set[str] = set()
        self.regions = RegionCache(cache_root, self.opts["n"], self.opts["size"], self.opts["magnification"],
                                   seed=self.opts["seed"], min_tissue=self.opts["min_tissue"],
                                   cache_pixels=self.opts["cache_pixels"], reader=settings.slide_backend)

    @property
    def identity(self) -> dict[str, Any]:
        return {"kind": "regions", "regions": dict(self.opts), "raw_rgb": self.raw_rgb,
                "mpp_override": self.cohort.spec.mpp_override}

    @property
    def spec(self) -> InputSpec:
        return InputSpec("regions", magnification=float(self.opts["magnification"]), regions=dict(self.opts))

    def ensure(self, cases: Iterable[str] | None = None) -> None:
        self.missing = set(self.regions.ensure(_slide_paths(self.cohort, cases), progress=self.progress,
                                               mpp_override=self.cohort.spec.mpp_override))

    def _region(self, slide_id: str, i: int | None) -> torch.Tensor | list[torch.Tensor]:
        arr = self.regions.regions(slide_id, self.paths[slide_id], self.cohort.spec.mpp_override)
        if i is not None:
            return model_input(arr[i], self.raw_rgb)
        return [model_input(a, self.raw_rgb) for a in arr]

    def sample(self, case_id: str, labels: dict[str, float]) -> Sample:
        slides = self._slides(case_id)
        n = int(self.opts["n"])

        def one() -> torch.Tensor:
            sid = slides[int(torch.randint(len(slides), (1,)))]
            return self._region(sid, int(torch.randint(n, (1,))))

        def views() -> Iterable[torch.Tensor]:
            for sid in slides:
                for i in range(n):
                    yield self._region(sid, i)

        return Sample(case_id, one, labels, views=views, vote=self.opts["voting"])


def model_input(arr: np.ndarray, raw_rgb: bool) -> torch.Tensor:
    """(H, W, 3) uint8 → (1, 3, H, W): as is (uint8) for a model that normalises itself, else
    ``normalise_pixels``d."""
    if raw_rgb:
        return torch.from_numpy(np.array(arr)).permute(2, 0, 1).unsqueeze(0).contiguous()
    return normalise_pixels(arr)


def normalise_pixels(arr: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 → (1, 3, H, W) float normalised with ImageNet statistics."""
    x = torch.from_numpy(np.array(arr)).permute(2, 0, 1).float().div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return ((x - mean) / std).unsqueeze(0)


Inputs = FeatureInputs | SlideInputs | RegionInputs
FEATURE_INPUTS: dict[str, type[FeatureInputs]] = {"features": FeatureInputs, "tiles": TileInputs,
                                                   "region_features": RegionFeatureInputs}


def inputs_key(spec: MethodSpec, input_opts: dict[str, Any]) -> str:
    """Methods with the same key consume the same inputs (and share them within a run)."""
    if spec.input in FEATURE_INPUTS:
        return f"{spec.input}:{spec.cache_encoder}"
    if input_opts.get("regions"):
        return "regions:" + digest(dict(input_opts["regions"])) + (":rgb" if spec.raw_rgb else "")
    mag = float(input_opts.get("magnification", spec.magnification or 2.5))
    return f"slide:{mag:g}" + (":rgb" if spec.raw_rgb else "")


def make_inputs(spec: MethodSpec, cohort: Cohort, cache: Path | str, input_opts: dict[str, Any],
                progress: bool, settings: Settings = Settings()) -> Inputs:
    """The inputs a method consumes (``input_opts``: ``bench.engine.config.input_options``): cached
    patch features of its encoder (a bag, tiles with positions, or HIPT's regions), whole slides
    at a magnification, or random tissue regions. ``settings``: the process settings the CLI read
    (the slide reader, extraction workers, the lock report interval)."""
    if spec.input in FEATURE_INPUTS:
        return FEATURE_INPUTS[spec.input](cohort, spec.cache_encoder, Path(cache),
                                           cohort.spec.allow_random_weights, progress,
                                           standin=cohort.spec.random_encoder_standin, settings=settings)
    if input_opts.get("regions"):
        return RegionInputs(cohort, dict(input_opts["regions"]), Path(cache), progress, raw_rgb=spec.raw_rgb,
                            settings=settings)
    mag = float(input_opts.get("magnification", spec.magnification or 2.5))
    return SlideInputs(cohort, mag, Path(cache), progress, raw_rgb=spec.raw_rgb, settings=settings)
