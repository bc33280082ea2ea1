"""``bench heatmap``: where a finished unit's model looks, on its test cases' slides."""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from .common import Formatter, add_dataset, add_paths, resolve_dataset

if TYPE_CHECKING:
    from ..engine.settings import Settings

log = logging.getLogger("bench")

EPILOG = """examples:
  python -m bench heatmap --method abmil.resnet50 --dataset demo --task staging --fold 0
  python -m bench heatmap --method pixelmamba-6m --dataset demo --cases TCGA-2F-A001 --raw
  python -m bench heatmap --method transmil.conch --dataset luad --task survival --all-test --no-occlusion
The unit must be finished with its weights kept (`bench run` keeps them by default; units that finished
without them are redone by `bench run ... --keep-weights`). For each slide of each chosen case it writes,
under --out (default <results>/heatmaps/<dataset>/<task>/<method>/fold<k>/):
  <slide>.h5            tile coords (level-0 top-left x, y, as the feature cache) + every score
  <slide>.geojson       a FeatureCollection of tile squares in level-0 pixels (QuPath: File > Import objects)
  <slide>.<score>.png/.pdf   overlay on the thumbnail with a colour bar; <slide>.gallery.png: top/bottom tiles
Scores: `occlusion` (every method: output(full) - output(without the tile)) and the family's own (attention,
instance logits, gradient x input ...). Staging maps the predicted class (or --class), survival the risk.
A slide whose .h5 exists for the same weights and target is not recomputed (resumable).
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("heatmap", help="heatmaps of a finished unit's model (occlusion + the family's own score)",
                       epilog=EPILOG, formatter_class=Formatter)
    p.add_argument("--method", required=True, help="a method of `bench ls methods`")
    add_dataset(p)
    add_paths(p)
    p.add_argument("--task", help="default: the dataset's first task")
    p.add_argument("--fold", type=int, default=0, help="outer fold whose unit is loaded (default 0)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--cases", help="comma list of case ids (default: every test case of the fold)")
    g.add_argument("--all-test", action="store_true", help="every test case of the fold (the default)")
    p.add_argument("--class", dest="klass", type=int, help="staging: map this class (default: the predicted one)")
    p.add_argument("--raw", action="store_true", help="colour raw scores (default: percentile rank per slide)")
    p.add_argument("--no-occlusion", action="store_true", help="only the family's own score (fast)")
    p.add_argument("--top-k", type=int, default=4, help="tiles in each row of the gallery (default 4)")
    p.add_argument("--tile-um", type=float, default=128.0,
                   help="end-to-end models: side of a scored tile in micrometres (default 128 = 256 px at 20x)")
    p.add_argument("--batch", type=int, default=16, help="occluded inputs per forward batch (default 16)")
    p.add_argument("--out", type=Path, help="output directory")
    p.set_defaults(func=main)


@dataclass
class Loaded:
    """A finished unit, ready to explain."""

    rec: Any
    model: Any
    fi: Any
    samples: dict[str, Any]  # case id -> Sample (inputs normalised as in training)
    test_cases: list[str]
    n_out: int
    slide_backend: str = "auto"  # the slide reader (Settings.slide_backend)


def load_unit(dataset: str, method: str, task: str | None, fold: int, results: Path, cache: Path,
              progress: bool = True, settings: "Settings | None" = None) -> Loaded:
    """Resolve the unit as `bench run` did, check its identity, load its kept weights. ``settings``:
    the process settings the CLI read (default: every setting's default)."""
    from .. import tasks as T
    from ..data.datasets import load_cohort
    from ..data.splits import SplitManager
    from ..engine.config import Variant
    from ..engine.plan import Planner
    from ..engine.recipe import Overrides
    from ..engine.settings import Settings
    from ..engine.unit import sample_labels
    from ..engine.train import zscore_samples
    from ..registry import resolve_methods
    from ..results.store import ResultsStore, Unit, load_weights

    settings = settings or Settings()
    cohort = load_cohort(dataset)
    task = task or cohort.spec.tasks[0]
    if task not in cohort.spec.tasks:
        raise SystemExit(f"--task {task}: dataset {cohort.spec.name!r} has tasks {', '.join(cohort.spec.tasks)}")
    spec = resolve_methods(method)[0]
    store = ResultsStore(results)
    unit = Unit(cohort.spec.name, task, spec.name, fold)
    rec = store.done_record(unit)
    if rec is None:
        raise SystemExit(f"{unit} is not finished in {results}: run it first with `python -m bench run --methods "
                         f"{spec.name} --dataset {dataset} --tasks {task} --folds {fold}`")
    state = load_weights(store, rec)
    splits = SplitManager(results / "splits").get(cohort.spec.name, task, cohort.cases(task),
                                                  n_folds=rec.split.n_folds, seed=rec.split.seed, create=False)
    planner = Planner(cohort, {task: splits}, cache, progress, rec.split.seed, None, False, rec.protocol, settings)
    plan = planner.plan(task, Variant(spec), fold, unit, None, Overrides())
    if plan.chash != rec.config_hash:
        log.warning("%s: the unit as resolved now differs from the finished one (its config hash %s, now %s); "
                    "its recorded weights are loaded into the network resolved now", unit, rec.config_hash[:8],
                    plan.chash[:8])
    fi = planner.inputs[plan.inputs_key]
    fi.ensure()
    model = plan.recipe.build()
    model.load_state_dict(state)
    model.eval()
    cases = cohort.cases(task).set_index("case_id")
    ids = [c for c in cases.index if fi.has(c)]
    samples = {c: fi.sample(c, sample_labels(cases.loc[c], task)) for c in ids}
    if rec.train.get("feature_norm") == "zscore":
        train = [samples[c] for c in splits.train_cases(fold) if c in samples]
        _, normed = zscore_samples(train, list(samples.values()))
        samples = dict(zip(samples, normed))
    test = [c for c in splits.test_cases(fold) if c in samples]
    return Loaded(rec, model, fi, samples, test, T.get_task(task).n_out(), settings.slide_backend)


def _slide_units(ld: Loaded, case: str, tile_um: float) -> list[dict[str, Any]]:
    """Per slide of a case: its id, path, tile coords (level 0), tile side (level 0) and how its
    tiles index the case's model input."""
    import numpy as np

    from feature_cache import open_slide

    fi = ld.fi
    slides = [s for s in fi.slides_of[case] if s not in fi.missing]
    paths = dict(zip(fi.cohort.table["slide_id"], fi.cohort.table["slide_path"]))
    out, start = [], 0
    for sid in slides:
        if ld.rec.family == "end-to-end":
            arr = fi.cache.get(sid, paths[sid], fi.magnification, fi.cohort.spec.mpp_override)
            with open_slide(paths[sid], backend=ld.slide_backend, mpp=fi.cohort.spec.mpp_override) as sl:
                down = (10.0 / fi.magnification) / sl.mpp  # level-0 px per input px
            tile = max(1, int(round(tile_um / (10.0 / fi.magnification))))
            from ..report.heatmaps import grid_tiles
            grid = grid_tiles(arr.shape[0], arr.shape[1], tile)
            out.append({"slide_id": sid, "path": paths[sid], "grid": grid, "tile_in": tile, "down": down,
                        "coords": np.round(grid * down).astype(np.int64), "side": int(round(tile * down)),
                        "rgb": arr})
            continue
        if hasattr(fi.cache, "load_regions"):  # HIPT: one score per 4096-px region
            _, _, coords = fi.cache.load_regions(sid, fi.encoder)
            side = int(fi.cache.load_attrs(sid, fi.encoder).get("region_size_level0", 4096))
        else:
            _, coords = fi.cache.load(sid, fi.encoder)
            side = int(fi.cache.load_attrs(sid, fi.encoder)["patch_size_level0"])
        out.append({"slide_id": sid, "path": paths[sid], "coords": np.asarray(coords), "side": side,
                    "rows": slice(start, start + len(coords))})
        start += len(coords)
    return out


def score_case(ld: Loaded, case: str, target_of: Callable[[Any], Any], occlusion: bool, tile_um: float,
               batch: int, on_batch: Callable[[int], None]) -> tuple[list[Any], Any, float]:
    """Every slide's scores of one case, the target explained and its value on the whole input."""
    import torch

    from ..report import heatmaps as H

    s = ld.samples[case]
    units = _slide_units(ld, case, tile_um)
    out = []
    if ld.rec.family == "end-to-end":
        views = list(s.views() if s.views is not None else [s.load()])
        with torch.no_grad():  # a case is predicted from the mean logits of its slides
            logits = torch.stack([ld.model(v).float() for v in views]).mean(0)
        target = target_of(logits)
        for u, img in zip(units, views):
            sc = H.SlideScores(u["slide_id"], u["coords"], u["side"])
            sc.scores["gradxinput"], sc.notes["gradxinput"] = H.image_grad_x_input(ld.model, img, u["grid"],
                                                                                 u["tile_in"], target)
            if occlusion:
                sc.scores["occlusion"] = H.occlusion_image(ld.model, img, u["grid"], u["tile_in"], target, batch,
                                                           on_batch)
                sc.notes["occlusion"] = "target(slide) - target(slide with the tile painted background)"
            keep = _tissue(u["rgb"], u["grid"], u["tile_in"])
            out.append(_subset(sc, keep))
        return out, target, float(target(logits)[0])
    x = s.load()
    with torch.no_grad():
        logits = ld.model(x).float()
    target = target_of(logits)
    try:
        fam, how = H.family_scores(ld.model, x, target)
    except ValueError as exc:  # no score of its own for this model: occlusion only
        log.warning("%s", exc)
        fam, how = None, ""
    occ = H.occlusion_scores(ld.model, x, target, batch, on_batch) if occlusion else None
    for u in units:
        sc = H.SlideScores(u["slide_id"], u["coords"], u["side"])
        if fam is not None:
            sc.scores["family"], sc.notes["family"] = fam[u["rows"]], how
        if occ is not None:
            sc.scores["occlusion"] = occ[u["rows"]]
            sc.notes["occlusion"] = "target(bag) - target(bag without the tile)"
        out.append(sc)
    return out, target, float(target(logits)[0])


def _tissue(rgb: np.ndarray, grid: np.ndarray, tile: int) -> np.ndarray:
    """Tiles with tissue: at least 10 % of pixels away from the background colour."""
    import numpy as np

    bg = np.median(np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]]), axis=0)
    far = np.abs(rgb.astype(np.int16) - bg.astype(np.int16)).max(axis=-1) > 20
    return np.array([far[y:y + tile, x:x + tile].mean() >= 0.1 for x, y in grid], bool)


