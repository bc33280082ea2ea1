"""``bench extract``: patch features into the HDF5 cache (resumable; shareable between workers),
or import existing CLAM/TRIDENT feature directories instead of recomputing them."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from .common import Formatter, add_dataset, check_names, add_paths, resolve_dataset

log = logging.getLogger("bench")

EPILOG = """examples:
  python -m bench extract --dataset demo --encoders resnet50
  python -m bench extract --dataset luad --encoders resnet50,conch --skip-errors
  python -m bench extract --dataset demo --visualize          # + mask/grid thumbnails
  python -m bench extract --dataset blca --mpp 0.25           # scans without resolution metadata
  python -m bench extract --dataset luad --workers 6          # 6 decoding processes (GPU node)
  python -m bench extract --dataset demo --workers 0 --threads 2   # decode in threads instead
  python -m bench extract --dataset blca --encoders conch --import /data/CLAM/features_conch
Finished slides are skipped, so a killed extraction resumes where it stopped; several processes may
extract into one cache at the same time (per-slide locks). Weights: docs/feature_cache.md.
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("extract", help="extract patch features into the cache", epilog=EPILOG,
                       formatter_class=Formatter)
    add_dataset(p)
    add_paths(p)
    p.add_argument("--encoders", default="resnet50", help="comma list of encoders (see `bench ls encoders`)")
    p.add_argument("--skip-errors", action="store_true", help="report failing slides and go on")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--mpp", type=float, default=None,
                   help="level-0 um/px for every slide (overrides missing or wrong metadata)")
    p.add_argument("--reader", choices=("auto", "openslide", "tiffslide"), default=None,
                   help="slide reader (default: $BENCH_SLIDE_BACKEND, else auto: OpenSlide if it knows the "
                        "format, else tiffslide)")
    p.add_argument("--visualize", nargs="?", const="", default=None, metavar="DIR",
                   help="write <slide>.png thumbnails of the tissue mask and patch grid "
                        "(default DIR: <cache dir>/overview)")
    p.add_argument("--import", dest="import_dir", type=Path, default=None, metavar="DIR",
                   help="import a CLAM (h5_files/, pt_files/) or TRIDENT features directory "
                        "made with --encoders instead of extracting")
    p.add_argument("--workers", "--num-workers", dest="workers", type=int, default=None,
                   metavar="N",
                   help="DataLoader worker processes that decode tiles while the encoder runs "
                        "(default: the dataset's extract_workers, else $BENCH_EXTRACT_WORKERS, else cores - 1, "
                        "1 to 4); 0 decodes in threads of the main process instead")
    p.add_argument("--device", default="auto", help="where the encoder runs: auto (CUDA when present), cpu, cuda")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="decoding threads when --workers 0 (default: up to 4)")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    check_names(encoders=[e.strip() for e in args.encoders.split(",") if e.strip()])  # load_cohort checks the dataset
    from feature_cache import FeatureCache, get_encoder, import_features

    from ..data.datasets import load_cohort
    from ..encoders import ensure_registered
    from ..engine.settings import Settings

    settings = Settings.from_env()
    reader = args.reader or settings.slide_backend
    ensure_registered()  # the declarations, the overlay's included (configs/encoders)
    dataset = resolve_dataset(args.dataset)
    cohort = load_cohort(dataset)
    paths = dict(zip(cohort.table["slide_id"], cohort.table["slide_path"]))
    mpp = args.mpp if args.mpp is not None else cohort.spec.mpp_override  # as `bench run` reads the slides
    cache = FeatureCache(args.cache, mpp=mpp)
    # --workers, else the dataset's extract_workers, else $BENCH_EXTRACT_WORKERS, else cores - 1
    workers = next((w for w in (args.workers, cohort.spec.extract_workers, settings.extract_workers)
                    if w is not None), None)
    status = 0
    for name in [e.strip() for e in args.encoders.split(",") if e.strip()]:
        if args.import_dir is not None:
            enc = get_encoder(name, allow_random=False)  # imported features need the real weights' key
            rep = import_features(cache, args.import_dir, enc, slides=paths, mpp=mpp, reader=reader)
            print(f"{name}: {rep.summary()}")
            for sid, err in rep.failed.items():
                print(f"  {sid}: {err}")
            status |= int(bool(rep.failed))
            continue
        enc = get_encoder(name, allow_random=cohort.spec.allow_random_weights,
                          standin=cohort.spec.random_encoder_standin,  # the same features `bench run` uses
                          device=_device(args.device))
        vis = None
        if args.visualize is not None:
            vis = Path(args.visualize) if args.visualize else cache.dir_for(enc) / "overview"
        rep = cache.extract(paths, enc, progress=not args.quiet, skip_errors=args.skip_errors,
                            batch_size=args.batch_size, mpp=mpp, reader=reader, visualize=vis,
                            threads=args.threads, num_workers=workers, lock_report_s=settings.lock_report_s)
        print(f"{name} ({enc.weights_label} weights): {rep.summary()}")
        for sid, err in rep.failed.items():
            print(f"  {sid}: {err}")
        if vis is not None:
            print(f"  overviews: {vis}")
        if rep.failed:
            status = 1
    return status


def _device(choice: str) -> str:
    import torch

    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {choice}: no CUDA device is visible here; use --device cpu")
    return choice
