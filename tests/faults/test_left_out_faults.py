"""A case left out of finished units because its input was broken (a zeroed cached feature file):
applying the fix the message prints (delete the file, rerun) redoes exactly the units that were
trained without it, and their records then count the case."""

from __future__ import annotations

import json

import h5py
import numpy as np

from conftest import N_FOLDS, TASKS, case_id, slide_id


def test_f15_printed_fix_redoes_units_trained_without_the_case(cohort) -> None:
    # a file zeroed whole is unreadable and extracted again by itself; zeroed arrays are caught by
    # their checksum and the slide is left out, with a fix to apply
    h5 = cohort.feature_file(slide_id(2))
    with h5py.File(h5, "r+") as f:
        f["features"][...] = np.zeros(f["features"].shape, f["features"].dtype)
    r = cohort.run()
    assert r.code == 0, r.text
    fix = f"({h5} is corrupt); the slide is left out. Fix: delete that file and rerun to extract it again"
    assert fix in r.err, r.err
    for t in TASKS:
        for k in range(N_FOLDS):
            rec = json.loads((cohort.unit_dir(t, k) / "metrics.json").read_text())
            assert rec["cases_without_input"] == [case_id(2)], (t, k)
    h5.unlink()  # the printed fix, applied
    r = cohort.run()
    assert r.code == 0, r.text
    assert "nothing to do" not in r.out + r.err
    assert f"{2 * N_FOLDS} unit(s) run, 0 already done" in r.out, r.text
    assert f"trained without 1 case(s) that have input now ({case_id(2)})" in r.err, r.err
    for t in TASKS:
        for k in range(N_FOLDS):
            rec = json.loads((cohort.unit_dir(t, k) / "metrics.json").read_text())
            assert rec["cases_without_input"] == [], (t, k)
            assert rec["n_train"] + rec["n_test"] + rec.get("n_val", 0) >= 1
    before = cohort.done()
    r = cohort.run()  # settled: nothing left to redo
    assert r.code == 0 and "nothing to do" in r.out + r.err, r.text
    cohort.assert_kept(before)
