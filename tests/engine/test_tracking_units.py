"""A unit's tracked run, written by `bench run` and read back through each library's own reader:
its parameters are the unit's options, its loss curve has one point per optimizer step trained,
and its final metric is the record's. Under --jobs 2 every unit's run is complete and separate."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

import pytest

import bench.engine.inputs as inputs_mod
from bench.engine import runner
from bench.engine.tracking import TrackerSettings
from bench.registry import get_method
from bench.results.store import ResultsStore
from fake_inputs import BagInputs, write_toy_cohort

HELPERS = Path(__file__).resolve().parents[1] / "helpers"
EPOCHS = 2


def _tracked_run(tmp_path, monkeypatch, kind):
    spec, _ = write_toy_cohort(tmp_path, 12, slide_bytes=lambda i: b"II*\x00" + bytes([i]) * 100)
    monkeypatch.setitem(inputs_mod.FEATURE_INPUTS, "features", BagInputs)
    settings = TrackerSettings(kind, root=str(tmp_path / "results" / "tracking"), wandb_mode="offline")
    runner.run([get_method("meanmil.resnet50")], str(spec), results=str(tmp_path / "results"), tasks=["staging"],
               folds=[0], train_overrides={"epochs": EPOCHS, "grad_accum": 3}, progress=False, tracker=settings)
    rec = next(ResultsStore(tmp_path / "results").records("toy"))
    steps = EPOCHS * math.ceil(rec.n_train / 3)
    return rec, steps, tmp_path / "results" / "tracking"


def test_tensorboard_run_of_a_unit(tmp_path, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    rec, steps, root = _tracked_run(tmp_path, monkeypatch, "tensorboard")
    ea = EventAccumulator(str(root / "tensorboard/toy/staging/meanmil.resnet50/fold0"),
                          size_guidance={"scalars": 0, "tensors": 0})
    ea.Reload()
    assert [e.step for e in ea.Scalars("train/loss")] == list(range(1, steps + 1))
    assert len(ea.Scalars("train/lr")) == steps and len(ea.Scalars("epoch/loss")) == EPOCHS
    assert ea.Scalars("test/macro_f1")[0].value == pytest.approx(rec.metrics["macro_f1"])
    params = json.loads(ea.Tensors("params/text_summary")[0].tensor_proto.string_val[0].decode())
    assert params["train.lr"] == rec.train["lr"] and params["train.epochs"] == EPOCHS
    assert params["protocol"] == rec.protocol and params["split.hash"] == rec.split.hash
    assert params["method"] == "meanmil.resnet50" and "weights" in params


def test_mlflow_run_of_a_unit(tmp_path, monkeypatch):
    import mlflow

    rec, steps, root = _tracked_run(tmp_path, monkeypatch, "mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["toy"])
    assert list(runs["tags.mlflow.runName"]) == ["toy/staging/meanmil.resnet50/fold0"]
    assert float(runs["params.train.lr"][0]) == rec.train["lr"]
    assert runs["params.protocol"][0] == rec.protocol
    assert runs["metrics.test/macro_f1"][0] == pytest.approx(rec.metrics["macro_f1"])
    assert len(mlflow.MlflowClient(uri).get_metric_history(runs["run_id"][0], "train/loss")) == steps


def test_wandb_run_of_a_unit(tmp_path, monkeypatch):
    import wandb_reader as WR

    monkeypatch.setenv("WANDB_SILENT", "true")
    rec, steps, root = _tracked_run(tmp_path, monkeypatch, "wandb")
    files = list((root / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1
    deadline = time.monotonic() + 60  # wandb's service may still be flushing the last records
    while time.monotonic() < deadline and "test/macro_f1" not in WR.summary(files[0]):
        time.sleep(0.5)
    assert len([r for r in WR.history(files[0]) if "train/loss" in r]) == steps
    assert WR.config(files[0])["train.lr"] == rec.train["lr"]
    assert WR.summary(files[0])["test/macro_f1"] == pytest.approx(rec.metrics["macro_f1"])


def test_two_jobs_track_every_unit_once(tmp_path, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from jobs_worker import SlowBags

    spec, _ = write_toy_cohort(tmp_path, 12, slide_bytes=lambda i: b"II*\x00" + bytes([i]) * 100)
    monkeypatch.setitem(inputs_mod.FEATURE_INPUTS, "features", SlowBags)
    settings = TrackerSettings("tensorboard", root=str(tmp_path / "results" / "tracking"))
    kw = dict(results=str(tmp_path / "results"), tasks=["staging", "survival"], train_overrides={"epochs": 1})
    command = [sys.executable, str(HELPERS / "jobs_worker.py"),
               json.dumps({**kw, "methods": ["meanmil.resnet50"], "dataset": str(spec),
                           "trained_log": str(tmp_path / "trained.log"), "tracker": settings.to_dict()})]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(HELPERS.parents[1]), str(HELPERS), os.environ.get("PYTHONPATH", "")]))
    report = runner.run([get_method("meanmil.resnet50")], str(spec), progress=False, jobs=2, worker_command=command,
                        tracker=settings, **kw)
    assert not report.failed
    store = ResultsStore(tmp_path / "results")
    recs = {(r.task, r.fold): r for r in store.records("toy")}
    assert len(recs) == 10
    for (task, fold), rec in recs.items():
        ea = EventAccumulator(str(tmp_path / f"results/tracking/tensorboard/toy/{task}/meanmil.resnet50/fold{fold}"),
                              size_guidance={"scalars": 0})
        ea.Reload()
        assert len(ea.Scalars("train/loss")) == math.ceil(rec.n_train / 8)  # one epoch, grad_accum 8
        value = rec.metrics[rec.primary_metric]
        if math.isfinite(value):
            assert ea.Scalars(f"test/{rec.primary_metric}")[0].value == pytest.approx(value)
        else:  # an undefined metric (a test fold without an event) is not logged as a number
            assert f"test/{rec.primary_metric}" not in ea.Tags()["scalars"]
