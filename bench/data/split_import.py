"""Split sets published by other projects, imported as named split sets.

Each reader turns a project's split files into one long table ``fold, case_id, role`` (role:
``train``, ``val`` = early-stopping set, ``test`` = the fold's evaluation set). Which column becomes
``test`` is the format's rule, stated here and in docs/splits.md:

- ``mambamil``, two layouts, both from github.com/isyangshu/MambaMIL:
  ``splits/TCGA_<COHORT>_survival_kfold/splits_<k>.csv`` (the repository today; CLAM's ``save_splits``
  layout: an index column, then ``train``, ``val``, ``test`` columns of case ids, one entry per slide,
  ``test`` empty), and ``csv/Cbioportal/<COHORT>_Splits.csv`` (its first release, commit 6a823a8):
  column ``ID``, columns ``Fold 0`` .. ``Fold 4`` holding ``train: complete`` / ``val: complete``
  (``...: missing`` = no slide, left out). ``main_survival.py`` early-stops and reports on ``val``,
  so ``val`` is the test set; there is no early-stopping set.
- ``survpath`` (github.com/mahmoodlab/SurvPath ``splits/5foldcv/tcga_<cohort>/splits_<k>.csv``): an
  index column, then ``train`` and ``val`` columns of case ids. SurvPath reports on ``val``: it is the
  test set. In this CLAM layout (also MambaMIL's), a ``test`` column with cases in it is the test set
  and ``val`` then the early-stopping set, as CLAM uses them.
- ``panther`` (github.com/mahmoodlab/PANTHER ``src/splits/survival/TCGA_<COHORT>_overall_survival_k=<k>/``):
  ``train.csv``, ``test.csv`` and optionally ``val.csv`` (the survival splits ship none), each a table
  with a ``case_id`` column, one row per slide. ``test.csv`` is the test set, ``val.csv`` the
  early-stopping set; a fold without ``test.csv`` is refused unless ``val_as_test`` says the source
  reports on ``val.csv``.
- ``patho-bench`` (github.com/mahmoodlab/Patho-Bench ``patho_bench/datasets/DataSplit.py``; the task
  files of huggingface.co/datasets/MahmoodLab/Patho-Bench, ``<source>/<task>/k=all.tsv``): tab-separated
  (comma-separated when the name does not end in ``.tsv``, as ``DataSplit`` reads it), one row per
  slide: ``case_id``, ``slide_id``, label columns, ``fold_0`` .. ``fold_<n>`` holding ``train`` /
  ``test`` (the published files), or ``val`` where a user reserved one. ``-1`` or an empty cell (a
  sample ``DataSplit`` left unassigned) is no member of that fold; any other value is refused.
- ``csv``: ``case_id, fold`` (``fold`` = the case's test fold; the others train on it), or
  ``case_id, fold, split`` with ``split`` in train/val/test.

The imported set is checked against the cohort before anything is written: a case in two roles of
one fold is refused (naming the fold and the cases) unless the user asks to keep such a case in its
evaluation role only (:func:`keep_evaluation_role`; MambaMIL's TCGA files split slides, not patients,
so a patient can be in ``train`` and ``val`` of one fold); cases of the file missing from the cohort
and cases of the cohort missing from the file are counted and listed, never silently.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..io import atomic_write_text, safe_name
from .splits import SplitError

FORMATS = ("mambamil", "panther", "survpath", "patho-bench", "csv")
ROLES = ("train", "val", "test")


def _long(rows: list[tuple[int, str, str]]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=["fold", "case_id", "role"])
    df["case_id"] = df["case_id"].astype(str).str.strip()
    return df[df["case_id"].ne("") & df["case_id"].ne("nan")].drop_duplicates().reset_index(drop=True)


def _read_mambamil(path: Path, val_as_test: bool) -> pd.DataFrame:
    if path.is_dir() or re.fullmatch(r"splits_\d+\.csv", path.name):
        return _read_clam_folds(path, "MambaMIL", "splits/TCGA_<COHORT>_survival_kfold/")
    df = pd.read_csv(path, dtype=str)
    folds = sorted((c for c in df.columns if re.fullmatch(r"Fold \d+", c)), key=lambda c: int(c.split()[1]))
    if "ID" not in df.columns or not folds:
        raise SplitError(f"{path}: not a MambaMIL split file (needs an 'ID' column and 'Fold 0'.. columns; "
                         f"has {', '.join(df.columns[:8])})")
    rows = []
    for col in folds:
        for cid, cell in zip(df["ID"], df[col].fillna("")):
            role, _, status = str(cell).partition(":")
            if status.strip() != "complete" or role.strip() not in ("train", "val"):
                continue  # "...: missing" = no slide in MambaMIL's data; not a member of the fold
            rows.append((int(col.split()[1]), cid, "test" if role.strip() == "val" else "train"))
    return _long(rows)


def _read_survpath(path: Path, val_as_test: bool) -> pd.DataFrame:
    return _read_clam_folds(path, "SurvPath", "splits/5foldcv/tcga_<cohort>/")


def _read_clam_folds(path: Path, project: str, layout: str) -> pd.DataFrame:
    """CLAM's ``save_splits`` files ``splits_<k>.csv`` (their folder, or any one of them: every fold
    of the folder is read; CLAM's ``splits_<k>_bool.csv`` / ``_descriptor.csv`` are not folds):
    ``train``, ``val`` and optionally ``test`` columns of case ids. ``val`` is the test set unless
    ``test`` holds cases; then ``val`` is the early-stopping set, as CLAM uses them."""
    if not path.is_dir() and not re.fullmatch(r"splits_\d+\.csv", path.name):
        raise SplitError(f"{path}: {project} split files are named splits_<k>.csv ({project} layout: {layout})")
    folder = path if path.is_dir() else path.parent
    files = sorted(f for f in folder.glob("splits_*.csv") if re.fullmatch(r"splits_\d+\.csv", f.name))
    if not files:
        raise SplitError(f"{path}: no splits_<k>.csv inside ({project} layout: {layout})")
    rows = []
    for f in files:
        m = re.fullmatch(r"splits_(\d+)\.csv", f.name)
        df = pd.read_csv(f, dtype=str)
        if not {"train", "val"} <= set(df.columns):
            raise SplitError(f"{f}: needs 'train' and 'val' columns ({project} layout); has {', '.join(df.columns)}")
        has_test = "test" in df.columns and df["test"].notna().any()
        for col, role in (("train", "train"), ("val", "val" if has_test else "test"), ("test", "test")):
            if col in df.columns:
                rows += [(int(m.group(1)), c, role) for c in df[col].dropna()]
    return _long(rows)


def _read_panther(path: Path, val_as_test: bool) -> pd.DataFrame:
    dirs = sorted(d for d in path.parent.glob(re.sub(r"k=\d+$", "k=*", path.name)) if d.is_dir()) \
        if re.search(r"k=\d+$", path.name) else sorted(d for d in path.glob("*k=*") if d.is_dir())
    if not dirs:
        raise SplitError(f"{path}: no fold directories '<name>_k=<n>/' (PANTHER layout: "
                         "splits/survival/TCGA_<COHORT>_overall_survival_k=0/train.csv ...)")
    rows = []
    for d in dirs:
        k = int(d.name.rsplit("k=", 1)[1])
        have = {p.stem: p for p in d.glob("*.csv")}
        if "test" not in have and not (val_as_test and "val" in have):
            raise SplitError(f"{d}: no test.csv (val.csv is the early-stopping set); if your source reports on "
                             "val.csv, import with --val-as-test")
        for stem, role in (("train", "train"), ("val", "test" if val_as_test and "test" not in have else "val"),
                           ("test", "test")):
            if stem in have:
                df = pd.read_csv(have[stem], dtype=str)
                if "case_id" not in df.columns:
                    raise SplitError(f"{have[stem]}: no 'case_id' column")
                rows += [(k, c, role) for c in df["case_id"]]
    return _long(rows)


def _read_patho_bench(path: Path, val_as_test: bool) -> pd.DataFrame:
    df = pd.read_csv(path, sep="\t" if path.name.endswith(".tsv") else ",", dtype=str, keep_default_na=False)
    folds = sorted((c for c in df.columns if re.fullmatch(r"fold_\d+", c)), key=lambda c: int(c.split("_")[1]))
    if "case_id" not in df.columns or not folds:
        raise SplitError(f"{path}: not a Patho-Bench split file (needs 'case_id' and 'fold_0'.. columns; has "
                         f"{', '.join(df.columns[:8])})")
    rows = []
    for col in folds:
        for i, (c, v) in enumerate(zip(df["case_id"], df[col].str.strip())):
            if v in ROLES:
                rows.append((int(col.split("_")[1]), c, v))
            elif v not in ("", "-1"):  # -1 / empty: DataSplit left the sample out of this fold
                raise SplitError(f"{path}: line {i + 2} (case {c}), column {col}: {v!r} is not train, val or test. "
                                 "Fix the file (Patho-Bench writes train/test, or val for a reserved set)")
    return _long(rows)


def _read_csv(path: Path, val_as_test: bool) -> pd.DataFrame:
    df = pd.read_csv(path, dtype={"case_id": str})
    if not {"case_id", "fold"} <= set(df.columns):
        raise SplitError(f"{path}: needs 'case_id' and 'fold' columns (and optionally 'split': train/val/test)")
    if "split" in df.columns:
        bad = sorted(set(df["split"].astype(str)) - set(ROLES))
        if bad:
            raise SplitError(f"{path}: 'split' values must be train, val or test; found {', '.join(bad)}")
        return _long(list(zip(df["fold"].astype(int), df["case_id"], df["split"].astype(str))))
    folds = sorted(df["fold"].astype(int).unique())
    return _long([(k, c, "test" if f == k else "train") for k in folds for c, f in zip(df["case_id"], df["fold"])])


READERS = {"mambamil": _read_mambamil, "survpath": _read_survpath, "panther": _read_panther,
           "patho-bench": _read_patho_bench, "csv": _read_csv}


@dataclass
class ImportedSplits:
    """An imported split set for one task, checked against the cohort's cases."""

    name: str
    task: str
    table: pd.DataFrame  # fold, case_id, role: only cases of the cohort
    not_in_cohort: list[str] = field(default_factory=list)
    not_in_file: list[str] = field(default_factory=list)
    taken_from_train: dict[int, list[str]] = field(default_factory=dict)  # keep_evaluation_role's moves

    def fold_counts(self, cases: pd.DataFrame) -> pd.DataFrame:
        """Per fold: train/val/test sizes and the test set's class or event counts."""
        from ..tasks import get_task

        lab = cases.drop_duplicates("case_id").set_index("case_id")
        rows = []
        for k, sub in self.table.groupby("fold"):
            row: dict[str, object] = {"fold": int(k)}
            row.update({f"n_{r}": int((sub["role"] == r).sum()) for r in ROLES})
            row.update(get_task(self.task).fold_summary(lab.loc[sorted(sub.loc[sub["role"] == "test", "case_id"])]))
            rows.append(row)
        return pd.DataFrame(rows)


