"""Table 2 and the classification table, built from unit records through a real results store:
golden LaTeX and Markdown, ranks on printed rounding, honest marks, first-look details."""

import pandas as pd
import pytest

import golden_check
from golden_check import assert_golden
from record_factory import make_record

from bench.results.records import InputSpec, WeightsProvenance
from bench.report.render import Cell, Column, Row, Table, latex_escape, to_latex as render_latex, \
    to_markdown as render_markdown
from bench.results.store import ResultsStore, Unit
from bench.report.tables import build_table, classification, human_count, table2, to_latex, to_markdown, \
    two_sig

G_RESNET = "Two-stage MIL; patch features: ResNet-50 (ImageNet)"
G_CONCH = "Two-stage MIL; patch features: VL-FM (CONCH)"
G_GIGA = "Two-stage MIL; patch features: V-FM (GigaPath)"
PRED = pd.DataFrame({"case_id": ["A", "B"], "label": [0, 1], "pred": [0, 1]})
PREDS = {"staging": pd.DataFrame({"case_id": ["A", "B"], "stage": [0, 1], "pred": [0, 1]}),
         "survival": pd.DataFrame({"case_id": ["A", "B"], "time": [5.0, 9.0], "event": [1, 0], "risk": [1.0, 0.0]}),
         "classification": PRED}
METRIC = {"staging": "macro_f1", "survival": "c_index", "classification": "auc"}


def random_encoder(e: str) -> list[WeightsProvenance]:
    return [WeightsProvenance(f"encoder {e}", "random", f"random initialisation (no {e} weights found)")]


def mil(method: str, label: str, enc: str, order: int, **kw) -> dict:
    groups = {"resnet50": (G_RESNET, "ResNet-50", "ResNet-50", "25M"), "conch": (G_CONCH, "CONCH", "ViT-B", "86M"),
              "gigapath": (G_GIGA, "GigaPath", "ViT-G", "1.1G")}
    group, enc_label, backbone, frozen = groups[enc]
    inp = InputSpec("features", encoder=enc, magnification=20.0)
    return {"method": method, "label": label, "group": group, "backbone": backbone, "encoder": enc,
            "encoder_label": enc_label, "frozen_params_text": frozen, "default_input": inp, "input": inp,
            "info": {"order": order}, **kw}


def e2e(method: str, label: str, backbone: str, order: int, weights: list, non_default: dict, mag: float = 0.625,
        **kw) -> dict:
    return {"method": method, "label": label, "group": "End-to-end", "family": "end-to-end", "backbone": backbone,
            "encoder": None, "encoder_label": "", "frozen_params_text": "", "params": 6_265_750,
            "trainable_params": 6_265_750, "default_input": InputSpec("slide", magnification=2.5),
            "input": InputSpec("slide", magnification=mag), "weights": weights,
            "info": {"order": order, "non_default": non_default}, **kw}


def put(store: ResultsStore, kw: dict, task: str, values: list[float], dataset: str = "demo") -> None:
    """One row's finished folds, one record per value."""
    for fold, v in enumerate(values):
        rec = make_record(**{"dataset": dataset, "task": task, "fold": fold, "primary_metric": METRIC[task],
                             "metrics": {METRIC[task]: v}, **kw})
        u = Unit(rec.dataset, rec.task, rec.method, fold, rec.variant)
        store.prepare(u, {}, "h")
        store.finish(u, PREDS[task], pd.DataFrame(), rec)


FIVE = lambda m: [m - 0.04, m - 0.02, m, m + 0.02, m + 0.04]  # noqa: E731  mean m, population std 0.0283


