"""``--tracker`` on ``bench tune`` and ``bench pretrain``, read back with TensorBoard's own
EventAccumulator: one run per tuning trial (its inner folds' training one loss curve, the trial's
value equal to the study's) and one run per pre-training (a resumed run continues the curve)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import bench.engine.inputs as inputs_mod
from bench.engine.tracking import TrackerSettings
from bench.registry import get_method
from fake_inputs import BagInputs, write_toy_cohort

EPOCHS, ACCUM = 2, 4


def _events(path: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(path), size_guidance={"scalars": 0, "tensors": 0})
    ea.Reload()
    return ea


def test_tune_tracks_one_run_per_trial(tmp_path, monkeypatch):
    optuna = pytest.importorskip("optuna")
    from bench.engine.tuning import default_storage, tune

    spec, _ = write_toy_cohort(tmp_path, 24)
    monkeypatch.setitem(inputs_mod.FEATURE_INPUTS, "features", BagInputs)
    results = tmp_path / "results"
    settings = TrackerSettings("tensorboard", root=str(results / "tracking"))
    rep = tune(get_method("meanmil.resnet50"), str(spec), n_trials=2, tasks=["staging"], folds=[0], results=results,
               inner=2, train_overrides={"epochs": EPOCHS, "grad_accum": ACCUM}, progress=False, tracker=settings)
    fold = rep.folds[0]
    inner = pd.read_csv(fold.path / "inner_folds.csv")
    steps = sum(EPOCHS * math.ceil((inner["fold"] != j).sum() / ACCUM) for j in range(2))
    study = optuna.load_study(study_name=fold.study_name,
                              storage=default_storage(results, "toy", "staging", "meanmil.resnet50"))
    runs = results / "tracking" / "tensorboard" / "toy" / "staging" / "meanmil.resnet50" / "tune" / "fold0"
    assert sorted(p.name for p in runs.iterdir()) == ["trial0", "trial1"]
    for trial in study.trials:
        ea = _events(runs / f"trial{trial.number}")
        assert [e.step for e in ea.Scalars("train/loss")] == list(range(1, steps + 1))
        assert len(ea.Scalars("epoch/loss")) == 2 * EPOCHS
        assert ea.Scalars("test/inner_cv_macro_f1")[0].value == pytest.approx(trial.value)
        for j in range(2):
            assert ea.Scalars(f"test/inner{j}_macro_f1")[0].value == pytest.approx(trial.user_attrs[f"inner{j}"])
        params = json.loads(ea.Tensors("params/text_summary")[0].tensor_proto.string_val[0].decode())
        assert params["params.lr"] == pytest.approx(trial.params["lr"]) and params["outer_fold"] == 0


def test_pretrain_tracks_one_run_continued_on_resume(tmp_path):
    from bench.engine.pretrain import PretrainConfig, pretrain

    rng = np.random.default_rng(0)
    for c in range(3):
        d = tmp_path / "data" / "train" / f"class{c}"
        d.mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(d / f"{i}.png")
    settings = TrackerSettings("tensorboard", root=str(tmp_path / "tracking"))

    def cfg(max_steps: int) -> PretrainConfig:
        return PretrainConfig(epochs=2, batch_size=2, micro_batch=2, input_size=32, workers=0, max_steps=max_steps,
                              warmup_epochs=0, model_options={"scan_window": 32})

    pretrain(tmp_path / "data", tmp_path / "ckpt", cfg(1), progress=False, tracker=settings)
    last = pretrain(tmp_path / "data", tmp_path / "ckpt", cfg(2), progress=False, tracker=settings)  # resumes
    ea = _events(tmp_path / "tracking" / "tensorboard" / "pretrain" / "pixelmamba-6m")
    assert [e.step for e in ea.Scalars("train/loss")] == [1, 2]
    assert [e.step for e in ea.Scalars("train/lr")] == [1, 2]
    assert ea.Scalars("test/last_loss")[-1].value == pytest.approx(last["last_loss"], rel=1e-5)
    assert ea.Scalars("test/steps")[-1].value == 2
    params = json.loads(ea.Tensors("params/text_summary")[0].tensor_proto.string_val[0].decode())
    assert params["model"] == "pixelmamba-6m" and params["batch_size"] == 2
