"""What tables say about rows trained with ``--repeats`` (several training seeds per fold).

A cell's mean ± std is over the folds, each fold's value the mean over its repeats
(:mod:`bench.results.repeats`). A row whose folds have different numbers of finished repeats is
shown with its counts and never ranked (like a row with missing folds); the caption says how many
seeds each fold's value averages. ``bench table --repeats-detail`` prints each row's split and seed
variance components, and ``--stats`` writes them to ``<table>_variance.csv``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from ..results.repeats import repeats_text
from .render import Cell


def _counts(hit: Any) -> list[int]:
    counts = hit.get("repeats") if hasattr(hit, "get") else None
    return [int(c) for c in counts] if isinstance(counts, (list, tuple, np.ndarray)) else []


def with_repeats(cell: Cell, hit: Any) -> Cell:
    """``cell`` of a summary row, marked when its folds have unequal repeat counts: the counts are
    shown and the cell is partial (never ranked)."""
    counts = _counts(hit)
    if not counts or len(set(counts)) == 1:
        return cell
    note = repeats_text(counts)
    main, detail = (cell.lines[0], cell.lines[1]) if cell.lines else (cell.text, "")
    return Cell(f"{cell.text} ({note})", cell.value, cell.marks, True, (main, ", ".join(p for p in (detail, note) if p)))


def caption_note(summary: pd.DataFrame | None) -> str:
    """The caption's sentence on repeats ("" when every row has one training seed per fold)."""
    if summary is None or summary.empty or "repeats" not in summary:
        return ""
    prim = summary[summary["primary"].astype(bool)]
    per_row = {_name(r): _counts(r) for _, r in prim.iterrows()}
    seeds = {n: max(c) for n, c in per_row.items() if c and max(c) > 1}
    if not seeds:
        return ""
    unequal = sorted(n for n, c in per_row.items() if len(set(c)) > 1)
    if len(set(seeds.values())) == 1 and len(seeds) == len(per_row):
        text = f"Each fold's value is the mean over {next(iter(seeds.values()))} training seeds (--repeats)"
    else:
        text = ("Each fold's value is the mean over its training seeds (--repeats): "
                + "; ".join(f"{n}: {s}" for n, s in sorted(seeds.items())) + "; other rows: 1")
    if unequal:
        text += f"; rows with unequal repeats per fold show their counts and are not ranked ({', '.join(unequal)})"
    return text + "."


def _name(row: Any) -> str:
    v = row.get("variant")
    return str(row["method"]) + (f"/{v}" if isinstance(v, str) and v else "")


def seed_strata(pred: pd.DataFrame) -> pd.DataFrame:
    """A row's predictions for the paired tests of ``--stats``: with repeats, each (fold, repeat) is a
    stratum (:func:`bench.report.compare.repeat_strata`), so rows pair on the same fold and seed
    index; without, the folds as they are."""
    from .compare import repeat_strata

    if "repeat" not in pred.columns or not (pred["repeat"] != 0).any():
        return pred
    return repeat_strata(pred)


def variance_frame(summary: pd.DataFrame) -> pd.DataFrame:
    """Per row (primary metric): the mean, the repeats per fold and the split and seed variance
    components with their standard deviations (definitions: :mod:`bench.results.repeats`)."""
    from ..results.summary import variance_table

    prim = summary[summary["primary"].astype(bool)]
    v = variance_table(prim)
    v.insert(0, "row", [_name(r) for _, r in prim.iterrows()])
    return v.drop(columns=["method", "variant"])


def detail_lines(summary: pd.DataFrame) -> list[str]:
    """``bench table --repeats-detail``: one Markdown table of every row's variance components."""
    v = variance_frame(summary)
    if v.empty:
        return []

    def num(x: float) -> str:
        return "–" if math.isnan(x) else f"{x:.4f}"

    out = ["| row | dataset | task | metric | mean | repeats per fold | split sd | seed sd | split var | seed var |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for _, r in v.iterrows():
        reps = r["repeats"] + ("" if r["balanced"] else " (unequal)")
        out.append(f"| {r['row']} | {r['dataset']} | {r['task']} | {r['metric']} | {num(r['mean'])} | {reps} | "
                   f"{num(r['split_sd'])} | {num(r['seed_sd'])} | {num(r['split_var'])} | {num(r['seed_var'])} |")
    out.append("split: between-fold variance, var(fold means, ddof 1) − seed var / repeats; seed: within-fold "
               "variance, the mean over folds of the repeats' sample variance (ddof 1); – where it cannot be "
               "estimated (one repeat, one fold, or unequal repeats). docs/repeats.md")
    return out
