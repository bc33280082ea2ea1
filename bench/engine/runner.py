"""``bench run``: the (task, method, fold) grid of one dataset under one split manager and one
evaluator, resumable unit by unit."""

from __future__ import annotations

import fnmatch
import hashlib
import logging
import resource
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import pandas as pd
import torch
import yaml

from . import distributed as D
from . import tasks as T
from ..data.datasets import Cohort, load_cohort
from ..resources import config_path
from .memory import bound_heap_growth
from .pretrain import init_identity, load_init
from ..registry import MethodSpec, build_model, count_parameters, count_trainable_parameters
from ..report.results import ResultsStore, Unit, config_hash
from ..data.splits import SplitManager, Splits
from .train import Bag, Sample, TrainConfig, train_and_predict

log = logging.getLogger(__name__)


def method_train_config(spec: MethodSpec, overrides: dict[str, Any] | None = None,
                        dataset_train: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Training options: CLI overrides > the dataset's per-family options > configs/methods/<config>.yaml
    > TrainConfig defaults."""
    cfg: dict[str, Any] = {}
    if spec.config:
        path = config_path("methods", spec.config)
        if path.is_file():
            with open(path) as f:
                cfg.update((yaml.safe_load(f) or {}).get("train", {}))
    cfg.update((dataset_train or {}).get(spec.family, {}))
    cfg.update(overrides or {})
    return TrainConfig.from_dict(cfg).to_dict()


def unit_seed(seed: int, *parts: Any) -> int:
    h = hashlib.sha256("|".join(map(str, (seed, *parts))).encode()).hexdigest()
    return int(h[:8], 16)


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


@dataclass
class RunReport:
    dataset: str = ""
    done_before: list[Unit] = field(default_factory=list)
    ran: list[Unit] = field(default_factory=list)
    failed: dict[Unit, str] = field(default_factory=dict)
    busy: list[Unit] = field(default_factory=list)  # claimed by another live worker
    todo: list["UnitPlan"] = field(default_factory=list)  # dry run: units that would run
    seconds: float = 0.0

    def line(self) -> str:
        parts = [f"{len(self.ran)} unit(s) run", f"{len(self.done_before)} already done"]
        if self.busy:
            parts.append(f"{len(self.busy)} running in another process")
        if self.failed:
            parts.append(f"{len(self.failed)} failed")
        return ", ".join(parts) + f" ({self.seconds:.1f} s)"


def _slide_paths(cohort: Cohort, cases: Iterable[str] | None = None) -> dict[str, str]:
    t = cohort.table
    if cases is not None:
        t = t[t["case_id"].isin(set(cases))]
    return dict(zip(t["slide_id"], t["slide_path"]))


class FeatureInputs:
    """Two-stage inputs: one bag per case = the cached features of all its slides, concatenated
    (a case's slides are all used, not only the first)."""

    model_kwargs: dict[str, Any] = {}  # builder arguments the inputs decide (second-stage weights)

    def __init__(self, cohort: Cohort, encoder_name: str, cache_root: Path, allow_random: bool,
                 progress: bool, standin: bool = False) -> None:
        from feature_cache import get_encoder

        self.cohort = cohort
        self.encoder = get_encoder(encoder_name, allow_random=allow_random, standin=standin)
        log.info("%s features: %s weights", encoder_name, self.encoder.weights_label)
        self.cache = self._make_cache(cache_root)
        self.progress = progress
        self.slides_of = cohort.slides_of()
        self.bags = BagCache(self._load_case)
        self.missing: set[str] = set()

    def _make_cache(self, cache_root: Path) -> Any:
        from feature_cache import FeatureCache

        return FeatureCache(cache_root)

    @property
    def identity(self) -> dict[str, Any]:
        ident = {"encoder": self.encoder.name, "features": str(self.cache.dir_for(self.encoder).name),
                 "random_weights": bool(self.encoder.random_weights)}
        if self.encoder.standin:  # only then, so configs (and hashes) of other runs are unchanged
            ident.update(weights=self.encoder.weights_label, encoder_standin=self.encoder.standin)
        return ident

    @property
    def weights_label(self) -> str:
        return self.encoder.weights_label

    def ensure(self, cases: Iterable[str] | None = None) -> None:
        """Features of every slide (of ``cases`` only, when given) are cached."""
        paths = _slide_paths(self.cohort, cases)
        report = self.cache.extract(paths, self.encoder, progress=self.progress, skip_errors=True,
                                    mpp=self.cohort.spec.mpp_override,
                                    num_workers=getattr(self.cohort.spec, "extract_workers", None))
        failed = dict(getattr(report, "failed", {}) or {})
        for sid, msg in failed.items():
            log.warning("features of slide %s unavailable (its case is left out unless another of its "
                        "slides works): %s", sid, msg)
        for sid in getattr(report, "no_tissue", []):
            log.warning("slide %s (%s): no tissue found at %gx, so no features; its case is left out unless "
                        "another of its slides has tissue. Fix: look at it (`bench extract --visualize`); "
                        "if it holds tissue, the scan may be blank or out of focus -- rescan it",
                        sid, paths[sid], self.encoder.magnification)
        self.missing |= set(failed)

    def _load_case(self, case_id: str) -> np.ndarray:
        feats = []
        for sid in self.slides_of[case_id]:
            if sid in self.missing:
                continue
            f, _ = self.cache.load(sid, self.encoder)
            if len(f) and not np.isfinite(f).all():
                path = self.cache.path_for(sid, self.encoder)
                log.warning("features of slide %s contain NaN/inf (%s is corrupt); the slide is left out. "
                            "Fix: delete that file and rerun to extract it again", sid, path)
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
                          allow_random: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """(identity entries, builder kwargs) of a hierarchical row's pretrained second stage. No
    weights: random ones where the dataset allows them (marked in every table), else an error."""
    from feature_cache.encoders import file_sha256

    path, how = finder()
    if path is None:
        if not allow_random:
            raise FileNotFoundError(
                f"no weights for the {name}: set {env}=/path/to/the/released/file (see docs/hierarchical.md), "
                f"or use a dataset that allows random weights (results are then marked 'random weights')")
        log.warning("%s: no weights found (%s unset); using RANDOM weights -- results will say so", name, env)
        return {f"{name}_weights": "random"}, {}
    log.info("%s: weights from %s (%s)", name, path, how)
    return {f"{name}_weights": file_sha256(path)[:16]}, {"path": str(path)}


class TileInputs(FeatureInputs):
    """Prov-GigaPath inputs: a case's tile features with their (x, y) positions on the patch grid
    (level-0 top-left corner // tile side). A case's slides are laid side by side on one canvas
    (each next slide starts two tiles right of the previous one's last column), so their
    positions never collide."""

    def __init__(self, cohort: Cohort, encoder_name: str, cache_root: Path, allow_random: bool,
                 progress: bool, standin: bool = False) -> None:
        super().__init__(cohort, encoder_name, cache_root, allow_random, progress, standin=standin)
        from baselines.prov_gigapath import SLIDE_WEIGHTS_ENV, find_slide_encoder_weights

        self._stage2, kw = _second_stage_weights("slide_encoder", find_slide_encoder_weights, SLIDE_WEIGHTS_ENV,
                                                 allow_random)
        self.model_kwargs = {"weights": kw["path"]} if kw else {}

    @property
    def identity(self) -> dict[str, Any]:
        ident = {**super().identity, **self._stage2, "input": "tiles"}
        ident["random_weights"] = bool(self.encoder.random_weights) or self._stage2["slide_encoder_weights"] == "random"
        return ident

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
                 progress: bool, standin: bool = False) -> None:
        super().__init__(cohort, encoder_name, cache_root, allow_random, progress, standin=standin)
        from baselines.hipt import VIT4K_WEIGHTS_ENV, find_vit4k_weights

        self._stage2, kw = _second_stage_weights("vit4k", find_vit4k_weights, VIT4K_WEIGHTS_ENV, allow_random)
        self.model_kwargs = {"weights_4k": kw["path"]} if kw else {}

    def _make_cache(self, cache_root: Path) -> Any:
        from feature_cache import RegionFeatureCache

        return RegionFeatureCache(cache_root)

    @property
    def identity(self) -> dict[str, Any]:
        ident = {**super().identity, **self._stage2, "input": "region_features"}
        ident["random_weights"] = bool(self.encoder.random_weights) or self._stage2["vit4k_weights"] == "random"
        return ident

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
                 raw_rgb: bool = False) -> None:
        from feature_cache.slide_cache import SlideImageCache

        self.raw_rgb = raw_rgb  # hand the model uint8 RGB (it normalises itself: MethodSpec.raw_rgb)
        self.cohort = cohort
        self.magnification = float(magnification)
        self.cache = SlideImageCache(cache_root)
        self.progress = progress
        self.slides_of = cohort.slides_of()
        self.paths = dict(zip(cohort.table["slide_id"], cohort.table["slide_path"]))
        self.missing: set[str] = set()

    @property
    def identity(self) -> dict[str, Any]:
        return {"input": f"slide@{self.magnification:g}x", "random_weights": False}

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
        return _model_input(arr, self.raw_rgb)

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
    (``bench.train.vote``). Regions are sampled once per slide (seeded, in tissue) and cached by
    ``feature_cache.regions.RegionCache``."""

    def __init__(self, cohort: Cohort, regions: dict[str, Any], cache_root: Path, progress: bool,
                 raw_rgb: bool = False) -> None:
        from feature_cache.regions import RegionCache

        self.raw_rgb = raw_rgb
        from .train import VOTING

        unknown = set(regions) - set(REGION_DEFAULTS)
        if unknown:
            raise ValueError(f"unknown region options {sorted(unknown)}; allowed: {sorted(REGION_DEFAULTS)}")
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
                                   cache_pixels=self.opts["cache_pixels"])

    @property
    def identity(self) -> dict[str, Any]:
        o = self.opts
        return {"input": f"{o['n']} regions {o['size']}px@{o['magnification']:g}x", "voting": o["voting"],
                "region_seed": o["seed"], "random_weights": False}

    def ensure(self, cases: Iterable[str] | None = None) -> None:
        self.missing = set(self.regions.ensure(_slide_paths(self.cohort, cases), progress=self.progress,
                                               mpp_override=self.cohort.spec.mpp_override))

    def _region(self, slide_id: str, i: int | None) -> torch.Tensor | list[torch.Tensor]:
        arr = self.regions.regions(slide_id, self.paths[slide_id], self.cohort.spec.mpp_override)
        if i is not None:
            return _model_input(arr[i], self.raw_rgb)
        return [_model_input(a, self.raw_rgb) for a in arr]

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


def _model_input(arr: np.ndarray, raw_rgb: bool) -> torch.Tensor:
    """(H, W, 3) uint8 → (1, 3, H, W): as is (uint8) for a model that normalises itself, else
    ``_normalise``d."""
    if raw_rgb:
        return torch.from_numpy(np.array(arr)).permute(2, 0, 1).unsqueeze(0).contiguous()
    return _normalise(arr)


def _normalise(arr: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 → (1, 3, H, W) float normalised with ImageNet statistics."""
    x = torch.from_numpy(np.array(arr)).permute(2, 0, 1).float().div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return ((x - mean) / std).unsqueeze(0)


