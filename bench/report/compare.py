"""``bench compare``: two table rows, paired on the same cases, folds and training seeds.

The question a reader of a table asks of two close rows: is the difference larger than what
another split or another training seed would give? The rows are paired on the (fold, case) pairs
both have; when the rows were trained with ``--repeats`` (a ``repeat`` column in the predictions),
every (fold, repeat) is a stratum of its own, paired on the same repeat index.

- ``diff``: the table's statistic of A minus B: the mean over strata of the per-stratum metric.
- the paired patient-level bootstrap of :func:`bench.report.stats.compare_pair` (cases resampled
  within their stratum, the same draws for both rows): its percentile interval and p-value.
- ``strata_against``: the share of strata whose difference has the opposite sign of ``diff``.
- ``folds_flipping``: the folds whose repeats disagree on the sign (only with repeats): how often
  another training seed alone would have reversed the ranking on the same split.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .stats import ALPHA, N_BOOT, compare_pair

REPEAT_STRIDE = 1000  # a stratum key fold * stride + repeat; more repeats than this are refused


@dataclass
class PairedComparison:
    a: str
    b: str
    task: str
    metric: str
    diff: float
    ci_low: float
    ci_high: float
    p_bootstrap: float
    n_cases: int
    folds: list[int]
    repeats: list[int]
    strata_diffs: dict[tuple[int, int], float] = field(default_factory=dict)
    strata_against: float = float("nan")
    folds_flipping: list[int] = field(default_factory=list)
    n_boot: int = N_BOOT
    alpha: float = ALPHA

    def lines(self) -> list[str]:
        """The terminal report."""
        sig = "different" if self.p_bootstrap < self.alpha else "not distinguishable"
        out = [f"{self.a} − {self.b} ({self.task}, {self.metric}): {self.diff:+.4f} "
               f"[{100 * (1 - self.alpha):g}% CI {self.ci_low:+.4f}, {self.ci_high:+.4f}], "
               f"p = {self.p_bootstrap:.3g} (paired bootstrap, {self.n_boot} resamples): {sig} at α = {self.alpha:g}",
               f"paired on {self.n_cases} (case, stratum) pairs over fold(s) {', '.join(map(str, self.folds))}"
               + (f" × repeat(s) {', '.join(map(str, self.repeats))}" if len(self.repeats) > 1 else "")]
        if len(self.strata_diffs) > 1:
            out.append(f"sign against the mean in {100 * self.strata_against:.0f}% of "
                       f"{len(self.strata_diffs)} (fold, repeat) strata")
        if len(self.repeats) > 1:
            n = len(self.folds_flipping)
            out.append(f"training seed alone flips the sign in {n} of {len(self.folds)} fold(s)"
                       + (f": {', '.join(map(str, self.folds_flipping))}" if n else ""))
        return out

    def frame(self) -> pd.DataFrame:
        """One row per stratum, for ``--stats``."""
        return pd.DataFrame([{"a": self.a, "b": self.b, "fold": f, "repeat": r, "diff_a_minus_b": d}
                             for (f, r), d in sorted(self.strata_diffs.items())])


def repeat_strata(df: pd.DataFrame) -> pd.DataFrame:
    """Predictions with their ``fold`` replaced by a (fold, repeat) stratum key, so the comparisons of
    :mod:`bench.report.stats` pair the same fold and training-seed index of two rows."""
    repeat = df["repeat"].astype(int) if "repeat" in df.columns else pd.Series(0, index=df.index)
    if (repeat >= REPEAT_STRIDE).any():
        raise ValueError(f"at most {REPEAT_STRIDE} repeats can be compared")
    return df.assign(fold=df["fold"].astype(int) * REPEAT_STRIDE + repeat)


def compare_rows(task: str, metric: str, a: pd.DataFrame, b: pd.DataFrame, names: tuple[str, str], *,
                 n_boot: int = N_BOOT, alpha: float = ALPHA, seed: int = 0) -> PairedComparison:
    """Compare the out-of-fold predictions of two rows (``case_id``, ``fold``, optional ``repeat``,
    the task's label and prediction columns)."""
    if a.empty or b.empty:
        empty = names[0] if a.empty else names[1]
        raise ValueError(f"row {empty} has no finished units to compare; run it first")
    c = compare_pair(task, repeat_strata(a), repeat_strata(b), names=names, n_boot=n_boot, alpha=alpha, seed=seed)
    keys = [(k // REPEAT_STRIDE, k % REPEAT_STRIDE) for k in c.folds]
    diffs = dict(zip(keys, c.fold_diffs))
    finite = {k: d for k, d in diffs.items() if np.isfinite(d)}
    sign = np.sign(c.diff)
    against = (float(np.mean([np.sign(d) == -sign for d in finite.values() if d != 0]))
               if sign != 0 and any(d != 0 for d in finite.values()) else 0.0)
    folds = sorted({f for f, _ in keys})
    repeats = sorted({r for _, r in keys})
    flipping = [f for f in folds
                if len({np.sign(d) for (g, _), d in finite.items() if g == f and d != 0}) > 1]
    return PairedComparison(a=names[0], b=names[1], task=task, metric=metric, diff=c.diff, ci_low=c.ci_low,
                            ci_high=c.ci_high, p_bootstrap=c.p_bootstrap, n_cases=c.n_cases, folds=folds,
                            repeats=repeats, strata_diffs=diffs, strata_against=against, folds_flipping=flipping,
                            n_boot=n_boot, alpha=alpha)
