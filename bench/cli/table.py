"""``bench table``: LaTeX and Markdown tables, and Kaplan–Meier figures, from results only."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from .common import Formatter, add_paths

log = logging.getLogger("bench")

EPILOG = """examples:
  python -m bench table --dataset demo         # results/tables/table2_demo.tex + KM figures
  python -m bench table                        # every dataset with results, one table (paper's Table 2)
  python -m bench table --dataset luad --stats  # mark rows not significantly worse than the best
  python -m bench table --compute              # + peak memory and training time per slide
  python -m bench table --dataset camelyon16   # + results/tables/classification_camelyon16.tex (AUC, ACC)
Writes LaTeX (booktabs) to results/tables/, prints Markdown here, and draws one Kaplan–Meier figure
per survival method (median split of out-of-fold risk, log-rank p) under results/figures/.
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("table", help="write the LaTeX/Markdown tables and KM figures", epilog=EPILOG,
                       formatter_class=Formatter)
    p.add_argument("--dataset", help="comma list of datasets (default: every dataset with results)")
    add_paths(p)
    p.add_argument("--out", type=Path, help="LaTeX output file (default results/tables/table2[_<datasets>].tex)")
    p.add_argument("--ablation-rows", action="store_true",
                   help="also list ablation variants (e.g. pixelmamba-6m alpha=0.4) as rows; by default "
                        "they appear only in `bench ablate`'s tables")
    g = p.add_argument_group("statistics and compute accounting")
    g.add_argument("--stats", action="store_true",
                   help="per column, mark rows not significantly different from the best (paired "
                        "patient-level bootstrap on the shared folds; per-fold paired t-tests in "
                        "<table>_stats.csv); the caption states the test")
    g.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples (default %(default)s)")
    g.add_argument("--alpha-level", type=float, default=0.05, help="significance level (default %(default)s)")
    g.add_argument("--compute", action="store_true",
                   help="add columns: peak memory (GB) and training time per slide (s), from metrics.json")
    p.add_argument("--no-figures", action="store_true", help="skip the Kaplan–Meier figures")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    import pandas as pd  # here, not at the top: `bench --help` imports every command's module

    from ..io import atomic_write_text
    from ..report.plots import km_figure
    from ..report.results import ResultsStore
    from ..report.tables import build_table, classification_table, to_latex, to_markdown

    store = ResultsStore(args.results)
    datasets = args.dataset.split(",") if args.dataset else store.datasets()
    if not datasets:
        raise ValueError(f"no results under {args.results}/runs; run `python -m bench run` first")
    parts = []
    for d in datasets:
        s = store.summarize(d)
        if s.empty:
            raise ValueError(f"no finished units for dataset {d!r} under {args.results}/runs/{d}")
        parts.append(s.assign(dataset=d))
    summary = pd.concat(parts, ignore_index=True)
    if not args.ablation_rows:  # ablation values (variants "<setting>=<value>") have their own tables
        summary = summary[~summary["variant"].fillna("").astype(str).str.contains("=")]
        if summary.empty:
            raise ValueError("these results hold only ablation variants: `python -m bench ablate <name> "
                             "--table-only` writes their tables, or add --ablation-rows")
    wide, cols = build_table(summary)
    suffix = "" if not args.dataset else "_" + "_".join(datasets)
    out = args.out or args.results / "tables" / f"table2{suffix}.tex"
    similar: dict = {}
    note = ""
    if args.stats:
        similar, note, csv = _significance(store, wide, cols, args, out)
        print(f"stats: {csv}")
    atomic_write_text(out, to_latex(wide, cols, label=f"tab:table2{suffix}", similar=similar, stats_note=note,
                                    compute=args.compute))
    md = to_markdown(wide, cols, similar, args.compute)
    atomic_write_text(out.with_suffix(".md"), md)
    print(md)
    print(f"LaTeX: {out}")
    for d in datasets:  # classification (CAMELYON16): the supplement's Table 4 layout, AUC and accuracy
        if ((summary["dataset"] == d) & (summary["task"] == "classification")).any():
            tex, cmd = classification_table(summary, d)
            cout = args.results / "tables" / f"classification_{d}.tex"
            atomic_write_text(cout, tex)
            atomic_write_text(cout.with_suffix(".md"), cmd)
            print(cmd)
            print(f"LaTeX: {cout}")
    if not args.no_figures:
        for d in datasets:
            for method in summary.loc[(summary["dataset"] == d) & (summary["task"] == "survival"), "method"].unique():
                pred = store.predictions(d, "survival", method)
                if pred.empty:
                    continue
                fig = args.results / "figures" / d / f"km_{method}.png"
                p = km_figure(pred, f"{method} — {d} (out-of-fold, {pred['fold'].nunique()} folds)", fig)
                km_figure(pred, f"{method} — {d}", fig.with_suffix(".pdf"))
                print(f"KM: {fig}  log-rank p = {'undefined' if p != p else f'{p:.3g}'}")
    return 0


def _significance(store, wide, cols, args, out: Path):
    """Per (task, dataset) column: compare every row with the column's best on shared folds."""
    import pandas as pd

    from ..io import atomic_write_text
    from ..report.stats import caption_note, compare_to_best, comparisons_frame

    similar: dict = {}
    frames = []
    for task, dataset in cols:
        preds = {}
        for i, row in wide.iterrows():
            if row[(task, dataset)] is None:
                continue
            preds[i] = store.predictions(dataset, task, row["method"], row["variant"] or None)
        comps = compare_to_best(preds, task, n_boot=args.n_boot, alpha=args.alpha_level)
        similar[(task, dataset)] = {i for i, c in comps.items() if not c.different}

        def name(i, w=wide):
            return w.loc[i, "method"] + (f"/{w.loc[i, 'variant']}" if w.loc[i, "variant"] else "")

        if comps:
            frames.append(comparisons_frame(comps, name).assign(task=task, dataset=dataset))
    csv = out.with_name(out.stem + "_stats.csv")
    atomic_write_text(csv, pd.concat(frames, ignore_index=True).to_csv(index=False) if frames else "")
    return similar, caption_note(args.n_boot, args.alpha_level), csv
