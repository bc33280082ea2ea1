"""CAMELYON16 protocol: binary classification (AUC, accuracy), labels from a CSV, random tissue regions
per slide and a voting ensemble over them, end to end through the runner and the tables."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import accuracy_score, roc_auc_score

from bench import tasks as T
from bench.data.datasets import DatasetError, load_clinical, load_cohort
from bench.engine.train import Sample, predict, vote


# ------------------------------------------------------------------------------------ metrics
def test_classification_metrics_hand_case():
    # positives 0.35 and 0.8 against negatives 0.1 and 0.4: 3 of the 4 pairs are ordered -> AUC 0.75
    pred = pd.DataFrame({"label": [0, 0, 1, 1], "prob1": [0.1, 0.4, 0.35, 0.8], "pred": [0, 0, 0, 1]})
    s = T.score("classification", pred)
    assert s["auc"] == pytest.approx(0.75) == roc_auc_score(pred["label"], pred["prob1"])
    assert s["accuracy"] == pytest.approx(0.75) == accuracy_score(pred["label"], pred["pred"])
    one_class = T.score("classification", pred.assign(label=1))
    assert np.isnan(one_class["auc"]) and "one class" in one_class["undefined"]


# ------------------------------------------------------------------------------------ labels
def test_labels_from_csv(tmp_path):
    p = tmp_path / "labels.csv"
    p.write_text("slide_id,label\ntumor_001,Tumor\nnormal_001, normal \ntest_003,1\ntest_004,--\n")
    df = load_clinical(p, "normalized", label_map={"normal": 0, "tumor": 1})
    assert df.set_index("case_id")["label"].to_dict() == pytest.approx(
        {"tumor_001": 1.0, "normal_001": 0.0, "test_003": 1.0, "test_004": np.nan}, nan_ok=True)
    p.write_text("slide_id,label\ntumor_001,Tumor\nnormal_001,macro-metastasis\n")
    with pytest.raises(DatasetError, match=r"labels.csv, row 3 \(label\): unknown label 'macro-metastasis'"):
        load_clinical(p, "normalized", label_map={"normal": 0, "tumor": 1})


# ------------------------------------------------------------------------------------ voting
def test_majority_vote_and_soft_vote_on_a_constructed_case():
    # 3 views say "tumor" weakly (0.55), 2 say "normal" with confidence (p_tumor 0.01)
    probs = torch.tensor([[0.45, 0.55]] * 3 + [[0.99, 0.01]] * 2)
    maj = vote(probs, "majority")
    assert int(maj.argmax()) == 1 and float(maj[1]) == pytest.approx(0.6, abs=1e-5)  # 3 of 5 votes
    soft = vote(probs, "mean_prob")
    assert int(soft.argmax()) == 0 and float(soft[1]) == pytest.approx((3 * 0.55 + 2 * 0.01) / 5)
    # a 2-2 tie is broken by the mean probability
    tie = torch.tensor([[0.4, 0.6], [0.45, 0.55], [0.9, 0.1], [0.8, 0.2]])
    assert int(vote(tie, "majority").argmax()) == 0
    # scores stay probabilities: a unanimous vote is 1, not 1 + the tie-break nudge
    unanimous = vote(torch.tensor([[0.1, 0.9], [0.2, 0.8]]), "majority")
    assert float(unanimous[1]) <= 1.0 and float(unanimous[0]) >= 0.0
    assert float(unanimous.sum()) == pytest.approx(1.0) and float(maj.sum()) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="unknown voting"):
        vote(probs, "max")


def test_predict_votes_over_views():
    class Echo(torch.nn.Module):  # the view *is* the logits
        def forward(self, x):
            return x

    views = [torch.tensor([[0.0, 1.0]]), torch.tensor([[0.0, 2.0]]), torch.tensor([[5.0, 0.0]])]
    s = Sample("C1", lambda: views[0], {"label": 1.0}, views=lambda: iter(views), vote="majority")
    row = predict(Echo(), "classification", [s]).iloc[0]
    assert row["pred"] == 1 and row["prob1"] == pytest.approx(2 / 3, abs=1e-5) and row["n_views"] == 3


# ------------------------------------------------------------------------------------ regions
@pytest.fixture(scope="module")
def rendered_slide(tmp_path_factory):
    from bench.data.demo import slide_specs, demo_specs, render_slide, write_pyramid_tiff

    spec = slide_specs(5, demo_specs(5, 4))[0]
    r = render_slide(spec)
    path = tmp_path_factory.mktemp("slide") / f"{spec.slide_id}.tiff"
    write_pyramid_tiff(path, r.rgb)
    return spec.slide_id, path, r


def test_region_sampler_is_seeded_and_stays_in_tissue(rendered_slide, tmp_path):
    from feature_cache import open_slide
    from feature_cache.regions import RegionCache, read_region_at, sample_regions

    sid, path, r = rendered_slide
    with open_slide(path) as s:
        a = sample_regions(s, sid, 20, 64, 5.0, seed=0, min_tissue=0.5)
        b = sample_regions(s, sid, 20, 64, 5.0, seed=0, min_tissue=0.5)
        c = sample_regions(s, sid, 20, 64, 5.0, seed=1, min_tissue=0.5)
        whole = s.read_at_mpp(2.0)  # 5x
        w0, h0 = s.dimensions
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    side0 = 256  # 64 px at 5x on a 0.5 um/px slide
    assert (a[:, 0] >= 0).all() and (a[:, 0] + side0 <= w0).all() and (a[:, 1] + side0 <= h0).all()
    # coverage by the *true* tissue mask the generator drew (downsample 2), not by our segmentation
    frac = [r.tissue[y // 2:(y + side0) // 2, x // 2:(x + side0) // 2].mean() for x, y in a]
    assert min(frac) >= 0.4, frac
    # uniform draws over the tissue, not one spot: the regions spread over the slide's tissue
    assert len({(int(x) // side0, int(y) // side0) for x, y in a}) >= 5

    cache = RegionCache(tmp_path, n=6, size=64, magnification=5.0, seed=0)
    reg = cache.regions(sid, path)
    assert reg.shape == (6, 64, 64, 3) and reg.dtype == np.uint8
    xy = cache.coords(sid, path)
    with open_slide(path) as s:
        assert np.array_equal(xy, sample_regions(s, sid, 6, 64, 5.0, seed=0))
        assert np.array_equal(read_region_at(s, tuple(xy[0]), 64, 5.0), reg[0])
    # the pixels are those of the slide at 5x (up to the sub-pixel offset of the level-1 read)
    for (x, y), img in zip(xy, reg):
        crop = whole[y // 4:y // 4 + 64, x // 4:x // 4 + 64].astype(float)
        assert np.abs(crop - img).mean() < 12
    assert np.array_equal(RegionCache(tmp_path, n=6, size=64, magnification=5.0, seed=0).regions(sid, path), reg)


# ------------------------------------------------------------------------------------ end to end
class TinyCNN(torch.nn.Module):
    """A stand-in end-to-end network (Pixel-Mamba costs ~1 min per step on this CPU)."""

    def __init__(self, n_out: int) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 5, stride=2)
        self.head = torch.nn.Linear(8, n_out)

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)).mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def binary_cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("cam")
    spec = root / "camtoy.yaml"
    spec.write_text(f"""generator: demo