def read_split_file(path: Path | str, fmt: str, val_as_test: bool = False,
                    two_roles: bool = False) -> pd.DataFrame:
    """The file (or folder) in ``fmt`` as ``fold, case_id, role``; a case in two roles of one fold is
    refused, naming them (``two_roles``: returned as they are, for :func:`keep_evaluation_role`)."""
    path = Path(path)
    if fmt not in READERS:
        raise SplitError(f"unknown split format {fmt!r}; known: {', '.join(FORMATS)}")
    if not path.exists():
        raise SplitError(f"{path}: no such file or folder")
    table = READERS[fmt](path, val_as_test)
    if table.empty:
        raise SplitError(f"{path}: no cases found in it as format {fmt!r}")
    missing = sorted(set(range(int(table["fold"].max()) + 1)) - set(table["fold"]))
    if missing:
        raise SplitError(f"{path}: fold(s) {', '.join(map(str, missing))} of 0..{int(table['fold'].max())} are "
                         "missing from the split set; give every fold's file (or the folder holding them)")
    twice = table.groupby(["fold", "case_id"])["role"].nunique()
    twice = twice[twice > 1]
    if len(twice) and not two_roles:
        by_fold = {int(k): sorted(g.index.get_level_values("case_id")) for k, g in twice.groupby(level="fold")}
        desc = "; ".join(f"fold {k}: {len(v)} case(s) ({', '.join(v[:5])}{', ...' if len(v) > 5 else ''})"
                         for k, v in by_fold.items())
        raise SplitError(f"{path}: cases in two roles (train/val/test) of the same fold: {desc}. Such a split "
                         "leaks training cases into evaluation; fix the file, use another split set, or import "
                         "with --two-roles evaluate (each such case is then evaluated only, never trained on)")
    return table


