"""Published split sets, each written the way its project writes it (MambaMIL's
``csv/Cbioportal/<COHORT>_Splits.csv``, SurvPath's ``splits/5foldcv/tcga_<cohort>/splits_<k>.csv``,
PANTHER's ``TCGA_<COHORT>_overall_survival_k=<k>/{train,val,test}.csv``, a Patho-Bench TSV, a plain
CSV), read into train / early-stopping / test roles per fold and checked against the cohort."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from bench.cli import main
from bench.data.split_import import check_against_cohort, read_split_file
from bench.data.splits import SplitError
from fake_inputs import write_toy_cohort

N = 10
CASES = [f"CASE-{i:03d}" for i in range(N)]
IN_FILE = CASES[:-1] + ["OTHER-999"]  # CASE-009 absent from the files; OTHER-999 not in the cohort


def _expected(roles_of) -> pd.DataFrame:
    """fold, case_id, role of the cohort's cases in the file, from a rule per (case index, fold)."""
    rows = [(k, c, roles_of(i, k)) for k in range(5) for i, c in enumerate(IN_FILE) if c in CASES]
    return pd.DataFrame(rows, columns=["fold", "case_id", "role"]).sort_values(["fold", "case_id"]).reset_index(drop=True)


def _norm(df: pd.DataFrame) -> pd.DataFrame:
    return df.sort_values(["fold", "case_id"]).reset_index(drop=True)[["fold", "case_id", "role"]]


def _cases() -> pd.DataFrame:
    return pd.DataFrame({"case_id": CASES, "stage": [i % 4 for i in range(N)]})


def write_mambamil(path, duplicate=None):
    rows = []
    for i, c in enumerate(IN_FILE):
        folds = {f"Fold {k}": ("val: complete" if i % 5 == k else "train: complete") for k in range(5)}
        rows.append({"Study": "TCGA-TOY", "ID": c, "Event": 10.0 + i, "Status": float(i % 2),
                     "WSI": f"/storage/features/{c}-01Z-00-DX1.pt", "RNA": f"/storage/rna/{c}.csv",
                     "Data_Event": 1, "Data_WSI": 1, "Data_Gene": 1, **folds})
    rows.append({"Study": "TCGA-TOY", "ID": "NOSLIDE-1", "Event": 5.0, "Status": 1.0, "WSI": "", "RNA": "",
                 "Data_Event": 1, "Data_WSI": 0, "Data_Gene": 1, **{f"Fold {k}": "train: missing" for k in range(5)}})
    if duplicate:  # the same patient on a second row, in the other role of fold 0
        rows.append({**rows[CASES.index(duplicate)], "Fold 0": "val: complete"})
    pd.DataFrame(rows).to_csv(path, index=False)


def test_mambamil_val_is_the_test_fold_missing_rows_are_dropped(tmp_path):
    f = tmp_path / "TOY_Splits.csv"
    write_mambamil(f)
    imp = check_against_cohort(read_split_file(f, "mambamil"), "mm", "staging", _cases())
    assert _norm(imp.table).equals(_expected(lambda i, k: "test" if i % 5 == k else "train"))
    assert imp.not_in_cohort == ["OTHER-999"] and imp.not_in_file == ["CASE-009"]  # NOSLIDE-1: "missing", never read
    counts = imp.fold_counts(_cases())
    # fold 4 tests CASE-004 (stage 0) only: CASE-009 is not in the file
    assert counts.loc[4, ["n_train", "n_val", "n_test", "stage_I"]].tolist() == [8, 0, 1, 1]


def test_a_case_in_two_roles_of_one_fold_is_refused(tmp_path):
    f = tmp_path / "TOY_Splits.csv"
    write_mambamil(f, duplicate="CASE-003")
    with pytest.raises(SplitError, match=r"fold 0: 1 case\(s\) \(CASE-003\)"):
        read_split_file(f, "mambamil")


def test_survpath_folder_of_clam_style_splits(tmp_path):
    d = tmp_path / "splits" / "5foldcv" / "tcga_toy"
    d.mkdir(parents=True)
    for k in range(5):  # CLAM's save_splits: pd.concat of Series, NaN where a column is shorter
        train = pd.Series([c for i, c in enumerate(IN_FILE) if i % 5 != k], name="train")
        val = pd.Series([c for i, c in enumerate(IN_FILE) if i % 5 == k], name="val")
        pd.concat([train, val], axis=1).to_csv(d / f"splits_{k}.csv")
    imp = check_against_cohort(read_split_file(d, "survpath"), "sp", "staging", _cases())
    assert _norm(imp.table).equals(_expected(lambda i, k: "test" if i % 5 == k else "train"))


