"""`bench heatmap` end to end on a generated demo cohort (real subprocesses, real slides, the real
feature cache), and the occlusion map against the demo's known tumour region."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from fake_inputs import run_bench, write_demo_spec



def bench(*args, **kw):
    return run_bench(*args, timeout=1800, **kw)  # a run plus occlusion over every test case



@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("hm")
    spec = write_demo_spec(root, n_cases=16, name="hm", extra="""train:
  two-stage: {feature_norm: zscore}
  end-to-end: {epochs: 1}
inputs:
  end-to-end: {magnification: 0.625}
model:
  pixelmamba-*: {scan_window: 64}
""")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "BENCH_CACHE": str(root / "cache"), "BENCH_RESULTS": str(root / "res"),
           "BENCH_JOBS": "1"}
    return spec, env, root


@pytest.mark.slow  # ResNet-50 extraction of 16 slides and two trainings (~4 min on 2 cores)
def test_heatmap_cli_two_stage_and_end_to_end(demo):
    from bench.data.demo import demo_truth
    from bench.report.heatmap_files import read_geojson_tiles
    from feature_cache import open_slide

    spec, env, root = demo
    for m in ("abmil.resnet50", "pixelmamba-6m"):
        bench("run", "--methods", m, "--dataset", spec, "--tasks", "staging", "--folds", "0", "--set", "epochs=2", "-q",
              env=env)
        out = root / m
        p = bench("heatmap", "--method", m, "--dataset", spec, "--task", "staging", "--out", out, env=env)
        h5s = sorted(out.glob("*.h5"))
        assert h5s, p.stdout + p.stderr
        for h5 in h5s:
            sid = h5.stem
            import h5py

            with h5py.File(h5, "r") as f:
                coords, side = f["coords"][:], int(f.attrs["patch_size_level0"])
                assert set(f["scores"]) >= ({"occlusion", "gradxinput", "regioncls"} if m == "pixelmamba-6m"
                                            else {"occlusion", "family"})
            polys, meas = read_geojson_tiles(out / f"{sid}.geojson")
            assert [p.bounds for p in polys] == [(x, y, x + side, y + side) for x, y in coords.tolist()]
            assert len(meas) == len(coords) and "occlusion" in meas[0]
            for suffix in (".occlusion.png", ".occlusion.pdf", ".gallery.png"):
                assert (out / f"{sid}{suffix}").stat().st_size > 0
            with open_slide(root / "data" / "slides" / f"{sid}.tiff") as sl:  # tiles inside the slide
                assert (coords >= 0).all() and (coords[:, 0] < sl.dimensions[0]).all()
            if m == "abmil.resnet50":  # two-stage: exactly the feature cache's tiles
                cached = next((root / "cache").rglob(f"{sid}.h5"))
                with h5py.File(cached, "r") as f:
                    assert f["coords"][:].tolist() == coords.tolist()
            assert demo_truth(root / "data", sid).tumour is not None
        again = bench("heatmap", "--method", m, "--dataset", spec, "--task", "staging", "--out", out, env=env)
        assert "0 slide(s)" in again.stdout  # resumable: every slide already written with the same weights


@pytest.mark.slow
def test_units_without_kept_weights_say_how_to_get_them(demo):
    spec, env, root = demo
    res = root / "nokeep"
    bench("run", "--methods", "meanmil.resnet50", "--dataset", spec, "--tasks", "staging", "--folds", "1",
          "--results", res, "--no-keep-weights", "-q", env=env)
    p = bench("heatmap", "--method", "meanmil.resnet50", "--dataset", spec, "--task", "staging", "--fold", "1",
              "--results", res, env=env, check=False)
    assert p.returncode != 0 and "--keep-weights" in p.stderr and "Traceback" not in p.stderr
    p = bench("run", "--methods", "meanmil.resnet50", "--dataset", spec, "--tasks", "staging", "--folds", "1",
              "--results", res, env=env)
    assert "nothing to do" in p.stdout  # the default keeps finished units as they are
    bench("run", "--methods", "meanmil.resnet50", "--dataset", spec, "--tasks", "staging", "--folds", "1",
          "--results", res, "--keep-weights", "-q", env=env)
    rec = json.loads(next(res.rglob("fold1/metrics.json")).read_text())
    assert rec["info"]["weights_file"]["file"] == "model.pt"


def test_demo_truth_reproduces_the_written_slide(tmp_path):
    """The masks come from re-rendering the slide from the manifest: the pixels must be the file's."""
    from bench.data.demo import demo_truth, generate_demo
    from feature_cache import open_slide

    root = generate_demo(tmp_path / "d", seed=3, n_cases=4)
    sid = sorted(json.loads((root / "MANIFEST.json").read_text())["slides"])[0]
    t = demo_truth(root, sid)
    with open_slide(root / "slides" / f"{sid}.tiff") as sl:
        level0 = sl.read_level(0)
    assert level0.shape == t.rgb.shape
    assert np.abs(level0.astype(int) - t.rgb.astype(int)).mean() < 3  # JPEG tiles
    assert t.tumour.shape == t.tissue.shape and (t.tumour <= t.tissue).all() and 0 < t.tumour.sum() < t.tissue.sum()


@pytest.mark.slow  # the shipped demo: generation, ResNet-50 extraction of every slide, 5 ABMIL units (~10 min quiet)
def test_occlusion_auroc_ranks_the_demo_tumour_above_other_tissue(tmp_path):
    """A staging model above chance looks at the tumour: |occlusion| AUROC >= 0.7 on its test cases,
    and so does its attention. The model trains 20 epochs: the demo's 5 (sized for the 15-minute
    grid) leave ABMIL at macro-F1 ~0.43, whose occlusion map does not find the tumour (AUROC ~0.5,
    docs/heatmaps.md). (The demo's size may change: nothing here depends on its case or tile counts.)"""
    from bench.cli.heatmap import load_unit, truth_auroc
    from bench.data.datasets import load_cohort
    from bench.data.demo import demo_truth

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "BENCH_DATA": str(tmp_path / "data"), "BENCH_JOBS": "1"}
    res, cache = tmp_path / "res", tmp_path / "cache"
    bench("run", "--methods", "abmil.resnet50", "--dataset", "demo", "--tasks", "staging", "--results", res,
          "--cache", cache, "--set", "epochs=20", "-q", env=env)
    os.environ["BENCH_DATA"] = env["BENCH_DATA"]
    try:
        root = load_cohort("demo").spec.data_root
        f1, occ, att = [], [], []
        for k in range(5):
            ld = load_unit("demo", "abmil.resnet50", "staging", k, res, cache, progress=False)
            f1.append(ld.rec.metrics["macro_f1"])
            r = truth_auroc(ld, ld.test_cases, lambda s: demo_truth(root, s))
            occ.append(r["auroc_abs"])
            att.append(r["auroc_family"])
    finally:
        del os.environ["BENCH_DATA"]
    print("macro-F1", np.round(f1, 3), "|occlusion| AUROC", np.round(occ, 3), "attention AUROC", np.round(att, 3))
    assert np.mean(f1) > 0.25  # above chance (4 balanced stages)
    assert np.mean(occ) >= 0.7
    assert np.mean(att) >= 0.7
