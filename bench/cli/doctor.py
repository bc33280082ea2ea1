"""``bench doctor``: what this environment can run, and what is missing and why."""

from __future__ import annotations

import argparse
import importlib
import os
import platform

from .common import Formatter

EPILOG = """examples:
  python -m bench doctor
  python -m bench doctor --dataset luad     # also: can the dataset's slides and clinical table be found?
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("doctor", help="check the environment (torch, CUDA, mamba-ssm, openslide, ...)",
                       epilog=EPILOG, formatter_class=Formatter)
    p.add_argument("--dataset", help="also check this dataset's files")
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
    for var in ("BENCH_DATA", "BENCH_RESULTS", "BENCH_CACHE", "HF_HOME", "HF_HUB_OFFLINE"):
        print(f"{var:11s} {os.environ.get(var, '<unset>')}")
    if args.dataset:
        from ..datasets import DatasetError, load_cohort

        try:
            cohort = load_cohort(args.dataset)
            for line in cohort.report():
                print(line)
            ok &= _check_slides(cohort)
        except DatasetError as exc:
            print(f"dataset {args.dataset}: NOT READY\n{exc}")
            ok = False
    print("ready" if ok else "something required is missing (see above)")
    return 0 if ok else 1


def _check_slides(cohort) -> bool:
    """Open every slide (cheap: header and pyramid only) before any compute is spent on it."""
    from feature_cache import SlideError, open_slide

    bad = []
    no_mpp = []
    for sid, path in zip(cohort.table["slide_id"], cohort.table["slide_path"]):
        try:
            with open_slide(path, mpp=cohort.spec.mpp_override) as s:
                if s.mpp is None:
                    no_mpp.append(sid)
        except SlideError as exc:
            bad.append((sid, str(exc)))
    n = len(cohort.table)
    print(f"  slides: {n - len(bad)} of {n} open" + (f"; {len(no_mpp)} without mpp" if no_mpp else ""))
    for sid, msg in bad:
        print(f"  cannot open {sid}: {msg}")
    if no_mpp:
        print(f"  no mpp (e.g. {', '.join(no_mpp[:3])}): set `mpp_override: <um/px>` in the dataset config")
    return not bad
