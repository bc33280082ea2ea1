"""``bench splits``: write (once) and audit the patient-level folds every method shares."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from .common import Formatter, add_dataset, check_names, add_paths, resolve_dataset

log = logging.getLogger("bench")

EPILOG = """examples:
  python -m bench splits --dataset demo            # write if absent, then audit both tasks
  python -m bench splits --dataset luad --task staging
  python -m bench splits --dataset blca --task survival --import MambaMIL/csv/Cbioportal/BLCA_Splits.csv \
      --format mambamil --name mambamil      # a published split set, checked and named (docs/splits.md)
  python -m bench splits --dataset blca --task survival --import MambaMIL/splits/TCGA_BLCA_survival_kfold \
      --format mambamil --name mambamil --two-roles evaluate   # its patients in train and val: evaluated only
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
    g = p.add_argument_group("importing a published split set (docs/splits.md)")
    g.add_argument("--import", dest="import_path", type=Path, metavar="FILE",
                   help="a split file (or folder, for panther/survpath/mambamil) written by another project")
    g.add_argument("--format", choices=("mambamil", "panther", "survpath", "patho-bench", "csv"),
                   help="the layout of --import; docs/splits.md says which column each takes its test set from")
    g.add_argument("--name", help="the split set's name (stored under <results>/splits/<dataset>/<name>/)")
    g.add_argument("--val-as-test", action="store_true",
                   help="panther: a fold without test.csv is evaluated on its val.csv (default: refused)")
    g.add_argument("--two-roles", choices=("refuse", "evaluate"), default="refuse",
                   help="a case in two roles of one fold (MambaMIL's TCGA files split slides, so some patients "
                        "are in train and val): refuse the file (default), or evaluate = keep the case in its "
                        "test/val role only and take it out of training (listed, and kept in the set's .json)")
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
    if args.import_path is not None:
        return _import(args, cohort)
    manager = SplitManager(args.results / "splits")
    for task in [args.task] if args.task else cohort.spec.tasks:
        cases = cohort.cases(task)
        s = manager.get(dataset, task, cases, n_folds=args.n_folds, seed=args.seed)
        audit = s.audit(cases, cohort.slides_of())
        print(f"\n{task}: {s.path}  (hash {s.hash}, {len(s.folds)} cases)")
        print(audit.to_string(index=False))
        print("train/test overlap: 0 cases, 0 slides in every fold")
    return 0


def _import(args: argparse.Namespace, cohort) -> int:
    from ..data.split_import import check_against_cohort, keep_evaluation_role, read_split_file, write_split_set

    if not args.format or not args.name:
        raise ValueError("--import needs --format (mambamil, panther, survpath, patho-bench, csv) and --name")
    table = read_split_file(args.import_path, args.format, val_as_test=args.val_as_test,
                            two_roles=args.two_roles == "evaluate")
    table, taken = keep_evaluation_role(table) if args.two_roles == "evaluate" else (table, {})
    for task in [args.task] if args.task else cohort.spec.tasks:
        cases = cohort.cases(task)
        imp = check_against_cohort(table, args.name, task, cases, taken)
        path = write_split_set(args.results / "splits", cohort.spec.name, imp, args.import_path, args.format)
        print(f"\n{task}: split set {args.name!r} from {args.import_path} ({args.format}) -> {path}")
        for what, ids in (("in the file but not in the cohort (left out)", imp.not_in_cohort),
                          ("in the cohort but not in the file (not used)", imp.not_in_file)):
            print(f"  {len(ids)} case(s) {what}" + (f": {', '.join(ids[:20])}{' ...' if len(ids) > 20 else ''}"
                                                     if ids else ""))
        for k, ids in sorted(imp.taken_from_train.items()):
            print(f"  fold {k}: {len(ids)} case(s) in training and evaluation of the file, evaluated only "
                  f"(--two-roles evaluate): {', '.join(ids[:10])}{' ...' if len(ids) > 10 else ''}")
        print(imp.fold_counts(cases).to_string(index=False))
        print("train/val/test overlap: 0 cases in every fold (full lists in " + str(path.with_suffix(".json")) + ")")
    return 0
