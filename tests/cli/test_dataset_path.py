"""Every command that takes ``--dataset`` treats a dataset YAML given by path as the same dataset
given by name: the same output, the same results location (README: a dataset can be given as the path
of its YAML file)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

from bench.cli import main
from fake_inputs import write_toy_cohort

COMMANDS = {
    "table": ["table", "--no-figures"],
    "ablate": ["ablate", "alpha", "--table-only"],
    "tune": ["tune", "--method", "meanmil.resnet50", "--trials", "1", "--folds", "0", "--task", "staging"],
    "run": ["run", "--methods", "meanmil.resnet50", "--folds", "0", "--tasks", "staging", "--jobs", "1"],
    "extract": ["extract", "--encoders", "resnet50", "--skip-errors"],
    "splits": ["splits"],
    "doctor": ["doctor"],
}


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """A toy cohort whose YAML sits outside the configs (by path) and in an overlay (by name)."""
    root = tmp_path_factory.mktemp("toy")
    spec, _ = write_toy_cohort(root, 8)
    overlay = root / "overlay"
    (overlay / "datasets").mkdir(parents=True)
    shutil.copy(spec, overlay / "datasets" / "toy.yaml")
    return root, spec, overlay


def _finished_units(results) -> None:
    from bench.results.store import ResultsStore, Unit
    from record_factory import make_record, staging_predictions

    store = ResultsStore(results)
    for k, v in enumerate([0.5, 0.6, 0.7, 0.4, 0.55]):
        u = Unit("toy", "staging", "meanmil.resnet50", k)
        store.prepare(u, {}, "h")
        store.finish(u, staging_predictions(), pd.DataFrame(),
                     make_record(dataset="toy", task="staging", method="meanmil.resnet50", fold=k,
                                 metrics={"macro_f1": v}))


@pytest.mark.parametrize("command", list(COMMANDS))
def test_dataset_by_path_is_the_dataset_by_name(command, toy, monkeypatch, capsys):
    root, spec, overlay = toy
    monkeypatch.setenv("BENCH_CONFIG", str(overlay))
    seen = {}
    for how, dataset in (("name", "toy"), ("path", str(spec))):
        results, cache = root / command / how / "results", root / command / how / "cache"
        if command == "table":
            _finished_units(results)
        rc = main([*COMMANDS[command], "--dataset", dataset, "--results", str(results), "--cache", str(cache)])
        out = capsys.readouterr()
        text = (out.out + out.err).replace(str(root / command / how), "<root>").replace(str(spec), "toy")
        seen[how] = (rc, re.sub(r"\d+(\.\d+)? ?s\b", "<seconds>", text))
    assert "unknown dataset" not in seen["path"][1] and "no finished units" not in seen["path"][1], seen["path"][1]
    assert seen["path"] == seen["name"]
    if command == "table":
        assert seen["path"][0] == 0 and "ABMIL" in seen["path"][1] and "0.5500 ± 0.1000" in seen["path"][1], seen["path"][1]


@pytest.mark.parametrize("name", ["luad", "blca", "brca"])
def test_missing_data_message_names_the_yaml_to_edit(name, tmp_path, monkeypatch):
    """The download help says which clinical settings to change "in" the dataset's YAML: it names
    that file (the shipped one, or the copy given by path), never "this file"."""
    from bench.data.datasets import DatasetError, load_cohort, load_spec

    monkeypatch.setenv("BENCH_DATA", str(tmp_path / "data"))
    shipped = load_spec(name).config_file
    assert shipped.endswith(f"datasets/{name}.yaml") and Path(shipped).is_file()
    copy = tmp_path / f"my{name}.yaml"
    shutil.copy(shipped, copy)
    for dataset, file in ((name, shipped), (str(copy), str(copy))):
        with pytest.raises(DatasetError) as exc:
            load_cohort(dataset)
        msg = str(exc.value)
        assert f"clinical_format: cbioportal in {file};" in msg and "this file" not in msg, msg
