"""The summary of a dataset's finished units as files for people and spreadsheets (summary.csv,
variance.csv; never read back to build a table), and the selection of one split set's rows."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from . import repeats as R


def select_split_set(summary: pd.DataFrame, name: str) -> pd.DataFrame:
    """The rows made on the imported split set ``name`` (``bench table --splits NAME``). A row holds
    one split set only (its variant names it), so no number of another set is averaged in; a name
    without rows is an error listing the sets that have some."""
    from ..data.splits import split_set_label

    label = split_set_label(0, 5, name)
    sets = summary["split_set"].fillna("").astype(str) if "split_set" in summary else pd.Series("", summary.index)
    if not (sets == label).any():
        have = sorted({s or "the default seeded folds" for s in sets})
        raise ValueError(f"no results on split set {name!r} ({label}) here; rows exist for: {', '.join(have)}. "
                         f"Fix: `python -m bench run --splits {name} ...` first, or another --splits")
    return summary[sets == label]


def summary_csv(summary: pd.DataFrame) -> str:
    """summary.csv, for people and spreadsheets (never read back): the per-fold values (each the mean
    over the fold's repeats) and repeat counts ``;``-joined, values with 4 decimals, provenance and
    options as JSON."""
    return summary.assign(
        folds=[";".join("nan" if np.isnan(v) else f"{v:.4f}" for v in vals) for vals in summary["folds"]],
        repeats=[";".join(map(str, c)) for c in summary["repeats"]],
        provenance=[json.dumps(p, sort_keys=True) for p in summary["provenance"]],
        non_default=[json.dumps(o, sort_keys=True, default=str) for o in summary["non_default"]],
    ).to_csv(index=False)


def variance_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Per row and metric of ``summary``, the split (between-fold) and seed (within-fold) variance
    components of :mod:`bench.results.repeats` and their square roots, repeats per fold ``;``-joined."""
    v = summary.assign(split_sd=np.sqrt(summary["split_var"].astype(float)),
                       seed_sd=np.sqrt(summary["seed_var"].astype(float)),
                       repeats=[";".join(map(str, c)) for c in summary["repeats"]])
    return v[list(R.VARIANCE_COLUMNS)].reset_index(drop=True)


def variance_csv(summary: pd.DataFrame) -> str:
    """variance.csv beside summary.csv: :func:`variance_table` of every row and metric."""
    return variance_table(summary).to_csv(index=False)
