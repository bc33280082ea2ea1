"""Paired significance of table rows against the best row, from out-of-fold predictions only.

Two views of one question ("is this method really worse than the best one?"), both paired — every
method is scored on the same patient-level test folds, so the comparison removes the fold-to-fold
and case-to-case variation the methods share:

* **Patient-level paired bootstrap** (decides the table marks). Cases are resampled with
  replacement *within each test fold* (so every resample keeps the folds' sizes), the same resampled
  cases score both methods, and the statistic is the figure the table reports: the mean over folds of
  the per-fold metric (C-index via scikit-survival, macro-F1 via scikit-learn — the evaluator's own
  functions in :mod:`bench.metrics`). ``statistic="pooled"`` instead scores all out-of-fold cases as
  one set, which is what one usually reads as "pooled"; it is offered, not the default, because the
  risks of five separately trained models are on five different scales, so pooling C-index pairs
  across folds compares numbers the models never meant to compare. The two-sided p-value is that of
  the percentile bootstrap: ``2 * min(P*(d <= 0), P*(d >= 0))`` with the usual +1 correction.
* **Per-fold paired tests** (reported beside it): the differences of the per-fold metrics, with a
  paired t-test and Wilcoxon's signed-rank test (scipy). With five folds the smallest two-sided
  Wilcoxon p-value is 2/32 = 0.0625, so it can never reach 0.05 — which is why it does not decide.

No correction for multiple comparisons is applied (each row is compared with the best once); the
caption says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Hashable

import numpy as np
import pandas as pd

from ..tasks import get_task

N_BOOT = 1000
ALPHA = 0.05


def _metric_fn(task: str) -> Callable[[pd.DataFrame], float]:
    """The task's primary metric on a frame of predictions (NaN where undefined)."""
    return get_task(task).primary


@dataclass
class Comparison:
    """One row against the best row of its column. ``diff`` = best − row (positive: the row is worse)."""

    row: Hashable
    best: Hashable
    n_cases: int
    folds: list[int]
    diff: float
    ci_low: float
    ci_high: float
    p_bootstrap: float
    fold_diffs: list[float] = field(default_factory=list)
    p_ttest: float = float("nan")
    p_wilcoxon: float = float("nan")
    n_boot: int = N_BOOT
    n_undefined: int = 0  # resamples where a metric was undefined (e.g. no event drawn), left out
    alpha: float = ALPHA

    @property
    def different(self) -> bool:
        """Significantly worse than the best at ``alpha`` (the bootstrap decides)."""
        return bool(self.p_bootstrap < self.alpha)


def _fold_scores(df: pd.DataFrame, fn: Callable[[pd.DataFrame], float], folds: list[int]) -> np.ndarray:
    return np.array([fn(df[df["fold"] == k]) for k in folds])


def metric_columns(task: str, df: pd.DataFrame) -> dict[str, np.ndarray]:
    return get_task(task).columns(df)


def batched_metric(task: str, cols: dict[str, np.ndarray], idx: np.ndarray) -> np.ndarray:
    """The task's metric on many resamples at once: ``idx`` is ``(B, m)`` positions into ``cols``;
    returns ``(B,)`` with NaN where the metric is undefined (``Task.batched_metric``).

    Written by hand (numpy, all resamples in one pass) because scikit-survival's and scikit-learn's
    functions cost 3–15 ms per call in input validation alone, i.e. minutes per table for 1000
    resamples × 5 folds × every row. The definitions are theirs, tie rules included, and the tests
    check equality with ``concordance_index_censored`` and ``f1_score`` / ``roc_auc_score``.
    """
    return get_task(task).batched_metric(cols, idx)