Inputs = FeatureInputs | SlideInputs | RegionInputs
_FEATURE_INPUTS: dict[str, type[FeatureInputs]] = {"features": FeatureInputs, "tiles": TileInputs,
                                                   "region_features": RegionFeatureInputs}


@dataclass(frozen=True)
class Variant:
    """A method with settings of its own, stored as ``<method>/<name>/`` beside the method's plain runs
    (an ablation value, e.g. ``pixelmamba-6m`` with ``alpha=0.4``). ``name=None`` is the method itself."""

    spec: MethodSpec
    name: str | None = None
    model: dict[str, Any] = field(default_factory=dict)  # model options (incl. magnification) it sets
    train: dict[str, Any] = field(default_factory=dict)  # training options it sets

    def __hash__(self) -> int:
        return hash((self.spec.name, self.name))


def _reset_peak_memory() -> None:
    """Start a unit's peak-memory window: Linux resets the process's peak RSS (VmHWM) on writing 5 to
    /proc/self/clear_refs; CUDA's allocator resets its own peak."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass  # not Linux (or not permitted): ru_maxrss below is then the process's lifetime peak
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def _peak_memory() -> dict[str, float | None]:
    """Peak RSS (MB) since :func:`_reset_peak_memory` where the OS can tell, else since process start,
    and CUDA's max allocated memory (MB) when a GPU is used."""
    rss = None
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    rss = int(line.split()[1]) / 1024  # kB -> MB
    except OSError:
        pass
    if rss is None:
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports kB
    cuda = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    return {"peak_rss_mb": rss, "peak_cuda_mb": cuda}


