"""One split manager for every method and ablation.

Folds are patient-level (a case's slides never straddle train and test), stratified (stage for
staging; event × time-quantile for survival), seeded, and depend only on the *set* of cases and the
seed — never on row order. They are written once to ``results/splits/<dataset>/<task>.csv`` and
reused; a cohort that changed afterwards is an error naming the difference, never a silent
reshuffle.
"""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedKFold

from ..tasks import get_task
from ..io import atomic_write_text, name_component, safe_name

log = logging.getLogger(__name__)


class SplitError(ValueError):
    pass


def strata(cases: pd.DataFrame, task: str, n_folds: int) -> np.ndarray:
    """Stratification label per case (cases sorted by case_id): the task's rule (``Task.strata``)."""
    try:
        t = get_task(task)
    except KeyError:
        raise SplitError(f"no stratification rule for task {task!r}") from None
    return t.strata(cases, n_folds)


def make_folds(cohort: pd.DataFrame, task: str, n_folds: int = 5, seed: int = 0) -> pd.DataFrame:
    """Assign every case to one of ``n_folds`` test folds → DataFrame ``case_id, fold``.

    ``cohort`` may hold one row per slide; it is reduced to one row per case first.
    """
    cases = cohort.drop_duplicates("case_id").sort_values("case_id").reset_index(drop=True)
    if len(cases) < n_folds:
        raise SplitError(f"{len(cases)} cases cannot fill {n_folds} folds")
    y = strata(cases, task, n_folds)
    fold = np.empty(len(cases), dtype=int)
    if np.bincount(y).max() < n_folds:
        # scikit-learn refuses when every class is rarer than the folds (a small cohort: 3 cases
        # per stage, 5 folds); deal each class out round-robin from a seeded shuffle instead, so
        # every class is still spread over as many folds as it has cases
        log.warning("%s: every %s class has fewer cases than the %d folds (largest: %d); classes "
                    "are spread one case per fold, and some test folds lack some classes",
                    task, get_task(task).stratum_name, n_folds, np.bincount(y).max())
        rng = np.random.default_rng(seed)
        order = np.lexsort((rng.permutation(len(cases)), y))
        fold[order] = (np.arange(len(cases)) + int(rng.integers(n_folds))) % n_folds
        return pd.DataFrame({"case_id": cases["case_id"].to_numpy(), "fold": fold})
    skf = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        # a stage rarer than n_folds (BLCA stage I: 2 cases) is spread as far as it goes
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        for k, (_, test) in enumerate(skf.split(np.zeros(len(cases)), y)):
            fold[test] = k
    return pd.DataFrame({"case_id": cases["case_id"].to_numpy(), "fold": fold})


def split_hash(folds: pd.DataFrame) -> str:
    rows = sorted(f"{c},{k}" for c, k in zip(folds["case_id"], folds["fold"]))
    return hashlib.sha256("\n".join(rows).encode()).hexdigest()[:16]


