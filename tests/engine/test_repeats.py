"""``--repeats N``: N training seeds on the same folds, each (fold, repeat) a unit of its own.

Repeat 0 is exactly the unit of a run without repeats (same directory, identity and seed), so a
later ``--repeats 3`` adds only repeats 1 and 2. The table's cell is the mean over repeats within a
fold, then mean ± std over folds: checked against numpy over the records' own metrics.json files."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import bench.engine.inputs as inputs_mod
from bench.engine import runner
from bench.engine.config import unit_seed
from bench.engine.tracking import TrackerSettings
from bench.registry import get_method
from bench.report.compare import compare_rows
from bench.report.tables import build_table
from bench.results.identity import digest
from bench.results.store import ResultsStore, Unit
from fake_inputs import BagInputs, write_cached_cohort, write_toy_cohort

METHOD = "meanmil.resnet50"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def toy(tmp_path, monkeypatch):
    spec, _ = write_toy_cohort(tmp_path, 12, slide_bytes=lambda i: b"II*\x00" + bytes([i]) * 100)
    monkeypatch.setitem(inputs_mod.FEATURE_INPUTS, "features", BagInputs)
    return spec


def _run(spec, tmp_path, methods=(METHOD,), **kw):
    kw = {"results": str(tmp_path / "results"), "tasks": ["staging"], "train_overrides": {"epochs": 2},
          "progress": False, **kw}
    return runner.run([get_method(m) for m in methods], str(spec), **kw)


def test_repeat_zero_is_the_unit_of_a_run_without_repeats(toy, tmp_path):
    plain = _run(toy, tmp_path, folds=[0, 1], dry_run=True).todo
    rep = _run(toy, tmp_path, folds=[0, 1], dry_run=True, repeats=3).todo
    assert len(plain) == 2 and len(rep) == 6
    by_unit = {p.unit: p for p in rep}
    store = ResultsStore(tmp_path / "results")
    for p in plain:
        r0 = by_unit[Unit(p.unit.dataset, "staging", METHOD, p.unit.fold, None, 0)]
        assert r0.unit == p.unit and r0.config == p.config and r0.chash == p.chash == digest(p.config)
        assert "repeat" not in r0.config and store.unit_dir(r0.unit).name == f"fold{p.unit.fold}"
        # the training seed of repeat 0 is the one every earlier run used
        assert r0.train["seed"] == unit_seed(0, METHOD, "staging", p.unit.fold)
    for k in (0, 1):
        units = [by_unit[Unit(rep[0].unit.dataset, "staging", METHOD, k, None, r)] for r in range(3)]
        assert len({u.chash for u in units}) == 3  # every repeat's identity differs
        assert len({u.train["seed"] for u in units}) == 3  # ... and so does its training seed
        assert len({json.dumps(u.config["split"], sort_keys=True) for u in units}) == 1  # the split does not
        assert [store.unit_dir(u.unit).name for u in units] == [f"fold{k}", f"fold{k}-repeat1", f"fold{k}-repeat2"]
        assert [u.config.get("repeat") for u in units] == [None, 1, 2]


def test_more_repeats_later_adds_only_the_new_ones(toy, tmp_path):
    first = _run(toy, tmp_path, folds=[0, 1])
    assert len(first.ran) == 2
    store = ResultsStore(tmp_path / "results")
    before = {r.fold: (store.unit_dir(Unit.of(r)) / "metrics.json").stat().st_mtime_ns for r in store.records("toy")}
    again = _run(toy, tmp_path, folds=[0, 1], repeats=3)
    assert sorted(again.done_before, key=str) == sorted(first.ran, key=str)
    assert sorted((u.fold, u.repeat) for u in again.ran) == [(0, 1), (0, 2), (1, 1), (1, 2)]
    for rec in store.records("toy"):
        if rec.repeat == 0:
            assert (store.unit_dir(Unit.of(rec)) / "metrics.json").stat().st_mtime_ns == before[rec.fold]
    assert not _run(toy, tmp_path, folds=[0, 1], repeats=3).ran  # all done: nothing to redo


def test_table_cell_is_the_mean_over_repeats_then_over_folds(toy, tmp_path):
    settings = TrackerSettings("tensorboard", root=str(tmp_path / "results" / "tracking"))
    rep = _run(toy, tmp_path, repeats=2, tracker=settings)
    assert len(rep.ran) == 10 and not rep.failed
    # the records as files, read without the code under test
    runs = tmp_path / "results" / "runs" / "toy" / "staging" / METHOD
    values = np.full((5, 2), np.nan)
    for k in range(5):
        for r, d in enumerate([f"fold{k}", f"fold{k}-repeat1"]):
            m = json.loads((runs / d / "metrics.json").read_text())
            assert (m["fold"], m["repeat"], m["schema_version"]) == (k, r, 3)
            values[k, r] = m["metrics"]["macro_f1"]
    assert not np.allclose(values[:, 0], values[:, 1])  # another seed trains another model
    fold_means = values.mean(axis=1)
    summary = ResultsStore(tmp_path / "results").summarize("toy")
    row = summary[(summary["metric"] == "macro_f1")].iloc[0]
    assert row["mean"] == pytest.approx(fold_means.mean()) and row["std"] == pytest.approx(fold_means.std(ddof=0))
    assert row["repeats"] == [2] * 5 and row["n_folds"] == 5
    seed_var = values.var(axis=1, ddof=1).mean()
    assert row["seed_var"] == pytest.approx(seed_var)
    assert row["split_var"] == pytest.approx(max(0.0, fold_means.var(ddof=1) - seed_var / 2))
    wide, cols = build_table(summary)
    assert wide[cols[0]].iloc[0].text == f"{fold_means.mean():.4f} ± {fold_means.std():.4f}"
    var = pd.read_csv(tmp_path / "results" / "toy" / "variance.csv")
    assert var.loc[var["metric"] == "macro_f1", "seed_var"].iloc[0] == pytest.approx(seed_var)
    # one tracked run per repeat: .../fold<k> for repeat 0, .../fold<k>/seed<r> for the others
    tb = tmp_path / "results" / "tracking" / "tensorboard" / "toy" / "staging" / METHOD
    assert all(list((tb / f"fold{k}" / "seed1").glob("events.*")) for k in range(5))


def test_unequal_repeats_per_fold_are_marked_not_averaged_silently(toy, tmp_path):
    _run(toy, tmp_path, folds=[0, 1])
    _run(toy, tmp_path, folds=[0], repeats=2)
    summary = ResultsStore(tmp_path / "results").summarize("toy")
    row = summary[summary["primary"]].iloc[0]
    assert row["repeats"] == [2, 1] and not row["balanced"] and math.isnan(row["seed_var"])
    wide, cols = build_table(summary)
    cell = wide[cols[0]].iloc[0]
    assert cell.partial and "repeats 2/1" in cell.text


def test_compare_pairs_folds_and_repeats_of_real_units(toy, tmp_path):
    _run(toy, tmp_path, methods=(METHOD, "maxmil.resnet50"), folds=[0, 1], repeats=2)
    store = ResultsStore(tmp_path / "results")
    a, b = (store.predictions("toy", "staging", m) for m in (METHOD, "maxmil.resnet50"))
    assert sorted(set(zip(a["fold"], a["repeat"]))) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    c = compare_rows("staging", "macro_f1", a, b, (METHOD, "maxmil.resnet50"), n_boot=50)
    assert c.repeats == [0, 1] and c.folds == [0, 1] and len(c.strata_diffs) == 4
    recs = {(r.method, r.fold, r.repeat): r.metrics["macro_f1"] for r in store.records("toy")}
    for (f, r), d in c.strata_diffs.items():
        assert d == pytest.approx(recs[(METHOD, f, r)] - recs[("maxmil.resnet50", f, r)])
    # one prediction per patient where patients are pooled (test against chance, KM figures): repeat 0
    from bench.report.chance import row_predictions

    pooled = row_predictions(store, "toy")[("staging", METHOD, "")]
    assert not pooled.duplicated(["fold", "case_id"]).any() and len(pooled) == len(a) // 2
    zero = store.predictions("toy", "staging", METHOD, repeat=0)
    assert (zero["repeat"] == 0).all() and len(zero) == len(a) // 2


def test_schema_2_records_read_as_repeat_0(tmp_path):
    from record_factory import make_record

    from bench.results.records import UnitRecord

    d = make_record().to_dict()
    d.pop("repeat")
    d["schema_version"] = 2
    rec = UnitRecord.from_dict(d)
    assert rec.repeat == 0 and rec.schema_version == 3
    with pytest.raises(ValueError, match="unknown keys"):
        UnitRecord.from_dict({**d, "repeat": 1})  # schema 2 had no repeats


@pytest.mark.slow
def test_killed_repeats_run_redoes_only_unfinished_units(tmp_path):
    spec = write_cached_cohort(tmp_path, 16)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "BENCH_JOBS": "1", "HF_HUB_OFFLINE": "1"}
    args = [sys.executable, "-m", "bench", "run", "--methods", METHOD, "--dataset", str(spec), "--tasks", "staging",
            "--folds", "0", "--repeats", "4", "--results", str(tmp_path / "results"), "--cache",
            str(tmp_path / "cache"), "--set", "epochs=60", "--tracker", "none", "-q"]
    runs = tmp_path / "results" / "runs" / "toy" / "staging" / METHOD
    p = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not list(runs.glob("fold*/metrics.json")):
        time.sleep(0.05)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    done = sorted(q.parent.name for q in runs.glob("fold*/metrics.json"))
    assert 1 <= len(done) < 4, done
    stamp = {d: (runs / d / "metrics.json").stat().st_mtime_ns for d in done}
    out = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"{4 - len(done)} unit(s) run, {len(done)} already done" in out.stdout
    assert {d: (runs / d / "metrics.json").stat().st_mtime_ns for d in done} == stamp
    assert sorted(q.parent.name for q in runs.glob("fold*/metrics.json")) == [
        "fold0", "fold0-repeat1", "fold0-repeat2", "fold0-repeat3"]


@pytest.mark.slow  # a worker process imports torch afresh: about a minute on a loaded machine
def test_two_jobs_fan_repeats_out_as_units(tmp_path, monkeypatch):
    import bench.engine.unit as unit_step
    from jobs_worker import SlowBags, record_training

    helpers = ROOT / "tests" / "helpers"
    spec, _ = write_toy_cohort(tmp_path, 12, slide_bytes=lambda i: b"II*\x00" + bytes([i]) * 100)
    monkeypatch.setitem(inputs_mod.FEATURE_INPUTS, "features", SlowBags)
    log = tmp_path / "trained.log"
    kw = dict(results=str(tmp_path / "results"), tasks=["staging"], folds=[0, 1], repeats=2,
              train_overrides={"epochs": 1})
    command = [sys.executable, str(helpers / "jobs_worker.py"),
               json.dumps({**kw, "methods": [METHOD], "dataset": str(spec), "trained_log": str(log)})]
    monkeypatch.setattr(unit_step, "fit_and_score", unit_step.fit_and_score)  # restored after the test
    record_training(log, wait_for_another=True)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), str(helpers), os.environ.get("PYTHONPATH", "")]))
    rep = runner.run([get_method(METHOD)], str(spec), progress=False, jobs=2, worker_command=command, **kw)
    assert not rep.failed and len(rep.ran) + len(rep.by_workers) == 4, rep.line()
    lines = [ln.split("\t") for ln in log.read_text().splitlines()]
    assert len(lines) == 4 and len({desc for _, desc in lines}) == 4  # every (fold, repeat) trained once
    assert len({pid for pid, _ in lines}) == 2  # by both processes
    recs = ResultsStore(tmp_path / "results").records("toy")
    assert sorted((r.fold, r.repeat) for r in recs) == [(0, 0), (0, 1), (1, 0), (1, 1)]


def test_a_launcher_job_runs_exactly_its_repeat(toy, tmp_path):
    from bench.engine.options import RunOptions

    from bench.engine.config import Variant
    from bench.engine.launch import job_spec

    opts = RunOptions.create(str(toy), results=str(tmp_path / "results"), repeats=3)
    job = RunOptions.from_dict(json.loads(job_spec(opts, Variant(get_method(METHOD)), "staging", 1, 2))["options"])
    assert (job.tasks, job.folds, job.repeat, job.repeats) == (("staging",), (1,), 2, 3)
    plans = runner.run([get_method(METHOD)], replace(job, dry_run=True)).todo
    assert [(p.unit.fold, p.unit.repeat) for p in plans] == [(1, 2)]
    with pytest.raises(ValueError, match="--repeats must be"):
        RunOptions.create(str(toy), repeats=0)
