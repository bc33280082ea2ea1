"""`bench weights` on files that cannot load: a truncated download, a pickle payload, a file of
tensors with the wrong shape. Each is named with why, and the command exits non-zero; the check
without `--check` imports no deep-learning library, `--check` loads each file into its model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


class _Payload:
    def __reduce__(self):
        return (os.system, ("true",))


def _bench_weights(tmp_path: Path, *extra: str, **env: str) -> tuple[int, dict, list[str], str]:
    code = ("import sys, json\nfrom bench.cli import main\n"
            f"rc = main(['weights', '--methods', 'abmil.resnet50', *{list(extra)!r}])\n"
            "heavy = sorted(m for m in ('torch', 'timm', 'open_clip', 'torchvision') if m in sys.modules)\n"
            "print(json.dumps({'rc': rc, 'heavy': heavy}))\n")
    full = {k: v for k, v in os.environ.items() if not k.startswith(("BENCH_WEIGHTS_", "HF_"))}
    full |= {"PYTHONPATH": str(REPO), "BENCH_STATE_DIR": str(tmp_path / "state"), "HF_HOME": str(tmp_path / "hf"),
             "TORCH_HOME": str(tmp_path / "torch"), "HF_HUB_OFFLINE": "1"} | env
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full, cwd=tmp_path,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    tail = json.loads(lines[-1])
    return tail["rc"], tail, lines[:-1], proc.stderr


def _files(root: Path, sd: dict) -> dict[str, Path]:
    """Files written by torch.save as a download would hold them: whole, cut in half, with a
    pickle payload beside the tensors, and with one tensor of another shape."""
    import torch

    good = root / "resnet50-0676ba61.pth"
    torch.save(sd, good)
    truncated = root / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    payload = root / "payload.pth"
    torch.save({**sd, "extra": _Payload()}, payload)
    shape = root / "wrong_shape.pth"
    torch.save({**sd, "layer1.0.conv1.weight": torch.zeros(64, 64, 3, 3)}, shape)
    return {"good": good, "truncated": truncated, "payload": payload, "shape": shape}


@pytest.fixture(scope="module")
def small_files(tmp_path_factory) -> dict[str, Path]:
    import torch

    return _files(tmp_path_factory.mktemp("small"), {"conv1.weight": torch.zeros(64, 3, 7, 7),
                                                     "layer1.0.conv1.weight": torch.zeros(64, 64, 1, 1)})


@pytest.fixture(scope="module")
def resnet50_files(tmp_path_factory) -> dict[str, Path]:
    import torchvision

    # the torchvision layout the ImageNet file has
    return _files(tmp_path_factory.mktemp("weights"), torchvision.models.resnet50().state_dict())


@pytest.mark.parametrize("name, why", [
    ("truncated", "a zip archive whose end is missing: the file is truncated"),
    ("payload", "a pickle payload: it would import posix.system, which torch.load(weights_only=True) refuses"),
])
def test_unloadable_file_is_named_without_torch(tmp_path: Path, small_files, name: str, why: str) -> None:
    path = small_files[name]
    rc, tail, out, err = _bench_weights(tmp_path, BENCH_WEIGHTS_RESNET50=str(path))
    text = "\n".join(out)
    assert rc == 1 and tail["heavy"] == [], (tail, text)
    assert f"CANNOT LOAD {path} ($BENCH_WEIGHTS_RESNET50): {why}" in text, text
    assert "found " + str(path) not in text
    assert f"error: 1 file(s) found cannot load: {path}: " in err, err


@pytest.mark.slow  # ~60 s: torch, ResNet-50 built and loaded twice
def test_wrong_shape_is_found_by_check(tmp_path: Path, resnet50_files) -> None:
    path = resnet50_files["shape"]
    rc, tail, out, _ = _bench_weights(tmp_path, BENCH_WEIGHTS_RESNET50=str(path))
    assert rc == 0 and tail["heavy"] == []  # a well-formed file: shapes need the model (--check)
    rc, _, out, err = _bench_weights(tmp_path, "--check", BENCH_WEIGHTS_RESNET50=str(path))
    text = "\n".join(out)
    assert rc == 1 and f"CANNOT LOAD {path} ($BENCH_WEIGHTS_RESNET50): loading it into abmil.resnet50 failed" in text
    assert "layer1.0.conv1.weight" in text and "[64, 64, 3, 3]" in text.replace("(", "[").replace(")", "]"), text
    rc, _, out, _ = _bench_weights(tmp_path, "--check", BENCH_WEIGHTS_RESNET50=str(resnet50_files["good"]))
    assert rc == 0 and "1 of 1 published parts found and loaded" in "\n".join(out), out


def test_scan_reads_legacy_pickles_and_storages(tmp_path: Path) -> None:
    """torch's legacy (non-zip) format writes five pickles one after the other: a payload in the
    fourth is found; a zip archive missing a storage its data.pkl names is incomplete."""
    import zipfile

    import torch

    from feature_cache.checkpoint_scan import scan_checkpoint

    sd = {"a": torch.zeros(3), "b": torch.ones(2)}
    legacy = tmp_path / "legacy.pth"
    torch.save(sd, legacy, _use_new_zipfile_serialization=False)
    assert scan_checkpoint(legacy) is None
    torch.save({**sd, "x": _Payload()}, legacy, _use_new_zipfile_serialization=False)
    assert scan_checkpoint(legacy).startswith("a pickle payload: it would import posix.system")
    whole, cut = tmp_path / "whole.pth", tmp_path / "cut.pth"
    torch.save(sd, whole)
    with zipfile.ZipFile(whole) as src, zipfile.ZipFile(cut, "w") as dst:
        for n in src.namelist():
            if not n.endswith("data/1"):
                dst.writestr(n, src.read(n))
    assert scan_checkpoint(whole) is None
    assert scan_checkpoint(cut).startswith("1 tensor storage(s) named in data.pkl are missing from the archive")
