"""Ablations: grids as data, dataset mappings, the paper's table layouts (golden files) and one
ablation run end to end on a tiny generated cohort."""

import json

import pandas as pd
import pytest

from golden_check import assert_golden
from record_factory import make_record

from bench.ablations import Ablation, AblationError, GridItem, get_ablation, list_ablations, parse_values
from bench.report.ablation_tables import Row, build_rows, identical_rows, to_latex, to_markdown
from bench.results.records import InputSpec, WeightsProvenance
from bench.report.render import Cell
from bench.results.store import ResultsStore, Unit


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


LABELS = {"longvit-s": ("LongViT", "ViT-S"), "vim-ti": ("Vision Mamba (16)", "Vim-Ti"),
          "vim-ti-32": ("Vision Mamba (32)", "Vim-Ti"), "vim-ti-16+32": ("Vision Mamba (16+32)", "Vim-Ti"),
          "pixelmamba-6m": ("Pixel-Mamba-6M", "Pixel-Mamba")}
PRETRAINED = [WeightsProvenance("model", "pretrained", "ImageNet (sha256 0011)", sha256="0011")]
RANDOM = [WeightsProvenance("model", "random", "random initialisation (no pretrained weights)")]


def put_row(store, method, variant, params, mean, std, n=5, task="survival", protocol="paper", weights=PRETRAINED,
            non_default=None, mag=2.5, options=None):
    """A row's finished folds (5 or 2) as unit records with mean ``mean`` and population std ``std``."""
    d = std / 0.8 ** 0.5
    values = {5: [mean - d, mean - d, mean, mean + d, mean + d], 2: [mean - std, mean + std]}[n]
    metric = "c_index" if task == "survival" else "macro_f1"
    label, backbone = LABELS[method]
    for fold, v in enumerate(values):
        rec = make_record(dataset="blca", task=task, method=method, variant=variant or None, fold=fold,
                          family="end-to-end", label=label, group="End-to-end", backbone=backbone, encoder=None,
                          encoder_label="", frozen_params_text="", params=params, trainable_params=params,
                          default_input=InputSpec("slide", magnification=2.5),
                          input=InputSpec("slide", magnification=mag), model=options or {}, protocol=protocol,
                          weights=weights, primary_metric=metric, metrics={metric: v},
                          info={"non_default": non_default or {}})
        u = Unit("blca", task, method, fold, rec.variant)
        store.prepare(u, {}, "h")
        store.finish(u, PRED, pd.DataFrame(), rec)


PRED = pd.DataFrame({"case_id": ["A", "B"], "time": [3.0, 5.0], "event": [1.0, 0.0], "risk": [0.2, 0.1]})

# the paper's published numbers, so the golden tables read like the paper
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


@pytest.fixture(scope="module")
def paper_store(tmp_path_factory):
    """Every ablation's rows, holding the paper's numbers, as records of the paper's protocol."""
    store = ResultsStore(tmp_path_factory.mktemp("ablations"))
    seen = set()
    for rows in PAPER.values():
        for m, v, p, mean, std in rows:
            if (m, v) in seen:
                continue
            seen.add((m, v))
            key, _, val = v.partition("=")
            put_row(store, m, v, p, mean, std, mag=float(val) if key == "magnification" else 2.5,
                    non_default={key: float(val)} if v else {})
    return store


@pytest.mark.parametrize("name", sorted(PAPER))
def test_table_layout_matches_golden(name, paper_store):
    """Each ablation's LaTeX in the paper's layout, from records holding the paper's numbers."""
    a = get_ablation(name)
    items, notes = a.grid()
    summary = paper_store.summarize("blca")
    rows = build_rows(a, items, summary, "survival")
    assert_golden(f"ablation_{name}.tex", to_latex(a, rows, "blca", "survival", summary, notes=notes))
    md = to_markdown(a, rows, "blca", "survival", summary)
    assert "paper (BLCA)" in md and "| 0.6507 |" in md  # the published figure beside ours
    assert "§" not in md and "¶" not in md  # paper protocol, pretrained: nothing to mark


