"""Overlay honesty: a method file of the config overlay is merged over the shipped one key by key;
anything in the overlay that would be ignored (a typo of a key, a `.yml` file, a `method/` folder,
a YAML list) is an error naming it; `bench ls` shows which overlay files are in use."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest

from bench.cli import main
from bench.registry import list_methods


def cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def overlay(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "configs"
    (d / "methods").mkdir(parents=True)
    monkeypatch.setenv("BENCH_CONFIG", str(d))
    return d


def test_method_file_is_merged_over_the_shipped_one(overlay: Path) -> None:
    from bench.engine.config import method_train_config

    (overlay / "methods" / "mil.yaml").write_text("train:\n  lr: 1.0e-3\n")
    cfg = method_train_config(list_methods("abmil.resnet50")[0])
    # the overlay's lr, the shipped file's other options (not TrainConfig's whole bags and 2e-4)
    assert cfg["lr"] == 1e-3 and cfg["max_patches"] == 8192 and cfg["epochs"] == 20 and cfg["grad_accum"] == 8
    code, out, _ = cli("ls", "datasets")
    assert code == 0 and "methods/mil.yaml  (merged over the shipped one)" in out, out


def test_method_key_typo_is_an_error(overlay: Path) -> None:
    from bench.engine.config import OptionError, method_train_config

    (overlay / "methods" / "mil.yaml").write_text("trian:\n  lr: 1.0e-3\n")
    with pytest.raises(OptionError, match=r"mil.yaml: unknown key 'trian' \(did you mean 'train'\?\)"):
        method_train_config(list_methods("abmil.resnet50")[0])


@pytest.mark.parametrize("make, message", [
    (lambda d: (d / "methods" / "mil.yml").write_text("train: {lr: 1.0e-3}\n"),
     "methods/mil.yml: files in methods/ end in .yaml, so this one would be ignored. Fix: rename it to mil.yaml"),
    (lambda d: (d / "method").mkdir(),
     "the config overlay has no folder 'method' (did you mean 'methods'?)"),
])
def test_ignored_overlay_entries_are_errors(overlay: Path, make, message: str) -> None:
    make(overlay)
    code, out, err = cli("ls")
    assert code == 2 and message in err and "Traceback" not in err, err


def test_overlay_yaml_list_and_bad_protocol_named_at_load(overlay: Path) -> None:
    from bench.data.datasets import DatasetError, load_spec
    from bench.engine.config import OptionError, method_train_config

    (overlay / "methods" / "mil.yaml").write_text("- train\n- lr\n")
    with pytest.raises(OptionError, match=r"mil.yaml, line 1: the method config is a list"):
        method_train_config(list_methods("abmil.resnet50")[0])
    ds = overlay / "mine.yaml"
    ds.write_text("slides: s\nclinical: c.csv\nprotocol: Paper\n")
    with pytest.raises(DatasetError, match=r"`protocol` must be one of .*did you mean 'paper'"):
        load_spec(str(ds))


def test_missing_bench_config_is_one_line_even_for_help(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BENCH_CONFIG", str(tmp_path / "nope"))
    code, _, err = cli("--help")
    assert code == 2 and err.startswith("error: $BENCH_CONFIG=") and err.count("\n") == 1, err
