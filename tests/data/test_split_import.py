"""Published split sets, each written the way its project writes it, read into train /
early-stopping / test roles per fold and checked against the cohort. The layouts, as read in the
projects' repositories:

- MambaMIL (github.com/isyangshu/MambaMIL): ``splits/TCGA_BLCA_survival_kfold/splits_0.csv`` .. (today:
  header ``,train,val,test``, one entry per slide, ``test`` empty; ``main_survival.py`` reports on
  ``val``) and ``csv/Cbioportal/BLCA_Splits.csv`` (commit 6a823a8: ``Study,ID,Event,Status,WSI,RNA,
  Data_Event,Data_WSI,Data_Gene,Fold 0..Fold 4`` with ``train: complete`` / ``val: complete`` /
  ``train: missing`` cells).
- SurvPath (github.com/mahmoodlab/SurvPath ``splits/5foldcv/tcga_blca/splits_0.csv``): ``,train,val``.
- PANTHER (github.com/mahmoodlab/PANTHER ``src/splits/survival/TCGA_BLCA_overall_survival_k=0/``):
  ``train.csv`` and ``test.csv`` only (no ``val.csv`` in the survival splits), one row per slide,
  ``case_id, slide_id, ..., os_censorship, os_survival_days, ...``.
- Patho-Bench (github.com/mahmoodlab/Patho-Bench ``patho_bench/datasets/DataSplit.py``; the task files
  of huggingface.co/datasets/MahmoodLab/Patho-Bench, e.g. ``cptac_ccrcc/OS/k=all.tsv``): tab-separated,
  one row per slide, ``case_id, slide_id, OS_event, OS_days, OS, fold_0..fold_4`` with ``train`` /
  ``test`` cells.
"""

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


def _clam_splits(d, k, columns):
    """CLAM's save_splits: pd.concat of one Series per split, NaN where a column is shorter."""
    pd.concat([pd.Series(ids, name=name, dtype=object) for name, ids in columns.items()], axis=1).to_csv(
        d / f"splits_{k}.csv")


def test_mambamil_clam_style_folder_one_entry_per_slide(tmp_path):
    d = tmp_path / "splits" / "TCGA_TOY_survival_kfold"
    d.mkdir(parents=True)
    for k in range(5):  # CASE-001 has two slides: listed twice; test is empty
        per_slide = [c for c in IN_FILE for _ in range(2 if c == "CASE-001" else 1)]
        _clam_splits(d, k, {"train": [c for c in per_slide if IN_FILE.index(c) % 5 != k],
                            "val": [c for c in per_slide if IN_FILE.index(c) % 5 == k], "test": []})
    (d / "splits_0_bool.csv").write_text(",train,val,test\nCASE-000,True,False,False\n")  # CLAM writes these too
    want = _expected(lambda i, k: "test" if i % 5 == k else "train")
    for given in (d, d / "splits_3.csv"):  # the folder, or any one fold's file: every fold is read
        imp = check_against_cohort(read_split_file(given, "mambamil"), "mm", "staging", _cases())
        assert _norm(imp.table).equals(want)
    (d / "splits_2.csv").unlink()
    with pytest.raises(SplitError, match=r"fold\(s\) 2 of 0..4 are missing"):
        read_split_file(d, "mambamil")


def test_clam_style_test_column_with_cases_is_the_test_set(tmp_path):
    """CLAM's own layout (train, val, test all filled): val is the early-stopping set."""
    for k in range(5):
        _clam_splits(tmp_path, k, {"train": [c for i, c in enumerate(IN_FILE) if i % 5 not in (k, (k + 1) % 5)],
                                   "val": [c for i, c in enumerate(IN_FILE) if i % 5 == (k + 1) % 5],
                                   "test": [c for i, c in enumerate(IN_FILE) if i % 5 == k]})
    imp = check_against_cohort(read_split_file(tmp_path, "survpath"), "c", "staging", _cases())
    assert _norm(imp.table).equals(
        _expected(lambda i, k: "test" if i % 5 == k else "val" if i % 5 == (k + 1) % 5 else "train"))


