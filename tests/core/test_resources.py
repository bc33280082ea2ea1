"""The config resolver: shipped YAML read as package data, a user overlay that wins over it."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from bench import resources as R
from bench.ablations import get_ablation, list_ablations
from bench.data.datasets import DatasetError, list_datasets, load_spec

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def no_overlay(monkeypatch, tmp_path):
    """Tests start without a user overlay: no $BENCH_CONFIG and a cwd without ./configs."""
    monkeypatch.delenv(R.ENV, raising=False)
    monkeypatch.chdir(tmp_path)


def test_shipped_configs_are_listed_per_kind():
    assert {"demo", "blca", "luad", "brca", "camelyon16"} <= set(R.list_configs("datasets"))
    assert {"alpha", "scan-window", "magnification", "token-scale", "end-to-end"} <= set(R.list_configs("ablations"))
    assert {"mil", "end_to_end", "hierarchical"} <= set(R.list_configs("methods")) & set(R.list_configs("tuning"))
    path = R.config_path("datasets", "demo")
    assert path.is_file() and Path(path).parts[-3:] == ("configs", "datasets", "demo.yaml")
    assert not R.config_path("datasets", "no-such-cohort").is_file()
    with pytest.raises(R.ConfigError, match="unknown config kind 'dataset'; known: datasets"):
        R.list_configs("dataset")


def _write(root: Path, kind: str, name: str, text: str) -> Path:
    (root / kind).mkdir(parents=True, exist_ok=True)
    p = root / kind / f"{name}.yaml"
    p.write_text(text)
    return p


def test_bench_config_overlay_wins_and_adds(monkeypatch, tmp_path):
    overlay = tmp_path / "mine"
    demo = load_spec("demo")
    _write(overlay, "datasets", "demo", f"description: my demo\ntasks: [staging]\nroot: {demo.root}\n")
    _write(overlay, "datasets", "mycohort", "description: my own cohort\ntasks: [survival]\n")
    alpha = get_ablation("alpha")
    _write(overlay, "ablations", "alpha", alpha.path.read_text().replace(alpha.description, "my alpha"))
    monkeypatch.setenv(R.ENV, str(overlay))
    assert "mycohort" in list_datasets() and "blca" in list_datasets()  # added, shipped ones kept
    assert load_spec("demo").description == "my demo" and load_spec("demo").tasks == ["staging"]
    assert load_spec("mycohort").tasks == ["survival"]
    assert get_ablation("alpha").description == "my alpha"
    assert sorted(a.name for a in list_ablations()) == R.list_configs("ablations")
    assert load_spec("blca").description != ""  # a name the overlay lacks falls through to the shipped file


def test_overlay_method_defaults_reach_the_runner(monkeypatch, tmp_path):
    from bench.engine.runner import method_train_config
    from bench.registry import get_method

    spec = get_method("abmil.resnet50")
    shipped = method_train_config(spec)
    _write(tmp_path / "o", "methods", spec.config, "train:\n  epochs: 3\n  lr: 0.123\n")
    monkeypatch.setenv(R.ENV, str(tmp_path / "o"))
    mine = method_train_config(spec)
    assert (mine["epochs"], mine["lr"]) == (3, 0.123) and shipped["lr"] != 0.123


def test_dot_configs_is_the_default_overlay(tmp_path):
    _write(tmp_path / "configs", "datasets", "local", "tasks: [staging]\n")  # cwd is tmp_path
    assert R.overlay_dir() == Path("configs")
    assert "local" in list_datasets() and load_spec("local").tasks == ["staging"]


def test_missing_overlay_directory_is_an_error(monkeypatch, tmp_path):
    monkeypatch.setenv(R.ENV, str(tmp_path / "nope"))
    with pytest.raises(R.ConfigError, match=r"\$BENCH_CONFIG=.*nope is not a directory"):
        list_datasets()
    monkeypatch.delenv(R.ENV)
    with pytest.raises(DatasetError, match="unknown dataset 'nope'"):
        load_spec("nope")


def test_configs_are_read_only_through_the_resolver():
    """No module but bench/resources.py builds a path into bench/configs (a wheel and the overlay
    would miss it)."""
    files = subprocess.run(["git", "ls-files", "bench/*.py", "bench/**/*.py"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    bad = []
    for f in files:
        if f == "bench/resources.py":
            continue
        text = (ROOT / f).read_text(encoding="utf-8")
        if re.search(r"CONFIG_DIR|/\s*[\"']configs[\"']|parents\[\d\]\s*/\s*[\"']configs", text):
            bad.append(f)
    assert not bad, f"read configs through bench.resources.config_path/list_configs: {bad}"


def test_ls_marks_the_overlays_datasets(monkeypatch, tmp_path, capsys):
    from bench.cli import main

    _write(tmp_path / "o", "datasets", "mycohort", "description: mine\ntasks: [staging]\n")
    monkeypatch.setenv(R.ENV, str(tmp_path / "o"))
    assert main(["ls", "datasets"]) == 0
    out = capsys.readouterr().out
    assert f"(config overlay: {tmp_path / 'o'})" in out
    mine = [x for x in out.splitlines() if x.split()[:1] == ["mycohort"]]
    assert mine and mine[0].endswith("[overlay]") and "demo" in out and out.count("[overlay]") == 1