def test_table_details_compute_partial_marks_and_options(tmp_path):
    store = ResultsStore(tmp_path)
    put_row(store, "pixelmamba-6m", "", 6_265_750, 0.6, 0.1, n=2, protocol="wsi-bench", weights=RANDOM,
            non_default={"magnification": 0.625, "scan_window": 64, "epochs": 2}, mag=0.625)
    summary = store.summarize("blca")
    a = get_ablation("end-to-end")
    rows = build_rows(a, a.grid()[0], summary, "survival")
    # names from the records; rows not run keep their method's name and show –
    assert [r.cells["method"] for r in rows] == ["longvit-s", "vim-ti", "Pixel-Mamba-Surv"]
    tex = to_latex(a, rows, "demo", "survival", summary, notes=["scan_window mapped"], similar={2},
                   stats_note="STATS", compute=True)
    assert "Peak mem. (GB) & Train s/slide & C-index" in tex and "0.10 & 0.10 &" in tex
    # the only finished row has 2 of 5 folds: shown in grey italics, not ranked
    assert r"\textcolor{gray}{\itshape 0.6000 $\pm$ 0.1000 (2/5 folds)$^{\approx}$}" in tex and "longvit-s & – & – & – & – & –" in tex
    assert r"Scan\_window mapped." in tex and tex.count("STATS") == 1 and "2 of 3 rows still to run" in tex
    md = to_markdown(a, rows, "demo", "survival", summary)
    assert "| Pixel-Mamba-Surv ¶§¹ | Pixel-Mamba | 6.3 |" in md
    assert "¹ epochs=2, magnification=0.625, scan_window=64." in md and "§ Protocol wsi-bench" in md
    # the swept setting has a column of its own: not repeated in the row's footnote
    m = get_ablation("magnification")
    put_row(store, "pixelmamba-6m", "magnification=0.3125", 6_265_750, 0.6, 0.1, mag=0.3125, weights=RANDOM,
            protocol="wsi-bench", non_default={"magnification": 0.3125, "scan_window": 64})
    summary = store.summarize("blca")
    rows = build_rows(m, m.grid(dataset_options={"values": {0.625: 0.3125}})[0], summary, "survival")
    md = to_markdown(m, rows, "demo", "survival", summary)
    assert "| Pixel-Mamba-Surv ¶§¹ | Pixel-Mamba | 0.3125x |" in md and "¹ scan_window=64." in md
    st = get_ablation("token-scale")
    put_row(store, "pixelmamba-6m", "", 6_265_750, 0.3, 0.1, task="staging")
    summary = store.summarize("blca")
    tex = to_latex(st, build_rows(st, st.grid()[0], summary, "staging"), "demo", "staging", summary)
    assert "Macro-F1" in tex and "Pixel-Mamba-Stage" in tex and "(population, ddof=0)" in tex


def test_published_column_is_empty_for_values_the_paper_did_not_run(tmp_path):
    """A dataset's grid with values the paper has no figure for (the demo's scan windows 64 and 96):
    their "paper" cell is –, never the value itself; 32, which the paper ran, keeps 0.6083."""
    store = ResultsStore(tmp_path)
    a = get_ablation("scan-window")
    items, _ = a.grid(dataset_options={"values": [32, 64, 96]})
    for it in items:
        put_row(store, "pixelmamba-6m", it.variant, 6_265_750, 0.5, 0.1, weights=RANDOM, protocol="wsi-bench",
                non_default=dict(it.model), options=dict(it.model))
    summary = store.summarize("blca")
    rows = build_rows(a, items, summary, "survival")
    assert [r.published for r in rows] == [0.6083, None, None]
    md = to_markdown(a, rows, "demo", "survival", summary)
    assert "64.0000" not in md and "96.0000" not in md and "| 0.6083 |" in md
    assert [line.rstrip().endswith("| – |") for line in md.splitlines() if "| 64 |" in line or "| 96 |" in line] == [True, True]


def test_rows_at_chance_are_marked_with_the_test_stated(tmp_path):
    store = ResultsStore(tmp_path)
    put_row(store, "pixelmamba-6m", "", 6_265_750, 0.5, 0.1)
    summary = store.summarize("blca")
    a = get_ablation("end-to-end")
    rows = build_rows(a, a.grid()[0], summary, "survival")
    md = to_markdown(a, rows, "blca", "survival", summary, chance={2}, chance_note="CHANCE TEST")
    assert "| **0.5000 ± 0.1000** ∘ |" in md and "∘ CHANCE TEST." in md
    assert "∘" not in to_markdown(a, rows, "blca", "survival", summary)


def test_ablation_escapes_backslashes(tmp_path):
    """The one escape: a backslash in a note or a cell is printed, not taken for a LaTeX command."""
    store = ResultsStore(tmp_path)
    put_row(store, "pixelmamba-6m", "", 6_265_750, 0.6, 0.1)
    summary = store.summarize("blca")
    a = get_ablation("end-to-end")
    tex = to_latex(a, build_rows(a, a.grid()[0], summary, "survival"), "blca", "survival", summary,
                   notes=[r"grid from C:\\data & 50%"])
    assert r"Grid from C:\textbackslash{}\textbackslash{}data \& 50\%." in tex


