"""The command line over a table of bad inputs: each gives one clean `error:` line naming what is
wrong and a non-zero exit, never a traceback. In-process calls (`bench.cli.main`), so the table runs
in seconds; every case fails before a cohort is generated or a model is built."""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path

import pandas as pd
import pytest

from bench.cli import main


def cli(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    return code, err.getvalue()


RUN = ["run", "--methods", "meanmil.resnet50", "--dataset", "demo"]
CASES = [  # (argv, environment, the error line's words)
    (["--help"], {"BENCH_CONFIG": "{tmp}/nope"}, "$BENCH_CONFIG={tmp}/nope is not a directory"),
    (["ls"], {"BENCH_CONFIG": "{tmp}/overlay"}, "the config overlay has no folder 'method' (did you mean 'methods'?)"),
    (["run", "--methods", "meanmil.resnet50", "--dataset", "{tmp}/nope/x.yaml"], {},
     "dataset file {tmp}/nope/x.yaml does not exist"),
    ([*RUN, "--variant", ""], {}, "--variant '': the variant name is empty"),
    ([*RUN, "--variant", "v" * 300], {}, "is 300 characters long; the limit is 100"),
    ([*RUN, "--variant", "seed1-k5"], {}, "'seed1-k5' is reserved"),
    (["ablate", "alpha", "--values", "abc", "--dataset", "demo"], {}, "alpha='abc' cannot run"),
    (["ablate", "alpha", "--values", "1e9", "--dataset", "demo"], {}, "alpha=1000000000.0 cannot run"),
    (["ablate", "scan-window", "--values", "0", "--dataset", "demo"], {}, "scan_window=0 cannot run"),
    (["ablate", "scan-window", "--values", "-32", "--dataset", "demo"], {}, "scan_window=-32 cannot run"),
    (["ablate", "scan-window", "--values", "100000", "--dataset", "demo"], {}, "scan_window=100000 cannot run"),
]


@pytest.mark.parametrize("argv, env, words", CASES, ids=[" ".join(c[0])[:40] for c in CASES])
def test_bad_input_is_one_clean_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, argv, env, words) -> None:
    (tmp_path / "overlay" / "method").mkdir(parents=True)
    for k, v in env.items():
        monkeypatch.setenv(k, v.format(tmp=tmp_path))
    monkeypatch.setenv("BENCH_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "cache"))
    code, err = cli([a.format(tmp=tmp_path) for a in argv])
    assert code != 0 and "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and words.format(tmp=tmp_path) in lines[0], err
    assert not (tmp_path / "results").exists() and not (tmp_path / "cache").exists()


def test_summary_csv_that_is_a_directory(tmp_path: Path) -> None:
    from record_factory import make_record

    from bench.results.store import RecordError, ResultsStore, Unit

    store = ResultsStore(tmp_path)
    rec = make_record()
    u = Unit(rec.dataset, rec.task, rec.method, rec.fold)
    store.prepare(u, {"fold": 0}, rec.config_hash)
    store.finish(u, pd.DataFrame({"case_id": ["a"]}), pd.DataFrame(), rec)
    store.summary_path("demo").mkdir(parents=True)
    with pytest.raises(RecordError, match=r"summary.csv is a directory, so the summary cannot be written there"):
        store.summarize("demo")


def test_semicolon_table_with_decimal_commas_and_cdr_columns(tmp_path: Path, caplog) -> None:
    from bench.data.clinical import load_clinical

    p = tmp_path / "export.csv"  # as a European spreadsheet saves CSV
    p.write_text("case_id;stage;time;event\nTCGA-AA-0001;Stage I;10,5;1\nTCGA-AA-0002;Stage III;7;0\n")
    got = load_clinical(p, "normalized").set_index("case_id")
    assert got.loc["TCGA-AA-0001", "time"] == 10.5 and got.loc["TCGA-AA-0002", "stage"] == 2
    cdr = tmp_path / "cdr.tsv"
    cdr.write_text("bcr_patient_barcode\tajcc_pathologic_tumor_stage\tOS\nTCGA-AA-0001\tStage I\t1\n")
    with caplog.at_level(logging.WARNING):
        load_clinical(cdr, "tcga-cdr")
    assert "no time column (looked for OS.time) for format 'tcga-cdr'" in caplog.text