def test_survpath_folder_of_clam_style_splits(tmp_path):
    d = tmp_path / "splits" / "5foldcv" / "tcga_toy"
    d.mkdir(parents=True)
    for k in range(5):  # CLAM's save_splits: pd.concat of Series, NaN where a column is shorter
        train = pd.Series([c for i, c in enumerate(IN_FILE) if i % 5 != k], name="train")
        val = pd.Series([c for i, c in enumerate(IN_FILE) if i % 5 == k], name="val")
        pd.concat([train, val], axis=1).to_csv(d / f"splits_{k}.csv")
    imp = check_against_cohort(read_split_file(d, "survpath"), "sp", "staging", _cases())
    assert _norm(imp.table).equals(_expected(lambda i, k: "test" if i % 5 == k else "train"))


def _panther_csv(path, ids):
    """A PANTHER split file: one row per slide (CASE-001 has two), a few of its 60 columns."""
    slides = [(c, f"{c}-01Z-00-DX{j}.0A1B2C3D-0000-0000-0000-000000000000") for c in ids
              for j in ((1, 2) if c == "CASE-001" else (1,))]
    pd.DataFrame({"case_id": [c for c, _ in slides], "slide_id": [s for _, s in slides],
                  "submitter_id": [c for c, _ in slides], "project_id": "TCGA-TOY", "mpp": 0.2525,
                  "ajcc_pathologic_tumor_stage": "Stage III", "os_censorship": 1.0,
                  "os_survival_days": 495.0}).to_csv(path, index=False)


def test_panther_test_csv_is_the_test_set_val_csv_the_early_stopping_set(tmp_path):
    root = tmp_path / "src" / "splits" / "survival"
    for k in range(5):  # the survival splits ship train.csv and test.csv only
        d = root / f"TCGA_TOY_overall_survival_k={k}"
        d.mkdir(parents=True)
        _panther_csv(d / "train.csv", [c for i, c in enumerate(IN_FILE) if i % 5 != k])
        _panther_csv(d / "test.csv", [c for i, c in enumerate(IN_FILE) if i % 5 == k])
    want = _expected(lambda i, k: "test" if i % 5 == k else "train")
    for given in (root, root / "TCGA_TOY_overall_survival_k=0"):  # the parent, or any one fold's folder
        imp = check_against_cohort(read_split_file(given, "panther"), "pa", "staging", _cases())
        assert _norm(imp.table).equals(want)
    # a val.csv (PANTHER's classification splits have one) is the early-stopping set
    d0 = root / "TCGA_TOY_overall_survival_k=0"
    _panther_csv(d0 / "train.csv", [c for i, c in enumerate(IN_FILE) if i % 5 not in (0, 1)])
    _panther_csv(d0 / "val.csv", [c for i, c in enumerate(IN_FILE) if i % 5 == 1])
    got = read_split_file(root, "panther")
    assert set(got.loc[(got["fold"] == 0) & (got["role"] == "val"), "case_id"]) == {"CASE-001", "CASE-006"}
    (root / "TCGA_TOY_overall_survival_k=2" / "test.csv").unlink()
    with pytest.raises(SplitError, match=r"k=2: no test.csv .*--val-as-test"):
        read_split_file(root, "panther")
    _panther_csv(root / "TCGA_TOY_overall_survival_k=2" / "val.csv", [c for i, c in enumerate(IN_FILE) if i % 5 == 2])
    got = read_split_file(root, "panther", val_as_test=True)
    assert set(got.loc[got["fold"] == 2, "role"]) == {"train", "test"}


def write_patho_bench(path, sep="\t", cell=lambda i, k: "test" if i % 5 == k else "train"):
    """A Patho-Bench task file as DataSplit.save writes it: one row per slide (CASE-002 has three),
    the labels, then fold_0..fold_4."""
    rows = []
    for i, c in enumerate(IN_FILE):
        for j in range(3 if c == "CASE-002" else 1):
            rows.append({"case_id": c, "slide_id": f"{c}-{21 + j}", "OS_event": i % 2, "OS_days": 100.0 + i,
                         "OS": i % 8, **{f"fold_{k}": cell(i, k) for k in range(5)}})
    pd.DataFrame(rows).to_csv(path, sep=sep, index=False)


