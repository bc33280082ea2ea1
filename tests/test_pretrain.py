"""`bench pretrain` on a generated ImageFolder (1 step, resumed for a second), and its checkpoint
loading into a slide model with the ImageNet head dropped (`bench run --init`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bench.engine.pretrain import PretrainConfig, load_init, pretrain
from bench.registry import build_model

TINY = {"scan_window": 32}


def _imagefolder(root: Path, classes: int = 3, per_class: int = 2) -> Path:
    rng = np.random.default_rng(0)
    for c in range(classes):
        d = root / "train" / f"class{c}"
        d.mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(d / f"{i}.png")
    return root


def _cfg(max_steps: int) -> PretrainConfig:
    return PretrainConfig(epochs=2, batch_size=2, micro_batch=2, input_size=32, workers=0, max_steps=max_steps,
                          warmup_epochs=0, model_options=TINY)


def test_pretrain_resumes_and_loads_into_slide_model(tmp_path: Path) -> None:
    data = _imagefolder(tmp_path / "data")
    out = tmp_path / "ckpt"
    first = pretrain(data, out, _cfg(max_steps=1), progress=False)
    assert first["steps"] == 1 and np.isfinite(first["last_loss"]) and first["classes"] == 3
    ck = torch.load(out / "last.pt", weights_only=True)
    assert ck["step"] == 1 and ck["classes"] == ["class0", "class1", "class2"]
    again = pretrain(data, out, _cfg(max_steps=2), progress=False)  # resumes at step 1, does one more
    assert again["steps"] == 2
    ck3 = torch.load(out / "last.pt", weights_only=True)
    assert ck3["step"] == 2 and not torch.equal(ck3["model"]["cls_token"], ck["model"]["cls_token"])

    model = build_model("pixelmamba-6m", 4, **TINY)  # a staging model: 4 outputs, not 3
    head_before = model.head.weight.detach().clone()
    report = load_init(model, out / "last.pt")
    assert set(report.shape_mismatch) == {"head.weight", "head.bias"}
    assert not report.missing or set(report.missing) == {"head.weight", "head.bias"}
    assert len(report.loaded) == len(ck3["model"]) - 2 and not report.unexpected
    for name, value in model.state_dict().items():
        if name.startswith("head."):
            continue
        torch.testing.assert_close(value, ck3["model"][name], rtol=0, atol=0, msg=name)
    assert torch.equal(model.head.weight, head_before)  # the head keeps its fresh initialisation
    assert "head.weight [3, 384] vs model [4, 384]" in report.summary()


def test_load_init_refuses_foreign_and_unsafe_files(tmp_path: Path) -> None:
    model = build_model("pixelmamba-6m", 4, **TINY)
    torch.save({"model": {"fc.weight": torch.zeros(2, 2)}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="no tensor of .*other.pt fits the model"):
        load_init(model, tmp_path / "other.pt")
    torch.save({"model": model.state_dict(), "note": Path("x")}, tmp_path / "pickled.pt")  # not a weight
    with pytest.raises(ValueError, match="weights_only=True"):
        load_init(model, tmp_path / "pickled.pt")
    with pytest.raises(FileNotFoundError, match="missing.pt does not exist"):
        load_init(model, tmp_path / "missing.pt")


def test_pretrain_rejects_a_non_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="ImageFolder"):
        pretrain(tmp_path / "nope", tmp_path / "out", _cfg(1), progress=False)
