"""What a run says while it trains: which leading rounds of folds every (task, method) has finished
(the "every row now" line), and durations as clocks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ..results.store import ResultsStore, Unit
from .jobs import finished_now
from .plan import UnitPlan


class Rounds:
    """Which folds every unit of a run has finished, for the "every row now" line: a round is one
    fold index of every (task, method) in ``todo``. ``check()`` returns a line when another leading
    round is complete (by any process), except the last one (the run's own end says that)."""

    def __init__(self, todo: list[UnitPlan], store: ResultsStore) -> None:
        self.store = store
        folds = sorted({p.unit.fold for p in todo})
        self.pending = [(k, [p for p in todo if p.unit.fold == k]) for k in folds]
        self.n_folds = len(folds)
        self.done: list[int] = []
        self.dataset = todo[0].unit.dataset if todo else ""

    def _open(self, units: list) -> list:
        units[:] = [p for p in units if not finished_now(self.store.unit_dir(p.unit), p.chash)]
        return units

    def check(self) -> str | None:
        grew = False
        while len(self.pending) > 1 and not self._open(self.pending[0][1]):
            self.done.append(self.pending.pop(0)[0])
            grew = True
        if not grew or (len(self.pending) == 1 and not self._open(self.pending[0][1])):
            return None  # nothing new, or the whole run is done (other processes finished it meanwhile)
        results = "" if self.store.root == Path("results") else f" --results {self.store.root}"
        return (f"fold(s) {', '.join(map(str, self.done))} of every (task, method) of this run done: "
                f"`python -m bench table --dataset {self.dataset}{results}` shows every row now, "
                f"from {len(self.done)} of {self.n_folds} folds")


def clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def metric_text(v: Any) -> str:
    return "undefined" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.4f}"


def failed_since(store: ResultsStore, unit: Unit, since: float) -> str | None:
    """The error of ``unit`` if it failed at or after ``since`` (its staging error.json), else None."""
    try:
        err = json.loads((store.staging_dir(unit) / "error.json").read_text())
    except (OSError, ValueError):
        return None
    return str(err.get("error")) if float(err.get("time", 0)) >= since else None
