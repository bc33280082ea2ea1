"""Ablations: grids as data, dataset mappings, the paper's table layouts (golden files) and one
ablation run end to end on a tiny generated cohort."""

import json
from pathlib import Path

import pandas as pd
import pytest

from bench.ablations import Ablation, AblationError, build_rows, get_ablation, list_ablations, parse_values, to_latex, to_markdown

GOLDEN = Path(__file__).parent / "golden"


def test_every_ablation_loads_with_the_papers_grid():
    grids = {a.name: (a.paper_table, a.grid_values) for a in list_ablations()}
    assert grids == {"alpha": (9, [0.4, 0.6, 0.8, 1.0]), "scan-window": (5, [32, 128, 224, 320]),
                     "magnification": (6, [0.625, 1.0, 2.5]),
                     "token-scale": (4, ["vim-ti", "vim-ti-32", "vim-ti-16+32", "pixelmamba-6m"]),
                     "end-to-end": (3, ["longvit-s", "vim-ti", "pixelmamba-6m"])}
    assert all(a.task == "survival" and a.dataset == "blca" for a in list_ablations())


def test_grid_variants_mapping_and_values_override():
    a = get_ablation("magnification")
    items, notes = a.grid()
    assert [(i.method, i.variant, i.model) for i in items] == [
        ("pixelmamba-6m", "magnification=0.625", {"magnification": 0.625}),
        ("pixelmamba-6m", "magnification=1.0", {"magnification": 1.0}),
        ("pixelmamba-6m", "magnification=2.5", {"magnification": 2.5})] and notes == []
    demo = {"values": {0.625: 0.3125, 1.0: 0.5, 2.5: 1.25}}
    items, notes = a.grid(dataset_options=demo)
    assert [i.variant for i in items] == ["magnification=0.3125", "magnification=0.5", "magnification=1.25"]
    assert [i.paper_value for i in items] == [0.625, 1.0, 2.5]
    assert notes == ["magnification mapped for this dataset's size: 0.625 -> 0.3125, 1.0 -> 0.5, 2.5 -> 1.25"]
    items, _ = a.grid(parse_values("2.5,0.8"), demo)  # --values: mapped where the dataset names them
    assert [i.variant for i in items] == ["magnification=1.25", "magnification=0.8"]
    items, notes = a.grid(dataset_options={"values": [0.5, 1.0]})
    assert [i.value for i in items] == [0.5, 1.0] and "replaced" in notes[0]
    items, _ = get_ablation("token-scale").grid(["vim-ti", "pixelmamba-6m"])
    assert [(i.method, i.variant) for i in items] == [("vim-ti", None), ("pixelmamba-6m", None)]
    with pytest.raises(KeyError, match="Did you mean"):
        get_ablation("end-to-end").grid(["vim-tii"])
    with pytest.raises(AblationError, match="same setting"):
        a.grid([1.0, 1.0])