@dataclass
class Splits:
    dataset: str
    task: str
    folds: pd.DataFrame  # case_id, fold
    path: Path
    seed: int = 0  # the seed that made the set
    # an imported split set (bench.data.split_import): its name and its fold, case_id, role table
    # (train / val = early-stopping set / test); folds then holds each test set's cases
    name: str = ""
    roles: pd.DataFrame | None = None

    @property
    def n_folds(self) -> int:
        return int((self.folds if self.roles is None else self.roles)["fold"].max()) + 1

    @property
    def label(self) -> str:
        """The set's name in results: ``splits-<name>``, ``seed<s>-k<n>`` or "" (the default set)."""
        return split_set_label(self.seed, self.n_folds, self.name)

    @property
    def hash(self) -> str:
        if self.roles is None:
            return split_hash(self.folds)
        rows = sorted(f"{c},{k},{r}" for c, k, r in zip(self.roles["case_id"], self.roles["fold"], self.roles["role"]))
        return hashlib.sha256("\n".join(rows).encode()).hexdigest()[:16]

    def _role(self, k: int, role: str) -> list[str]:
        r = self.roles
        return sorted(r.loc[(r["fold"] == k) & (r["role"] == role), "case_id"]) if r is not None else []

    def test_cases(self, k: int) -> list[str]:
        if self.roles is not None:
            return self._role(k, "test")
        return sorted(self.folds.loc[self.folds["fold"] == k, "case_id"])

    def train_cases(self, k: int) -> list[str]:
        if self.roles is not None:
            return self._role(k, "train")
        return sorted(self.folds.loc[self.folds["fold"] != k, "case_id"])

    def val_cases(self, k: int) -> list[str]:
        """The early-stopping set the split set names for fold ``k`` (imported sets only; else none:
        training carves its own from the training cases)."""
        return self._role(k, "val")

    def audit(self, cases: pd.DataFrame, slides_of: dict[str, list[str]] | None = None) -> pd.DataFrame:
        """Per fold: test size, class (or event) counts, and the train/test overlap of cases and
        slides — which must be zero. Raises :class:`SplitError` if it is not."""
        lab = cases.set_index("case_id")
        rows = []
        for k in range(self.n_folds):
            test, train = set(self.test_cases(k)), set(self.train_cases(k))
            overlap = len(test & train)
            slide_overlap = 0
            if slides_of:
                ts = {s for c in test for s in slides_of.get(c, [])}
                tr = {s for c in train for s in slides_of.get(c, [])}
                slide_overlap = len(ts & tr)
            row: dict[str, object] = {"fold": k, "n_train": len(train), "n_test": len(test),
                                      "case_overlap": overlap, "slide_overlap": slide_overlap}
            sub = lab.loc[sorted(test)]
            row.update(get_task(self.task).fold_summary(sub))
            rows.append(row)
            if overlap or slide_overlap:
                raise SplitError(f"{self.path}: fold {k} shares {overlap} cases / {slide_overlap} slides "
                                 "between train and test")
        return pd.DataFrame(rows)


def split_set_name(seed: int, n_folds: int) -> str:
    """The name of a split set: "" for the default (seed 0, 5 folds), else ``seed<s>-k<n>``."""
    return "" if (seed, n_folds) == (0, 5) else f"seed{int(seed)}-k{int(n_folds)}"


def split_set_label(seed: int, n_folds: int, name: str | None = None) -> str:
    """How results name a split set (variants, tuning folders, table rows): "" for the default seeded
    set, ``seed<s>-k<n>`` for another seeded one, ``splits-<name>`` for an imported one."""
    return f"splits-{name}" if name else split_set_name(seed, n_folds)


