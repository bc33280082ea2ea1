"""``bench compare``: two rows of a table, paired on the same cases (folds × repeats)."""

from __future__ import annotations

import argparse
import logging

from .common import Formatter, add_paths

log = logging.getLogger("bench")

EPILOG = """examples:
  python -m bench compare abmil.resnet50 maxmil.resnet50 --dataset demo
  python -m bench compare pixelmamba-6m abmil.gigapath --dataset luad --task survival --stats
  python -m bench compare abmil.resnet50/lr=1e-3 abmil.resnet50 --dataset demo   # a variant row
A row is METHOD or METHOD/VARIANT, as in the table. For each task both rows have: the mean
difference A − B of the table's figure (mean over folds, and over repeats within a fold), its
paired patient-level bootstrap interval and p-value, and, for rows trained with --repeats, in how
many folds the training seed alone reverses the sign. --stats writes the per-(fold, repeat)
differences to results/tables/compare_<A>_vs_<B>_<dataset>_<task>.csv.
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="paired comparison of two table rows (bootstrap, seed sign flips)",
                       epilog=EPILOG, formatter_class=Formatter)
    p.add_argument("row_a", metavar="ROW_A", help="METHOD or METHOD/VARIANT")
    p.add_argument("row_b", metavar="ROW_B", help="METHOD or METHOD/VARIANT")
    p.add_argument("--dataset", required=True, help="dataset whose results hold both rows")
    p.add_argument("--task", help="one task (default: every task both rows have results for)")
    add_paths(p)
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples (default %(default)s)")
    p.add_argument("--alpha-level", type=float, default=0.05, help="significance level (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default %(default)s)")
    p.add_argument("--stats", action="store_true", help="write the per-(fold, repeat) differences as CSV")
    p.set_defaults(func=main)


def _row(text: str) -> tuple[str, str | None]:
    method, _, variant = text.partition("/")
    if not method:
        raise ValueError(f"row {text!r}: expected METHOD or METHOD/VARIANT")
    return method, variant or None


def main(args: argparse.Namespace) -> int:
    from ..report.compare import compare_rows
    from ..results.store import ResultsStore
    from ..tasks import get_task

    store = ResultsStore(args.results)
    (ma, va), (mb, vb) = _row(args.row_a), _row(args.row_b)
    tasks = [args.task] if args.task else sorted({r.task for r in store.records(args.dataset)})
    done = 0
    for task in tasks:
        a, b = store.predictions(args.dataset, task, ma, va), store.predictions(args.dataset, task, mb, vb)
        if a.empty or b.empty:
            if args.task:
                missing = args.row_a if a.empty else args.row_b
                raise ValueError(f"no finished units of {missing} for {args.dataset}/{task}: run it first")
            continue
        t = get_task(task)
        c = compare_rows(task, t.metric_name, a, b, (args.row_a, args.row_b), n_boot=args.n_boot,
                         alpha=args.alpha_level, seed=args.seed)
        for line in c.lines():
            print(line)
        if args.stats:
            safe = "_".join(x.replace("/", "-") for x in (args.row_a, "vs", args.row_b, args.dataset, task))
            out = args.results / "tables" / f"compare_{safe}.csv"
            out.parent.mkdir(parents=True, exist_ok=True)
            c.frame().to_csv(out, index=False)
            print(f"per-stratum differences: {out}")
        done += 1
    if not done:
        raise ValueError(f"{args.row_a} and {args.row_b} share no task with finished units on {args.dataset}")
    return 0
