"""Trackers: a unit's run written through bench.engine.tracking and read back through each
library's own reader (TensorBoard's EventAccumulator, mlflow.search_runs, the W&B run file)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from bench.engine import tracking as TR

PARAMS = {"method": "abmil.resnet50", "protocol": "wsi-bench", "train": {"lr": 1e-3, "epochs": 2},
          "split_set": {"seed": 0, "n_folds": 5}, "weights": [{"part": "encoder", "origin": "random"}]}
LOSSES = [1.0, 0.8, 0.6, 0.5, 0.45]


def _fake_unit(settings: TR.TrackerSettings, name: str) -> None:
    with TR.open_run(settings, name, PARAMS) as run:
        for step, loss in enumerate(LOSSES, start=1):
            run.log_step(step, loss=loss, lr=1e-3 * (1 - step / 10))
        run.log_epoch(1, loss=0.9)
        run.log_epoch(2, loss=0.5, val_loss=0.7)
        run.log_final(c_index=0.625)


def test_run_name_follows_the_unit_layout():
    assert TR.run_name("demo", "staging", "abmil.resnet50", 3) == "demo/staging/abmil.resnet50/fold3"
    assert TR.run_name("luad", "survival", "pixelmamba-6m", 0, variant="lr=1e-3", repeat=2) == \
        "luad/survival/pixelmamba-6m/lr=1e-3/fold0/seed2"


def test_flatten_gives_scalar_leaves():
    flat = TR.flatten(PARAMS)
    assert flat["train.lr"] == 1e-3 and flat["split_set.n_folds"] == 5
    assert json.loads(flat["weights"]) == [{"origin": "random", "part": "encoder"}]


def test_tensorboard_run_reads_back(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    settings = TR.TrackerSettings("tensorboard", root=str(tmp_path))
    _fake_unit(settings, "demo/survival/abmil.resnet50/fold0")
    ea = EventAccumulator(str(tmp_path / "tensorboard/demo/survival/abmil.resnet50/fold0"),
                          size_guidance={"scalars": 0, "tensors": 0})
    ea.Reload()
    assert [e.value for e in ea.Scalars("train/loss")] == pytest.approx(LOSSES)
    assert [e.step for e in ea.Scalars("train/loss")] == [1, 2, 3, 4, 5]
    assert [e.value for e in ea.Scalars("epoch/val_loss")] == pytest.approx([0.7])
    assert ea.Scalars("test/c_index")[0].value == pytest.approx(0.625)
    text = ea.Tensors("params/text_summary")[0].tensor_proto.string_val[0].decode()
    assert json.loads(text)["train.lr"] == 1e-3


def test_mlflow_run_reads_back(tmp_path):
    import mlflow

    settings = TR.TrackerSettings("mlflow", root=str(tmp_path))
    _fake_unit(settings, "demo/survival/abmil.resnet50/fold0")
    _fake_unit(settings, "demo/survival/abmil.resnet50/fold1")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["demo"])
    assert sorted(runs["tags.mlflow.runName"]) == ["demo/survival/abmil.resnet50/fold0",
                                                   "demo/survival/abmil.resnet50/fold1"]
    assert set(runs["params.train.lr"]) == {"0.001"}
    assert list(runs["metrics.test/c_index"]) == pytest.approx([0.625, 0.625])
    history = mlflow.MlflowClient(uri).get_metric_history(runs["run_id"][0], "train/loss")
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == pytest.approx(LOSSES)


def test_wandb_offline_run_reads_back(tmp_path, monkeypatch):
    import wandb_reader as WR

    monkeypatch.setenv("WANDB_SILENT", "true")
    settings = TR.TrackerSettings("wandb", root=str(tmp_path), wandb_mode="offline")
    _fake_unit(settings, "demo/staging/abmil.resnet50/fold0")
    _fake_unit(settings, "demo/staging/abmil.resnet50/fold1")
    files = sorted((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 2  # one run per unit, not the first unit's run continued
    deadline = time.monotonic() + 60  # wandb's service may still be flushing the last records
    while time.monotonic() < deadline and not all("test/c_index" in WR.summary(f) for f in files):
        time.sleep(0.5)
    for f in files:
        rows = [r for r in WR.history(f) if "train/loss" in r]
        assert [r["train/loss"] for r in rows] == pytest.approx(LOSSES)
        assert WR.config(f)["train.lr"] == 1e-3
        assert WR.summary(f)["test/c_index"] == pytest.approx(0.625)


def test_wandb_mode_follows_login(tmp_path):
    netrc = tmp_path / ".netrc"
    assert TR.wandb_mode({}, netrc) == "offline"
    netrc.write_text("machine api.wandb.ai\n  login user\n  password abc\n")
    assert TR.wandb_mode({}, netrc) == "online"
    assert TR.wandb_mode({"WANDB_MODE": "offline"}, netrc) == "offline"
    assert TR.wandb_mode({"WANDB_API_KEY": "x"}, None) == "online"


def test_missing_package_names_the_extra(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    with pytest.raises(TR.TrackingError, match=r"pip install 'wsi-bench\[tracking\]'"):
        TR.check_available("mlflow")
    with pytest.raises(TR.TrackingError, match="unknown tracker"):
        TR.check_available("neptune")
    TR.check_available("none")


def test_none_tracks_nothing(tmp_path):
    _fake_unit(TR.TrackerSettings("none", root=str(tmp_path)), "x/y/z/fold0")
    assert not any(tmp_path.iterdir())


def test_overlay_settings_choose_the_tracker_and_the_command_line_wins(tmp_path, monkeypatch):
    import argparse

    from bench.cli.common import tracker_settings
    from bench.resources import ConfigError

    monkeypatch.setenv("BENCH_CONFIG", str(tmp_path))
    args = argparse.Namespace(tracker=None, tracker_uri=None, results=tmp_path / "results")
    assert tracker_settings(args).kind == "tensorboard"  # no settings.yaml: the default
    (tmp_path / "settings.yaml").write_text("tracker: mlflow\ntracker_uri: http://mlflow.lab:5000\n")
    s = tracker_settings(args)
    assert (s.kind, s.uri, s.root) == ("mlflow", "http://mlflow.lab:5000", str(tmp_path / "results" / "tracking"))
    assert tracker_settings(argparse.Namespace(**{**vars(args), "tracker": "none"})).kind == "none"
    (tmp_path / "settings.yaml").write_text("trackr: mlflow\n")
    with pytest.raises(ConfigError, match=r"settings.yaml: unknown setting 'trackr' \(did you mean 'tracker'\?\)"):
        tracker_settings(args)
