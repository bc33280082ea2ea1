"""Every table row against chance: a permutation test of the row's out-of-fold predictions against
labels shuffled within each fold, scored with the column's own metric (:func:`bench.report.stats.chance_test`).
A row whose p-value is not below ``alpha`` is marked ∘ in its cell; the numbers go to
``<table>_chance.csv``. This runs for every table on every dataset, not only under ``--stats``.
A row run with ``--repeats`` is tested on its repeat 0 (one prediction per case: the pooled
predictions of several seeds would count each case several times).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Hashable

import pandas as pd

from ..results.store import ResultsStore, Unit
from .stats import ALPHA, N_PERM, chance_test


def row_predictions(store: ResultsStore, dataset: str) -> dict[tuple[str, str, str], pd.DataFrame]:
    """Out-of-fold predictions of every row of ``dataset``, keyed by (task, method, variant), read in
    one pass over the records (each verified against its record's checksum)."""
    parts: dict[tuple[str, str, str], list[pd.DataFrame]] = {}
    for rec in store.records(dataset):
        if rec.repeat:
            continue
        df = pd.read_csv(store.unit_dir(Unit.of(rec)) / "predictions.csv", dtype={"case_id": str}).assign(fold=rec.fold)
        parts.setdefault((rec.task, rec.method, rec.variant or ""), []).append(df)
    return {k: pd.concat(v, ignore_index=True) for k, v in parts.items()}


def chance_marks(store: ResultsStore, wide: pd.DataFrame, cols: list[tuple[str, str]], *, n_perm: int = N_PERM,
                 alpha: float = ALPHA) -> tuple[dict[tuple[str, str], set[Hashable]], pd.DataFrame]:
    """Per (task, dataset) column, the indices of ``wide``'s rows not distinguishable from chance,
    and one line per tested cell (row, task, dataset, metric, observed, p_chance, ...)."""
    preds = {d: row_predictions(store, d) for d in dict.fromkeys(d for _, d in cols)}
    marks: dict[tuple[str, str], set[Hashable]] = {c: set() for c in cols}
    lines: list[dict[str, Any]] = []
    for task, dataset in cols:
        for i, row in wide.iterrows():
            pred = preds[dataset].get((task, row["method"], row["variant"] or ""))
            if row[(task, dataset)] is None or pred is None or pred.empty:
                continue
            try:
                c = chance_test(pred, task, n_perm=n_perm, alpha=alpha)
            except KeyError as exc:
                raise ValueError(f"predictions of {dataset}/{task}/{row['method']} lack the column {exc}, which the "
                                 f"{task} metric needs: redo the row with `python -m bench run --methods "
                                 f"{row['method']} --dataset {dataset} --tasks {task}`") from exc
            if c.at_chance:
                marks[(task, dataset)].add(i)
            lines.append({"row": row["method"] + (f"/{row['variant']}" if row["variant"] else ""), "task": task,
                          "dataset": dataset, "pooled_metric": c.observed, "shuffled_mean": c.null_mean,
                          "p_chance": c.p, "at_chance": c.at_chance, "n_cases": c.n_cases,
                          "n_permutations": c.n_perm, "alpha": alpha})
    return marks, pd.DataFrame(lines)


def write_chance_csv(frame: pd.DataFrame, out: Path) -> Path:
    from ..io import atomic_write_text

    csv = out.with_name(out.stem + "_chance.csv")
    atomic_write_text(csv, frame.to_csv(index=False))
    return csv
