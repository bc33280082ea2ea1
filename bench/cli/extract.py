"""``bench extract``: patch features into the HDF5 cache (resumable; shareable between workers)."""

from __future__ import annotations

import argparse
import logging

from .common import Formatter, add_dataset, add_paths, resolve_dataset

log = logging.getLogger("bench")

EPILOG = """examples:
  python -m bench extract --dataset demo --encoders resnet50
  python -m bench extract --dataset luad --encoders resnet50,conch --skip-errors
Finished slides are skipped, so a killed extraction resumes where it stopped; several processes may
extract into one cache at the same time (per-slide locks).
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("extract", help="extract patch features into the cache", epilog=EPILOG,
                       formatter_class=Formatter)
    add_dataset(p)
    add_paths(p)
    p.add_argument("--encoders", default="resnet50", help="comma list of encoders (see `bench ls encoders`)")
    p.add_argument("--skip-errors", action="store_true", help="report failing slides and go on")
    p.add_argument("--batch-size", type=int, default=32)
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from feature_cache import FeatureCache, get_encoder

    from ..datasets import load_cohort

    dataset = resolve_dataset(args.dataset)
    cohort = load_cohort(dataset)
    paths = dict(zip(cohort.table["slide_id"], cohort.table["slide_path"]))
    cache = FeatureCache(args.cache)
    status = 0
    for name in [e.strip() for e in args.encoders.split(",") if e.strip()]:
        enc = get_encoder(name, allow_random=cohort.spec.allow_random_weights)
        rep = cache.extract(paths, enc, progress=not args.quiet, skip_errors=args.skip_errors,
                            batch_size=args.batch_size)
        print(f"{name}: {rep}")
        if getattr(rep, "failed", None):
            status = 1
    return status