def demo_store(tmp_path) -> ResultsStore:
    """Every kind of row Table 2 has: MIL rows with random, pretrained and stand-in encoders, a
    hierarchical row with a random second stage, end-to-end rows from random initialisation,
    --from-scratch and --init, a paper-protocol row, a one-fold cell and a missing cell."""
    s = ResultsStore(tmp_path / "results")
    rows = [
        (mil("meanmil.resnet50", "MeanMIL", "resnet50", 0, params=4100 + 25_000_000, trainable_params=4100,
             weights=random_encoder("resnet50")), 0.376, 0.5256),
        (mil("abmil.resnet50", "ABMIL", "resnet50", 6, params=921_221, trainable_params=921_221,
             weights=random_encoder("resnet50")), 0.41, 0.5813),
        (mil("abmil.conch", "ABMIL", "conch", 7, params=659_077, trainable_params=659_077, protocol="paper",
             weights=[WeightsProvenance("encoder conch", "pretrained", "pretrained (hub; fingerprint ab12)")]),
         0.526, 0.6057),
        (mil("abmil.gigapath", "ABMIL", "gigapath", 8, params=1_183_365, trainable_params=1_183_365,
             frozen_params_text="stand-in",
             weights=[WeightsProvenance("encoder gigapath", "standin",
                                        "random stand-in (ViT/16 2x192); no gigapath weights found")]), 0.3, 0.5),
        ({"method": "hipt", "label": "HIPT", "group": "Two-stage hierarchical representation", "backbone": "HIPT-ViT-6",
          "encoder": "hipt-vit256", "encoder_label": "", "frozen_params_text": "24.4M", "params": 3_376_901,
          "trainable_params": 595_397, "info": {"order": 18},
          "weights": [WeightsProvenance("encoder hipt-vit256", "pretrained", "pretrained (explicit)"),
                      WeightsProvenance("vit4k", "random", "random initialisation (HIPT_VIT4K_WEIGHTS unset)")]},
         0.35, 0.55),
        (e2e("pixelmamba-6m", "Pixel-Mamba-6M", "Pixel-Mamba", 25,
             [WeightsProvenance("model", "random", "random initialisation (no pretrained weights)")],
             {"epochs": 2, "magnification": 0.625, "scan_window": 64}), 0.45, 0.7),
        (e2e("vim-ti", "Vision Mamba (16)", "Vim-Ti", 22,
             [WeightsProvenance("model", "scratch", "random initialisation (--from-scratch)")],
             {"epochs": 2, "magnification": 0.625, "scan_window": 64}), 0.40, None),
        (e2e("longvit-s", "LongViT-S", "ViT-S", 21,
             [WeightsProvenance("model", "init", "--init pre.pt (sha256 0123456789abcdef)", "pre.pt",
                                "0123456789abcdef")], {"epochs": 2}), 0.39, 0.52),
    ]
    for kw, staging, survival in rows:
        put(s, kw, "staging", FIVE(staging))
        if survival is not None:
            put(s, kw, "survival", [survival] if kw["method"] == "pixelmamba-6m" else FIVE(survival))
    return s


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> ResultsStore:
    return demo_store(tmp_path_factory.mktemp("table2"))


def test_table2_matches_golden(store):
    summary = store.summarize("demo")
    wide, cols = build_table(summary, expected=["meanmil.resnet50", "transmil.resnet50"])
    t = table2(wide, cols, summary, label="tab:table2_demo")
    assert_golden("table2_demo.tex", render_latex(t))
    assert_golden("table2_demo.md", render_markdown(t))


def test_a_missing_golden_file_fails(monkeypatch):
    monkeypatch.setattr(golden_check, "UPDATE", False)
    with pytest.raises(AssertionError, match="golden file .*no-such-table.tex is missing: write it with BENCH_UPDATE_GOLDEN=1"):
        assert_golden("no-such-table.tex", "anything")
    with pytest.raises(AssertionError, match="differs"):
        assert_golden("table2_demo.tex", "not the table")


def test_sections_in_paper_order_without_the_registry(store):
    wide, _ = build_table(store.summarize("demo"), expected=["transmil.resnet50"])
    # Table 2: ResNet-50, GigaPath, CONCH, hierarchical, end-to-end; inside a section the recorded order
    assert list(wide["method"]) == ["meanmil.resnet50", "abmil.resnet50", "abmil.gigapath", "abmil.conch", "hipt",
                                    "longvit-s", "vim-ti", "pixelmamba-6m", "transmil.resnet50"]


def test_best_bold_second_underlined_on_printed_rounding(tmp_path):
    s = ResultsStore(tmp_path)
    # 0.41231 and 0.41234 both print 0.4123: a tie, both bold; 0.40 is second
    for m, v in (("abmil.resnet50", 0.41231), ("meanmil.resnet50", 0.41234), ("maxmil.resnet50", 0.40)):
        put(s, mil(m, m, "resnet50", 0), "staging", [v] * 5)
    md = to_markdown(*build_table(s.summarize("demo")))
    assert md.count("**0.4123**") == 2 and "_0.4000_" in md  # identical folds: no "± 0.0000"


