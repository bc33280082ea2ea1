"""`bench table --published SOURCE`: the paper's numbers beside ours, the difference and the known
protocol differences; on the demo, a clear "not comparable" note instead of a difference."""

from __future__ import annotations

import pandas as pd
import pytest

from bench.cli import main
from bench.report.published import load_published


def _rows(results, dataset, method="abmil.resnet50", vals=(0.5, 0.6, 0.7, 0.4, 0.55)):
    from bench.results.store import ResultsStore, Unit
    from record_factory import make_record, staging_predictions

    store = ResultsStore(results)
    for k, v in enumerate(vals):
        u = Unit(dataset, "staging", method, k)
        store.prepare(u, {}, "h")
        store.finish(u, staging_predictions(), pd.DataFrame(),
                     make_record(dataset=dataset, method=method, fold=k, metrics={"macro_f1": v}))


def test_the_shipped_source_holds_the_papers_tables():
    pub = load_published("pixel-mamba")
    assert set(pub["table"]) == {"Table 2", "Table 3", "Table 4", "Table 5", "Table 6", "Table 9",
                                 "Supplement Table 4"}
    t2 = pub[pub["table"] == "Table 2"]
    assert len(t2) == 22 * 6  # 22 rows x (3 cohorts x 2 tasks)
    row = t2[(t2["method"] == "pixelmamba-6m") & (t2["dataset"] == "blca") & (t2["task"] == "survival")].iloc[0]
    assert (row["mean"], row["std"], row["metric"]) == (0.6507, 0.0485, "c_index")
    # Table 5 (scan window) and Table 6 (magnification) as printed; 224 and 2.5x are Table 2's model
    t5 = pub[pub["table"] == "Table 5"]
    assert list(t5["mean"]) == [0.6083, 0.6190, 0.6507, 0.6242] and list(t5["std"]) == [0.0562, 0.0374, 0.0485, 0.0386]
    assert [n.rsplit(" ", 1)[1] for n in t5["notes"]] == ["32", "128", "224", "320"]
    t6 = pub[pub["table"] == "Table 6"]
    assert list(t6["mean"]) == [0.5855, 0.6307, 0.6507] and list(t6["std"]) == [0.0286, 0.0500, 0.0485]
    assert [n.rsplit(" ", 1)[1] for n in t6["notes"]] == ["0.6x", "1.0x", "2.5x"]
    cam = pub[(pub["table"] == "Supplement Table 4") & (pub["method"] == "abmil.conch") & (pub["metric"] == "auc")]
    assert cam.iloc[0]["mean"] == 0.9853


def test_table_published_on_a_tcga_cohort_shows_the_difference(tmp_path, capsys):
    _rows(tmp_path, "blca")
    assert main(["table", "--dataset", "blca", "--results", str(tmp_path), "--no-figures",
                 "--published", "pixel-mamba"]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("| abmil.resnet50 |"))
    # ours: mean of (0.5, 0.6, 0.7, 0.4, 0.55) = 0.55, population std 0.1; the paper: 0.4100 ± 0.0498
    assert "| 0.5500 ± 0.1000 | 0.4100 ± 0.0498 | +0.1400 |" in line, line
    assert "split set: ours seeded folds, theirs not published" in line and "protocol preset wsi-bench" in line


def test_table_published_on_the_demo_says_not_comparable(tmp_path, capsys):
    _rows(tmp_path, "demo")
    assert main(["table", "--dataset", "demo", "--results", str(tmp_path), "--no-figures",
                 "--published", "pixel-mamba"]) == 0
    out = capsys.readouterr().out
    assert "not comparable: demo cohort" in out and "+0." not in out.split("Published:")[1]
    assert "| abmil.resnet50 | blca | staging | 0.4100 ± 0.0498 |" in out


def test_an_unknown_source_is_refused_before_any_table(tmp_path, capsys):
    _rows(tmp_path, "blca")
    assert main(["table", "--dataset", "blca", "--results", str(tmp_path), "--published", "pixel-mambo"]) == 2
    assert "unknown published source 'pixel-mambo'; known: pixel-mamba" in capsys.readouterr().err
    assert not (tmp_path / "tables").exists()


@pytest.mark.parametrize("col", ["mean", "split_set"])
def test_a_user_source_missing_a_column_names_the_file(col, tmp_path, monkeypatch):
    (tmp_path / "published").mkdir()
    f = tmp_path / "published" / "mine.csv"
    cols = [c for c in ["source", "table", "dataset", "task", "metric", "method", "encoder", "mean", "std",
                        "split_set", "notes"] if c != col]
    f.write_text(",".join(cols) + "\n")
    monkeypatch.setenv("BENCH_CONFIG", str(tmp_path))
    with pytest.raises(ValueError, match=rf"mine.csv: missing column\(s\) {col}"):
        load_published("mine")
