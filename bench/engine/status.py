"""What a planned run may do: the report it fills, the checks made before anything is touched
(no row mixes configurations), and each unit's status (done, stale and why, or
to run)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ..results.records import UnitRecord
from ..results.store import ResultsStore, Unit
from ..results.identity import BOOKKEEPING, digest, explain, row_signature
from . import distributed as D
from .config import OptionError
from .inputs import Inputs
from .plan import UnitPlan

log = logging.getLogger("bench.engine.runner")


@dataclass
class RunReport:
    dataset: str = ""
    done_before: list[Unit] = field(default_factory=list)
    ran: list[Unit] = field(default_factory=list)
    failed: dict[Unit, str] = field(default_factory=dict)
    busy: list[Unit] = field(default_factory=list)  # claimed by another live worker
    by_workers: list[Unit] = field(default_factory=list)  # --jobs N: trained by this run's workers
    todo: list["UnitPlan"] = field(default_factory=list)  # dry run: units that would run
    redone: dict[Unit, list[str]] = field(default_factory=dict)  # finished units redone, and why
    # finished units trained without some cases (no input then): those cases, and the record's finish
    # time; such a unit is redone once its inputs are prepared if any of those cases has input now
    recheck: dict[Unit, tuple[list[str], float]] = field(default_factory=dict)
    seconds: float = 0.0

    def line(self) -> str:
        parts = [f"{len(self.ran)} unit(s) run", f"{len(self.done_before)} already done"]
        if self.by_workers:
            parts[0] = f"{len(self.ran) + len(self.by_workers)} unit(s) run ({len(self.by_workers)} by workers)"
        if self.redone:
            parts.append(f"{len(self.redone)} redone because their inputs or options changed")
        if self.busy:
            parts.append(f"{len(self.busy)} running in another process")
        if self.failed:
            parts.append(f"{len(self.failed)} failed")
        return ", ".join(parts) + f" ({self.seconds:.1f} s)"


def classify(plans: list[UnitPlan], store: ResultsStore, report: RunReport, dry_run: bool) -> dict[Unit, str]:
    """done / run / slides for every planned unit (rank 0 decides, every rank follows: under torchrun
    the ranks train each unit together, so they must agree on the unit list). ``slides``: only slide
    files changed since the unit finished; it is redone once its inputs are prepared if a changed
    slide can be read — a slide that became unreadable (truncated, unmounted) does not throw away a
    result made from its earlier version."""
    status: dict[Unit, str] = {}
    for p in plans:
        st = None
        if D.is_main():
            rec = store.done_record(p.unit)
            if is_done(store, rec, p) and rec.cases_without_input:
                st = "inputs"
                report.recheck[p.unit] = (list(rec.cases_without_input), rec.finished)
            elif is_done(store, rec, p):
                st = "done"
            elif rec is not None and rec.config_hash == p.chash:
                st = "run"
                report.redone[p.unit] = ["its trained weights were not kept (--keep-weights)"]
                log.info("%s: finished without keeping its trained weights; it will be redone (--keep-weights), "
                         "the previous result is kept until the new one has finished", p.unit)
            else:
                st = "run"
                if rec is not None or (store.unit_dir(p.unit) / "metrics.json").is_file():
                    old = store.done_config(p.unit) or {}
                    why = explain(old, p.config) if rec is not None else ["its files were damaged"]
                    if rec is not None and only_slides_changed(old, p.config):
                        st = "slides"
                    report.redone[p.unit] = why
                    log.info("%s: finished result is stale (%s); %s, the previous result is kept until the new "
                             "one has finished", p.unit, "; ".join(why),
                             "it will be redone if the changed slides can be read" if st == "slides"
                             else "it will be redone")
        st = D.broadcast(st if D.is_main() else None)
        status[p.unit] = st
        if st == "done":
            report.done_before.append(p.unit)
        elif dry_run:
            report.todo.append(p)
    return status


def only_slides_changed(old: dict[str, Any], new: dict[str, Any]) -> bool:
    strip = ("slides", *BOOKKEEPING)
    return digest({k: v for k, v in old.items() if k not in strip}) == digest(
        {k: v for k, v in new.items() if k not in strip})


def changed_slides_unreadable(p: UnitPlan, old: dict[str, Any], fi: Inputs, table: pd.DataFrame) -> list[str]:
    """The slides of the cases whose slide files changed since ``p``'s unit finished, when none of
    them gives input now (else [])."""
    before, now = old.get("slides") or {}, p.config["slides"]
    cases = {c for c in now if before.get(c) != now[c]}
    slides = [str(s) for s, c in zip(table["slide_id"], table["case_id"]) if c in cases]
    missing = getattr(fi, "missing", set())
    return slides if slides and all(s in missing for s in slides) else []


def check_rows(plans: list[UnitPlan], store: ResultsStore, status: dict[Unit, str]) -> None:
    """Refuse a run that would leave a row mixing configurations: when only some folds of a row run
    with new settings, the row's other finished folds must share them."""
    by_row: dict[tuple, list[UnitPlan]] = {}
    for p in plans:
        by_row.setdefault((p.unit.task, p.unit.method, p.unit.variant), []).append(p)
    for (task, method, var), ps in by_row.items():
        changing = [p for p in ps if status[p.unit] == "run"]
        if not changing:
            continue
        sig = row_signature(changing[0].config)
        n = changing[0].config["split"]["n_folds"]
        planned = {p.unit.fold for p in ps}
        for k in range(n):
            if k in planned:
                continue
            u = Unit(ps[0].unit.dataset, task, method, k, var)
            if store.done_record(u, verify=False) is None:
                continue
            old = store.done_config(u) or {}
            if digest(row_signature(old)) != digest(sig):
                why = "; ".join(explain(row_signature(old), sig))
                raise OptionError(
                    f"{u.dataset}/{task}/{method}{'[' + var + ']' if var else ''}: running fold(s) "
                    f"{sorted(p.unit.fold for p in changing)} with these settings would mix configurations in one "
                    f"table row — fold {k} is finished with others ({why}). Nothing was run. Fix: run every fold "
                    "(drop --folds), or make this experiment a row of its own with --variant NAME")


def is_done(store: ResultsStore, rec: UnitRecord | None, p: UnitPlan) -> bool:
    """Finished with the plan's identity (and with its weights kept, when the store asks for them)."""
    return rec is not None and rec.config_hash == p.chash and not (
        store.redo_without_weights and "weights_file" not in rec.info)


def done_meanwhile(store: ResultsStore, p: UnitPlan, report: RunReport | None = None) -> bool:
    """Finished by another worker meanwhile (a unit to recheck counts once its record was replaced)."""
    rec = store.done_record(p.unit)
    seen = report.recheck.get(p.unit) if report is not None else None
    return is_done(store, rec, p) and (seen is None or rec.finished != seen[1])


def recovered_cases(unit: Unit, report: RunReport, fi: Inputs) -> list[str] | None:
    """For a finished unit trained without some cases: those that have input now (its inputs
    prepared), or None when it is not such a unit. A unit with none of them is kept as done."""
    if unit not in report.recheck:
        return None
    now = [c for c in report.recheck[unit][0] if fi.has(c)]
    if now:
        report.redone[unit] = [f"it was trained without {len(now)} case(s) that have input now ({', '.join(now)})"]
        log.info("%s: %s; it will be redone, the previous result is kept until the new one has finished",
                 unit, report.redone[unit][0])
    return now