def keep_evaluation_role(table: pd.DataFrame) -> tuple[pd.DataFrame, dict[int, list[str]]]:
    """A case in several roles of one fold keeps the one it is evaluated in (``test`` before ``val``)
    and leaves ``train``: the fold's evaluation set stays the source's, and no case is trained on
    and evaluated on at once. Returns the table and, per fold, the cases taken from training."""
    rank = table["role"].map({"test": 0, "val": 1, "train": 2})
    kept = table.assign(_r=rank).sort_values(["fold", "case_id", "_r"]).drop_duplicates(["fold", "case_id"])
    several = table.groupby(["fold", "case_id"])["role"].nunique()
    several = several[several > 1]
    taken = {int(k): sorted(g.index.get_level_values("case_id")) for k, g in several.groupby(level="fold")}
    return kept.drop(columns="_r").sort_values(["fold", "case_id"]).reset_index(drop=True), taken


def check_against_cohort(table: pd.DataFrame, name: str, task: str, cases: pd.DataFrame,
                         taken_from_train: dict[int, list[str]] | None = None) -> ImportedSplits:
    """Keep the cohort's cases; count and list the file's cases missing from the cohort and the
    cohort's cases missing from the file. Every fold must keep a test set and a training set.
    ``taken_from_train``: what :func:`keep_evaluation_role` moved (recorded with the set)."""
    have, want = set(table["case_id"]), set(cases["case_id"])
    kept = table[table["case_id"].isin(want)].reset_index(drop=True)
    taken = {k: [c for c in v if c in want] for k, v in (taken_from_train or {}).items()}
    imp = ImportedSplits(name, task, kept, sorted(have - want), sorted(want - have), {k: v for k, v in taken.items() if v})
    for k in sorted(table["fold"].unique()):
        roles = set(kept.loc[kept["fold"] == k, "role"])
        if not {"train", "test"} <= roles:
            raise SplitError(f"split set {name!r}, task {task}: fold {k} has no "
                             f"{'test' if 'test' not in roles else 'training'} case of this cohort left")
    return imp


