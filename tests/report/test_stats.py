"""Significance marks on constructed predictions whose answer is known."""

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score
from sksurv.metrics import concordance_index_censored

from bench.report.stats import caption_note, compare_to_best, comparisons_frame


def survival_cohort(n_folds=5, per_fold=24, seed=0):
    rng = np.random.default_rng(seed)
    n = n_folds * per_fold
    time = rng.uniform(1, 100, n)
    return pd.DataFrame({"case_id": [f"C{i:03d}" for i in range(n)], "fold": np.repeat(np.arange(n_folds), per_fold),
                         "time": time, "event": (np.arange(n) % 2).astype(float)}), rng


def test_identical_methods_are_not_different():
    base, rng = survival_cohort()
    risk = -base["time"] + rng.normal(0, 30, len(base))
    a = base.assign(risk=risk)
    b = a.sample(frac=1.0, random_state=1)  # same predictions, other row order
    comps = compare_to_best({"a": a, "b": b}, "survival", n_boot=200)
    (c,) = comps.values()
    assert c.diff == 0 and c.p_bootstrap == 1.0 and not c.different
    assert c.fold_diffs == [0.0] * 5 and c.p_ttest == 1.0


def test_dominated_method_is_different_and_close_one_is_not():
    base, rng = survival_cohort()
    good = base.assign(risk=-base["time"] + rng.normal(0, 5, len(base)))  # near-perfect ordering
    bad = base.assign(risk=rng.normal(0, 1, len(base)))  # coin flip
    close = good.assign(risk=good["risk"] + rng.normal(0, 0.5, len(base)))  # tiny perturbation of the best
    comps = compare_to_best({"good": good, "bad": bad, "close": close}, "survival", n_boot=300)
    assert set(comps) == {"bad", "close"} and comps["bad"].best in ("good", "close")
    assert comps["bad"].different and comps["bad"].p_bootstrap < 0.01 and comps["bad"].ci_low > 0
    assert not comps["close"].different
    # the reported difference is the table's figure: mean over folds of sksurv's C-index
    def fold_mean(df):
        return np.mean([concordance_index_censored(g["event"].astype(bool), g["time"], g["risk"])[0]
                        for _, g in df.groupby("fold")])
    best = good if comps["bad"].best == "good" else close
    assert comps["bad"].diff == pytest.approx(fold_mean(best) - fold_mean(bad))
    assert comps["bad"].p_ttest < 0.05


def test_staging_per_fold_differences_match_sklearn():
    rng = np.random.default_rng(3)
    n = 100
    df = pd.DataFrame({"case_id": [f"S{i}" for i in range(n)], "fold": np.arange(n) % 5,
                       "stage": rng.integers(0, 4, n)})
    right = df.assign(pred=df["stage"])
    wrong = df.assign(pred=np.where(rng.random(n) < 0.6, (df["stage"] + 1) % 4, df["stage"]))
    comps = compare_to_best({"right": right, "wrong": wrong}, "staging", n_boot=200)
    c = comps["wrong"]
    expected = [1.0 - f1_score(g["stage"], wrong.loc[g.index, "pred"], average="macro") for _, g in df.groupby("fold")]
    assert c.best == "right" and c.fold_diffs == pytest.approx(expected) and c.different


def test_pairs_only_shared_cases_and_pooled_option():
    base, rng = survival_cohort()
    a = base.assign(risk=-base["time"])
    b = base.assign(risk=rng.normal(size=len(base))).iloc[: 3 * 24]  # only folds 0-2 finished
    comps = compare_to_best({"a": a, "b": b}, "survival", n_boot=100, statistic="pooled")
    assert comps["b"].folds == [0, 1, 2] and comps["b"].n_cases == 72
    frame = comparisons_frame(comps)
    assert list(frame["row"]) == ["b"] and bool(frame["significant"].iloc[0])
    assert r"\alpha = 0.05" in caption_note() and "bootstrap" in caption_note()


def test_disjoint_rows_are_an_error():
    base, _ = survival_cohort()
    a = base.assign(risk=1.0).iloc[:24]
    b = base.assign(risk=1.0).iloc[24:48]
    with pytest.raises(ValueError, match="share no"):
        compare_to_best({"a": a, "b": b}, "survival", n_boot=10)


@pytest.mark.parametrize("task", ["survival", "staging", "classification"])
def test_batched_metric_equals_the_libraries(task):
    """The bootstrap's vectorized metrics are sksurv's / sklearn's, ties and duplicates included."""
    from sklearn.metrics import roc_auc_score

    from bench.report.stats import metric_columns, batched_metric

    rng = np.random.default_rng(7)
    n = 30
    df = pd.DataFrame({"time": rng.integers(1, 8, n).astype(float), "event": rng.integers(0, 2, n).astype(float),
                       "risk": rng.integers(0, 5, n).astype(float), "stage": rng.integers(0, 4, n),
                       "pred": rng.integers(0, 3, n), "label": rng.integers(0, 2, n), "prob1": rng.integers(0, 4, n) / 4})
    idx = rng.integers(0, n, size=(20, n))  # resamples with duplicates
    got = batched_metric(task, metric_columns(task, df), idx)
    for b, ix in enumerate(idx):
        d = df.iloc[ix]
        if task == "survival":
            want = concordance_index_censored(d["event"].astype(bool), d["time"], d["risk"])[0]
        elif task == "staging":
            want = f1_score(d["stage"], d["pred"], average="macro", zero_division=0)
        else:
            want = roc_auc_score(d["label"], d["prob1"])
        assert got[b] == pytest.approx(want, abs=1e-12)
