"""``bench ablate``: the paper's ablations (Tables 3–6, 9) as grids of method variants, run through
the same runner, splits and results store as ``bench run``, then written as tables in the paper's
layout."""

from __future__ import annotations

import argparse
import logging

from .common import (Formatter, add_dataset, add_estimate, add_launch_args, add_paths, add_repeats, add_tracker,
                     check_names, cluster_options, parse_int_list, parse_sets, print_failed, print_launch_report,
                     resolve_dataset, tracker_settings)

log = logging.getLogger("bench")

EPILOG = """examples:
  python -m bench ablate                                  # list the ablations and their grids
  python -m bench ablate alpha                            # Table 9 on blca if present, else the demo
  python -m bench ablate scan-window --dataset demo --folds 0
  python -m bench ablate magnification --dataset blca --values 0.625,1.25
  python -m bench ablate token-scale --task staging --stats
  python -m bench ablate end-to-end --compute             # + peak memory and time per slide
  python -m bench ablate alpha --dataset blca --launcher submitit --partition gpu --gpus 1   # SLURM array
  python -m bench ablate alpha --dataset blca --splits mambamil   # on an imported split set
An ablation value is a variant of a method (pixelmamba-6m with alpha=0.4 is stored under
runs/<ds>/<task>/pixelmamba-6m/alpha_0.4/); reruns skip finished units, a changed config redoes them.
Grids: configs/ablations/<name>.yaml. A dataset may map a grid to sizes it can afford (the demo does:
configs/datasets/demo.yaml `ablations:`); the mapping is printed and stated in the caption.
Before training, each value's input size, regions and Region Fusion schedule are worked out from the
slides' headers; values that see the same on every slide are named with the setting to raise, and
nothing trains (exit 2; --force trains anyway).
Then each row's network is timed for a few passes at its input size and the predicted cost per value
and in total is printed before the first unit trains (cached under <cache>/step_costs/; --no-estimate).
Tables: results/<ds>/tables/<name>_<task>.tex (and .md; with --stats also <name>_<task>_stats.csv).
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ablate", help="run an ablation grid and write its table", epilog=EPILOG,
                       formatter_class=Formatter)
    p.add_argument("name", nargs="?", help="ablation name (configs/ablations/<name>.yaml); none: list them")
    add_dataset(p)
    add_paths(p)
    p.add_argument("--task", help="survival or staging (default: the ablation's, survival as in the paper)")
    p.add_argument("--values", help="comma list replacing the grid (setting values, or method names "
                                    "for end-to-end / token-scale)")
    p.add_argument("--folds", help="comma list of fold indices (default: all)")
    p.add_argument("--n-folds", type=int, default=5, help="folds when splits are first written (default 5)")
    p.add_argument("--seed", type=int, default=0, help="split and training seed (default 0)")
    p.add_argument("--splits", metavar="NAME",
                   help="train and test every value on the imported split set NAME (`bench splits --import`, "
                        "docs/splits.md); stored as <value>+splits-NAME, its table named after the set")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="training option override (epochs, lr, ...)")
    p.add_argument("--model", action="append", metavar="KEY=VALUE",
                   help="model constructor override for every row (e.g. d_state=4 for a quick try)")
    p.add_argument("--input", action="append", metavar="KEY=VALUE",
                   help="input option override for every row (magnification for end-to-end rows)")
    p.add_argument("--order", choices=("fold", "task", "method"), default="fold",
                   help="order units run in (as `bench run --order`): fold (default) = fold 0 of every value "
                        "first, so the table has every row early; task; method")
    p.add_argument("--table-only", action="store_true", help="do not train: write the table from finished units")
    p.add_argument("--force", action="store_true",
                   help="train even when two values give the model the same input size, regions and Region "
                        "Fusion schedule (the check before training says which and how to make them differ; "
                        "docs/ablations.md)")
    add_repeats(p)
    add_estimate(p)
    add_tracker(p)
    add_launch_args(p)
    g = p.add_argument_group("table options")
    g.add_argument("--stats", action="store_true",
                   help="mark rows not significantly different from the best (paired patient-level bootstrap)")
    g.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples (default %(default)s)")
    g.add_argument("--alpha-level", type=float, default=0.05, help="significance level (default %(default)s)")
    g.add_argument("--compute", action="store_true", help="add peak memory and training time per slide columns")
    g.add_argument("--std-ddof", type=int, default=0, choices=(0, 1),
                   help="ddof of the ± standard deviation: 0 population (default), 1 sample")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from ..ablations import ablation_grid, get_ablation, list_ablations, parse_values

    if not args.name:
        for a in list_ablations():
            what = f"{a.method}: {a.override} ∈ {a.values}" if a.method else f"methods {a.methods}"
            print(f"{a.name:14s} Table {a.paper_table or '?':<3} {a.task:9s} {what}")
        print("run one: python -m bench ablate <name> [--dataset X] (see --help)")
        return 0
    ablation = get_ablation(args.name)
    check_names(dataset=args.dataset, tasks=[args.task] if args.task else None)
    from ..engine.config import grid_variants  # torch: after the names are known to be right
    dataset = resolve_dataset(args.dataset, preferred=ablation.dataset)
    grid = ablation_grid(ablation, dataset, args.task, parse_values(args.values))
    for note in grid.notes:
        print(f"{grid.dataset}: {note}")
    from ..engine.options import RunOptions, Settings

    opts = RunOptions.create(dataset, tasks=[grid.task], folds=parse_int_list(args.folds), results=args.results,
                             cache=args.cache, n_folds=args.n_folds, seed=args.seed,
                             train_overrides=parse_sets(args.set), model_overrides=parse_sets(args.model),
                             input_overrides=parse_sets(args.input), progress=not args.quiet, order=args.order,
                             splits_name=args.splits, settings=Settings.from_env(), tracker=tracker_settings(args),
                             repeats=args.repeats, estimate=args.estimate)
    failed: dict = {}
    if not args.table_only and not _values_differ(ablation, grid, opts, args.force):
        return 2
    if args.table_only:
        pass
    elif args.launcher == "submitit":
        from ..engine.launch import submit

        rep = submit(grid_variants(grid.items), opts, cluster_options(args))
        print_launch_report(rep, args)
        failed = rep.failed
        if args.no_wait and rep.submitted:
            print_failed(failed)
            again = f" --splits {args.splits}" if args.splits else ""
            print(f"when the jobs are done: python -m bench ablate {args.name} --dataset {grid.dataset}{again} "
                  "--table-only")
            return 1 if failed else 0
    else:
        from ..engine.runner import run

        report = run(grid_variants(grid.items), opts)
        if not report.ran and not report.failed and not report.busy:
            print(f"nothing to do: all {len(report.done_before)} unit(s) already done")
        else:
            print(report.line())
        failed = report.failed
    print_failed(failed)
    from ..report.ablation_tables import write_ablation_tables
    from ..results.store import ResultsStore

    from dataclasses import replace

    from ..data.splits import split_set_label
    from ..engine.plan import unit_variant

    items = [replace(i, stored=unit_variant(i.variant, False, args.seed, args.n_folds, args.splits))
             for i in grid.items]
    notes = grid.notes + ([f"split set {args.splits!r} (imported; docs/splits.md)"] if args.splits else [])
    paths, md = write_ablation_tables(ResultsStore(args.results), ablation, items, notes, grid.dataset,
                                      grid.task, stats=args.stats, n_boot=args.n_boot, alpha=args.alpha_level,
                                      compute=args.compute, ddof=args.std_ddof,
                                      split_set=split_set_label(args.seed, args.n_folds, args.splits))
    print(md)
    for p in paths:
        print(f"wrote {p}")
    return 1 if failed else 0


def _values_differ(ablation, grid, opts, force: bool) -> bool:
    """The check before training (bench/ablation_check.py): print what each row sees; False (do not
    train) when two rows would see the same on every slide, unless ``force``. It resolves each row's
    network as the run will (``opts``: the run's options, overrides and protocol)."""
    from ..ablation_check import check_ablation
    from ..data.datasets import load_cohort

    chk = check_ablation(ablation, grid, load_cohort(opts.dataset), opts.overrides, protocol=opts.protocol,
                         slide_backend=opts.settings.slide_backend)
    print(f"{grid.dataset}: what each value gives the model (from the slides' headers, before training):")
    for line in chk.summary():
        print(line)
    if chk.ok:
        return True
    for line in chk.advice:
        print(f"{grid.dataset}: {line}")
    if force:
        print("--force: training anyway; rows marked SAME above will give the same model")
        return True
    print(f"not training: {len(chk.identical)} pair(s) of values give the model the same input size, regions and "
          "Region Fusion schedule on every slide (rerun with the settings above, or --force to train anyway)")
    return False