def write_split_set(root: Path, dataset: str, imp: ImportedSplits, source: Path, fmt: str) -> Path:
    """``<root>/<dataset>/<name>/<task>.csv`` (``fold, case_id, role``) and its ``.json`` (source,
    format, sha256 of the source, what was left out). Refuses to replace a different set."""
    if re.fullmatch(r"seed\d+-k\d+", imp.name) or safe_name(imp.name) != imp.name:
        raise SplitError(f"split set name {imp.name!r}: use letters, digits, '-', '_' (not 'seed<s>-k<n>', which "
                         "names the seeded sets)")
    path = root / safe_name(dataset) / imp.name / f"{safe_name(imp.task)}.csv"
    text = imp.table.sort_values(["fold", "role", "case_id"]).to_csv(index=False)
    if path.is_file() and path.read_text() != text:
        raise SplitError(f"{path} already holds a different split set {imp.name!r}: pick another --name, or move "
                         "that folder away (results made on it stay valid only for it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)
    digest = hashlib.sha256()
    for f in sorted(source.rglob("*")) if source.is_dir() else [source]:
        if f.is_file():
            digest.update(f.read_bytes())
    meta = {"name": imp.name, "dataset": dataset, "task": imp.task, "format": fmt, "source": str(source),
            "source_sha256": digest.hexdigest(), "hash": hashlib.sha256(text.encode()).hexdigest()[:16],
            "n_folds": int(imp.table["fold"].nunique()), "not_in_cohort": imp.not_in_cohort,
            "not_in_file": imp.not_in_file,
            "taken_from_train": {str(k): v for k, v in sorted(imp.taken_from_train.items())}}
    atomic_write_text(path.with_suffix(".json"), json.dumps(meta, indent=2))
    return path