class SplitManager:
    """Writes folds once per (dataset, task, seed, n_folds) and hands the same ones to every method.
    Another seed or fold count is another split set (``<dataset>/seed<s>-k<n>/<task>.csv``), written
    once and used by every method like the default one — never a silent reuse of another set."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def path(self, dataset: str, task: str, seed: int = 0, n_folds: int = 5) -> Path:
        d = self.root / name_component(dataset, "dataset")
        sub = split_set_name(seed, n_folds)
        return (d / sub if sub else d) / f"{safe_name(task)}.csv"

    def get(self, dataset: str, task: str, cases: pd.DataFrame, n_folds: int = 5, seed: int = 0,
            create: bool = True, name: str | None = None) -> Splits:
        if name:
            return self.imported(dataset, task, cases, name)
        path = self.path(dataset, task, seed, n_folds)
        if path.is_file():
            folds = pd.read_csv(path, dtype={"case_id": str, "fold": int})
            self._check_same_set(path, folds, seed, n_folds)
            self._check_same_cases(path, folds, cases)
            return Splits(dataset, task, folds, path, seed=seed)
        if not create:
            raise SplitError(f"no splits at {path}; run `python -m bench splits --dataset {dataset}"
                             + (f" --seed {seed} --n-folds {n_folds}`" if split_set_name(seed, n_folds) else "`"))
        folds = make_folds(cases, task, n_folds=n_folds, seed=seed)
        _warn_absent_classes(path, folds, cases, task)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, folds.to_csv(index=False))
        meta = {"dataset": dataset, "task": task, "n_folds": n_folds, "seed": seed,
                "n_cases": len(folds), "hash": split_hash(folds)}
        atomic_write_text(path.with_suffix(".json"), json.dumps(meta, indent=2))
        log.info("wrote %s (%d cases, %d folds, seed %d)", path, len(folds), n_folds, seed)
        return Splits(dataset, task, folds, path, seed=seed)

    def imported(self, dataset: str, task: str, cases: pd.DataFrame, name: str) -> Splits:
        """The split set ``name`` that ``bench splits --import`` stored for (dataset, task)."""
        path = self.root / safe_name(dataset) / safe_name(name) / f"{safe_name(task)}.csv"
        if not path.is_file():
            raise SplitError(f"no split set {name!r} for {dataset}/{task} ({path} is missing): import it with "
                             f"`python -m bench splits --dataset {dataset} --task {task} --import FILE --format "
                             f"FORMAT --name {name}` (docs/splits.md)")
        roles = pd.read_csv(path, dtype={"case_id": str, "fold": int, "role": str})
        gone = sorted(set(roles["case_id"]) - set(cases["case_id"]))
        if gone:
            raise SplitError(f"the cohort changed since split set {name!r} was imported ({path}): {len(gone)} of its "
                             f"case(s) are no longer in the cohort (e.g. {', '.join(gone[:3])}); import it again")
        folds = roles.loc[roles["role"] == "test", ["case_id", "fold"]].reset_index(drop=True)
        return Splits(dataset, task, folds, path, seed=0, name=name, roles=roles)

    @staticmethod
    def _check_same_set(path: Path, folds: pd.DataFrame, seed: int, n_folds: int) -> None:
        """The file holds the split set asked for (its .json says which seed and fold count made it)."""
        meta_path = path.with_suffix(".json")
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, json.JSONDecodeError):
            meta = {}
        have = (meta.get("seed", seed), int(meta.get("n_folds", folds["fold"].max() + 1)))
        if have != (seed, n_folds):
            raise SplitError(f"{path} holds the split set seed {have[0]}, {have[1]} folds, not seed {seed}, "
                             f"{n_folds} folds ({meta_path} says which made it): restore that file, or move it away "
                             "and rerun to write the set asked for")

    @staticmethod
    def _check_same_cases(path: Path, folds: pd.DataFrame, cases: pd.DataFrame) -> None:
        have, want = set(folds["case_id"]), set(cases["case_id"])
        if have == want:
            return
        added, removed = sorted(want - have), sorted(have - want)
        parts = []
        if added:
            parts.append(f"{len(added)} case(s) not in the splits (e.g. {', '.join(added[:3])})")
        if removed:
            parts.append(f"{len(removed)} case(s) in the splits but no longer in the cohort "
                         f"(e.g. {', '.join(removed[:3])})")
        raise SplitError(f"the cohort changed since {path} was written: {'; '.join(parts)}. Folds are never "
                         "reshuffled silently: restore the cohort, or move that file away (results made on "
                         "the old folds stay valid only for them) and rerun to write new folds.")


def _warn_absent_classes(path: Path, folds: pd.DataFrame, cases: pd.DataFrame, task: str) -> None:
    """Say once, when folds are written, which test folds lack a class: their macro-F1 averages
    over the classes present (scikit-learn's rule), and a C-index without any event is undefined."""
    lab = folds.merge(cases.drop_duplicates("case_id"), on="case_id")
    t = get_task(task)
    notes = []
    for k in sorted(lab["fold"].unique()):
        note = t.fold_note(lab[lab["fold"] == k], lab)
        if note:
            notes.append(f"fold {k} {note}")
    if notes:
        log.warning("%s: %s in its test set; %s", path, "; ".join(notes), t.absent_effect)
