"""Names are identities: variant and dataset names never share a directory, and a table reads only
the records that belong where they are found (fold<k> of their own dataset, task, method, variant),
with the metrics they were written with."""

from __future__ import annotations

import json
import shutil

from bench.io import name_component
from bench.results.store import IntegrityError, PlaceError, ResultsStore, Unit

from conftest import METHOD


def test_names_map_to_distinct_directories() -> None:
    names = ["a/b", "a_b", "α1", "β1", "1", "lu ad", "lu_ad", "my cohort", "my_cohort", ".x", "x"]
    dirs = [name_component(n) for n in names]
    assert len(set(dirs)) == len(names), dict(zip(names, dirs))
    # safe names and ablation variants keep the directory they always had
    assert name_component("luad") == "luad" and name_component("depth=1") == "depth_1"
    assert all("/" not in d and not d.startswith(".") for d in dirs)
    store = ResultsStore("r")
    assert store.unit_dir(Unit("lu ad", "staging", METHOD, 0)) != store.unit_dir(Unit("lu_ad", "staging", METHOD, 0))


def test_variant_names_never_replace_another_row(cohort) -> None:
    run = ("--tasks", "staging", "--folds", "0")
    assert cohort.run(*run, "--variant", "a/b").code == 0
    kept = {p: p.read_text() for p in (cohort.results / "runs").rglob("metrics.json")}
    assert cohort.run(*run, "--variant", "a_b", "--set", "lr=1e-3").code == 0
    assert all(p.read_text() == t for p, t in kept.items())  # a/b's result is untouched
    variants = sorted(r.variant for r in ResultsStore(cohort.results).records("faults"))
    assert variants == ["a/b", "a_b"]

    # `x=1` and `x_1` share a directory (the ablation form): the second is refused, the first kept
    assert cohort.run(*run, "--variant", "x=1").code == 0
    kept = {p: p.read_text() for p in (cohort.results / "runs").rglob("metrics.json")}
    r = cohort.run(*run, "--variant", "x_1", "--set", "lr=1e-3")
    assert r.code == 2 and "faults/staging/meanmil.resnet50[x=1]/fold0 share the directory" in r.err, r.err
    assert {p: p.read_text() for p in (cohort.results / "runs").rglob("metrics.json")} == kept


def test_bad_variant_names_and_folds_are_refused(cohort) -> None:
    run = ("--tasks", "staging", "--folds", "0")
    cases = {"": "the variant name is empty", "seed1-k5": "'seed1-k5' is reserved", "a+tuned": "'tuned' is reserved",
             "v" * 300: "is 300 characters long; the limit is 100"}
    for name, msg in cases.items():
        r = cohort.run(*run, "--variant", name)
        assert r.code == 2 and msg in r.err and "Traceback" not in r.text, (name, r.text)
    r = cohort.run("--tasks", "staging", "--folds", "7")
    assert r.code == 2 and "--folds 7: the staging split set has folds 0..4" in r.err, r.text
    assert not (cohort.results / "runs").exists()


def test_tables_read_only_what_belongs(cohort) -> None:
    assert cohort.run("--tasks", "staging", "--folds", "0,1").code == 0
    store = ResultsStore(cohort.results)
    unit = cohort.unit_dir("staging", 0)
    # a backup copy beside a finished fold is not a sixth fold
    shutil.copytree(unit, unit.with_name("fold0.bak"))
    t = cohort.run(command="table")
    assert t.code == 0 and "fold0.bak is not read: only fold<k>[-repeat<r>] directories hold results" in t.err, t.text
    summary = store.summarize("faults")
    assert set(summary["n_folds"]) == {2}
    shutil.rmtree(unit.with_name("fold0.bak"))

    # another dataset's method folder copied under this dataset is refused, naming the file
    other = cohort.results / "runs" / "other" / "staging" / METHOD
    shutil.copytree(unit.parent, other)
    try:
        list(store.records("other"))
        raise AssertionError("a record of dataset 'faults' was read as one of 'other'")
    except PlaceError as exc:
        assert "dataset 'faults'" in str(exc) and str(other / "fold0" / "metrics.json") in str(exc)
    t = cohort.run("--dataset", "other", command="table")
    assert t.code == 2 and "it was copied or moved" in t.err and "Traceback" not in t.text, t.text
    shutil.rmtree(other.parents[1])

    # a metric edited inside metrics.json: refused by the table, redone by run
    m = unit / "metrics.json"
    d = json.loads(m.read_text())
    d["metrics"]["macro_f1"] = 0.99
    m.write_text(json.dumps(d, indent=2))
    try:
        list(store.records("faults"))
        raise AssertionError("an edited metric was read")
    except IntegrityError as exc:
        assert "do not match the ones computed from its predictions" in str(exc)
    r = cohort.run("--tasks", "staging", "--folds", "0,1")
    assert r.code == 0 and "1 unit(s) to run" in r.err, r.text
    assert json.loads(m.read_text())["metrics"]["macro_f1"] != 0.99