def test_caption_names_only_the_columns_present(tmp_path):
    s = ResultsStore(tmp_path)
    put(s, mil("abmil.resnet50", "ABMIL", "resnet50", 0), "staging", FIVE(0.5))
    tex = to_latex(*build_table(s.summarize("demo")), summary=s.summarize("demo"))
    cap = tex.split(r"\caption{")[1]
    assert cap.startswith(r"Tumor staging (Macro-F1): mean $\pm$ standard deviation (population, ddof=0) over the 5")
    assert "survival" not in cap.lower() and "C-index" not in cap
    put(s, mil("abmil.resnet50", "ABMIL", "resnet50", 0), "survival", FIVE(0.6))
    tex = to_latex(*build_table(s.summarize("demo")), summary=s.summarize("demo"))
    assert r"Tumor staging (Macro-F1) and survival analysis (C-index): mean $\pm$" in tex


def test_a_single_fold_says_so_instead_of_a_zero_spread(store):
    md = to_markdown(*build_table(store.summarize("demo")))
    assert "0.7000 (1/5 folds)" in md and "± 0.0000" not in md


def test_rows_still_to_run_show_dashes_and_a_count(store):
    summary = store.summarize("demo")
    wide, cols = build_table(summary, expected=["transmil.resnet50", "ilra.resnet50", "abmil.resnet50"])
    md = to_markdown(wide, cols, summary=summary)
    assert "| *Still to run* |" in md and "| transmil.resnet50 |  | – | – | – |" in md
    assert "2 of 10 rows still to run; 1 missing cell(s) in other rows" in md  # vim-ti has no survival
    assert r"–: not run yet (2 of 10 rows still to run" in to_latex(wide, cols, summary=summary)
    wide, cols = build_table(summary)  # default: only the methods with results, nothing pending
    assert "Still to run" not in to_markdown(wide, cols) and "rows still to run" not in to_markdown(wide, cols)


def test_every_randomly_initialised_or_non_paper_row_is_marked(store):
    summary = store.summarize("demo")
    wide, cols = build_table(summary)
    md = to_markdown(wide, cols, summary=summary)
    lines = {ln.split(" | ")[0].lstrip("| "): ln for ln in md.splitlines() if ln.startswith("| ")}
    assert lines["MeanMIL †§"].startswith("| MeanMIL †§ | ResNet-50 | 25M + 4.1K |")
    assert "ABMIL" in lines and "| ABMIL | ViT-B | 86M + 0.7M |" in md  # pretrained, paper protocol: no mark
    assert "| ABMIL ‡§ | ViT-G | stand-in + 1.2M |" in md
    assert "| HIPT †§ | HIPT-ViT-6 | 24.4M + 0.6M |" in md
    # end-to-end rows from random initialisation (no weights, or --from-scratch) carry ¶; --init names its sha
    assert "| Pixel-Mamba-6M ¶§² |" in md and "| Vision Mamba (16) ¶§² |" in md and "| LongViT-S §¹ |" in md
    assert ("¶ Trained end to end from random initialisation, no pretrained weights: model: random initialisation "
            "(--from-scratch); model: random initialisation (no pretrained weights).") in md
    assert "† Random initialisation of a pretrained part, not comparable to published numbers: encoder " \
           "resnet50: random initialisation (no resnet50 weights found); vit4k: random initialisation " \
           "(HIPT_VIT4K_WEIGHTS unset)." in md
    assert "‡ Small stand-in architecture" in md and "gigapath: random stand-in (ViT/16 2x192)" in md
    assert "§ Protocol wsi-bench, not the paper's" in md
    # every non-default option of a row, not only its magnification
    assert "² epochs=2, magnification=0.625, scan_window=64." in md
    assert "¹ --init pre.pt (sha256 0123456789abcdef); epochs=2." in md
    tex = to_latex(wide, cols, summary=summary)
    assert r"Pixel-Mamba-6M$^{\P\S,2}$ & Pixel-Mamba & 6.3M" in tex and r"$^{\P}$Trained end to end" in tex
    assert r"$^{2}$epochs=2, magnification=0.625, scan\_window=64." in tex
    assert r"$^{1}$-{}-init pre.pt (sha256 0123456789abcdef)" in tex  # not an en dash


def test_std_ddof_is_stated_and_switchable(store):
    pop, sample = store.summarize("demo"), store.summarize("demo", ddof=1)
    md0 = to_markdown(*build_table(pop), summary=pop)
    md1 = to_markdown(*build_table(sample), summary=sample)
    assert "(population, ddof=0)" in md0 and "0.4100 ± 0.0283" in md0
    assert "(sample, ddof=1)" in md1 and "0.4100 ± 0.0316" in md1