generator_args: {{n_cases: 10, seed: 2, binary_label: true}}
root: {root / 'data'}
slides: slides
slide_glob: "*.tiff"
clinical: clinical.csv
clinical_format: normalized
labels: {{normal: 0, tumor: 1}}
tasks: [classification]
inputs:
  end-to-end:
    regions: {{n: 3, size: 64, magnification: 5, voting: majority, seed: 0, min_tissue: 0.5}}
""")
    return spec, root


def test_tiny_classification_run_through_runner_and_tables(binary_cohort, monkeypatch):
    from bench import registry
    from bench.engine import runner
    from bench.results.store import ResultsStore
    from bench.report.render import to_latex as render_latex, to_markdown as render_markdown
    from bench.report.tables import build_table, classification, to_markdown

    spec, root = binary_cohort
    monkeypatch.setitem(registry.METHODS, "tinycnn", registry.MethodSpec(
        name="tinycnn", family="end-to-end", builder=f"{__name__}:TinyCNN", label="TinyCNN", input="slide",
        magnification=5.0, config="end_to_end", group="End-to-end", backbone="CNN"))
    cohort = load_cohort(str(spec))
    cases = cohort.cases("classification")
    assert len(cases) == 10 and set(cases["label"]) == {0.0, 1.0}
    assert (cases["label"] == (cases["stage"] >= 2)).all()  # the demo's Tumor/Normal strings, mapped

    results = root / "results"
    rep = runner.run([registry.get_method("tinycnn")], str(spec), folds=[0, 1], results=results, cache=root / "cache",
                     train_overrides={"epochs": 1, "grad_accum": 2}, progress=False, from_scratch=True)
    assert len(rep.ran) == 2 and not rep.failed, rep.failed
    folds = pd.read_csv(results / "splits/camtoy/classification.csv").merge(cases, on="case_id")
    pos = folds.groupby("fold")["label"].sum()
    assert pos.max() - pos.min() <= 1 and folds.groupby("fold").size().max() == 2  # stratified by label
    d = results / "runs/camtoy/classification/tinycnn"
    m = json.loads((d / "fold0/metrics.json").read_text())
    assert m["primary_metric"] == "auc" and {"auc", "accuracy"} <= set(m["metrics"])
    cfg = json.loads((d / "fold0/config.json").read_text())
    assert cfg["inputs"]["regions"]["voting"] == "majority" and m["input"]["regions"]["n"] == 3
    pred = pd.read_csv(d / "fold0/predictions.csv")
    n_slides = cohort.table.groupby("case_id").size()
    assert (pred["n_views"].to_numpy() == 3 * n_slides.loc[pred["case_id"]].to_numpy()).all()
    # scores are vote shares (multiples of 1/n_views) and the metrics are sklearn's on them
    assert np.allclose((pred["prob1"] * pred["n_views"]).round(), pred["prob1"] * pred["n_views"], atol=1e-4)
    assert pred["label"].nunique() == 2  # each 2-case test fold holds one tumour and one normal slide
    assert m["metrics"]["auc"] == pytest.approx(roc_auc_score(pred["label"], pred["prob1"]))
    assert m["metrics"]["accuracy"] == pytest.approx(accuracy_score(pred["label"], pred["pred"]))
    # regions were sampled once and cached
    assert len(list((root / "cache/regions").glob("*/*.npy"))) == len(cohort.table)

    summary = ResultsStore(results).summarize("camtoy").assign(dataset="camtoy")
    wide, cols = build_table(summary, tasks=["classification"])
    assert cols == [("classification", "camtoy")]
    assert "TinyCNN" in to_markdown(wide, cols) and "(2/5 folds)" in to_markdown(wide, cols)
    tex, md = (lambda t: (render_latex(t), render_markdown(t)))(classification(summary, "camtoy"))
    auc = summary[(summary.metric == "auc")].iloc[0]
    acc = summary[(summary.metric == "accuracy")].iloc[0]
    assert md.splitlines()[0] == "| Method | AUC | ACC |"
    assert f"{acc['mean']:.4f} ± {acc['std']:.4f}" in md.splitlines()[2]
    assert r"\begin{tabular}{lcc}" in tex and "AUC and accuracy" in tex
    assert auc["n_folds"] == 2


# ------------------------------------------------------------------------------------ the real Pixel-Mamba
def _camelyon16_layout(data: Path, n_per_class: int = 3) -> dict[str, int]:
    """$BENCH_DATA/camelyon16 as docs/camelyon16.md asks for it: slides under images/training/{normal,
    tumor}/, labels.csv with `slide_id,label` strings. Slides come from the demo renderer (tumor = its
    denser, darker stage III-IV nuclei); returns slide id -> label."""
    from bench.data.demo import slide_specs, demo_label, demo_specs, render_slide, write_pyramid_tiff

    root, truth, rows = data / "camelyon16", {}, ["slide_id,label"]
    for case in demo_specs(3, 4 * n_per_class):
        lab = demo_label(case).lower()
        k = sum(v == (lab == "tumor") for v in truth.values()) + 1
        if k > n_per_class:
            continue
        name = f"{lab}_{k:03d}"
        path = root / "images" / "training" / lab / f"{name}.tif"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_pyramid_tiff(path, render_slide(slide_specs(3, [case])[0]).rgb)
        truth[name] = int(lab == "tumor")
        rows.append(f"{name},{lab}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return truth


@pytest.mark.slow  # ~50 s at load ~6: two CLI processes, one Pixel-Mamba-6M training fold
def test_pixelmamba_6m_on_the_camelyon16_config(tmp_path):
    """The real `pixelmamba-6m` through `bench run --dataset camelyon16` (the shipped config, its data
    root under $BENCH_DATA) on a generated six-slide cohort. Only the region size is cut (`--input
    regions=...`: 2 regions of 64 px at 5x instead of 100 of 2048 px at 20x; scan window 64) so a fold
    trains in seconds on a CPU. Checked: the labels CSV is read, AUC and accuracy are scikit-learn's on
    the written predictions, every test slide's score is a vote share over its 2 regions, `bench
    table` prints the supplement's AUC / ACC table."""
    import os
    import subprocess
    import sys

    truth = _camelyon16_layout(tmp_path / "data")
    assert sorted(truth.values()) == [0, 0, 0, 1, 1, 1]
    env = {**os.environ, "BENCH_DATA": str(tmp_path / "data"), "HF_HUB_OFFLINE": "1"}
    repo = Path(__file__).resolve().parents[2]
    results = tmp_path / "results"

    def bench(*args):
        p = subprocess.run([sys.executable, "-m", "bench", *args, "--results", str(results)], cwd=repo, env=env,
                           capture_output=True, text=True, timeout=1200)
        assert p.returncode == 0, f"{p.stdout}\n{p.stderr}"
        return p.stdout

    bench("run", "--methods", "pixelmamba-6m", "--dataset", "camelyon16", "--n-folds", "3", "--folds", "0", "--from-scratch",
          "--set", "epochs=1", "--cache", str(tmp_path / "cache"), "--model", "scan_window=64", "--input",
          "regions={n: 2, size: 64, magnification: 5, voting: majority, seed: 0, min_tissue: 0.5}", "-q")
    d = results / "runs/camelyon16/classification/pixelmamba-6m/seed0-k3/fold0"  # a 3-fold split set
    m, cfg = json.loads((d / "metrics.json").read_text()), json.loads((d / "config.json").read_text())
    assert 6.2e6 < m["params"] < 6.3e6 and m["trainable_params"] == m["params"]  # the 6M network, not a stand-in
    assert cfg["inputs"]["regions"]["voting"] == "majority" and cfg["model"]["scan_window"] == 64
    assert (m["input"]["kind"], m["input"]["regions"]["n"], m["input"]["regions"]["size"]) == ("regions", 2, 64)
    pred = pd.read_csv(d / "predictions.csv")
    assert pred.set_index("case_id")["label"].to_dict() == {c: truth[c] for c in pred["case_id"]}
    assert sorted(pred["label"]) == [0, 1]  # 3 folds stratified by label: one of each class is tested
    assert (pred["n_views"] == 2).all()
    assert np.allclose(pred["prob1"] * 2, (pred["prob1"] * 2).round(), atol=1e-4)  # 0, 1/2 or 2/2 of the votes
    assert m["primary_metric"] == "auc"
    assert m["metrics"]["auc"] == pytest.approx(roc_auc_score(pred["label"], pred["prob1"]))
    assert m["metrics"]["accuracy"] == pytest.approx(accuracy_score(pred["label"], pred["pred"]))
    assert len(list((tmp_path / "cache/regions").glob("n2_s64_mag5*/*.npy"))) == 6  # sampled once per slide

    out = bench("table", "--dataset", "camelyon16")
    md = (results / "tables/classification_camelyon16.md").read_text()
    assert md.splitlines()[0] == "| Method | AUC | ACC |" and "| Pixel-Mamba-6M (2 regions 64px@5x) |" in md
    assert "Pixel-Mamba-6M (2 regions 64px@5x)" in out  # Table 2's layout says it too