def _subset(sc: Any, keep: np.ndarray) -> Any:
    sc.coords = sc.coords[keep]
    sc.scores = {k: v[keep] for k, v in sc.scores.items()}
    return sc


def _target_of(task: str, n_out: int, klass: int | None) -> Callable[[Any], Any]:
    """Staging: the chosen (or predicted) class's probability; survival: the risk."""
    import torch

    from .. import tasks as T
    from ..report.heatmaps import Target

    probe = T.get_task(task).unfitted().row(torch.zeros(1, n_out), {c: 0.0 for c in T.get_task(task).label_columns})
    if "risk" in probe:
        return lambda logits: Target(None)
    if klass is not None and not 0 <= klass < n_out:
        raise SystemExit(f"--class {klass}: {task} has classes 0..{n_out - 1}")
    return lambda logits: Target(klass if klass is not None else int(logits.reshape(-1, n_out)[0].argmax()))


def main(args: argparse.Namespace) -> int:
    from ..engine.settings import Settings
    from .heatmap_write import write_case

    dataset = resolve_dataset(args.dataset)
    ld = load_unit(dataset, args.method, args.task, args.fold, args.results, args.cache, progress=not args.quiet,
                   settings=Settings.from_env())
    cases = ld.test_cases if not args.cases else args.cases.split(",")
    unknown = [c for c in cases if c not in ld.samples]
    if unknown:
        raise SystemExit(f"--cases: {', '.join(unknown)} not in {ld.rec.task} of {dataset} (or without input); "
                         f"test cases of fold {args.fold}: {', '.join(ld.test_cases)}")
    for c in cases:
        if c not in ld.test_cases:
            log.warning("%s is a training case of fold %d: its map shows what the model fitted", c, args.fold)
    out = args.out or args.results / "heatmaps" / ld.rec.dataset / ld.rec.task / ld.rec.method / f"fold{args.fold}"
    out.mkdir(parents=True, exist_ok=True)
    written = write_case_all(ld, cases, out, args, write_case)
    print(f"{written} slide(s) of {len(cases)} case(s): {out}")
    return 0


