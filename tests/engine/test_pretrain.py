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


def test_checkpoint_layout_is_the_documented_one(tmp_path: Path) -> None:
    """docs/weights.md: `<out>/last.pt` = {format, arch, classes, step, epoch, config, model,
    optimizer, scheduler}, read with weights_only=True; `model` is the network's state dict."""
    from bench.engine.pretrain import CHECKPOINT_FORMAT

    pretrain(_imagefolder(tmp_path / "data"), tmp_path / "ck", _cfg(max_steps=1), progress=False)
    ck = torch.load(tmp_path / "ck" / "last.pt", weights_only=True)
    assert set(ck) == {"format", "arch", "classes", "step", "epoch", "config", "model", "optimizer", "scheduler"}
    assert ck["format"] == CHECKPOINT_FORMAT == "wsi-bench-pretrain/1" and ck["arch"] == "pixelmamba-6m"
    assert set(ck["model"]) == set(build_model("pixelmamba-6m", 3, **TINY).state_dict())


@pytest.mark.slow
def test_pretrain_21m_checkpoint_starts_a_slide_model(tmp_path: Path) -> None:
    cfg = _cfg(max_steps=1)
    cfg.model = "pixelmamba-21m"
    pretrain(_imagefolder(tmp_path / "data"), tmp_path / "ck", cfg, progress=False)
    model = build_model("pixelmamba-21m", 4, **TINY)
    report = load_init(model, tmp_path / "ck" / "last.pt")
    assert set(report.shape_mismatch) == {"head.weight", "head.bias"} and not report.unexpected
    prov = model.weights_provenance[-1]
    assert prov.part == "--init" and prov.n_keys == len(report.loaded) and len(prov.sha256) == 64


@pytest.mark.slow
def test_run_init_end_to_end_from_a_pretrain_checkpoint(tmp_path: Path) -> None:
    """`bench pretrain` on a tiny ImageFolder, then `bench run --init` of Pixel-Mamba-6M on a tiny
    demo cohort (3 regions of 64 px per slide): the units train from the checkpoint and their
    config records it (path and content hash)."""
    import json

    from bench import registry, runner
    from feature_cache.weights import file_sha256

    pretrain(_imagefolder(tmp_path / "data"), tmp_path / "ck", _cfg(max_steps=1), progress=False)
    ckpt = tmp_path / "ck" / "last.pt"
    spec = tmp_path / "pmtoy.yaml"
    spec.write_text(f"""generator: demo
generator_args: {{n_cases: 10, seed: 3}}
root: {tmp_path / 'cohort'}
slides: slides
slide_glob: "*.tiff"
clinical: clinical.csv
clinical_format: normalized
tasks: [staging]
allow_random_weights: true
model:
  end-to-end:
    regions: {{n: 3, size: 64, magnification: 5, voting: majority, seed: 0, min_tissue: 0.5}}
""")
    rep = runner.run([registry.get_method("pixelmamba-6m")], str(spec), folds=[0], results=tmp_path / "res",
                     cache=tmp_path / "cache", train_overrides={"epochs": 1}, model_overrides=TINY, progress=False,
                     init=ckpt)
    assert len(rep.ran) == 1 and not rep.failed, rep.failed
    unit = tmp_path / "res/runs/pmtoy/staging/pixelmamba-6m/fold0"
    cfg = json.loads((unit / "config.json").read_text())
    assert cfg["init"] == {"checkpoint": str(ckpt), "sha256": file_sha256(ckpt)[:16]}
    assert (unit / "metrics.json").is_file()
