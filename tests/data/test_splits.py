"""The split manager: patient-level, stratified, seeded, order-independent, written once."""

import numpy as np
import pandas as pd
import pytest

from bench.data.splits import SplitError, SplitManager, make_folds


def cohort(n_cases=60, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_cases):
        case = f"TCGA-ZZ-{i:04d}"
        for s in range(1 + (i % 3 == 0)):  # every third case has two slides
            rows.append({"case_id": case, "slide_id": f"{case}-01Z-00-DX{s + 1}", "stage": i % 4,
                         "time": float(rng.uniform(1, 100)), "event": int(rng.random() < 0.4)})
    df = pd.DataFrame(rows)
    # a case's labels are the same on all its slides
    return df.groupby("case_id").transform("first").assign(case_id=df["case_id"])


@pytest.mark.parametrize("task", ["staging", "survival"])
def test_every_case_in_exactly_one_fold(task):
    df = cohort()
    f = make_folds(df, task)
    assert sorted(f["case_id"]) == sorted(df["case_id"].unique())
    assert f["case_id"].is_unique and set(f["fold"]) == set(range(5))


@pytest.mark.parametrize("task", ["staging", "survival"])
def test_independent_of_row_order(task):
    df = cohort()
    a = make_folds(df, task, seed=3).sort_values("case_id").reset_index(drop=True)
    b = make_folds(df.sample(frac=1, random_state=7), task, seed=3).sort_values("case_id").reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)


def test_seed_changes_folds_and_is_deterministic():
    df = cohort()
    assert make_folds(df, "staging", seed=1).equals(make_folds(df, "staging", seed=1))
    assert not make_folds(df, "staging", seed=1)["fold"].equals(make_folds(df, "staging", seed=2)["fold"])


def test_staging_stratified():
    df = cohort(60)
    f = make_folds(df, "staging").merge(df.drop_duplicates("case_id"), on="case_id")
    counts = pd.crosstab(f["fold"], f["stage"])  # 15 per stage over 5 folds -> 3 each
    assert (counts == 3).all().all()


def test_survival_stratified_by_event():
    df = cohort(100)
    f = make_folds(df, "survival").merge(df.drop_duplicates("case_id"), on="case_id")
    ev = f.groupby("fold")["event"].sum()
    assert ev.max() - ev.min() <= 2


def test_manager_writes_once_and_audits_no_leakage(tmp_path):
    df = cohort()
    m = SplitManager(tmp_path)
    cases = df.drop_duplicates("case_id")
    s1 = m.get("toy", "staging", cases)
    mtime = s1.path.stat().st_mtime_ns
    s2 = m.get("toy", "staging", cases.sample(frac=1, random_state=1))
    assert s2.path.stat().st_mtime_ns == mtime and s1.hash == s2.hash
    slides_of = df.groupby("case_id")["slide_id"].apply(list).to_dict()
    audit = s2.audit(cases, slides_of)
    assert (audit["case_overlap"] == 0).all() and (audit["slide_overlap"] == 0).all()
    assert audit["n_test"].sum() == len(cases)


def test_changed_cohort_is_an_error_naming_the_difference(tmp_path):
    df = cohort()
    m = SplitManager(tmp_path)
    cases = df.drop_duplicates("case_id")
    m.get("toy", "staging", cases)
    grown = pd.concat([cases, cases.iloc[:1].assign(case_id="TCGA-NEW-0001")])
    with pytest.raises(SplitError, match="1 case\\(s\\) not in the splits.*TCGA-NEW-0001"):
        m.get("toy", "staging", grown)
    with pytest.raises(SplitError, match="no longer in the cohort"):
        m.get("toy", "staging", cases.iloc[1:])


def test_rare_class_does_not_crash():
    # BLCA: 2 stage-I patients among hundreds
    df = cohort(60)
    df.loc[df["case_id"].isin(df["case_id"].unique()[:13]), "stage"] = 1
    df.loc[df["case_id"] == df["case_id"].unique()[0], "stage"] = 0
    df.loc[df["case_id"] == df["case_id"].unique()[4], "stage"] = 0
    f = make_folds(df, "staging")
    assert len(f) == 60