def write_case_all(ld: Loaded, cases: list[str], out: Path, args: argparse.Namespace, write_case: Any) -> int:
    from tqdm.auto import tqdm

    target_of = _target_of(ld.rec.task, ld.n_out, args.klass)
    total = sum(len(ld.fi.slides_of[c]) for c in cases)
    n = 0
    with tqdm(total=total, desc=f"heatmaps {ld.rec.method} fold {ld.rec.fold}", unit="slide",
              disable=True if args.quiet else None) as bar:
        for c in cases:
            n += write_case(ld, c, out, args, target_of, lambda k: None, score_case)
            bar.update(len(ld.fi.slides_of[c]))
    return n


def truth_auroc(ld: Loaded, cases: list[str], truth: Callable[[str], Any], batch: int = 16,
                tile_um: float = 128.0, absolute: bool = False) -> dict[str, Any]:
    """Occlusion maps of ``cases`` against known tumour masks (``truth(slide_id)`` -> an object with
    ``tissue`` and ``tumour`` masks at ``tissue_downsample``): AUROC of tumour tiles (>= 50 % tumour)
    over non-tumour tissue tiles (<= 10 % tumour, >= 25 % tissue), percentile ranks per slide.
    ``absolute``: rank by the size of the change, whichever its sign."""
    import numpy as np

    from ..report.heatmaps import mask_fraction, tumour_auroc

    target_of = _target_of(ld.rec.task, ld.n_out, None)
    scores, labels = [], []
    for c in cases:
        slides, _, _ = score_case(ld, c, target_of, True, tile_um, batch, lambda k: None)
        for sc in slides:
            t = truth(sc.slide_id)
            tum = mask_fraction(t.tumour, t.tissue_downsample, sc.coords, sc.tile_size)
            tis = mask_fraction(t.tissue, t.tissue_downsample, sc.coords, sc.tile_size)
            keep = (tum >= 0.5) | ((tum <= 0.1) & (tis >= 0.25))
            if keep.sum() >= 2:
                occ = sc.scores["occlusion"][keep]
                scores.append(np.abs(occ) if absolute else occ)
                labels.append(tum[keep] >= 0.5)
    n_t = int(sum(int(b.sum()) for b in labels))
    n_all = int(sum(len(b) for b in labels))
    return {"auroc": tumour_auroc(scores, labels) if scores else float("nan"), "tumour_tiles": n_t,
            "other_tissue_tiles": n_all - n_t, "slides": len(scores)}
