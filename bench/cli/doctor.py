"""``bench doctor``: what this environment can run, and what is missing and why."""

from __future__ import annotations

import argparse
import importlib
import os
import platform
from pathlib import Path

from ..engine.protocol import list_protocols
from .common import Formatter

EPILOG = """examples:
  python -m bench doctor
  python -m bench doctor --dataset luad            # + every unreadable slide and every dropped case
  python -m bench doctor --dataset luad --tissue   # + slides without tissue (reads each thumbnail)
  python -m bench doctor --dataset blca --methods 'abmil.*,pixelmamba-6m' --protocol paper
                                                   # + the recipe `run` resolves for each method
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("doctor", help="check the environment (torch, CUDA, mamba-ssm, openslide, ...)",
                       epilog=EPILOG, formatter_class=Formatter)
    p.add_argument("--dataset", help="also check this dataset: every slide that cannot be opened and every "
                                     "case that will be dropped, with the reason, before any compute")
    p.add_argument("--folds", type=int, default=5, dest="n_folds",
                   help="with --dataset: the fold count `run` will use (default 5)")
    p.add_argument("--results", default=os.environ.get("BENCH_RESULTS", "results"),
                   help="with --dataset: the results root `run` will use (checked writable; existing splits compared)")
    p.add_argument("--cache", default=os.environ.get("BENCH_CACHE", "cache"),
                   help="with --dataset: the feature cache root `run` will use (checked writable)")
    p.add_argument("--tissue", action="store_true",
                   help="with --dataset: also find slides without tissue (segments each thumbnail)")
    p.add_argument("--methods", help="with --dataset: resolve these methods' recipes as `run` does (protocol, "
                                     "training schedule, options validated); `all`, comma lists, globs")
    p.add_argument("--protocol", choices=list_protocols(), default=None,
                   help="with --methods: the preset `run --protocol` would use (default: the dataset's, the method's)")
    p.set_defaults(func=main)


def _version(mod: str) -> tuple[str | None, str]:
    try:
        m = importlib.import_module(mod)
    except Exception as exc:  # noqa: BLE001 — any import failure is what doctor reports
        return None, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return str(getattr(m, "__version__", "installed")), ""


def main(args: argparse.Namespace) -> int:
    ok = True
    print(f"python      {platform.python_version()} ({platform.machine()}, {os.cpu_count()} CPUs)")
    import torch

    print(f"torch       {torch.__version__}; threads {torch.get_num_threads()}")
    cuda = torch.cuda.is_available()
    print(f"cuda        {'yes: ' + torch.cuda.get_device_name(0) if cuda else 'no (CPU only: end-to-end models run, slowly)'}")
    checks = [
        ("torchvision", True, "pip install torchvision (matching your torch)"),
        ("timm", True, "pip install timm"),
        ("openslide", True, "pip install openslide-python openslide-bin"),
        ("tiffslide", True, "pip install tiffslide"),
        ("h5py", True, "pip install h5py"),
        ("sksurv", True, "pip install scikit-survival"),
        ("numba", True, "pip install numba (fast CPU selective scan)"),
        ("open_clip", True, "pip install open-clip-torch (CONCH encoder)"),
        ("submitit", False, "pip install 'wsi-bench[cluster]' (SLURM launcher)"),
        ("optuna", False, "pip install 'wsi-bench[cluster]' (tuning)"),
    ]
    for mod, required, fix in checks:
        v, err = _version(mod)
        if mod == "openslide" and v:
            import openslide

            v = f"{v} (library {openslide.__library_version__})"
        print(f"{mod:11s} {v or 'MISSING'}" + ("" if v else f"  — {err}; fix: {fix}"))
        ok &= bool(v) or not required
    if cuda:
        v, err = _version("mamba_ssm")
        print(f"mamba_ssm   {v or 'missing'}" + ("" if v else f"  — {err}; optional: pip install 'wsi-bench[cuda]'"))
    else:
        print("mamba_ssm   not used: it needs CUDA (its import loads a CUDA extension); the numba/torch scan runs instead")
    for var in ("BENCH_DATA", "BENCH_RESULTS", "BENCH_CACHE", "BENCH_CONFIG", "HF_HOME", "HF_HUB_OFFLINE"):
        print(f"{var:11s} {os.environ.get(var, '<unset>')}")
    if args.dataset:
        from ..engine.settings import Settings

        ok &= check_dataset(args.dataset, tissue=args.tissue, n_folds=args.n_folds, results=args.results,
                            cache=args.cache, slide_backend=Settings.from_env().slide_backend)
        if args.methods:
            ok &= check_recipes(args.dataset, args.methods, args.protocol)
    print("ready" if ok else "something required is missing (see above)")
    return 0 if ok else 1


def check_recipes(dataset: str, methods: str, protocol: str | None = None) -> bool:
    """The recipe ``run`` resolves for each method on each task of ``dataset`` (the one resolver,
    ``bench.engine.recipe.resolve_recipe``): its protocol preset and training schedule, or the option
    error that would stop the run. False when a recipe cannot be resolved."""
    from ..data.datasets import load_cohort
    from ..engine.config import OptionError
    from ..engine.recipe import resolve_recipe
    from ..registry import resolve_methods

    cohort = load_cohort(dataset)
    ok = True
    for spec in resolve_methods(methods):
        for task in cohort.spec.tasks:
            try:
                r = resolve_recipe(spec, cohort, task, protocol=protocol)
            except (OptionError, ValueError) as exc:
                print(f"recipe      {spec.name} {task}: error: {exc}")
                ok = False
                continue
            t = r.train
            print(f"recipe      {spec.name} {task}: protocol {r.protocol.name}; {t['schedule']} schedule, "
                  f"{t['epochs']} epochs, lr {t['lr']:g}, class weights {t['class_weights']}"
                  + (f"; network options {dict(r.model)}" if r.model else "")
                  + (f"; inputs {dict(r.inputs)}" if r.inputs else ""))
    return ok


def check_dataset(name: str, tissue: bool = False, n_folds: int = 5, results: str | None = None,
                  cache: str | None = None, slide_backend: str = "auto") -> bool:
    """What ``run`` will do with this dataset, computed the way ``run`` computes it
    (``load_cohort``, ``Cohort.fold_problems``, the split manager), plus every slide opened:
    slides that cannot be opened (header, lowest level and the last level-0 tile are read --
    truncated files lose their end first), slides without a plausible mpp, files that are not
    slides, and every case dropped from each task with the reason. False when ``run`` would fail
    or a slide cannot be opened. ``tissue`` also segments each slide's thumbnail. ``slide_backend``:
    the slide reader (``feature_cache.open_slide``'s ``backend``), as ``run`` would use."""
    from ..data.datasets import DatasetError, load_cohort
    from ..data.features import pre_extracted

    ok = _roots_writable(results, cache)
    try:
        cohort = load_cohort(name)
    except (DatasetError, ValueError) as exc:
        print(f"dataset {name}: NOT READY\n{exc}")
        return False
    spec = cohort.spec
    n_cases, n_clin = cohort.n_cases, cohort.n_clinical
    kind = "feature files" if cohort.source == "features" else "slides"
    print(f"dataset {spec.name}: {n_cases} of {n_clin} cases in the clinical table joined; "
          f"{len(cohort.table)} of {cohort.n_slides_found} {kind} found used "
          f"(slides: {spec.path(spec.slides) if cohort.source == 'slides' else 'none, features only'}; "
          f"clinical: {spec.path(spec.clinical)})")
    for why, ids in cohort.filtered.items():
        print(f"  left out by the slide filter: {len(ids)} of {cohort.n_slides_found} {kind}: {why} ({', '.join(ids[:5])})")
    for path, why in cohort.ignored_files:
        print(f"  not a slide, ignored: {path}: {why}")
    releases = {e: pre_extracted(spec, e) for e in spec.features}
    if cohort.source == "slides":
        bad, no_mpp, empty = _check_slides(cohort, tissue, slide_backend)
    else:
        bad, no_mpp, empty = {}, {}, []
    n = len(cohort.table)
    if cohort.source == "slides":
        print(f"  slides: {n - len(bad)} of {n} open" + (f"; {len(no_mpp)} without mpp" if no_mpp else "")
              + (f"; {len(empty)} without tissue" if empty else ""))
    for sid, msg in bad.items():
        print(f"  cannot open {sid}: {msg}")
    for sid, msg in no_mpp.items():
        print(f"  no mpp: {sid} -- set `mpp_override: <um/px>` in the dataset config (0.25 = 40x, 0.5 = 20x): {msg}")
    for sid in empty:
        print(f"  no tissue: {sid} -- no features can be made from it")
    feature_bad: dict[str, set[str]] = {}
    for enc, rel in releases.items():
        report = rel.extract(list(cohort.table["slide_id"]))
        feature_bad[enc] = set(report.failed)
        print(f"  features {enc} (pre-extracted, {rel.root}): {n - len(report.failed)} of {n} slides have a valid file")
        if rel.note:
            print(f"    {rel.note}")
        for sid, msg in list(report.failed.items())[:10]:
            print(f"    {sid}: {msg}")
    unusable = set(bad) | set(empty) | (set(no_mpp) if spec.mpp_override is None else set())
    unusable |= set().union(*feature_bad.values()) if feature_bad else set()
    slides_of = cohort.slides_of()
    dead = sorted(c for c, sl in slides_of.items() if all(s in unusable for s in sl))
    drops = _drops(cohort, dead, slides_of)
    print(f"  will drop: {len(drops)}" + (" (nothing)" if not drops else ""))
    for item, task, why in drops:
        print(f"    {item:28s} from {task}: {why}")
    for task in spec.tasks:
        labelled = set(cohort.cases(task)["case_id"])
        kept = len(labelled - set(dead))
        print(f"  {task}: {kept} of {n_cases} cases will be used ({len(labelled)} of {n_cases} joined cases "
              f"have its labels; {n_clin} cases in the clinical table)")
    problems = cohort.fold_problems(spec.tasks, n_folds)
    if results is not None:
        problems += _split_problems(cohort, results)
    for p in problems:
        print(f"  run would fail: {p}")
    if not problems:
        print(f"  folds: every task fills {n_folds} folds")
    return ok and not bad and not problems and not any(feature_bad.values())


def _roots_writable(results: str | None, cache: str | None) -> bool:
    """Print an error for each given root that cannot be written; False if any."""
    from ..io import UnwritableError, check_writable

    ok = True
    for root, what, env in ((results, "results root", "BENCH_RESULTS"), (cache, "feature cache root", "BENCH_CACHE")):
        if root is None:
            continue
        try:
            check_writable(root, what, f"point --{what.split()[0 if what.startswith('results') else 1]} / {env} "
                                       "at a directory you can write, or fix its permissions", create=False)
        except UnwritableError as exc:
            print(f"error: {exc}")
            ok = False
    return ok


def _drops(cohort, dead: list[str], slides_of: dict[str, list[str]]) -> list[tuple[str, str, str]]:
    """(case or slide, task, why) for everything ``run`` leaves out of a task."""
    spec = cohort.spec
    drops: list[tuple[str, str, str]] = []  # (case or slide, task, why)
    for sid in cohort.dropped.get("slides without a clinical row", []):
        drops.append((sid, "every task", "slide without a clinical row"))
    for cid in cohort.dropped.get("cases in the clinical table without a slide", []):
        drops.append((cid, "every task", "no slide"))
    for cid in dead:
        drops.append((cid, "every task", f"none of its slides is usable ({', '.join(slides_of[cid])})"))
    for task in spec.tasks:
        from ..tasks import get_task

        cols = " and ".join(get_task(task).label_columns)
        for cid in cohort.unlabelled(task):
            if cid not in dead:
                drops.append((cid, task, f"no valid {cols} (NA, unknown or invalid value; see warnings above)"))
    return drops


def _split_problems(cohort, results: str) -> list[str]:
    """Existing split files that the current cohort no longer matches (run refuses them)."""
    from ..data.splits import SplitError, SplitManager

    manager, out = SplitManager(Path(results) / "splits"), []
    for task in cohort.spec.tasks:
        if manager.path(cohort.spec.name, task).is_file():
            try:
                manager.get(cohort.spec.name, task, cohort.cases(task), create=False)
            except SplitError as exc:
                out.append(f"{task}: {exc}")
    return out


def _check_slides(cohort, tissue: bool, reader: str) -> tuple[dict[str, str], dict[str, str], list[str]]:
    """Open every slide (with the slide reader ``reader``, as a run would) and read a little of it:
    cheap next to feature extraction."""
    from tqdm.auto import tqdm

    from feature_cache import SlideError, open_slide

    bad: dict[str, str] = {}
    no_mpp: dict[str, str] = {}
    empty: list[str] = []
    rows = list(zip(cohort.table["slide_id"], cohort.table["slide_path"]))
    for sid, path in tqdm(rows, desc="checking slides", unit="slide", leave=False, disable=None):
        try:
            with open_slide(path, backend=reader, mpp=cohort.spec.mpp_override) as s:
                s.get_thumbnail((64, 64))
                w, h = s.dimensions
                s.read_region((w - 1, h - 1), 0, (1, 1))  # the last level-0 tile: the end of the file
                try:
                    s.require_mpp()
                except SlideError as exc:
                    no_mpp[sid] = str(exc)
                if tissue:
                    from feature_cache import segment_tissue

                    mask, _ = segment_tissue(s)
                    if not mask.any():
                        empty.append(sid)
        except SlideError as exc:
            bad[sid] = str(exc)
    return bad, no_mpp, empty
