"""``bench table``'s files: Table 2 (LaTeX and Markdown), the classification tables, the test against
chance and the paired statistics beside them, and the Kaplan–Meier figures, from a results store's
summaries (:mod:`bench.report.tables` builds the tables)."""

from __future__ import annotations

from typing import Any, Sequence

import pandas as pd

from .render import LATEX_PACKAGES
from .repeats import detail_lines, variance_frame
from .tables import build_table, classification, table2


def write_tables(store: Any, datasets: Sequence[str], out: Any, label: str = "tab:table2", *, expected: Sequence[str] | None = None,
                 ddof: int = 0, ablation_rows: bool = False, stats: bool = False, n_boot: int = 1000,
                 alpha: float = 0.05, compute: bool = False, figures: bool = True, layout: str = "compact",
                 n_perm: int = 1000, km_panel: Sequence[str] = (), splits: str | None = None,
                 repeats_detail: bool = False) -> list[str]:
    """Table 2 (and the classification table of every dataset that has one, and Kaplan–Meier
    figures) from ``store`` (a :class:`~bench.results.store.ResultsStore`); returns what to print.
    Every cell is tested against chance (``n_perm`` permutations, :mod:`bench.report.chance`).
    ``splits``: only the rows of that imported split set
    (:func:`bench.results.summary.select_split_set`)."""
    from pathlib import Path

    from ..io import atomic_write_text
    from .chance import chance_marks, write_chance_csv
    from .plots import km_figures
    from .render import to_latex as latex, to_markdown as markdown
    from .stats import chance_note

    summary = _summaries(store, datasets, ddof, ablation_rows)
    if splits:
        from ..results.summary import select_split_set

        summary = select_split_set(summary, splits)
    wide, cols = build_table(summary, expected=expected)
    out = Path(out)
    similar: dict = {}
    note = ""
    chance, frame = chance_marks(store, wide, cols, n_perm=n_perm, alpha=alpha)
    files = [f"chance: {write_chance_csv(frame, out)}"]
    if stats:
        similar, note, csv = _significance(store, wide, cols, n_boot, alpha, out, frame)
        files.append(f"stats: {csv}")
        atomic_write_text(var := out.with_name(out.stem + "_variance.csv"), variance_frame(summary).to_csv(index=False))
        files.append(f"split and seed variance: {var}")
    kw = dict(similar=similar, stats_note=note, compute=compute, chance=chance, chance_note=chance_note(n_perm, alpha))
    t = table2(wide, cols, summary, label=label, layout=layout, **kw)
    tasks = list(dict.fromkeys(t for t, _ in cols))
    tex = latex(t)
    if layout == "split" and len(tasks) > 1:  # one table per task, each with its own label
        tex = "\n".join(latex(table2(wide, [c for c in cols if c[0] == task], summary, label=f"{label}_{task}",
                                     layout=layout, **kw)) for task in tasks)
    atomic_write_text(out, tex)
    md = markdown(t)
    atomic_write_text(out.with_suffix(".md"), md)
    printed = [md, f"LaTeX ({layout} layout; needs \\usepackage{{{','.join(LATEX_PACKAGES[layout])}}}): {out}", *files]
    printed += detail_lines(summary) if repeats_detail else []
    for d in datasets:  # classification (CAMELYON16): the supplement's Table 4 layout, AUC and accuracy
        if ((summary["dataset"] == d) & (summary["task"] == "classification")).any():
            c = classification(summary, d)
            cout = store.root / "tables" / f"classification_{d}.tex"
            atomic_write_text(cout, latex(c))
            atomic_write_text(cout.with_suffix(".md"), markdown(c))
            printed += [markdown(c), f"LaTeX: {cout}"]
    if figures:
        printed += km_figures(store, summary, datasets, km_panel)
    return printed


def _summaries(store: Any, datasets: Sequence[str], ddof: int, ablation_rows: bool) -> pd.DataFrame:
    if not datasets:
        raise ValueError(f"no results under {store.root}/runs; run `python -m bench run` first")
    parts = []
    for d in datasets:
        s = store.summarize(d, ddof=ddof)
        if s.empty:
            raise ValueError(f"no finished units for dataset {d!r} under {store.root / 'runs' / d}; "
                             f"run `python -m bench run --dataset {d}` first")
        parts.append(s.assign(dataset=d))
    summary = pd.concat(parts, ignore_index=True)
    if not ablation_rows:  # ablation values (variants with settings of their own) have their own tables
        summary = summary[~summary["ablation"].astype(bool)]
        if summary.empty:
            raise ValueError("these results hold only ablation variants: `python -m bench ablate <name> "
                             "--table-only` writes their tables, or add --ablation-rows")
    return summary


def _significance(store: Any, wide: pd.DataFrame, cols: list[tuple[str, str]], n_boot: int, alpha: float, out: Any,
                  chance: pd.DataFrame | None = None) -> tuple[dict, str, Any]:
    """Per (task, dataset) column: compare every row with the column's best on shared folds."""
    from ..io import atomic_write_text
    from .repeats import seed_strata
    from .stats import caption_note, compare_to_best, comparisons_frame

    similar: dict = {}
    frames = []
    for task, dataset in cols:
        preds = {i: seed_strata(store.predictions(dataset, task, row["method"], row["variant"] or None))
                 for i, row in wide.iterrows() if row[(task, dataset)] is not None}
        comps = compare_to_best(preds, task, n_boot=n_boot, alpha=alpha)
        similar[(task, dataset)] = {i for i, c in comps.items() if not c.different}

        def name(i: int, w: pd.DataFrame = wide) -> str:
            return w.loc[i, "method"] + (f"/{w.loc[i, 'variant']}" if w.loc[i, "variant"] else "")

        if comps:
            frames.append(comparisons_frame(comps, name).assign(task=task, dataset=dataset))
    csv = out.with_name(out.stem + "_stats.csv")
    both = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if chance is not None and not chance.empty and not both.empty:  # each row's test against chance beside it
        both = both.merge(chance[["row", "task", "dataset", "p_chance"]], on=["row", "task", "dataset"], how="left")
    atomic_write_text(csv, both.to_csv(index=False) if frames else "")
    return similar, caption_note(n_boot, alpha), csv
