"""``bench doctor``: what this environment can run, and what is missing and why."""

from __future__ import annotations

import argparse
import importlib
import os
import platform

from .common import Formatter

EPILOG = """examples:
  python -m bench doctor
  python -m bench doctor --dataset luad            # + every unreadable slide and every dropped case
  python -m bench doctor --dataset luad --tissue   # + slides without tissue (reads each thumbnail)
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("doctor", help="check the environment (torch, CUDA, mamba-ssm, openslide, ...)",
                       epilog=EPILOG, formatter_class=Formatter)
    p.add_argument("--dataset", help="also check this dataset: every slide that cannot be opened and every "
                                     "case that will be dropped, with the reason, before any compute")
    p.add_argument("--tissue", action="store_true",
                   help="with --dataset: also find slides without tissue (segments each thumbnail)")
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
        ok &= check_dataset(args.dataset, tissue=args.tissue)
    print("ready" if ok else "something required is missing (see above)")
    return 0 if ok else 1


def check_dataset(name: str, tissue: bool = False) -> bool:
    """Everything a run of this dataset would leave out, found before any compute: slides that
    cannot be opened (header, lowest level and the last level-0 tile are read -- truncated files
    lose their end first), slides without mpp, files that are not slides, and every case dropped
    from each task with the reason. ``tissue`` also segments each slide's thumbnail."""
    from ..data.datasets import DatasetError, load_cohort

    try:
        cohort = load_cohort(name)
    except DatasetError as exc:
        print(f"dataset {name}: NOT READY\n{exc}")
        return False
    spec = cohort.spec
    print(f"dataset {spec.name}: {cohort.table['case_id'].nunique()} cases, {len(cohort.table)} slides "
          f"(slides: {spec.path(spec.slides)}; clinical: {spec.path(spec.clinical)})")
    for path, why in cohort.ignored_files:
        print(f"  not a slide, ignored: {path}: {why}")
    bad, no_mpp, empty = _check_slides(cohort, tissue)
    n = len(cohort.table)
    print(f"  slides: {n - len(bad)} of {n} open" + (f"; {len(no_mpp)} without mpp" if no_mpp else "")
          + (f"; {len(empty)} without tissue" if empty else ""))
    for sid, msg in bad.items():
        print(f"  cannot open {sid}: {msg}")
    for sid in no_mpp:
        print(f"  no mpp: {sid} -- set `mpp_override: <um/px>` in the dataset config (0.25 = 40x, 0.5 = 20x)")
    for sid in empty:
        print(f"  no tissue: {sid} -- no features can be made from it")
    unusable = set(bad) | set(empty) | (set(no_mpp) if spec.mpp_override is None else set())
    slides_of = cohort.slides_of()
    dead = sorted(c for c, sl in slides_of.items() if all(s in unusable for s in sl))
    drops: list[tuple[str, str, str]] = []  # (case or slide, task, why)
    for sid in cohort.dropped.get("slides without a clinical row", []):
        drops.append((sid, "every task", "slide without a clinical row"))
    for cid in cohort.dropped.get("cases in the clinical table without a slide", []):
        drops.append((cid, "every task", "no slide"))
    for cid in dead:
        drops.append((cid, "every task", f"none of its slides is usable ({', '.join(slides_of[cid])})"))
    for task in spec.tasks:
        from ..engine.tasks import get_task

        cols = " and ".join(get_task(task).label_columns)
        for cid in cohort.unlabelled(task):
            if cid not in dead:
                drops.append((cid, task, f"no valid {cols} (NA, unknown or invalid value; see warnings above)"))
    print(f"  will drop: {len(drops)}" + (" (nothing)" if not drops else ""))
    for item, task, why in drops:
        print(f"    {item:28s} from {task}: {why}")
    for task in spec.tasks:
        n_all = cohort.table["case_id"].nunique()
        kept = len(set(cohort.cases(task)["case_id"]) - set(dead))
        print(f"  {task}: {kept} of {n_all} cases will be used")
    return not bad


def _check_slides(cohort, tissue: bool) -> tuple[dict[str, str], list[str], list[str]]:
    """Open every slide and read a little of it: cheap next to feature extraction."""
    from tqdm.auto import tqdm

    from feature_cache import SlideError, open_slide

    bad: dict[str, str] = {}
    no_mpp: list[str] = []
    empty: list[str] = []
    rows = list(zip(cohort.table["slide_id"], cohort.table["slide_path"]))
    for sid, path in tqdm(rows, desc="checking slides", unit="slide", leave=False, disable=None):
        try:
            with open_slide(path, mpp=cohort.spec.mpp_override) as s:
                s.get_thumbnail((64, 64))
                w, h = s.dimensions
                s.read_region((w - 1, h - 1), 0, (1, 1))  # the last level-0 tile: the end of the file
                if s.mpp is None:
                    no_mpp.append(sid)
                if tissue:
                    from feature_cache import segment_tissue

                    mask, _ = segment_tissue(s)
                    if not mask.any():
                        empty.append(sid)
        except SlideError as exc:
            bad[sid] = str(exc)
    return bad, no_mpp, empty