def test_patho_bench_task_file_and_plain_csv(tmp_path):
    tsv = tmp_path / "cptac_toy" / "OS" / "k=all.tsv"
    tsv.parent.mkdir(parents=True)
    write_patho_bench(tsv)
    imp = check_against_cohort(read_split_file(tsv, "patho-bench"), "pb", "staging", _cases())
    assert _norm(imp.table).equals(_expected(lambda i, k: "test" if i % 5 == k else "train"))
    # a split formatted like it as CSV (DataSplit reads a name not ending in .tsv with commas)
    write_patho_bench(tmp_path / "custom.csv", sep=",")
    assert _norm(read_split_file(tmp_path / "custom.csv", "patho-bench")).equals(
        _norm(read_split_file(tsv, "patho-bench")))
    # a reserved val set; -1 and empty cells (DataSplit's unassigned samples) are no member of the fold
    write_patho_bench(tsv, cell=lambda i, k: "test" if i % 5 == k else "val" if i == 7 else
                      "-1" if (i, k) == (3, 1) else "" if (i, k) == (4, 2) else "train")
    got = _norm(read_split_file(tsv, "patho-bench"))
    assert set(got.loc[got["role"] == "val", "case_id"]) == {"CASE-007"}
    assert "CASE-003" not in set(got.loc[got["fold"] == 1, "case_id"])
    assert "CASE-004" not in set(got.loc[got["fold"] == 2, "case_id"])
    write_patho_bench(tsv, cell=lambda i, k: "Train" if (i, k) == (5, 3) else "test" if i % 5 == k else "train")
    with pytest.raises(SplitError, match=r"k=all.tsv: line 9 \(case CASE-005\), column fold_3: 'Train' is not train"):
        read_split_file(tsv, "patho-bench")

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


def test_mambamil_patient_with_slides_in_train_and_val_two_roles_evaluate(tmp_path, capsys):
    """MambaMIL's TCGA files split slides, not patients (its BLCA folder has 6-14 patients per fold in
    both train and val): refused by default; with --two-roles evaluate the patient is evaluated only,
    taken out of training, and that is printed and kept in the set's .json."""
    spec, _ = write_toy_cohort(tmp_path, N)
    d = tmp_path / "splits" / "TCGA_TOY_survival_kfold"
    d.mkdir(parents=True)
    for k in range(5):
        train = [c for i, c in enumerate(IN_FILE) if i % 5 != k]
        val = [c for i, c in enumerate(IN_FILE) if i % 5 == k]
        if k == 0:  # CASE-003's DX1 slide went to train, its DX2 slide to val
            val.append("CASE-003")
        _clam_splits(d, k, {"train": train, "val": val, "test": []})
    with pytest.raises(SplitError, match=r"fold 0: 1 case\(s\) \(CASE-003\).*--two-roles evaluate"):
        read_split_file(d, "mambamil")
    res = tmp_path / "results"
    argv = ["splits", "--dataset", str(spec), "--task", "staging", "--results", str(res), "--import", str(d),
            "--format", "mambamil", "--name", "mm"]
    assert main(argv) == 2
    assert main([*argv, "--two-roles", "evaluate"]) == 0
    out = capsys.readouterr().out
    assert "fold 0: 1 case(s) in training and evaluation of the file, evaluated only (--two-roles evaluate): CASE-003" in out
    stored = pd.read_csv(res / "splits" / "toy" / "mm" / "staging.csv", dtype={"case_id": str})
    want = _expected(lambda i, k: "test" if i % 5 == k or (i, k) == (3, 0) else "train")
    assert _norm(stored).equals(want)
    meta = json.loads((res / "splits" / "toy" / "mm" / "staging.json").read_text())
    assert meta["taken_from_train"] == {"0": ["CASE-003"]}