def test_panther_val_stays_the_early_stopping_set(tmp_path):
    root = tmp_path / "splits" / "survival"
    for k in range(5):
        d = root / f"TCGA_TOY_overall_survival_k={k}"
        d.mkdir(parents=True)
        for role, rule in (("train", lambda i: i % 5 not in (k, (k + 1) % 5)), ("val", lambda i: i % 5 == (k + 1) % 5),
                           ("test", lambda i: i % 5 == k)):
            ids = [c for i, c in enumerate(IN_FILE) if rule(i)]
            pd.DataFrame({"case_id": ids, "slide_id": [f"{c}-01Z-00-DX1.X" for c in ids], "os_censorship": 1.0,
                          "os_survival_days": 100.0}).to_csv(d / f"{role}.csv", index=False)
    want = _expected(lambda i, k: "test" if i % 5 == k else "val" if i % 5 == (k + 1) % 5 else "train")
    for given in (root, root / "TCGA_TOY_overall_survival_k=0"):  # the parent, or any one fold's folder
        imp = check_against_cohort(read_split_file(given, "panther"), "pa", "staging", _cases())
        assert _norm(imp.table).equals(want)
    (root / "TCGA_TOY_overall_survival_k=2" / "test.csv").unlink()
    with pytest.raises(SplitError, match=r"k=2: no test.csv .*--val-as-test"):
        read_split_file(root, "panther")
    got = read_split_file(root, "panther", val_as_test=True)
    assert set(got.loc[got["fold"] == 2, "role"]) == {"train", "test"}


def test_patho_bench_tsv_and_plain_csv(tmp_path):
    tsv = tmp_path / "k=all.tsv"
    df = pd.DataFrame({"case_id": IN_FILE, "slide_id": [f"{c}-DX1" for c in IN_FILE], "stage": 0})
    for k in range(5):
        df[f"fold_{k}"] = ["test" if i % 5 == k else "val" if i == 7 and k != 2 else "train" for i in range(N)]
    df.to_csv(tsv, sep="\t", index=False)
    imp = check_against_cohort(read_split_file(tsv, "patho-bench"), "pb", "staging", _cases())
    assert _norm(imp.table).equals(_expected(lambda i, k: "test" if i % 5 == k else "val" if i == 7 else "train"))

    csv = tmp_path / "folds.csv"
    pd.DataFrame({"case_id": IN_FILE, "fold": [i % 5 for i in range(N)]}).to_csv(csv, index=False)
    imp = check_against_cohort(read_split_file(csv, "csv"), "c", "staging", _cases())
    assert _norm(imp.table).equals(_expected(lambda i, k: "test" if i % 5 == k else "train"))