def _labels(row: pd.Series, task: str) -> dict[str, float]:
    return {c: float(row[c]) for c in T.get_task(task).label_columns}


def model_options(spec: MethodSpec, cohort: Cohort, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Model options: ``overrides`` (CLI --model, tuned values) > the dataset's per-method-glob options
    > its per-family options (e.g. the demo's smaller inputs)."""
    opts = dict(cohort.spec.model.get(spec.family, {}))
    for key, val in cohort.spec.model.items():  # then method names / globs, e.g. "pixelmamba-*"
        if key != spec.family and fnmatch.fnmatchcase(spec.name, key):
            opts.update(val)
    return {**opts, **(overrides or {})}


# options that choose a method's inputs, not its network: never passed to the model's builder
INPUT_OPTIONS = ("magnification", "regions")


def inputs_key(spec: MethodSpec, model_opts: dict[str, Any]) -> str:
    """Methods with the same key consume the same inputs (and share them within a run)."""
    if spec.input in _FEATURE_INPUTS:
        return f"{spec.input}:{spec.cache_encoder}"
    if model_opts.get("regions"):
        return "regions:" + config_hash(dict(model_opts["regions"]))
    return f"slide:{float(model_opts.get('magnification', spec.magnification or 2.5)):g}"


def make_inputs(spec: MethodSpec, cohort: Cohort, cache: Path | str, model_opts: dict[str, Any],
                progress: bool) -> Inputs:
    """The inputs a method consumes: cached patch features of its encoder (a bag, tiles with
    positions, or HIPT's regions), or whole slides."""
    if spec.input in _FEATURE_INPUTS:
        return _FEATURE_INPUTS[spec.input](cohort, spec.cache_encoder, Path(cache),
                                           cohort.spec.allow_random_weights, progress,
                                           standin=cohort.spec.random_encoder_standin)
    if model_opts.get("regions"):
        return RegionInputs(cohort, dict(model_opts["regions"]), Path(cache), progress, raw_rgb=spec.raw_rgb)
    mag = float(model_opts.get("magnification", spec.magnification or 2.5))
    return SlideInputs(cohort, mag, Path(cache), progress, raw_rgb=spec.raw_rgb)


@dataclass
class UnitPlan:
    """One unit of work, fully resolved (what a launcher hands to a worker)."""

    unit: Unit
    spec: MethodSpec
    config: dict[str, Any]
    chash: str


def run(methods: list[MethodSpec | Variant], dataset: str, *, tasks: list[str] | None = None,
        folds: list[int] | None = None, results: Path | str = "results", cache: Path | str = "cache",
        n_folds: int = 5, seed: int = 0, train_overrides: dict[str, Any] | None = None,
        model_overrides: dict[str, Any] | None = None, progress: bool = True, tuned: bool = False,
        dry_run: bool = False, init: Path | str | None = None, order: str = "task") -> RunReport:
    """Run every (task, method[, variant], fold) unit of ``dataset`` (a name or a YAML path) not yet done.

    ``methods`` may hold :class:`Variant` s (an ablation's values), each stored under its name.

    ``init``: a checkpoint every unit's model starts from (``bench.pretrain.load_init``; its path
    and content hash enter the unit's config).
    ``tuned``: each unit uses the best hyper-parameters that ``bench tune`` found for its outer fold
    (variant ``tuned``; a unit without them fails, naming the command to run). ``dry_run``: resolve
    and classify units (done / to do, in ``report.todo``) without training anything.
    ``order``: the order units run in (``grid_order``): ``task`` (default), ``method`` or ``fold``.
    """
    t0 = time.perf_counter()
    variants = [m if isinstance(m, Variant) else Variant(m) for m in methods]
    if any(v.spec.family == "end-to-end" for v in variants):
        bound_heap_growth()  # resident memory stays at one layer's working set (bench/memory.py)
    store = ResultsStore(results)
    cohort = load_cohort(dataset)
    dataset = cohort.spec.name  # a dataset given as a YAML path is named by its file stem
    for line in cohort.report():
        log.info(line)
    tasks = [t for t in (tasks or cohort.spec.tasks)]
    for t in tasks:
        if t not in cohort.spec.tasks:
            raise ValueError(f"dataset {dataset!r} does not support task {t!r} (it has {cohort.spec.tasks})")
    manager = SplitManager(Path(results) / "splits")
    with D.main_first():  # under torchrun, rank 0 writes the split files, the others read them
        splits: dict[str, Splits] = {t: manager.get(dataset, t, cohort.cases(t), n_folds=n_folds, seed=seed)
                                     for t in tasks}

    report = RunReport(dataset=dataset)
    inputs: dict[str, Inputs] = {}

    def get_inputs(spec: MethodSpec, opts: dict[str, Any]) -> tuple[str, Inputs]:
        """Inputs are shared between methods that consume the same thing."""
        key = inputs_key(spec, opts)
        if key not in inputs:
            inputs[key] = make_inputs(spec, cohort, cache, opts, progress)
        return key, inputs[key]

    grid = grid_order(tasks, variants, {t: splits[t].n_folds for t in tasks}, folds, order)
    extracted: set[str] = set()
    ensured_here: set[str] = set()  # inputs rank 0 filled to check recovered cases
    input_errors: set[str] = set()
    for task, v, k in grid:
        spec = v.spec
        name = v.name if not tuned else ("tuned" if v.name is None else f"{v.name}+tuned")
        unit = Unit(dataset, task, spec.name, k, name)
        tuned_train, tuned_model, tuned_info = {}, {}, None
        if tuned:
            from .tuning import TuningError, load_best, split_params

            try:
                tuned_info = load_best(results, dataset, task, spec.name, k)
            except TuningError as exc:
                report.failed[unit] = str(exc)
                continue
            tuned_train, tuned_model = split_params(tuned_info["params"])
        try:
            # CLI > the variant's setting (what an ablation varies) > tuned values > dataset > defaults
            opts = model_options(spec, cohort, {**tuned_model, **v.model, **(model_overrides or {})})
            key, fi = get_inputs(spec, opts)
            train_cfg = method_train_config(spec, {**tuned_train, **v.train, **(train_overrides or {})},
                                            cohort.spec.train)
        except Exception as exc:  # noqa: BLE001 — an unavailable encoder fails its units, not the run
            msg = f"inputs of {spec.name} unavailable: {type(exc).__name__}: {exc}"
            if spec.name not in input_errors:
                log.error("%s", msg)
            input_errors.add(spec.name)
            report.failed[unit] = msg
            continue
        # same seed for every variant of a method: an ablation compares settings, not initialisations
        train_cfg["seed"] = unit_seed(seed, spec.name, task, k)
        config = {"dataset": dataset, "task": task, "method": spec.name, "fold": k, "family": spec.family,
                  "split_hash": splits[task].hash, "n_folds": splits[task].n_folds, "train": train_cfg,
                  "model": opts, **fi.identity}
        if init is not None:
            config["init"] = init_identity(init)
        if v.name:  # only variants carry the key, so the hashes of plain runs stay as they were
            config["variant"] = v.name
        if tuned_info is not None:
            config["tuned"] = {k2: tuned_info.get(k2) for k2 in ("params", "value", "metric", "study_name",
                                                                 "n_trials", "inner_folds")}
        chash = config_hash(config)
        # Rank 0 decides (done / claimed elsewhere / run) and every rank follows: under torchrun
        # the ranks train each unit together, so they must agree on the unit list.
        lock = None
        redo_recovered: list[str] = []
        if D.is_main():
            done = store.done_metrics(unit, chash)
            if done is not None and done.get("cases_without_input") and not dry_run:
                # the config hash does not cover which cases had input: a unit that ran without a
                # case whose slide has been fixed since is redone (its old result kept aside)
                redo_recovered = _recovered_cases(done["cases_without_input"], key, fi, ensured_here)
                if redo_recovered:
                    log.info("%s: case(s) left out of the finished result now have input (%s); redoing "
                             "the unit, the previous result is kept aside", unit, ", ".join(redo_recovered[:5]))
                    done = None
            status = "done" if done is not None else "run"
            if status == "run" and not dry_run:
                lock = store.try_claim(unit)
                if lock is None:
                    status = "busy"
                elif not redo_recovered and store.done_metrics(unit, chash) is not None:
                    status = "done"  # finished by another worker meanwhile
        status = D.broadcast(status if D.is_main() else None)
        if status == "done":
            report.done_before.append(unit)
            if lock is not None:
                lock.release()
            continue
        if dry_run:
            report.todo.append(UnitPlan(unit, spec, config, chash))
            continue
        if status == "busy":
            log.info("%s: claimed by another process, skipping", unit)
            report.busy.append(unit)
            continue
        try:
            if key not in extracted:
                with D.main_first():  # rank 0 fills the cache, the others then find it
                    fi.ensure()
                extracted.add(key)
            if D.is_main():
                store.prepare(unit, config, chash, keep_previous="recovered" if redo_recovered else None)
            metrics = _run_unit(unit, spec, splits[task], cohort, fi, train_cfg, config, chash, opts, progress, init)
            if D.is_main():
                store.finish(unit, *metrics)
            m = metrics[2]
            why = f" -- {m['metrics']['undefined']}" if "undefined" in m["metrics"] else ""
            log.info("%-48s %s = %s  (%.1f s)%s", str(unit), m["primary_metric"],
                     _fmt(m["metrics"].get(m["primary_metric"])), m["train_seconds"], why)
            report.ran.append(unit)
        except OSError:
            raise  # disk full, unreadable cache...: stop; finished units stay done
        except Exception as exc:  # noqa: BLE001 — one unit's failure must not lose the others
            msg = f"{type(exc).__name__}: {exc}"
            if D.active():
                # Under DDP the ranks train each unit together: a rank that skipped to the next
                # unit would leave the others blocked in this unit's collectives until the process
                # group's timeout (30 min). Stop this process instead; torchrun then tears the
                # whole group down, and a rerun resumes at this unit.
                log.error("rank %d: %s failed: %s -- stopping every rank (a DDP group cannot skip a unit "
                          "on one rank only); finished units are kept, rerun the same command to resume",
                          D.rank(), unit, msg)
                if D.is_main():
                    store.fail(unit, msg)
                raise
            log.error("%s failed: %s", unit, msg)
            if D.is_main():
                store.fail(unit, msg)
            report.failed[unit] = msg
        finally:
            if lock is not None:
                lock.release()
    if report.ran and D.is_main():
        store.summarize(dataset)
    report.seconds = time.perf_counter() - t0
    return report


ORDERS = ("task", "method", "fold")


def grid_order(tasks: list[str], variants: list[Any], n_folds: dict[str, int], folds: list[int] | None,
               order: str = "task") -> list[tuple[str, Any, int]]:
    """The (task, variant, fold) units of a run, in the order they are trained.

    ``task`` (default): every unit of the first task, then the next task — each method's folds
    together. ``method``: every unit of the first method (all its tasks and folds), then the next:
    a method's row is complete in every table early. ``fold``: fold 0 of every (task, method), then
    fold 1, ...: after the first round every table has every row, from one fold (marked ``1/5
    folds``), and each further round tightens them all — the order for a first look at a long grid.
    Which units exist does not depend on the order, and a resumed run skips done units in any order.
    """
    if order not in ORDERS:
        raise ValueError(f"unknown order {order!r}; choose one of {', '.join(ORDERS)}")
    keep = [(t, v, k) for t in tasks for v in variants for k in range(n_folds[t]) if folds is None or k in folds]
    t_pos = {t: i for i, t in enumerate(tasks)}
    v_pos = {id(v): i for i, v in enumerate(variants)}
    key = {"task": lambda u: (t_pos[u[0]], v_pos[id(u[1])], u[2]),
           "method": lambda u: (v_pos[id(u[1])], t_pos[u[0]], u[2]),
           "fold": lambda u: (u[2], t_pos[u[0]], v_pos[id(u[1])])}[order]
    return sorted(keep, key=key)


def _recovered_cases(without: list[str], key: str, fi: Inputs, ensured_here: set[str]) -> list[str]:
    """Of the cases a finished unit ran without, those that have input now (their slide was fixed
    or added). Fills the cache first (rank 0 only; ``ensured_here`` is not the run's ``extracted``
    set, so that under DDP every rank still meets rank 0 in ``main_first`` before training);
    only called for units that left cases out."""
    try:
        if key not in ensured_here:
            fi.ensure()
            ensured_here.add(key)
        return [c for c in without if fi.has(c)]
    except Exception as exc:  # noqa: BLE001 -- the unit's own run reports input problems
        log.debug("could not check recovered cases: %s", exc)
        return []


def _fmt(v: Any) -> str:
    return "undefined" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.4f}"


def _run_unit(unit: Unit, spec: MethodSpec, splits: Splits, cohort: Cohort, fi: Inputs,
              train_cfg: dict[str, Any], config: dict[str, Any], chash: str, model_overrides: dict[str, Any],
              progress: bool, init: Path | str | None = None) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    cases = cohort.cases(unit.task).set_index("case_id")
    without = [c for c in cases.index if not fi.has(c)]
    if without:
        log.warning("%s: %d case(s) have no features and are left out (e.g. %s)", unit, len(without),
                    ", ".join(without[:3]))
    train = [fi.sample(c, _labels(cases.loc[c], unit.task)) for c in splits.train_cases(unit.fold) if c not in without]
    test = [fi.sample(c, _labels(cases.loc[c], unit.task)) for c in splits.test_cases(unit.fold) if c not in without]
    torch.manual_seed(train_cfg["seed"])
    n_out = T.get_task(unit.task).n_out()
    model = build_model(spec.name, n_out, **{k: v for k, v in model_overrides.items() if k not in INPUT_OPTIONS},
                        **getattr(fi, "model_kwargs", {}))
    if init is not None:
        log.info("%s: %s", unit, load_init(model, init).summary())
    cfg = TrainConfig.from_dict(train_cfg)
    _reset_peak_memory()
    name = spec.name + (f"[{unit.variant}]" if unit.variant else "")
    pred, train_log, info = train_and_predict(model, unit.task, train, test, cfg, progress=progress,
                                              desc=f"{name} {unit.task} fold {unit.fold}")
    steps = cfg.epochs * info["train_cases"]  # one slide (or one case's bag) per forward pass
    scores = T.score(unit.task, pred)
    metrics = {
        "dataset": unit.dataset, "task": unit.task, "method": unit.method, "variant": unit.variant,
        "fold": unit.fold, "family": spec.family, "encoder": spec.encoder, "label": spec.label,
        "group": spec.group, "params": count_parameters(model),
        "trainable_params": count_trainable_parameters(model), "primary_metric": T.get_task(unit.task).metric,
        "metrics": scores, "config_hash": chash, "split_hash": config["split_hash"], "n_folds": splits.n_folds,
        "random_weights": config.get("random_weights", False), "cases_without_input": without,
        "tuned": "tuned" in config, "input": config.get("input") or f"features:{config.get('encoder')}",
        "weights": getattr(fi, "weights_label", ""), "encoder_standin": config.get("encoder_standin", ""),
        # compute accounting (tables' --compute): the unit's peak memory (training + test prediction)
        # and the wall time of one training step on one slide (forward + backward + its optimizer share)
        **_peak_memory(), "train_seconds_per_slide": info["train_seconds"] / steps if steps else None,
        **info,
    }
    return pred, train_log, metrics
