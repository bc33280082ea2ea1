"""Inputs checked where they enter: a non-finite value in a pre-extracted feature file is refused
when the file is checked, naming the file and its rows, so no unit scores that case at a
meaningless risk; `doctor` runs the same checks as `run` and does not call such a cohort ready."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

import tcga_cohort as T
from bench.data.datasets import load_cohort


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return T.build(tmp_path_factory.mktemp("tcga"))


def _release(root: Path, dim: int = 1024, name=T.slide_name) -> Path:
    rng = np.random.default_rng(0)
    folder = root / "TCGA-LUAD"
    for i in range(12):
        p = folder / f"{name(i)}.h5"
        p.parent.mkdir(parents=True, exist_ok=True)
        with h5py.File(p, "w") as f:  # the TRIDENT layout: features (N, D), level-0 coords (N, 2)
            f["features"] = rng.normal(size=(6, dim)).astype(np.float32) + T.LABELS[i][0]
            f["coords"] = np.array([[512 * k, 0] for k in range(6)], np.int64)
    return folder


def _yaml(tmp_path: Path, data: Path, release: Path) -> Path:
    d = {"path": str(release), "encoder": "resnet50", "patch_size": 256, "magnification": 20}
    return T.write_yaml(tmp_path / "feat.yaml", data, "gdc", slides="no-slides-here",
                        features="{resnet50: " + json.dumps(d) + "}")


def _doctor(yaml: Path, tmp_path: Path) -> tuple[bool, str]:
    import contextlib
    import io

    from bench.cli.doctor import check_dataset

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        ok = check_dataset(str(yaml), results=str(tmp_path / "results"), cache=str(tmp_path / "cache"))
    return ok, buf.getvalue()


def test_non_finite_release_file_is_refused_naming_file_and_rows(tmp_path: Path, data: Path) -> None:
    from bench.engine.inputs import make_inputs
    from bench.registry import list_methods

    rel = _release(tmp_path / "trident")
    bad = rel / f"{T.slide_name(3)}.h5"
    with h5py.File(bad, "r+") as f:
        x = f["features"][...]
        x[2, 7] = np.inf
        f["features"][...] = x
    y = _yaml(tmp_path, data, rel)
    fi = make_inputs(list_methods("meanmil.resnet50")[0], load_cohort(str(y)), tmp_path / "cache", {}, progress=False)
    fi.ensure()
    assert fi.missing == {T.slide_name(3)}  # left out at the check, never read into a bag
    assert not fi.has(T.case_id(3)) and fi.has(T.case_id(4))
    ok, out = _doctor(y, tmp_path)
    assert not ok and f"{bad} (slide '{T.slide_name(3)}'): features contain NaN/inf in row 2 of 6" in out, out
    assert f"{T.case_id(3)}" in out.split("will drop:")[1]


@pytest.mark.parametrize("damage, message", [
    (lambda f: (f.__delitem__("features"), f.__setitem__("features", np.zeros((6, 512), np.float32))),
     "features have shape (6, 512), expected (N, 1024)"),
    (lambda f: f.__delitem__("coords"), "no 'features' and 'coords' datasets"),
    (lambda f: f["coords"].attrs.__setitem__("encoder", "conch_v1"), "made with encoder 'conch_v1'"),
])
def test_doctor_runs_the_checks_run_does(tmp_path: Path, data: Path, damage, message: str) -> None:
    rel = _release(tmp_path / "trident")
    with h5py.File(rel / f"{T.slide_name(5)}.h5", "r+") as f:
        damage(f)
    ok, out = _doctor(_yaml(tmp_path, data, rel), tmp_path)
    assert not ok and message in out and "11 of 12 slides have a valid file" in out, out


def test_non_finite_logits_are_never_scored() -> None:
    """An inf logit saturates the survival sigmoid into a finite risk (-0.0, S = 0); it is refused."""
    import torch

    from bench.engine.train import Sample, TrainingError, predict

    class Saturated(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, D) -> (1, 4)
            return x.sum() * torch.ones(1, 4) + self.w

    ok = Sample("TCGA-FA-0001", lambda: torch.ones(3, 8), {"time": 10.0, "event": 1.0})
    assert len(predict(Saturated(), "survival", [ok])) == 1
    bad = Sample("TCGA-FA-0002", lambda: torch.full((3, 8), float("inf")), {"time": 10.0, "event": 1.0})
    with pytest.raises(TrainingError, match="NaN/inf logits for case TCGA-FA-0002"):
        predict(Saturated(), "survival", [ok, bad])


def test_weights_with_nan_are_refused_naming_the_tensor(tmp_path: Path) -> None:
    """Before, `extract` reported every slide extracted (all-NaN features) and `run` blamed the cache."""
    import torch
    import torchvision

    from feature_cache.encoders import get_encoder
    from feature_cache.weights import WeightsError

    sd = torchvision.models.resnet50().state_dict()  # the torchvision layout ImageNet weights ship in
    sd["layer2.1.conv2.weight"][0, 0, 0, 0] = float("nan")
    path = tmp_path / "resnet50-nan.pth"
    torch.save(sd, path)
    with pytest.raises(WeightsError, match=r"resnet50-nan.pth: 1 tensor\(s\) of .* hold NaN/inf \(.*layer2.1.conv2"):
        get_encoder("resnet50", weights=path)


def _barcode(i: int) -> str:
    return T.slide_name(i).split(".")[0]  # TCGA-05-42NN-01Z-00-DX1, without the GDC UUID


def test_release_named_without_the_uuid_is_matched_by_barcode(tmp_path: Path, data: Path) -> None:
    """Slides named the GDC way (<barcode>.<UUID>.svs), the release by barcode alone. Before, doctor
    listed every slide as having no file, and every unit then failed."""
    from bench.engine.inputs import make_inputs
    from bench.registry import list_methods

    def yaml(rel: Path) -> Path:
        return T.write_yaml(tmp_path / "feat.yaml", data, "gdc", features="{resnet50: " + json.dumps(
            {"path": str(rel), "encoder": "resnet50", "patch_size": 256, "magnification": 20}) + "}")

    rel = _release(tmp_path / "trident", name=_barcode)
    y = yaml(rel)
    ok, out = _doctor(y, tmp_path)
    assert ok and "12 of 12 slides have a valid file" in out, out
    assert (f"{rel}: 12 slide(s) have no feature file of their exact name; each is matched to the one file "
            f"named by the same slide barcode (e.g. {_barcode(0)}.h5 for slide {T.slide_name(0)})") in out, out
    fi = make_inputs(list_methods("meanmil.resnet50")[0], load_cohort(str(y)), tmp_path / "cache", {}, progress=False)
    fi.ensure()
    assert not fi.missing and all(fi.has(T.case_id(i)) for i in range(12))
    with h5py.File(rel / f"{_barcode(3)}.h5", "r") as f:  # the right file, not another case's
        assert np.array_equal(fi.bags.get(T.case_id(3)).numpy() if hasattr(fi.bags.get(T.case_id(3)), "numpy")
                              else fi.bags.get(T.case_id(3)), f["features"][...])
    # two files for one barcode cannot be told apart: named, with the fix
    rel = _release(tmp_path / "trident2", name=_barcode)
    (rel / f"{_barcode(3)}.A.h5").write_bytes((rel / f"{_barcode(3)}.h5").read_bytes())
    ok, out = _doctor(yaml(rel), tmp_path)
    assert not ok and (f"no pre-extracted feature file named for slide '{T.slide_name(3)}'" in out
                       and f"Fix: rename the right file to {T.slide_name(3)}.h5" in out), out


def test_unit_without_cases_fails_in_one_line(tmp_path: Path, data: Path, capsys) -> None:
    """Release files named for other slides: every case is left out, named; the units fail with one
    line each instead of `KeyError: 'stage'` from an empty training set."""
    from bench.cli import main

    rel = _release(tmp_path / "trident", name=lambda i: f"TCGA-99-99{i:02d}-01Z-00-DX1")
    y = _yaml(tmp_path, data, rel).read_text().replace("slides: no-slides-here", "slides: slides")
    (tmp_path / "feat.yaml").write_text(y)
    code = main(["run", "--dataset", str(tmp_path / "feat.yaml"), "--methods", "meanmil.resnet50", "--tasks",
                 "staging", "--folds", "0", "--results", str(tmp_path / "results"), "--cache", str(tmp_path / "c"),
                 "-q"])
    out = capsys.readouterr()
    text = out.out + out.err
    assert code == 1 and "KeyError" not in text, text
    assert "FAILED feat/staging/meanmil.resnet50/fold0: ValueError: 12 of 12 cases have no input" in text, text
