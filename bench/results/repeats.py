"""Repeated training seeds (``bench run --repeats N``) as a table row reads them.

A row's units are (fold, repeat) pairs: the same patient-level split, N training seeds per fold.
The row's value for a fold is the mean over that fold's repeats; the table's mean ± std is then
over those per-fold values, so the ± keeps meaning "over the test folds" and N seeds only make
each fold's value steadier. A row whose folds have different numbers of finished repeats is
*unbalanced*: its per-fold means are not alike, so tables mark it instead of ranking it.

The spread of the R × K values splits into two components (the one-way random-effects analysis of
variance, folds as groups and repeats within them; Searle, Casella & McCulloch, *Variance
Components*, ch. 3), each estimated per row and metric:

- ``seed_var`` (within-fold): the mean over folds of the sample variance (ddof 1) of a fold's
  repeats — how much the score moves when only the training seed changes;
- ``split_var`` (between-fold): ``max(0, var(fold means, ddof 1) - seed_var / R)`` — the variance
  of the fold means less the part the seeds put into them, i.e. what the choice of test fold
  alone contributes.

``fold_means_var`` is the plain sample variance of the fold means (split plus seed / R). With one
repeat the seed component cannot be told apart: ``seed_var`` is NaN and ``split_var`` is the
variance of the folds' values. Unbalanced rows get NaN components.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

import numpy as np

from .records import UnitRecord


def by_fold(recs: Iterable[UnitRecord], metric: str) -> dict[int, list[float]]:
    """fold -> the metric of each of its finished repeats (in repeat order; NaN where undefined)."""
    out: dict[int, list[tuple[int, float]]] = {}
    for r in recs:
        v = r.metrics.get(metric)
        out.setdefault(r.fold, []).append((r.repeat, float("nan") if v is None else float(v)))
    return {k: [v for _, v in sorted(vals)] for k, vals in sorted(out.items())}


def fold_means(values: dict[int, list[float]]) -> list[float]:
    """Each fold's mean over its repeats with a defined value (NaN when none is defined)."""
    out = []
    for vals in values.values():
        defined = [v for v in vals if not math.isnan(v)]
        out.append(float(np.mean(defined)) if defined else float("nan"))
    return out


def variance_components(values: dict[int, list[float]]) -> dict[str, Any]:
    """The split (between-fold) and seed (within-fold) variance of one row's metric (module docstring).
    ``values``: fold -> its repeats' values. NaN values (a fold without a defined metric) leave their
    fold out."""
    counts = [len(v) for v in values.values()]
    balanced = len(set(counts)) <= 1
    groups = [np.asarray(v, float) for v in values.values() if not np.isnan(v).any()]
    nan = float("nan")
    out = {"n_repeats": counts[0] if balanced and counts else 0, "balanced": balanced,
           "split_var": nan, "seed_var": nan, "fold_means_var": nan}
    if not balanced or len(groups) < 1:
        return out
    r = len(groups[0])
    means = np.array([g.mean() for g in groups])
    between = float(np.var(means, ddof=1)) if len(groups) > 1 else nan
    seed = float(np.mean([np.var(g, ddof=1) for g in groups])) if r > 1 else nan
    out["fold_means_var"] = between
    out["seed_var"] = seed
    out["split_var"] = between if r == 1 else (max(0.0, between - seed / r) if not math.isnan(between) else nan)
    return out


def repeats_text(counts: Sequence[int]) -> str:
    """How a table names a row's repeats: "" for one per fold, "3 seeds" when every fold has 3,
    "repeats 3/3/2/3/3" for an unbalanced row."""
    if not counts or max(counts) <= 1:
        return ""
    if len(set(counts)) == 1:
        return f"{counts[0]} seeds"
    return "repeats " + "/".join(map(str, counts))


VARIANCE_COLUMNS = ("dataset", "method", "variant", "task", "metric", "n_folds", "n_repeats", "repeats",
                    "balanced", "mean", "fold_means_var", "split_var", "seed_var", "split_sd", "seed_sd")