def test_malformed_ablation_names_the_file(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("method: pixelmamba-6m\nvalues: [1]\ntable: {columns: [metric]}\n")
    with pytest.raises(AblationError, match=r"bad.yaml: `method: pixelmamba-6m` needs `override`"):
        Ablation.load(p)
    p.write_text("methods: [vim-ti]\ncolour: red\n")
    with pytest.raises(AblationError, match=r"bad.yaml: unknown keys \['colour'\]"):
        Ablation.load(p)


def _summary(rows):
    base = {"family": "end-to-end", "encoder": "", "task": "survival", "metric": "c_index", "primary": True,
            "n_folds": 5, "n_defined": 5, "expected_folds": 5, "folds": "", "random_weights": False,
            "train_seconds": 1.0, "peak_rss_mb": 3072.0, "peak_cuda_mb": float("nan"), "train_seconds_per_slide": 12.5}
    return pd.DataFrame([{**base, **r} for r in rows])


# the paper's published numbers, so the golden tables read like the paper's
PAPER = {
    "end-to-end": [("longvit-s", "", 22_000_000, 0.5743, 0.0236), ("vim-ti", "", 7_148_008, 0.5977, 0.0129),
                   ("pixelmamba-6m", "", 6_265_750, 0.6507, 0.0485)],
    "token-scale": [("vim-ti", "", 7_148_008, 0.5977, 0.0129), ("vim-ti-32", "", 7_148_008, 0.5859, 0.0470),
                    ("vim-ti-16+32", "", 7_148_008, 0.6116, 0.0313), ("pixelmamba-6m", "", 6_265_750, 0.6507, 0.0485)],
    "scan-window": [("pixelmamba-6m", f"scan_window={w}", 6_265_750, m, s) for w, m, s in
                    ((32, 0.6083, 0.0562), (128, 0.6190, 0.0374), (224, 0.6507, 0.0485), (320, 0.6242, 0.0386))],
    "magnification": [("pixelmamba-6m", f"magnification={v}", 6_265_750, m, s) for v, m, s in
                      ((0.625, 0.5855, 0.0286), (1.0, 0.6307, 0.0500), (2.5, 0.6507, 0.0485))],
    "alpha": [("pixelmamba-6m", f"alpha={v}", 6_265_750, m, 0.01) for v, m in
              ((0.4, 0.6176), (0.6, 0.6260), (0.8, 0.6507), (1.0, 0.6104))],
}


@pytest.mark.parametrize("name", sorted(PAPER))
def test_table_layout_matches_golden(name):
    """Each ablation's LaTeX in the paper's layout, from a hand-built summary holding the paper's numbers."""
    a = get_ablation(name)
    items, notes = a.grid()
    summary = _summary([{"method": m, "variant": v, "label": m, "params": p, "mean": mean, "std": std,
                         "input": "slide@" + (v.split("=")[1] if v.startswith("magnification") else "2.5") + "x"}
                        for m, v, p, mean, std in PAPER[name]])
    rows = build_rows(a, items, summary, "survival")
    got = to_latex(a, rows, "blca", "survival", notes)
    golden = GOLDEN / f"ablation_{name}.tex"
    if not golden.exists():  # first run writes it; review it by eye before committing
        golden.write_text(got)
    assert got == golden.read_text()
    md = to_markdown(a, rows, "survival")
    assert "paper (BLCA)" in md and "| 0.6507 |" in md  # the published figure beside ours


def test_table_details_compute_partial_and_magnification_label():
    a = get_ablation("end-to-end")
    items, _ = a.grid()
    summary = _summary([{"method": "pixelmamba-6m", "variant": "", "label": "x", "params": 6_265_750, "mean": 0.6,
                         "std": 0.1, "n_folds": 2, "input": "slide@0.625x"}])
    rows = build_rows(a, items, summary, "survival")
    assert [r.cells["method"] for r in rows] == ["LongViT-Surv", "Vision-Mamba-Surv", "Pixel-Mamba-Surv (0.625x)"]
    tex = to_latex(a, rows, "demo", "survival", ["scan_window mapped"], similar={1}, stats_note="STATS", compute=True)
    assert "Peak mem. (GB) & Train s/slide & C-index" in tex and "3.00 & 12 &" in tex
    assert r"\textbf{0.6000 $\pm$ 0.1000 (2/5 folds)}" in tex and "– & – & –" in tex
    assert "Scan\\_window mapped." in tex and tex.count("STATS") == 1
    st = to_latex(get_ablation("token-scale"), build_rows(get_ablation("token-scale"),
                  get_ablation("token-scale").grid()[0], summary, "staging"), "demo", "staging")
    assert "Macro-F1" in st and "Pixel-Mamba-Stage" in st


@pytest.mark.slow  # ~40 s of CPU: generating the slides, three CLI invocations, five units
def test_ablation_runs_end_to_end_and_resumes(tmp_path, monkeypatch):
    """A two-value grid (Vision Mamba depth 1 vs 2, tiny embedding) on a 8-case cohort, one fold:
    units land as variants, the table is written, a rerun does nothing, a new value runs alone."""
    from bench.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    spec = tmp_path / "tiny.yaml"
    spec.write_text(f"""description: tiny
generator: demo
generator_args: {{n_cases: 8, seed: 1}}
root: {tmp_path / 'data'}
slides: slides
slide_glob: "*.tiff"
clinical: clinical.csv
clinical_format: normalized
tasks: [staging, survival]
allow_random_weights: true
train:
  end-to-end: {{epochs: 1, grad_accum: 2}}
inputs:
  end-to-end: {{magnification: 0.15}}
ablations:
  depth: {{values: {{2: 3}}}}
""")
    abl = tmp_path / "depth.yaml"
    abl.write_text("""caption: Depth of Vision Mamba
method: vim-ti
override: depth
values: [1, 2]
task: staging
table: {columns: [method, backbone, depth, metric]}
""")
    res = tmp_path / "results"
    args = ["ablate", str(abl), "--dataset", str(spec), "--results", str(res), "--cache", str(tmp_path / "cache"),
            "--n-folds", "2", "--folds", "0", "--model", "embed_dim=16", "--stats", "-q"]
    assert main(args) == 0
    runs = res / "runs" / "tiny" / "staging" / "vim-ti"
    done = {p: p.stat().st_mtime_ns for p in runs.glob("*/fold0/metrics.json")}
    assert sorted(p.parent.parent.name for p in done) == ["depth_1", "depth_3"]  # 2 -> 3 by the dataset's map; "=" is sanitized
    cfg = json.loads((runs / "depth_3" / "fold0" / "config.json").read_text())
    assert cfg["variant"] == "depth=3" and cfg["model"]["depth"] == 3 and cfg["model"]["embed_dim"] == 16
    m = json.loads((runs / "depth_1" / "fold0" / "metrics.json").read_text())
    assert m["variant"] == "depth=1" and m["peak_rss_mb"] > 0 and m["train_seconds_per_slide"] > 0
    assert m["input"] == {"kind": "slide", "encoder": None, "magnification": 0.15, "regions": None,
                          "source": "extracted"}
    md = (res / "tiny" / "tables" / "depth_staging.md").read_text()
    assert "| Vision-Mamba-Stage (0.15x) | Vim-Ti | 1 |" in md and "| Vision-Mamba-Stage (0.15x) | Vim-Ti | 3 |" in md
    assert "(1/2 folds)" in md and "depth mapped for this dataset's size: 2 -> 3" in md
    assert (res / "tiny" / "tables" / "depth_staging.tex").is_file()
    assert len(pd.read_csv(res / "tiny" / "tables" / "depth_staging_stats.csv")) == 1

    assert main(args) == 0  # rerun: nothing to do, nothing touched
    assert {p: p.stat().st_mtime_ns for p in runs.glob("*/fold0/metrics.json")} == done
    assert main(args[:1] + [args[1], "--values", "1,5"] + args[2:]) == 0  # only the new value runs
    assert {p: p.stat().st_mtime_ns for p in runs.glob("*/fold0/metrics.json") if p in done} == done
    assert (runs / "depth_5" / "fold0" / "metrics.json").is_file()


def test_identical_variants_are_called_out(tmp_path):
    """Two alpha values that built the same network (few regions) give the same predictions: said."""
    from bench.ablations import GridItem, Row
    from bench.cli.ablate import _identical_rows
    from bench.report.results import ResultsStore, Unit
    from record_factory import make_record

    store = ResultsStore(tmp_path)
    pred = pd.DataFrame({"case_id": ["A", "B"], "time": [3.0, 5.0], "event": [1.0, 0.0], "risk": [0.2, 0.1]})
    rows = []
    for v, risk in (("alpha=0.4", [0.2, 0.1]), ("alpha=0.8", [0.2, 0.1]), ("alpha=1.0", [0.1, 0.2])):
        u = Unit("demo", "survival", "pixelmamba-6m", 0, v)
        store.prepare(u, {}, "h")
        store.finish(u, pred.assign(risk=risk), pd.DataFrame(),
                     make_record(task="survival", method=u.method, variant=v, primary_metric="c_index",
                                 metrics={"c_index": 0.5}))
        rows.append(Row(GridItem("pixelmamba-6m", v), {}, 0.5, 0.0, 1, 5))
    assert _identical_rows(store, "demo", "survival", rows) == [
        "alpha=0.4, alpha=0.8 gave identical predictions: the setting changes nothing at this input size"]