def test_cli_import_prints_counts_lists_missing_and_writes_the_set(tmp_path, capsys):
    spec, _ = write_toy_cohort(tmp_path, N)
    f = tmp_path / "TOY_Splits.csv"
    write_mambamil(f)
    res = tmp_path / "results"
    argv = ["splits", "--dataset", str(spec), "--task", "staging", "--results", str(res), "--import", str(f),
            "--format", "mambamil", "--name", "mambamil"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "1 case(s) in the file but not in the cohort (left out): OTHER-999" in out
    assert "1 case(s) in the cohort but not in the file (not used): CASE-009" in out
    stored = pd.read_csv(res / "splits" / "toy" / "mambamil" / "staging.csv", dtype={"case_id": str})
    assert _norm(stored).equals(_expected(lambda i, k: "test" if i % 5 == k else "train"))
    meta = json.loads((res / "splits" / "toy" / "mambamil" / "staging.json").read_text())
    assert meta["format"] == "mambamil" and meta["not_in_file"] == ["CASE-009"] and meta["n_folds"] == 5
    assert main(argv) == 0  # the same import again: the same set, accepted
    df = pd.read_csv(f)  # a different set under the same name: CASE-000 and CASE-001 swap roles in fold 0
    df.loc[df["ID"] == "CASE-000", "Fold 0"], df.loc[df["ID"] == "CASE-001", "Fold 0"] = "train: complete", "val: complete"
    df.to_csv(f, index=False)
    assert main(argv) == 2
    assert "already holds a different split set 'mambamil'" in capsys.readouterr().err


def test_an_imported_set_gives_each_fold_its_roles_and_its_own_variant(tmp_path):
    from bench.data.splits import SplitManager
    from bench.data.split_import import write_split_set
    from bench.engine.plan import unit_variant

    root = tmp_path / "splits"
    tsv = tmp_path / "k=all.tsv"
    df = pd.DataFrame({"case_id": CASES})
    for k in range(5):
        df[f"fold_{k}"] = ["test" if i % 5 == k else "val" if i % 5 == (k + 1) % 5 else "train" for i in range(N)]
    df.to_csv(tsv, sep="\t", index=False)
    imp = check_against_cohort(read_split_file(tsv, "patho-bench"), "pb", "staging", _cases())
    write_split_set(root, "toy", imp, tsv, "patho-bench")
    s = SplitManager(root).get("toy", "staging", _cases(), name="pb")
    assert s.name == "pb" and s.n_folds == 5
    assert s.test_cases(1) == ["CASE-001", "CASE-006"] and s.val_cases(1) == ["CASE-002", "CASE-007"]
    assert s.train_cases(1) == ["CASE-000", "CASE-003", "CASE-004", "CASE-005", "CASE-008", "CASE-009"]
    assert s.hash != SplitManager(tmp_path / "seeded").get("toy", "staging", _cases()).hash
    assert SplitManager(tmp_path / "seeded").get("toy", "staging", _cases()).val_cases(1) == []
    assert unit_variant(None, False, 0, 5, "pb") == "splits-pb" and unit_variant(None, False, 0, 5) is None
    with pytest.raises(SplitError, match=r"no split set 'mm' for toy/staging.*--import FILE"):
        SplitManager(root).get("toy", "staging", _cases(), name="mm")
    with pytest.raises(SplitError, match=r"no longer in the cohort \(e.g. CASE-009\)"):
        SplitManager(root).get("toy", "staging", _cases().iloc[:-1], name="pb")


@pytest.mark.slow  # real ResNet-50 (random weights) extraction of a small generated cohort (~2 min on 2 cores)
def test_mambamil_file_for_generated_cases_runs_meanmil_and_the_table_names_it(tmp_path):
    import os
    import subprocess
    import sys

    root = tmp_path
    spec = root / "mini.yaml"
    spec.write_text(f"generator: demo\ngenerator_args: {{n_cases: 10, seed: 3}}\nroot: {root / 'data'}\n"
                    "slides: slides\nslide_glob: '*.tiff'\nclinical: clinical.csv\nclinical_format: normalized\n"
                    "tasks: [staging, survival]\nallow_random_weights: true\n")
    env = {**os.environ, "BENCH_CACHE": str(root / "cache"), "BENCH_RESULTS": str(root / "results")}

    def bench(*args):
        p = subprocess.run([sys.executable, "-m", "bench", *map(str, args)], env=env, cwd=root, capture_output=True,
                           text=True, timeout=900)
        assert p.returncode == 0, p.stdout + p.stderr
        return p.stdout

    bench("splits", "--dataset", spec, "--task", "staging")  # generates the cohort
    cases = sorted(pd.read_csv(root / "data" / "clinical.csv", dtype={"case_id": str})["case_id"])
    rows = [{"Study": "TCGA-MINI", "ID": c, "Event": 1.0, "Status": 0.0, "WSI": "", "RNA": "",
             **{f"Fold {k}": ("val: complete" if i % 5 == k else "train: complete") for k in range(5)}}
            for i, c in enumerate(cases)]
    pd.DataFrame(rows).to_csv(root / "MINI_Splits.csv", index=False)
    out = bench("splits", "--dataset", spec, "--task", "staging", "--import", root / "MINI_Splits.csv",
                "--format", "mambamil", "--name", "mambamil")
    assert "0 case(s) in the cohort but not in the file" in out
    bench("run", "--methods", "meanmil.resnet50", "--dataset", spec, "--tasks", "staging", "--splits", "mambamil",
          "--set", "epochs=2", "-q")
    folds = sorted((root / "results" / "runs" / "mini" / "staging" / "meanmil.resnet50" / "splits-mambamil").glob(
        "fold*/metrics.json"))
    assert len(folds) == 5
    for k, f in enumerate(folds):
        rec = json.loads(f.read_text())
        assert rec["split"]["name"] == "mambamil" and rec["n_test"] == 2, rec["split"]
        pred = pd.read_csv(f.parent / "predictions.csv", dtype={"case_id": str})
        assert sorted(pred["case_id"]) == [c for i, c in enumerate(cases) if i % 5 == k]
    table = bench("table", "--dataset", spec, "--no-figures")
    assert "MeanMIL (splits-mambamil)" in table, table
