"""``bench ablate``: the paper's ablations (Tables 3–6, 9) as grids of method variants, run through
the same runner, splits and results store as ``bench run``, then written as tables in the paper's
layout."""

from __future__ import annotations

import argparse
import logging

from .common import (Formatter, add_dataset, add_launch_args, add_paths, cluster_options, parse_int_list,
                     parse_sets, print_failed, print_launch_report, resolve_dataset)

log = logging.getLogger("bench")

EPILOG = """examples:
  python -m bench ablate                                  # list the ablations and their grids
  python -m bench ablate alpha                            # Table 9 on blca if present, else the demo
  python -m bench ablate scan-window --dataset demo --folds 0
  python -m bench ablate magnification --dataset blca --values 0.625,1.25
  python -m bench ablate token-scale --task staging --stats
  python -m bench ablate end-to-end --compute             # + peak memory and time per slide
  python -m bench ablate alpha --dataset blca --launcher submitit --partition gpu --gpus 1   # SLURM array
An ablation value is a variant of a method (pixelmamba-6m with alpha=0.4 is stored under
runs/<ds>/<task>/pixelmamba-6m/alpha_0.4/); reruns skip finished units, a changed config redoes them.
Grids: configs/ablations/<name>.yaml. A dataset may map a grid to sizes it can afford (the demo does:
configs/datasets/demo.yaml `ablations:`); the mapping is printed and stated in the caption.
Before training, each value's input size, regions and Region Fusion schedule are worked out from the
slides' headers; values that see the same on every slide are named with the setting to raise, and
nothing trains (exit 2; --force trains anyway).
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
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="training option override (epochs, lr, ...)")
    p.add_argument("--model", action="append", metavar="KEY=VALUE",
                   help="model constructor override for every row (e.g. d_state=4 for a quick try)")
    p.add_argument("--order", choices=("task", "method", "fold"), default="task",
                   help="order units run in (as `bench run --order`): fold = fold 0 of every value first, "
                        "so the table has every row early")
    p.add_argument("--table-only", action="store_true", help="do not train: write the table from finished units")
    p.add_argument("--force", action="store_true",
                   help="train even when two values give the model the same input size, regions and Region "
                        "Fusion schedule (the check before training says which and how to make them differ; "
                        "docs/ablations.md)")
    add_launch_args(p)
    g = p.add_argument_group("table options")
    g.add_argument("--stats", action="store_true",
                   help="mark rows not significantly different from the best (paired patient-level bootstrap)")
    g.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples (default %(default)s)")
    g.add_argument("--alpha-level", type=float, default=0.05, help="significance level (default %(default)s)")
    g.add_argument("--compute", action="store_true", help="add peak memory and training time per slide columns")
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
    dataset = resolve_dataset(args.dataset, preferred=ablation.dataset)
    grid = ablation_grid(ablation, dataset, args.task, parse_values(args.values))
    for note in grid.notes:
        print(f"{grid.dataset}: {note}")
    common = dict(tasks=[grid.task], folds=parse_int_list(args.folds), results=args.results, cache=args.cache,
                  n_folds=args.n_folds, seed=args.seed, train_overrides=parse_sets(args.set),
                  model_overrides=parse_sets(args.model), progress=not args.quiet, order=args.order)
    failed: dict = {}
    if not args.table_only and not _values_differ(ablation, grid, dataset, common["model_overrides"], args.force):
        return 2
    if args.table_only:
        pass
    elif args.launcher == "submitit":
        from ..engine.launch import submit

        rep = submit(grid.variants, dataset, cluster_options(args), **common)
        print_launch_report(rep, args)
        failed = rep.failed
        if args.no_wait and rep.submitted:
            print_failed(failed)
            print(f"when the jobs are done: python -m bench ablate {args.name} --dataset {grid.dataset} --table-only")
            return 1 if failed else 0
    else:
        from ..engine.runner import run

        report = run(grid.variants, dataset, **common)
        if not report.ran and not report.failed and not report.busy:
            print(f"nothing to do: all {len(report.done_before)} unit(s) already done")
        else:
            print(report.line())
        failed = report.failed
    print_failed(failed)
    paths, md = write_table(ablation, grid.items, grid.notes, grid.dataset, grid.task, args)
    print(md)
    for p in paths:
        print(f"wrote {p}")
    return 1 if failed else 0


def _values_differ(ablation, grid, dataset: str, model_overrides: dict, force: bool) -> bool:
    """The check before training (bench/ablation_check.py): print what each row sees; False (do not
    train) when two rows would see the same on every slide, unless ``force``."""
    from ..ablation_check import check_ablation
    from ..data.datasets import load_cohort

    chk = check_ablation(ablation, grid, load_cohort(dataset), model_overrides)
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


def write_table(ablation, items, notes, dataset: str, task: str, args: argparse.Namespace):
    """Table (LaTeX + Markdown, and the stats CSV with --stats) from the results store only."""
    import json

    from ..ablations import build_rows, to_latex, to_markdown
    from ..io import atomic_write_text
    from ..report.results import ResultsStore, Unit
    from ..report.stats import caption_note, comparisons_frame, compare_to_best

    store = ResultsStore(args.results)
    summary = store.summarize(dataset)
    configs = {}
    for it in items:  # one config.json per row, for columns read from the resolved model options
        for m in store.iter_metrics(dataset):
            if m["task"] == task and m["method"] == it.method and m.get("variant") == it.variant:
                p = store.unit_dir(Unit(dataset, task, it.method, m["fold"], it.variant)) / "config.json"
                configs[it.key] = json.loads(p.read_text()) if p.is_file() else {}
                break
    rows = build_rows(ablation, items, summary, task, configs)
    if all(r.n == 0 for r in rows):
        raise ValueError(f"no finished unit of ablation {ablation.name!r} ({task}) under {args.results}/runs/{dataset}")
    notes = notes + _identical_rows(store, dataset, task, rows)
    similar: set[int] = set()
    note = ""
    out = args.results / dataset / "tables" / f"{ablation.name}_{task}.tex"
    paths = [out, out.with_suffix(".md")]
    if args.stats:
        preds = {r.item.key: store.predictions(dataset, task, r.item.method, r.item.variant) for r in rows}
        comps = compare_to_best(preds, task, n_boot=args.n_boot, alpha=args.alpha_level)
        keys = [r.item.key for r in rows]
        similar = {keys.index(k) for k, c in comps.items() if not c.different}
        note = caption_note(args.n_boot, args.alpha_level)
        csv = out.with_name(out.stem + "_stats.csv")
        name = lambda k: k[0] + (f"/{k[1]}" if k[1] else "")  # noqa: E731
        atomic_write_text(csv, comparisons_frame(comps, name).to_csv(index=False))
        paths.append(csv)
    atomic_write_text(out, to_latex(ablation, rows, dataset, task, notes, similar, note, args.compute))
    md = to_markdown(ablation, rows, task, notes, similar, args.compute)
    atomic_write_text(out.with_suffix(".md"), md)
    return paths, md


def _identical_rows(store, dataset: str, task: str, rows) -> list[str]:
    """A note when several values of a setting gave exactly the same predictions — the setting then
    changed nothing at this input size (e.g. Region Fusion's alpha on slides of few regions, where
    ceil(alpha * n0 / 24) is 1 for every alpha). Said, so nobody reads a flat row as a finding."""
    seen: dict[str, list[str]] = {}
    for r in rows:
        if not r.item.variant or not r.n:
            continue
        pred = store.predictions(dataset, task, r.item.method, r.item.variant)
        if pred.empty:
            continue
        cols = [c for c in ("risk", "pred", "prob1") if c in pred]
        key = pred.sort_values(["fold", "case_id"])[["fold", "case_id", *cols]].to_csv(index=False)
        seen.setdefault(key, []).append(r.item.variant)
    return [f"{', '.join(v)} gave identical predictions: the setting changes nothing at this input size"
            for v in seen.values() if len(v) > 1]
