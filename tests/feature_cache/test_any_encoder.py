"""Any aggregator over any encoder: a user's YAML declaration in the config overlay makes
``abmil.<name>`` extract and train on a small demo cohort with random weights (no Python written),
and the table marks the row; named method sets and globs resolve from the encoder registry."""

from __future__ import annotations

import logging
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
        demo.replace("root: demo", f"root: {tmp_path / 'demo'}") + "generator_args: {n_cases: 16, seed: 0}\n")
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


def _trident_release(folder: Path, slides: list[str], dim: int = 1536) -> None:
    """One .h5 per slide as TRIDENT writes them (features_<encoder>/<slide>.h5: features (N, D),
    coords (N, 2) with patch attributes), from an encoder no declaration names."""
    import h5py
    import numpy as np

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for sid in slides:
        with h5py.File(folder / f"{sid}.h5", "w") as f:
            f["features"] = rng.normal(size=(5, dim)).astype(np.float32)
            c = f.create_dataset("coords", data=np.array([[256 * k, 0] for k in range(5)], np.int64))
            c.attrs.update({"patch_size": 256, "target_magnification": 20, "patch_size_level0": 256})
            f["features"].attrs["encoder"] = "myfm_v1"


def test_release_of_an_undeclared_encoder_runs_abmil_and_pooled_baselines(overlay: Path, tmp_path: Path,
                                                                          capsys, caplog) -> None:
    from bench.cli import main
    from bench.data.datasets import load_cohort
    from bench.data.features import register_releases
    from bench.engine.runner import run

    cohort = load_cohort("tinydemo")  # generates the small demo cohort
    release = tmp_path / "trident" / "20x_256px_0px_overlap" / "features_myfm_v1"
    _trident_release(release, sorted(cohort.table["slide_id"]) + ["TCGA-ZZ-0000-01Z-00-DX1"])  # one stray
    ds = overlay / "datasets" / "tinydemo.yaml"
    ds.write_text(ds.read_text() + f"features:\n  myfm: {{path: {release}, encoder: myfm_v1, patch_size: 256, "
                                   "magnification: 20}\n")
    from bench.data.datasets import load_spec

    register_releases(load_spec("tinydemo"))
    assert get_method("abmil.myfm").feature_dim == 1536 and get_method("linear.myfm").feature_dim == 1536
    common = dict(folds=[0], results=tmp_path / "res", cache=tmp_path / "cache", train_overrides={"epochs": 1},
                  progress=False)
    methods = [get_method(m) for m in ("abmil.myfm", "linear.myfm", "coxnet.myfm")]
    with caplog.at_level(logging.WARNING, logger="bench"):
        report = run(methods, "tinydemo", tasks=["staging", "survival"], **common)
    assert not report.failed, report.failed
    # linear is defined for staging, coxnet for survival: 2 + 1 + 1 units
    assert sorted((u.task, u.method) for u in report.ran) == [
        ("staging", "abmil.myfm"), ("staging", "linear.myfm"), ("survival", "abmil.myfm"), ("survival", "coxnet.myfm")]
    assert f"not in the cohort tinydemo (not used): {release / 'TCGA-ZZ-0000-01Z-00-DX1.h5'}" in caplog.text
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").rglob("*.h5"))  # read in place
    assert main(["table", "--dataset", "tinydemo", "--results", str(tmp_path / "res")]) == 0
    out = capsys.readouterr().out
    assert "features from a release: pre-extracted myfm_v1 features" in out, out
    rows = [line for line in out.splitlines() if "ABMIL" in line or "Linear probe" in line or "CoxNet" in line]
    assert len(rows) == 3 and all("\u2020" not in r for r in rows), out  # a release is not random weights


def test_release_mismatches_are_refused_naming_the_file(overlay: Path, tmp_path: Path) -> None:
    import h5py
    import numpy as np

    from bench.data.datasets import DatasetError, load_cohort, load_spec
    from bench.data.features import pre_extracted

    cohort = load_cohort("tinydemo")
    slides = sorted(cohort.table["slide_id"])
    release = tmp_path / "rel"
    _trident_release(release, slides)
    with h5py.File(release / f"{slides[1]}.h5", "r+") as f:
        f["features"][0, 0] = np.nan
    ds = overlay / "datasets" / "tinydemo.yaml"
    base = ds.read_text()
    ds.write_text(base + f"features:\n  myfm: {{path: {release}, encoder: myfm_v1, patch_size: 256, "
                         "magnification: 20, dim: 1024}\n")
    with pytest.raises(DatasetError, match=r"dim 1024 declared, but .*\.h5 has 1536-d features"):
        pre_extracted(load_spec("tinydemo"), "myfm")
    ds.write_text(base + f"features:\n  myfm: {{path: {release}, encoder: other_v2, patch_size: 224, "
                         "magnification: 20}\n")
    rel = pre_extracted(load_spec("tinydemo"), "myfm")
    report = rel.extract({s: None for s in slides})
    assert f"{slides[1]}.h5" in report.failed[slides[1]] and "NaN" in report.failed[slides[1]]
    assert "made with encoder 'myfm_v1', the dataset declares 'other_v2'" in report.failed[slides[0]]