@pytest.mark.slow  # ~40 s of CPU: generating the slides, three CLI invocations, five units
def test_ablation_runs_end_to_end_and_resumes(tmp_path, monkeypatch):
    """A two-value grid (Vision Mamba depth 1 vs 2, tiny embedding) on a 8-case cohort, one fold of
    2 (another split set than the default 5 folds: variants and table are named after it, seed0-k2):
    units land as variants, the table is written, a rerun does nothing, a new value runs alone."""
    from bench.cli import main
    from fake_inputs import write_tiny_demo_spec

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    spec = write_tiny_demo_spec(tmp_path, epochs=1, magnification=0.15,
                                extra="ablations:\n  depth: {values: {2: 3}}\n")
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
    assert sorted(p.parent.parent.name for p in done) == ["depth_1+seed0-k2", "depth_3+seed0-k2"]  # 2 -> 3 by the dataset's map; "=" is sanitized
    cfg = json.loads((runs / "depth_3+seed0-k2" / "fold0" / "config.json").read_text())
    assert cfg["variant"] == "depth=3+seed0-k2" and cfg["model"]["depth"] == 3 and cfg["model"]["embed_dim"] == 16
    m = json.loads((runs / "depth_1+seed0-k2" / "fold0" / "metrics.json").read_text())
    assert m["variant"] == "depth=1+seed0-k2" and m["peak_rss_mb"] > 0 and m["train_seconds_per_slide"] > 0
    assert m["input"] == {"kind": "slide", "encoder": None, "magnification": 0.15, "regions": None,
                          "source": "extracted"}
    md = (res / "tiny" / "tables" / "depth_staging_seed0-k2.md").read_text()
    assert "| Vim-Ti | 1 |" in md and "| Vim-Ti | 3 |" in md and "| Vision-Mamba-Stage ¶§" in md
    assert "magnification=0.15" in md and "depth=" not in md  # options in footnotes; the swept one has its column
    assert "(1/2 folds)" in md and "Depth mapped for this dataset's size: 2 -> 3" in md
    assert (res / "tiny" / "tables" / "depth_staging_seed0-k2.tex").is_file()
    assert len(pd.read_csv(res / "tiny" / "tables" / "depth_staging_seed0-k2_stats.csv")) == 1
    chance = pd.read_csv(res / "tiny" / "tables" / "depth_staging_seed0-k2_chance.csv")  # every row against chance
    assert sorted(chance["row"]) == ["vim-ti/depth=1+seed0-k2", "vim-ti/depth=3+seed0-k2"] and chance["p_chance"].between(0, 1).all()

    assert main(args) == 0  # rerun: nothing to do, nothing touched
    assert {p: p.stat().st_mtime_ns for p in runs.glob("*/fold0/metrics.json")} == done
    assert main(args[:1] + [args[1], "--values", "1,5"] + args[2:]) == 0  # only the new value runs
    assert {p: p.stat().st_mtime_ns for p in runs.glob("*/fold0/metrics.json") if p in done} == done
    assert (runs / "depth_5+seed0-k2" / "fold0" / "metrics.json").is_file()


def test_identical_variants_are_called_out(tmp_path):
    """Two alpha values that built the same network (few regions) give the same predictions: said."""
    store = ResultsStore(tmp_path)
    pred = pd.DataFrame({"case_id": ["A", "B"], "time": [3.0, 5.0], "event": [1.0, 0.0], "risk": [0.2, 0.1]})
    rows = []
    for v, risk in (("alpha=0.4", [0.2, 0.1]), ("alpha=0.8", [0.2, 0.1]), ("alpha=1.0", [0.1, 0.2])):
        u = Unit("demo", "survival", "pixelmamba-6m", 0, v)
        store.prepare(u, {}, "h")
        store.finish(u, pred.assign(risk=risk), pd.DataFrame(),
                     make_record(task="survival", method=u.method, variant=v, primary_metric="c_index",
                                 metrics={"c_index": 0.5}))
        rows.append(Row(GridItem("pixelmamba-6m", v), {}, Cell("0.5000"), 1))
    assert identical_rows(store, "demo", "survival", rows) == [
        "alpha=0.4, alpha=0.8 gave identical predictions: the setting changes nothing at this input size"]
