"""Faults 11-13: folds where a metric is undefined or a class is missing, and losses that blow up."""

import json
import math

import h5py
import numpy as np
import pandas as pd

from conftest import METHOD, N_FOLDS, case_id, slide_id


def test_f11_fold_without_events(cohort):
    assert cohort.run("--tasks", "staging", "--folds", "0").code == 0
    before = cohort.done()
    # folds written by hand (or by an earlier version): fold 4 tests only censored cases 0, 2, 4
    folds = {1: 0, 3: 0, 5: 1, 6: 1, 8: 2, 9: 2, 7: 3, 10: 3, 11: 3, 0: 4, 2: 4, 4: 4}
    split = cohort.results / "splits" / "faults" / "survival.csv"
    pd.DataFrame({"case_id": [case_id(i) for i in folds], "fold": list(folds.values())}).to_csv(split, index=False)
    r = cohort.run()
    assert r.code == 0, r.text
    assert ("faults/survival/meanmil.resnet50/fold4" in r.err
            and "c_index = undefined" in r.err and "C-index is undefined: no observed event (all cases censored)" in r.err)
    cohort.assert_kept(before)
    cohort.assert_complete()
    per_fold = [json.loads((cohort.unit_dir("survival", k) / "metrics.json").read_text())["metrics"]["c_index"]
                for k in range(N_FOLDS)]
    assert math.isnan(per_fold[4]) and all(math.isfinite(v) for v in per_fold[:4])
    s = pd.read_csv(cohort.results / "faults" / "summary.csv")
    row = s[(s["task"] == "survival") & (s["metric"] == "c_index")].iloc[0]
    assert row["n_folds"] == 5 and row["n_defined"] == 4
    assert row["mean"] == np.mean(per_fold[:4])  # undefined folds are left out of the mean, not zeros
    r = cohort.run(command="table")
    assert r.code == 0 and "4/5" in r.out, r.out


def _macro_f1_by_hand(y, p):
    f1s = []
    for c in sorted(set(y) | set(p)):
        tp = sum(a == c and b == c for a, b in zip(y, p))
        fp = sum(a != c and b == c for a, b in zip(y, p))
        fn = sum(a == c and b != c for a, b in zip(y, p))
        f1s.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return sum(f1s) / len(f1s)


def test_f12_class_absent_from_test_fold(cohort):
    # 3 cases per stage and 5 folds: every test fold lacks at least one stage
    r = cohort.run("--tasks", "staging", "--folds", "0,1")
    assert r.code == 0
    assert "every stage class has fewer cases than the 5 folds" in r.err
    assert "staging.csv: fold 0 has no stage" in r.err and "macro-F1 of those folds averages over the stages present" in r.err
    before = cohort.done()
    r = cohort.run("--tasks", "staging")
    assert r.code == 0
    cohort.assert_kept(before)
    cohort.assert_complete(tasks=("staging",))
    absent = 0
    for k in range(N_FOLDS):
        pred = pd.read_csv(cohort.unit_dir("staging", k) / "predictions.csv")
        absent += len({0, 1, 2, 3} - set(pred["stage"]))
        m = json.loads((cohort.unit_dir("staging", k) / "metrics.json").read_text())["metrics"]
        assert m["macro_f1"] == _macro_f1_by_hand(list(pred["stage"]), list(pred["pred"]))
    assert absent >= N_FOLDS


def test_f13_nan_loss_stops_the_unit(cohort):
    assert cohort.run("--methods", "maxmil.resnet50", "--folds", "0", methods="maxmil.resnet50").code == 0
    assert cohort.run("--tasks", "staging").code == 0
    kept = {**cohort.done("maxmil.resnet50"), **cohort.done()}
    r = cohort.run("--tasks", "survival", "--set", "lr=1e30")  # diverges to a NaN loss
    assert r.code == 1
    for k in range(N_FOLDS):
        assert f"FAILED faults/survival/{METHOD}/fold{k}: TrainingError: loss became non-finite" in r.out
        d = cohort.unit_dir("survival", k)
        err = json.loads((d.with_name(d.name + ".next") / "error.json").read_text())["error"]
        assert "lower the learning rate (--set lr=...)" in err
        assert not (cohort.unit_dir("survival", k) / "metrics.json").exists()
    for p, v in kept.items():
        assert (p.stat().st_mtime_ns, p.read_text()) == v
    r = cohort.run()  # the fix: the default learning rate
    assert r.code == 0 and f"{N_FOLDS} unit(s) run, {N_FOLDS} already done" in r.out
    cohort.assert_complete()


def test_f13b_nan_features_leave_the_slide_out(cohort):
    assert cohort.run("--folds", "0").code == 0
    before = cohort.done()
    h5 = cohort.feature_file(slide_id(2))
    with h5py.File(h5, "r+") as f:
        f["features"][0, :5] = np.nan
    r = cohort.run()
    assert r.code == 0, r.text
    assert f"features of slide {slide_id(2)} contain NaN/inf (in row 0 of " in r.err  # the row is named
    assert f"({h5} is corrupt)" in r.err
    assert "Fix: delete that file and rerun" in r.err
    cohort.assert_kept(before)
    cohort.assert_complete()