def test_stats_marks_and_compute_columns(store):
    summary = store.summarize("demo")
    wide, cols = build_table(summary)
    i = int(wide.index[wide["method"] == "abmil.resnet50"][0])
    tex = to_latex(wide, cols, summary=summary, similar={("survival", "demo"): {i}}, stats_note=r"$^{\approx}$NOTE",
                   compute=True, layout="split")
    assert r"\multicolumn{5}{l}{Tasks}" in tex and "Params. & Peak mem. (GB) & Train s/slide & DEMO" in tex
    # second now: the 1-fold Pixel-Mamba survival cell is not ranked
    assert r"& \underline{0.5813 $\pm$ 0.0283}$^{\approx}$ \\" in tex and r"$^{\approx}$NOTE" in tex
    assert "& 0.10 & 0.10 &" in tex  # 100 MB peak, 0.1 s per slide (record_factory's)
    md = to_markdown(wide, cols, summary=summary, similar={("survival", "demo"): {i}}, compute=True)
    assert "| _0.5813 ± 0.0283_ ≈ |" in md and "≈ not significantly different" in md
    plain = to_latex(wide, cols)
    assert "Peak mem." not in plain and r"\approx" not in plain


def test_classification_table_from_records(tmp_path):
    s = ResultsStore(tmp_path)
    kw = e2e("pixelmamba-6m", "Pixel-Mamba-6M", "Pixel-Mamba", 25,
             [WeightsProvenance("model", "random", "random initialisation (no pretrained weights)")],
             {"regions": {"n": 2, "size": 64, "magnification": 5}})
    for fold in range(2):
        rec = make_record(**{**kw, "dataset": "cam", "task": "classification", "fold": fold, "primary_metric": "auc",
                             "metrics": {"auc": 0.8 + 0.1 * fold, "accuracy": 0.7}})
        u = Unit("cam", "classification", rec.method, fold)
        s.prepare(u, {}, "h")
        s.finish(u, PRED, pd.DataFrame(), rec)
    tex, md = (lambda t: (render_latex(t), render_markdown(t)))(classification(s.summarize("cam"), "cam"))
    assert md.splitlines()[0] == "| Method | AUC | ACC |"
    assert "| Pixel-Mamba-6M ¶§¹ | *0.8500 ± 0.0500 (2/5 folds)* | *0.7000 (2/5 folds)* |" in md  # partial: not ranked
    assert "¹ regions=(magnification=5, n=2, size=64)." in md
    assert r"\begin{tabular}{lcc}" in tex and "AUC and accuracy, mean $\\pm$ standard deviation (population, ddof=0)" in tex


def test_cli_lists_expected_rows_and_switches_ddof(store, capsys):
    from bench.cli import main

    assert main(["table", "--results", str(store.root), "--methods", "transmil.*,hipt", "--std-ddof", "1",
                 "--no-figures"]) == 0
    out = capsys.readouterr().out
    assert "| transmil.resnet50 |" in out and "| transmil.conch |" in out and "| hipt |" not in out  # hipt ran
    assert "(sample, ddof=1)" in out and "3 of 11 rows still to run" in out
    assert f"no --dataset: using every dataset with results under {store.root / 'runs'}: demo" in out
    assert "| *Still to run* |" in (store.root / "tables" / "table2.md").read_text()


def test_one_latex_escape():
    assert latex_escape(r"a\b & 50% _x_ #1 $y$ {z} ~ ^ ±") == (
        r"a\textbackslash{}b \& 50\% \_x\_ \#1 \$y\$ \{z\} \textasciitilde{} \textasciicircum{} $\pm$")
    t = Table([Column("a\\b"), Column("v", rank=True)], [Row([r"x_1\y", Cell("1.0", 1.0)])])
    assert r"a\textbackslash{}b & v \\" in render_latex(t) and r"x\_1\textbackslash{}y & \textbf{1.0}" in render_latex(t)


def test_human_counts_as_in_table2():
    assert [human_count(n) for n in (4100, 2052, 6148, 921221, 659077, 1_183_365, 6_200_000)] == \
        ["4.1K", "2.1K", "6.1K", "0.9M", "0.7M", "1.2M", "6.2M"]


def test_two_sig_never_prints_exponents() -> None:
    cases = {0.0042: "0.0042", 0.99: "0.99", 2.0: "2.0", 1.14: "1.1", 23.4: "23", 123.4: "120",
             9.96: "10", 1449.0: "1400", 0.0: "0"}
    assert {v: two_sig(v) for v in cases} == cases


# --- LaTeX that fits the page -------------------------------------------------------------------------
PREAMBLE = r"""\documentclass[10pt,twocolumn]{article}
\usepackage[margin=0.75in]{geometry}
\usepackage{booktabs,xcolor,rotating}
\begin{document}
"""


