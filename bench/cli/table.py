"""``bench table``: LaTeX and Markdown tables, and Kaplan–Meier figures, from results only."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from .common import Formatter, add_paths, dataset_name

log = logging.getLogger("bench")

EPILOG = """examples:
  python -m bench table --dataset demo         # results/tables/table2_demo.tex + KM figures
  python -m bench table                        # every dataset with results, one table (paper's Table 2)
  python -m bench table --methods all          # every registered method a row; "–" for rows still to run
  python -m bench table --dataset luad --stats  # mark rows not significantly worse than the best
  python -m bench table --compute              # + peak memory and training time per slide
  python -m bench table --repeats-detail       # rows run with --repeats: split and seed variance per row
  python -m bench table --std-ddof 1           # sample standard deviation instead of population
  python -m bench table --dataset camelyon16   # + results/tables/classification_camelyon16.tex (AUC, ACC)
  python -m bench table --latex-layout split   # one table per task instead of one full-width table*
  python -m bench table --km-panel meanmil.resnet50,abmil.resnet50,transmil.resnet50,pixelmamba-6m
  python -m bench table --dataset blca --published pixel-mamba   # + the paper's numbers, differences
  python -m bench table --dataset blca --splits mambamil          # only the rows of an imported split set
Writes LaTeX (booktabs) to results/tables/, prints Markdown here, and draws one Kaplan–Meier figure
per survival method (median split of out-of-fold risk, log-rank p) under results/figures/.
Every cell is tested against chance (permutation test of the row's out-of-fold predictions against
labels shuffled within each fold, same metric; survival concordance over pairs within one fold); cells with p >= 0.05 are marked ∘ and the p-values go to
<table>_chance.csv. Bold/underline rank only rows with every fold; partial rows print grey italic.
Marks: † random weights of a pretrained part, ‡ stand-in encoder, ¶ end-to-end from random
initialisation, § protocol other than the paper's, numbers: options that differ from the method's
defaults (and --init checkpoints); each is explained under the table. A row holds one split set:
rows of another one are rows of their own, named after it ("MeanMIL (splits-mambamil)", "(seed1-k3)").
Rows run with --repeats: each fold's value is the mean over its training seeds, then mean ± std over
folds; a row with unequal repeats per fold shows its counts and is not ranked. The split (between-fold)
and seed (within-fold) variance of every row are in results/<dataset>/variance.csv (docs/repeats.md).
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("table", help="write the LaTeX/Markdown tables and KM figures", epilog=EPILOG,
                       formatter_class=Formatter)
    p.add_argument("--dataset", help="comma list of datasets, by name or by the path of the YAML file given to "
                                     "`bench run` (default: every dataset with results)")
    add_paths(p)
    p.add_argument("--out", type=Path, help="LaTeX output file (default results/tables/table2[_<datasets>].tex)")
    p.add_argument("--methods", help="rows the table must list (all, comma lists, globs as in `bench run`); "
                                     "those without results show – and are counted (default: the methods "
                                     "with results)")
    p.add_argument("--std-ddof", type=int, default=0, choices=(0, 1),
                   help="ddof of the ± standard deviation: 0 population (default), 1 sample")
    p.add_argument("--ablation-rows", action="store_true",
                   help="also list ablation variants (e.g. pixelmamba-6m alpha=0.4) as rows; by default "
                        "they appear only in `bench ablate`'s tables")
    g = p.add_argument_group("statistics and compute accounting")
    g.add_argument("--stats", action="store_true",
                   help="per column, mark rows not significantly different from the best (paired "
                        "patient-level bootstrap on the shared folds; per-fold paired t-tests in "
                        "<table>_stats.csv; each row's split and seed variance in <table>_variance.csv); the "
                        "caption states the test")
    g.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples (default %(default)s)")
    g.add_argument("--alpha-level", type=float, default=0.05, help="significance level (default %(default)s)")
    g.add_argument("--repeats-detail", action="store_true",
                   help="print each row's split (between-fold) and seed (within-fold) variance components, for "
                        "rows run with --repeats (docs/repeats.md)")
    g.add_argument("--compute", action="store_true",
                   help="add columns: peak memory (GB) and training time per slide (s), from metrics.json")
    p.add_argument("--latex-layout", choices=("compact", "split", "landscape"), default="compact",
                   help="compact: both tasks in one full-width table* (\\footnotesize, the spread under the mean), "
                        "fits a two-column paper; split: one full-width table per task, mean ± std on one line; "
                        "landscape: both tasks in one rotated full-page sidewaystable (package rotating). "
                        "Default %(default)s")
    g.add_argument("--n-perm", type=int, default=1000,
                   help="permutations of the test against chance that every cell gets (default %(default)s)")
    p.add_argument("--published", metavar="SOURCE",
                   help="print beside each row the published mean ± std, the difference and the protocol "
                        "differences the records know (shipped source: pixel-mamba; docs/splits.md)")
    p.add_argument("--splits", metavar="NAME",
                   help="only the rows made on the imported split set NAME (`bench run --splits NAME`); by "
                        "default every split set's rows are listed, each named after its set")
    p.add_argument("--no-figures", action="store_true", help="skip the Kaplan–Meier figures")
    p.add_argument("--km-panel", metavar="M1,M2,...",
                   help="also draw these methods' Kaplan–Meier curves side by side with shared axes "
                        "(the paper's Figure 4): results/figures/<dataset>/km_panel_<methods>.png")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from ..registry import resolve_methods
    from ..results.store import ResultsStore
    from ..report.write import write_tables

    if args.published:
        from ..report.published import load_published

        load_published(args.published)  # an unknown source is reported before any table is written
    store = ResultsStore(args.results)
    datasets = [dataset_name(d) for d in args.dataset.split(",")] if args.dataset else store.datasets()
    if not args.dataset and datasets:
        print(f"no --dataset: using every dataset with results under {args.results / 'runs'}: {', '.join(datasets)}")
    suffix = "" if not args.dataset else "_" + "_".join(datasets)
    expected = [m.name for m in resolve_methods(args.methods)] if args.methods else None
    for line in write_tables(store, datasets, args.out or args.results / "tables" / f"table2{suffix}.tex",
                             f"tab:table2{suffix}", expected=expected, ddof=args.std_ddof,
                             ablation_rows=args.ablation_rows, stats=args.stats, n_boot=args.n_boot,
                             alpha=args.alpha_level, compute=args.compute, figures=not args.no_figures,
                             layout=args.latex_layout, n_perm=args.n_perm,
                             km_panel=[m for m in (args.km_panel or "").split(",") if m], splits=args.splits,
                             repeats_detail=args.repeats_detail):
        print(line)
    if args.published:
        import pandas as pd

        from ..report.published import comparison_lines
        from ..results.summary import select_split_set

        for d in datasets:
            if store.summary_path(d).is_file():
                summary = pd.read_csv(store.summary_path(d))
                for line in comparison_lines(select_split_set(summary, args.splits) if args.splits else summary,
                                             args.published, d):
                    print(line)
    return 0
