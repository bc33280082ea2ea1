"""Faults 5-10: paths, the slide folder and the clinical table.

Each test: a run finishes some units, the fault is injected into the files on disk, the next run
shows a message naming the item and the fix, keeps every finished unit byte for byte, and a run
completes (after the user's fix, where the fault stops the run).
"""

import shutil

import pandas as pd

from conftest import FaultCohort, case_id, slide_id, write_slide


def test_f05_non_ascii_and_space_paths(master, tmp_path):
    root = tmp_path / "my data é" / "données ü 1"
    shutil.copytree(master / "data", root / "data")
    shutil.copytree(master / "cache", root / "cache")
    c = FaultCohort(root)
    r = c.run("--folds", "0")
    assert r.code == 0
    before = c.done()
    # a slide file whose name has a space and an accent (its id becomes part of cache file names)
    odd = c.slides / f"{slide_id(3)} copie é.tiff"
    c.slide(3).rename(odd)
    r = c.run()
    assert r.code == 0, r.text
    c.assert_kept(before)
    c.assert_complete()
    stems = [p.name for p in c.cache.glob("resnet50/*/*.h5")]
    assert any(s.startswith(f"{slide_id(3)}_copie-") for s in stems), stems  # sanitised + id hash
    assert all(s.isascii() and " " not in s for s in stems)
    # and again: nothing to do, the oddly named slide's features are reused
    r = c.run()
    assert "nothing to do" in r.out


def test_f06_duplicate_slide_ids_across_folders(cohort):
    cohort.write_yaml(slide_glob="**/*.tiff")
    assert cohort.run("--folds", "0").code == 0
    before = cohort.done()
    dup = cohort.slides / "rescan" / cohort.slide(4).name
    dup.parent.mkdir()
    shutil.copy2(cohort.slide(4), dup)
    r = cohort.run()
    assert r.code == 2
    assert f"slide id '{slide_id(4)}' appears twice" in r.err
    assert str(cohort.slide(4)) in r.err and str(dup) in r.err and "rename one copy" in r.err
    cohort.assert_kept(before)
    assert len(cohort.done()) == len(before)  # stopped before any compute
    shutil.rmtree(dup.parent)  # the user's fix
    r = cohort.run()
    assert r.code == 0
    cohort.assert_kept(before)
    cohort.assert_complete()


def test_f07_case_without_slide(cohort):
    assert cohort.run("--folds", "0").code == 0
    before = cohort.done()
    t = cohort.table()
    t.loc[len(t)] = [case_id(99), "2", "10.0", "1"]
    t.to_csv(cohort.clinical, index=False)
    r = cohort.run()
    assert r.code == 0
    assert f"1 cases in the clinical table without a slide are left out: {case_id(99)}" in r.err
    assert "Fix: put their slides under" in r.err
    cohort.assert_kept(before)
    cohort.assert_complete()


def test_f08_slide_without_clinical_row(cohort):
    assert cohort.run("--folds", "0").code == 0
    before = cohort.done()
    stray = write_slide(cohort.slides / "TCGA-ZZ-0077-01Z-00-DX1.tiff", seed=77)
    r = cohort.run()
    assert r.code == 0
    assert "1 slides without a clinical row are left out: TCGA-ZZ-0077-01Z-00-DX1" in r.err
    assert f"Fix: add their cases to {cohort.clinical}" in r.err and "first 12 characters" in r.err
    cohort.assert_kept(before)
    cohort.assert_complete()
    assert not list(cohort.cache.glob(f"resnet50/*/{stray.stem}.h5"))  # no compute spent on it


def test_f09_unknown_stage_string(cohort):
    assert cohort.run("--folds", "0").code == 0
    before = cohort.done()
    t = cohort.table()
    t.loc[4, "stage"] = "Stage IIZ"  # case 4, file row 6
    t.to_csv(cohort.clinical, index=False)
    r = cohort.run()
    assert f"row 6 ({case_id(4)}): 'Stage IIZ'" in r.err and "left out of staging" in r.err
    assert "Fix: write AJCC stages" in r.err
    # the staging cohort changed under existing folds: refused, naming the case, before any compute
    assert r.code == 2 and "the cohort changed since" in r.err and case_id(4) in r.err
    cohort.assert_kept(before)
    t.loc[4, "stage"] = "Stage IIB"  # the user's fix; IIB is stage II, as before
    t.to_csv(cohort.clinical, index=False)
    r = cohort.run()
    assert r.code == 0 and "unknown stage" not in r.err
    cohort.assert_kept(before)
    cohort.assert_complete()


def test_f10_bad_survival_times(cohort):
    assert cohort.run("--folds", "0", "--tasks", "staging").code == 0
    before = cohort.done()
    t = cohort.table()
    t.loc[0, "time"] = "-5"
    t.loc[2, "time"] = "0"
    t.loc[4, "time"] = "NA"
    t.loc[7, "event"] = ""
    t.to_csv(cohort.clinical, index=False)
    r = cohort.run()
    assert r.code == 0, r.text
    assert f"2 case(s) with a survival time <= 0 are left out of survival: {case_id(0)} (-5), {case_id(2)} (0)" \
        in r.err and "Fix: correct their times" in r.err
    assert "survival: 8 of 12 cases have its labels; 4 left out of survival" in r.err
    assert f"({case_id(4)}, {case_id(7)})" in r.err or f"{case_id(4)}, {case_id(7)}" in r.err
    cohort.assert_kept(before)
    cohort.assert_complete()
    folds = pd.read_csv(cohort.results / "splits" / "faults" / "survival.csv")
    assert len(folds) == 8 and not {case_id(i) for i in (0, 2, 4, 7)} & set(folds["case_id"])