def compile_log(tmp_path, tex: str, name: str) -> str:
    """pdflatex's log of ``tex`` in a two-column article (the paper's layout)."""
    import shutil
    import subprocess

    if not shutil.which("pdflatex"):
        pytest.skip("pdflatex not installed: apt-get install -y texlive-latex-recommended texlive-latex-extra")
    (tmp_path / f"{name}.tex").write_text(PREAMBLE + tex + "\n\\end{document}\n")
    p = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", f"{name}.tex"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)
    log = (tmp_path / f"{name}.log").read_text(errors="replace")
    assert p.returncode == 0, log[-3000:]
    assert "Missing character" not in log, [ln for ln in log.splitlines() if "Missing character" in ln]
    return log


@pytest.mark.parametrize("layout", ["compact", "split", "landscape"])
def test_each_latex_layout_compiles_without_overfull_boxes(store, tmp_path, layout):
    summary = store.summarize("demo")
    wide, cols = build_table(summary, expected=["transmil.resnet50"])
    from bench.report.stats import chance_note

    marks = dict(similar={c: {1} for c in cols}, stats_note="", chance={c: {0} for c in cols},
                 chance_note=chance_note())  # every mark and footnote the table can print
    tex = "\n".join(render_latex(table2(wide, c, summary, label=f"tab:{layout}{i}", layout=layout, **marks))
                    for i, c in enumerate([cols] if layout != "split" else [[c] for c in cols]))
    if layout == "landscape":
        assert r"\begin{sidewaystable}" in tex
    log = compile_log(tmp_path, tex, layout)
    assert "Overfull \\hbox" not in log, [ln for ln in log.splitlines() if "Overfull" in ln]
    assert "Float too large" not in log, [ln for ln in log.splitlines() if "too large" in ln]


def test_paper_scale_table2_fits_a_two_column_page(store, tmp_path):
    """Three cohorts × two tasks (the paper's Table 2): the default compact layout still fits, the
    one-line form of the same table would not."""
    summary = pd.concat([store.summarize("demo").assign(dataset=d) for d in ("blca", "brca", "luad")])
    wide, cols = build_table(summary)
    assert len(cols) == 6
    log = compile_log(tmp_path, render_latex(table2(wide, cols, summary, layout="compact")), "paper")
    assert "Overfull \\hbox" not in log, [ln for ln in log.splitlines() if "Overfull" in ln]
    t = table2(wide, cols, summary, layout="compact")
    t.stack = False
    assert "Overfull \\hbox" in compile_log(tmp_path, render_latex(t), "oneline")  # the check can fail


def test_a_row_with_every_fold_outranks_a_better_partial_row(tmp_path):
    s = ResultsStore(tmp_path)
    put(s, mil("ilra.gigapath", "ILRA-MIL", "gigapath", 0), "survival", [0.8571])  # 1 of 5 folds
    put(s, mil("transmil.resnet50", "TransMIL", "resnet50", 1), "survival", [0.70, 0.62])  # 2 of 5 folds
    put(s, mil("maxmil.resnet50", "MaxMIL", "resnet50", 2), "survival", FIVE(0.6))
    put(s, mil("abmil.resnet50", "ABMIL", "resnet50", 3), "survival", FIVE(0.5))
    summary = s.summarize("demo")
    wide, cols = build_table(summary)
    md = to_markdown(wide, cols, summary=summary)
    assert "| **0.6000 ± 0.0283** |" in md and "| _0.5000 ± 0.0283_ |" in md  # complete rows ranked
    assert "| *0.8571 (1/5 folds)* |" in md and "| *0.6600 ± 0.0400 (2/5 folds)* |" in md  # shown, not ranked
    assert "over the 5 patient-level test folds of each complete row" in md and "not ranked" in md
    tex = to_latex(wide, cols, summary=summary, layout="split")
    assert r"Survival Analysis (5-fold - C-index)" in tex
    assert r"\textcolor{gray}{\itshape 0.8571 (1/5 folds)}" in tex
    # no complete row yet: the header says how many folds the rows have, never "5-fold"
    s2 = ResultsStore(tmp_path / "partial")
    put(s2, mil("ilra.gigapath", "ILRA-MIL", "gigapath", 0), "survival", [0.8571])
    put(s2, mil("transmil.resnet50", "TransMIL", "resnet50", 1), "survival", [0.70, 0.62])
    summary = s2.summarize("demo")
    tex = to_latex(*build_table(summary), summary=summary, layout="split")
    assert r"Survival Analysis (1–2 of 5 folds - C-index)" in tex and "5-fold" not in tex
    assert r"\textbf" not in tex.split(r"\caption")[0]
