"""``bench run``: train and evaluate methods on every fold of every task of a dataset."""

from __future__ import annotations

import argparse
import logging

from .common import Formatter, add_dataset, add_paths, parse_int_list, parse_sets, resolve_dataset

log = logging.getLogger("bench")

EPILOG = """examples:
  python -m bench run --methods 'meanmil.resnet50,maxmil.resnet50,abmil.resnet50' --dataset demo
  python -m bench run --methods 'abmil.*' --dataset luad --tasks survival
  python -m bench run --methods all --dataset blca --folds 0,1 --set epochs=5
--methods takes `all`, comma lists and globs ('abmil.*', '*.gigapath').
A unit (task, method, fold) is done when its metrics.json exists with the same config; rerunning
the same command skips done units and redoes only unfinished ones (also after a crash or kill).
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="train and evaluate methods (resumable)", epilog=EPILOG,
                       formatter_class=Formatter)
    p.add_argument("--methods", required=True, help="`all`, comma list, globs")
    add_dataset(p)
    add_paths(p)
    p.add_argument("--tasks", help="comma list (default: every task of the dataset)")
    p.add_argument("--folds", help="comma list of fold indices (default: all)")
    p.add_argument("--n-folds", type=int, default=5, help="folds when splits are first written (default 5)")
    p.add_argument("--seed", type=int, default=0, help="split and training seed (default 0)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="training option override (epochs, lr, weight_decay, grad_accum, max_patches, ...)")
    p.add_argument("--model", action="append", metavar="KEY=VALUE", help="model constructor override")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from ..registry import resolve_methods
    from ..runner import run

    methods = resolve_methods(args.methods)
    dataset = resolve_dataset(args.dataset)
    log.info("dataset %s; %d method(s): %s", dataset, len(methods), ", ".join(m.name for m in methods))
    report = run(methods, dataset, tasks=args.tasks.split(",") if args.tasks else None,
                 folds=parse_int_list(args.folds), results=args.results, cache=args.cache,
                 n_folds=args.n_folds, seed=args.seed, train_overrides=parse_sets(args.set),
                 model_overrides=parse_sets(args.model), progress=not args.quiet)
    if not report.ran and not report.failed and not report.busy:
        print(f"nothing to do: all {len(report.done_before)} unit(s) already done in "
              f"{args.results}/runs/{report.dataset} — `python -m bench table --dataset {report.dataset}` shows them")
    else:
        print(report.line())
    for unit, msg in report.failed.items():
        print(f"FAILED {unit}: {msg}")
    if report.ran:
        print(f"summary: {args.results / report.dataset / 'summary.csv'}")
    return 1 if report.failed else 0
