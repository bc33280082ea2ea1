"""``bench splits``: write (once) and audit the patient-level folds every method shares."""

from __future__ import annotations

import argparse
import logging

from .common import Formatter, add_dataset, check_names, add_paths, resolve_dataset

log = logging.getLogger("bench")

EPILOG = """examples:
  python -m bench splits --dataset demo            # write if absent, then audit both tasks
  python -m bench splits --dataset luad --task staging
Prints per-fold class (staging) or event (survival) counts and proves zero case/slide overlap
between train and test of every fold.
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("splits", help="write and audit the folds", epilog=EPILOG, formatter_class=Formatter)
    add_dataset(p)
    add_paths(p)
    p.add_argument("--task", help="one task (default: every task of the dataset)")
    p.add_argument("--n-folds", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    check_names(dataset=args.dataset, tasks=[args.task] if args.task else None)
    from ..data.datasets import load_cohort
    from ..data.splits import SplitManager

    dataset = resolve_dataset(args.dataset)
    cohort = load_cohort(dataset)
    dataset = cohort.spec.name
    for line in cohort.report():
        print(line)
    manager = SplitManager(args.results / "splits")
    for task in [args.task] if args.task else cohort.spec.tasks:
        cases = cohort.cases(task)
        s = manager.get(dataset, task, cases, n_folds=args.n_folds, seed=args.seed)
        audit = s.audit(cases, cohort.slides_of())
        print(f"\n{task}: {s.path}  (hash {s.hash}, {len(s.folds)} cases)")
        print(audit.to_string(index=False))
        print("train/test overlap: 0 cases, 0 slides in every fold")
    return 0
