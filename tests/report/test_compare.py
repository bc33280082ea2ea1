"""bench compare: two rows paired on the same cases, checked against scikit-learn's macro-F1 by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score

from bench.report.compare import compare_rows

LABELS = [0, 1, 2, 3, 0, 1, 2, 3]


def _preds(pred: list[int], fold: int, repeat: int | None = None) -> pd.DataFrame:
    df = pd.DataFrame({"case_id": [f"c{fold}{i}" for i in range(len(LABELS))], "stage": LABELS, "pred": pred,
                       "fold": fold})
    for k in range(4):
        df[f"prob{k}"] = (df["pred"] == k).astype(float)
    if repeat is not None:
        df["repeat"] = repeat
    return df


def _f1(pred: list[int]) -> float:
    return f1_score(LABELS, pred, average="macro")


def test_difference_is_the_tables_statistic_by_hand():
    a = [[0, 1, 2, 3, 0, 1, 2, 3], [0, 1, 2, 2, 0, 1, 2, 3]]
    b = [[0, 0, 0, 0, 0, 0, 0, 0], [0, 1, 1, 3, 0, 1, 2, 0]]
    A = pd.concat([_preds(p, k) for k, p in enumerate(a)])
    B = pd.concat([_preds(p, k) for k, p in enumerate(b)])
    c = compare_rows("staging", "macro-F1", A, B, ("A", "B"), n_boot=200)
    by_hand = np.mean([_f1(p) for p in a]) - np.mean([_f1(p) for p in b])
    assert c.diff == pytest.approx(by_hand)
    assert c.ci_low <= c.diff <= c.ci_high
    assert c.folds == [0, 1] and c.repeats == [0] and c.n_cases == 16
    assert c.folds_flipping == []
    assert "A − B (staging, macro-F1)" in c.lines()[0]


def test_seed_flips_are_counted_per_fold():
    good, bad = [0, 1, 2, 3, 0, 1, 2, 3], [0, 0, 0, 0, 0, 0, 0, 0]
    # fold 0: A wins under repeat 0, loses under repeat 1 (the seed flips the sign); fold 1: A wins twice
    A = pd.concat([_preds(good, 0, 0), _preds(bad, 0, 1), _preds(good, 1, 0), _preds(good, 1, 1)])
    B = pd.concat([_preds(bad, 0, 0), _preds(good, 0, 1), _preds(bad, 1, 0), _preds(bad, 1, 1)])
    c = compare_rows("staging", "macro-F1", A, B, ("A", "B"), n_boot=100)
    assert c.repeats == [0, 1]
    assert c.folds_flipping == [0]
    assert c.strata_against == pytest.approx(1 / 4)
    d = _f1(good) - _f1(bad)
    assert c.diff == pytest.approx((d - d + d + d) / 4)
    assert sorted(c.frame()["diff_a_minus_b"]) == pytest.approx(sorted([d, -d, d, d]))
    assert any("flips the sign in 1 of 2 fold(s): 0" in line for line in c.lines())


def test_empty_row_is_refused():
    with pytest.raises(ValueError, match="row B has no finished units"):
        compare_rows("staging", "macro-F1", _preds(LABELS, 0), pd.DataFrame(), ("A", "B"))


def test_cli_compares_two_rows_of_a_results_store(tmp_path, capsys):
    from bench.cli import main
    from bench.results.store import ResultsStore, Unit
    from record_factory import make_record

    store = ResultsStore(tmp_path)
    rows = {"abmil.resnet50": [[0, 1, 2, 3, 0, 1, 2, 3], [0, 1, 2, 2, 0, 1, 2, 3]],
            "maxmil.resnet50": [[0, 0, 0, 0, 0, 0, 0, 0], [0, 1, 1, 3, 0, 1, 2, 0]]}
    for method, folds in rows.items():
        for k, pred in enumerate(folds):
            u = Unit("demo", "staging", method, k)
            store.prepare(u, {}, "c")
            df = _preds(pred, k).drop(columns="fold")
            store.finish(u, df, pd.DataFrame(), make_record(method=method, fold=k, metrics={"macro_f1": _f1(pred)}))
    assert main(["compare", "abmil.resnet50", "maxmil.resnet50", "--dataset", "demo", "--results", str(tmp_path),
                 "--n-boot", "200", "--stats"]) == 0
    out = capsys.readouterr().out
    by_hand = np.mean([_f1(p) for p in rows["abmil.resnet50"]]) - np.mean([_f1(p) for p in rows["maxmil.resnet50"]])
    assert f"abmil.resnet50 − maxmil.resnet50 (staging, Macro-F1): {by_hand:+.4f}" in out
    assert (tmp_path / "tables" / "compare_abmil.resnet50_vs_maxmil.resnet50_demo_staging.csv").is_file()
