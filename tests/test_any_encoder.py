"""Any aggregator over any encoder: a user's YAML declaration in the config overlay makes
``abmil.<name>`` extract and train on a small demo cohort with random weights (no Python written),
and the table marks the row; named method sets and globs resolve from the encoder registry."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("timm")

from bench import resources as R  # noqa: E402
from bench.registry import get_method, list_methods, resolve_methods  # noqa: E402

TINY_VIT = """\
label: TinyViT
architecture: ViT/16 1x32
params: 20K
pretraining: "Two-stage MIL; patch features: TinyViT (mine)"
dim: 32
builder:
  kind: timm
  arch: vit_tiny_patch16_224
  kwargs: {img_size: 64, embed_dim: 32, depth: 1, num_heads: 2, num_classes: 0}
output: mean
patch_size: 256
magnification: 20
input_size: 64
mean: [0.5, 0.5, 0.5]
std: [0.5, 0.5, 0.5]
source: "a test's own encoder"
"""


@pytest.fixture
def overlay(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "configs"
    (root / "encoders").mkdir(parents=True)
    (root / "datasets").mkdir()
    (root / "encoders" / "tinyvit.yaml").write_text(TINY_VIT)
    demo = (Path(str(R.config_path("datasets", "demo")))).read_text()
    (root / "datasets" / "tinydemo.yaml").write_text(
        demo.replace("root: demo", f"root: {tmp_path / 'demo'}") + "generator_args: {n_cases: 8, seed: 0}\n")
    monkeypatch.setenv(R.ENV, str(root))
    monkeypatch.setenv("BENCH_STATE_DIR", str(tmp_path / "state"))
    return root


def test_method_sets_and_globs() -> None:
    paper = resolve_methods("all")
    assert [m.name for m in paper] == [m.name for m in resolve_methods("paper")] == [m.name for m in list_methods()]
    assert len(paper) == 27  # Table 2's grid: 6 aggregators x 3 encoders + 3 hierarchical + 6 end-to-end
    assert [m.name for m in resolve_methods("abmil.*")] == ["abmil.resnet50", "abmil.conch", "abmil.gigapath"]
    v2 = resolve_methods("*.virchow2")
    assert [m.name for m in v2][:3] == ["meanmil.virchow2", "maxmil.virchow2", "abmil.virchow2"]
    assert get_method("abmil.uni_v2").feature_dim == 1536 and get_method("transmil.virchow").feature_dim == 2560
    every = resolve_methods("all-encoders")
    assert {"abmil.uni_v2", "mambamil.hibou-l", "pixelmamba-6m"} <= {m.name for m in every} and len(every) > 90
    with pytest.raises(KeyError, match="Did you mean abmil.uni_v2"):
        get_method("abmil.uni_v3")


def test_user_declared_encoder_runs_abmil_on_the_demo(overlay: Path, tmp_path: Path, capsys) -> None:
    from bench.cli import main
    from bench.engine.runner import run

    spec = get_method("abmil.tinyvit")
    assert spec.feature_dim == 32 and spec.encoder == "tinyvit"
    report = run([spec], "tinydemo", folds=[0], tasks=["staging"], results=tmp_path / "res",
                 cache=tmp_path / "cache", train_overrides={"epochs": 1}, progress=False)
    assert not report.failed and len(report.ran) == 1, report.failed
    assert main(["table", "--dataset", "tinydemo", "--results", str(tmp_path / "res")]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if "ABMIL" in line)
    assert "\u2020" in row, out  # random encoder weights are marked
    assert "TinyViT (mine)" in out  # the row group is the encoder's pretraining line
