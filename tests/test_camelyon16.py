"""CAMELYON16 protocol: binary classification (AUC, accuracy), labels from a CSV, random tissue regions
per slide and a voting ensemble over them, end to end through the runner and the tables."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import accuracy_score, roc_auc_score

from bench import tasks as T
from bench.datasets import DatasetError, load_clinical, load_cohort
from bench.train import Sample, predict, vote


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
    from bench.demo import _slide_specs, demo_specs, render_slide, write_pyramid_tiff

    spec = _slide_specs(5, demo_specs(5, 4))[0]
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
model:
  end-to-end:
    regions: {{n: 3, size: 64, magnification: 5, voting: majority, seed: 0, min_tissue: 0.5}}
""")
    return spec, root


def test_tiny_classification_run_through_runner_and_tables(binary_cohort, monkeypatch):
    from bench import registry, runner
    from bench.results import ResultsStore
    from bench.tables import build_table, classification_table, to_markdown

    spec, root = binary_cohort
    monkeypatch.setitem(registry._METHODS, "tinycnn", registry.MethodSpec(
        name="tinycnn", family="end-to-end", builder=f"{__name__}:TinyCNN", label="TinyCNN", input="slide",
        magnification=5.0, config="end_to_end", group="End-to-end", backbone="CNN"))
    cohort = load_cohort(str(spec))
    cases = cohort.cases("classification")
    assert len(cases) == 10 and set(cases["label"]) == {0.0, 1.0}
    assert (cases["label"] == (cases["stage"] >= 2)).all()  # the demo's Tumor/Normal strings, mapped

    results = root / "results"
    rep = runner.run([registry.get_method("tinycnn")], str(spec), folds=[0, 1], results=results, cache=root / "cache",
                     train_overrides={"epochs": 1, "grad_accum": 2}, progress=False)
    assert len(rep.ran) == 2 and not rep.failed, rep.failed
    folds = pd.read_csv(results / "splits/camtoy/classification.csv").merge(cases, on="case_id")
    pos = folds.groupby("fold")["label"].sum()
    assert pos.max() - pos.min() <= 1 and folds.groupby("fold").size().max() == 2  # stratified by label
    d = results / "runs/camtoy/classification/tinycnn"
    m = json.loads((d / "fold0/metrics.json").read_text())
    assert m["primary_metric"] == "auc" and {"auc", "accuracy"} <= set(m["metrics"])
    cfg = json.loads((d / "fold0/config.json").read_text())
    assert cfg["voting"] == "majority" and cfg["input"] == "3 regions 64px@5x"
    pred = pd.read_csv(d / "fold0/predictions.csv")
    n_slides = cohort.table.groupby("case_id").size()
    assert (pred["n_views"].to_numpy() == 3 * n_slides.loc[pred["case_id"]].to_numpy()).all()
    # scores are vote shares (multiples of 1/n_views) and the metrics are sklearn's on them
    assert np.allclose((pred["prob1"] * pred["n_views"]).round(), pred["prob1"] * pred["n_views"], atol=1e-4)
    if pred["label"].nunique() == 2:
        assert m["metrics"]["auc"] == pytest.approx(roc_auc_score(pred["label"], pred["prob1"]))
    assert m["metrics"]["accuracy"] == pytest.approx(accuracy_score(pred["label"], pred["pred"]))
    # regions were sampled once and cached
    assert len(list((root / "cache/regions").glob("*/*.npy"))) == len(cohort.table)

    summary = ResultsStore(results).summarize("camtoy").assign(dataset="camtoy")
    wide, cols = build_table(summary, tasks=["classification"])
    assert cols == [("classification", "camtoy")]
    assert "TinyCNN" in to_markdown(wide, cols) and "(2/5 folds)" in to_markdown(wide, cols)
    tex, md = classification_table(summary, "camtoy")
    auc = summary[(summary.metric == "auc")].iloc[0]
    acc = summary[(summary.metric == "accuracy")].iloc[0]
    assert md.splitlines()[0] == "| Method | AUC | ACC |"
    assert f"{acc['mean']:.4f} ± {acc['std']:.4f}" in md.splitlines()[2]
    assert r"\begin{tabular}{lcc}" in tex and "AUC and accuracy" in tex
    assert auc["n_folds"] == 2