def _boot_stat(task: str, cols: dict[str, np.ndarray], fold_idx: list[np.ndarray], statistic: str,
               chunk_cells: int = 1 << 24) -> np.ndarray:
    """``fold_idx``: per fold, ``(B, m_k)`` resampled positions. The statistic per resample."""
    if statistic == "pooled":
        fold_idx = [np.concatenate(fold_idx, axis=1)]
    per_fold = []
    for ix in fold_idx:
        step = max(1, chunk_cells // max(1, ix.shape[1] ** 2))  # bound the (B, m, m) pair arrays
        per_fold.append(np.concatenate([batched_metric(task, cols, ix[b:b + step]) for b in range(0, len(ix), step)]))
    return np.mean(per_fold, axis=0)  # NaN if any fold is undefined in that resample


def compare_to_best(preds: dict[Hashable, pd.DataFrame], task: str, *, n_boot: int = N_BOOT,
                    alpha: float = ALPHA, seed: int = 0, statistic: str = "folds") -> dict[Hashable, Comparison]:
    """Compare every row's out-of-fold predictions with the best row's.

    ``preds`` maps a row key to its predictions (``case_id``, ``fold``, the task's labels and
    ``risk`` / ``pred`` / ``prob1``; :meth:`bench.results.store.ResultsStore.predictions` gives them).
    The best row is the table's: the highest mean of its own per-fold metrics. Each other row is
    paired with it on the (fold, case) pairs both have (a row with fewer finished folds is compared
    on those). Returns a :class:`Comparison` for every row but the best.
    """
    if statistic not in ("folds", "pooled"):
        raise ValueError(f"statistic must be 'folds' or 'pooled', got {statistic!r}")
    preds = {k: v for k, v in preds.items() if v is not None and not v.empty}
    if len(preds) < 2:
        return {}
    fn = _metric_fn(task)
    clean = {key: _indexed(df) for key, df in preds.items()}
    # the best row is the table's best: highest mean of its own per-fold metrics
    means = {}
    sign = 1.0 if get_task(task).higher_is_better else -1.0
    for key, d in clean.items():
        folds = sorted(set(d.index.get_level_values(0)))
        v = _fold_scores(d.reset_index(), fn, folds)
        # ranked so that larger is better; a row without any defined fold is the worst
        means[key] = sign * float(np.nanmean(v)) if np.isfinite(v).any() else -math.inf
    best = max(means, key=lambda k: means[k])
    out: dict[Hashable, Comparison] = {}
    for key in clean:
        if key != best:
            out[key] = _compare_pair(task, fn, clean[best], clean[key], best, key, n_boot, alpha, seed, statistic)
    return out


def _compare_pair(task: str, fn: Callable[[pd.DataFrame], float], best_df: pd.DataFrame, row_df: pd.DataFrame,
                  best: Hashable, key: Hashable, n_boot: int, alpha: float, seed: int, statistic: str) -> Comparison:
    """Best vs one row on the (fold, case) pairs both have."""
    from scipy import stats as sps

    index = best_df.index.intersection(row_df.index)
    if len(index) == 0:
        raise ValueError(f"rows {best!r} and {key!r} share no (fold, case) pair: were they run on the same splits?")
    a, b = best_df.loc[index].reset_index(), row_df.loc[index].reset_index()
    folds = sorted(set(index.get_level_values(0)))
    fa, fb = _fold_scores(a, fn, folds), _fold_scores(b, fn, folds)

    # resample case positions within each fold; the same draws score both rows (paired)
    rng = np.random.default_rng(seed)
    fold_of = a["fold"].to_numpy()
    fold_idx = []
    for k in folds:
        pos = np.flatnonzero(fold_of == k)
        fold_idx.append(pos[rng.integers(0, len(pos), size=(n_boot, len(pos)))])
    d = _boot_stat(task, metric_columns(task, a), fold_idx, statistic) - _boot_stat(task, metric_columns(task, b), fold_idx, statistic)
    ok = np.isfinite(d)
    d = d[ok]
    if len(d) == 0:
        p, lo, hi = float("nan"), float("nan"), float("nan")
    else:
        le, ge = int((d <= 0).sum()), int((d >= 0).sum())
        p = min(1.0, 2 * (min(le, ge) + 1) / (len(d) + 1))
        lo, hi = (float(x) for x in np.quantile(d, [alpha / 2, 1 - alpha / 2]))
    fd = fa - fb
    fin = np.isfinite(fd)
    p_t = p_w = float("nan")
    if fin.sum() >= 2 and np.any(fd[fin] != 0):
        p_t = float(sps.ttest_rel(fa[fin], fb[fin]).pvalue)
        p_w = float(sps.wilcoxon(fd[fin]).pvalue)
    elif fin.sum() >= 2:
        p_t = p_w = 1.0  # identical per-fold metrics
    diff = fn(a) - fn(b) if statistic == "pooled" else float(np.mean(fa) - np.mean(fb))
    return Comparison(row=key, best=best, n_cases=len(index), folds=folds, diff=diff, ci_low=lo, ci_high=hi,
                      p_bootstrap=p, fold_diffs=[float(x) for x in fd], p_ttest=p_t, p_wilcoxon=p_w, n_boot=n_boot,
                      n_undefined=int((~ok).sum()), alpha=alpha)


def compare_pair(task: str, a: pd.DataFrame, b: pd.DataFrame, *, names: tuple[Hashable, Hashable] = ("A", "B"),
                 n_boot: int = N_BOOT, alpha: float = ALPHA, seed: int = 0, statistic: str = "folds") -> Comparison:
    """Row ``a`` against row ``b`` on the (fold, case) pairs both have; ``diff`` = a − b in the
    task's metric (the comparison :func:`compare_to_best` makes, for any two rows)."""
    fn = _metric_fn(task)
    return _compare_pair(task, fn, _indexed(a), _indexed(b), names[0], names[1], n_boot, alpha, seed, statistic)


def _indexed(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (fold, case), indexed by them and sorted (the pairing key of every comparison)."""
    d = df.assign(fold=df["fold"].astype(int), case_id=df["case_id"].astype(str))
    return d.drop_duplicates(["fold", "case_id"]).set_index(["fold", "case_id"]).sort_index()


def comparisons_frame(comps: dict[Hashable, Comparison], name: Callable[[Hashable], str] = str) -> pd.DataFrame:
    """One row per comparison, for the stats CSV written next to a table."""
    return pd.DataFrame([{
        "row": name(c.row), "best": name(c.best), "diff_best_minus_row": c.diff, "ci_low": c.ci_low,
        "ci_high": c.ci_high, "p_bootstrap": c.p_bootstrap, "significant": c.different,
        "fold_diffs": ";".join(f"{x:.4f}" for x in c.fold_diffs), "p_ttest": c.p_ttest,
        "p_wilcoxon": c.p_wilcoxon, "n_cases": c.n_cases, "folds": ";".join(map(str, c.folds)),
        "n_boot": c.n_boot, "n_undefined_resamples": c.n_undefined, "alpha": c.alpha,
    } for c in comps.values()])


def caption_note(n_boot: int = N_BOOT, alpha: float = ALPHA, statistic: str = "folds") -> str:
    what = ("the mean over folds of the per-fold metric, cases resampled within their test fold"
            if statistic == "folds" else "the metric of all out-of-fold cases pooled")
    return (rf"$^{{\approx}}$Not significantly different from the best (two-sided paired patient-level "
            rf"bootstrap of {what}, {n_boot} resamples, $\alpha = {alpha:g}$, no multiple-comparison "
            rf"correction; per-fold paired t-tests in the accompanying CSV).")


# --- against chance --------------------------------------------------------------------------------
N_PERM = 1000


@dataclass(frozen=True)
class Chance:
    """A row's out-of-fold metric against the same metric with its labels shuffled within folds.
    ``p``: one-sided permutation p-value, ``(1 + #{shuffled >= observed}) / (1 + n_perm)`` (for a
    metric where lower is better, ``<=``); NaN when the metric is undefined on the observed labels."""

    observed: float
    p: float
    null_mean: float
    n_perm: int
    n_cases: int
    alpha: float = ALPHA

    @property
    def at_chance(self) -> bool:
        """Not distinguishable from chance at ``alpha`` (an undefined p counts as not shown better)."""
        return not self.p < self.alpha


def chance_test(pred: pd.DataFrame, task: str, *, n_perm: int = N_PERM, alpha: float = ALPHA, seed: int = 0,
                chunk_cells: int = 1 << 24) -> Chance:
    """Permutation test of one row's out-of-fold predictions (every fold's test cases as one set)
    against shuffled labels, scored with the task's primary metric. The labels are permuted within
    each fold (survival: time and event stay paired); the predictions stay in place. A survival
    row's concordance counts only pairs of cases of one fold: each fold's model scores risks on its
    own scale, and a pair across folds compares two models, not two patients (pooling them hides a
    row whose every fold ranks well). Vectorised: all permutations in one (chunked) numpy pass
    (``Task.permuted_metric``)."""
    if n_perm < 1:
        raise ValueError(f"the test against chance needs at least 1 permutation, got --n-perm {n_perm} (default {N_PERM})")
    t = get_task(task)
    d = pred.drop_duplicates(["fold", "case_id"]) if {"fold", "case_id"} <= set(pred.columns) else pred
    d = d.reset_index(drop=True)
    cols = t.columns(d)
    m = len(d)
    folds = pd.factorize(d["fold"])[0] if "fold" in d else np.zeros(m, int)
    cols["stratum"] = folds
    observed = float(t.batched_metric(cols, np.arange(m)[None, :])[0]) if m else float("nan")
    if not np.isfinite(observed):
        return Chance(observed, float("nan"), float("nan"), n_perm, m, alpha)
    null_v = t.permuted_metric(cols, within_strata(folds, n_perm, np.random.default_rng(seed)), chunk_cells)
    null_v = null_v[np.isfinite(null_v)]
    if len(null_v) == 0:
        return Chance(observed, float("nan"), float("nan"), n_perm, m, alpha)
    tol = 1e-12  # a shuffled metric equal to the observed one counts as reaching it
    hits = (null_v >= observed - tol) if t.higher_is_better else (null_v <= observed + tol)
    p = (1 + int(hits.sum())) / (1 + len(null_v))
    return Chance(observed, float(p), float(null_v.mean()), len(null_v), m, alpha)


def within_strata(strata: np.ndarray, n_perm: int, rng: np.random.Generator) -> np.ndarray:
    """``n_perm`` permutations of ``range(len(strata))`` (rows of the result) that move each index
    only to an index of its own stratum."""
    m = len(strata)
    perm = np.broadcast_to(np.arange(m), (n_perm, m)).copy()
    for s in np.unique(strata):
        idx = np.flatnonzero(strata == s)
        perm[:, idx] = idx[rng.permuted(np.broadcast_to(np.arange(len(idx)), (n_perm, len(idx))), axis=1)]
    return perm


def chance_note(n_perm: int = N_PERM, alpha: float = ALPHA) -> str:
    """The footnote of the chance mark (plain text)."""
    return (f"Not distinguishable from chance: a permutation test of the row's out-of-fold "
            f"predictions against labels shuffled within each fold ({n_perm} permutations, same metric; "
            f"survival pairs within one fold) gives p ≥ {alpha:g}")
