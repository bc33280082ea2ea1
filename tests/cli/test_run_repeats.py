"""The command a user types: ``bench run --methods abmil.resnet50 --dataset demo --repeats 3 --jobs 2``
writes 30 units (2 tasks x 5 folds x 3 repeats), and the table's cells equal numpy over the records'
own metrics.json files (mean over repeats within a fold, then mean ± population std over folds)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from fake_inputs import run_bench


@pytest.mark.slow
def test_demo_with_three_repeats_on_two_jobs(tmp_path):
    env = {**os.environ, "BENCH_DATA": str(tmp_path / "data"), "HF_HUB_OFFLINE": "1"}
    results = tmp_path / "results"
    out = run_bench("run", "--methods", "abmil.resnet50", "--dataset", "demo", "--repeats", "3", "--jobs", "2",
                    "--results", results, "--cache", tmp_path / "cache", "--tracker", "none", "-q", env=env,
                    timeout=3000)
    assert "30 unit(s) run" in out.stdout, out.stdout + out.stderr
    runs = results / "runs" / "demo"
    assert len(list(runs.glob("*/abmil.resnet50/fold*/metrics.json"))) == 30
    table = run_bench("table", "--dataset", "demo", "--results", results, "--no-figures", "--n-perm", "20",
                      "--repeats-detail", env=env).stdout
    for task, metric in (("staging", "macro_f1"), ("survival", "c_index")):
        values = np.array([[json.loads((runs / task / "abmil.resnet50" / d / "metrics.json").read_text())
                            ["metrics"][metric] for d in (f"fold{k}", f"fold{k}-repeat1", f"fold{k}-repeat2")]
                           for k in range(5)], dtype=float)
        fold_means = np.nanmean(values, axis=1)
        cell = f"{np.nanmean(fold_means):.4f} ± {np.nanstd(fold_means):.4f}"
        assert cell in table, (cell, table)
    assert "Each fold's value is the mean over 3 training seeds" in table
    assert (results / "demo" / "variance.csv").is_file()
