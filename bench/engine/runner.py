"""``bench run``: the (task, method, fold) grid of one dataset under one split manager and one
evaluator, resumable unit by unit.

A run first *plans*: it resolves every unit's options and identity (``bench.engine.identity``),
validates every option and the ``--init`` checkpoint, and checks that no table row would end up
mixing configurations — all before any finished unit is touched. Then it executes the units that
are not done (or whose identity changed, saying why) through the one unit executor.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from ..data.datasets import load_cohort
from ..data.splits import SplitManager, Splits
from ..registry import ENCODERS, SOURCE_PARAMS, MethodSpec
from ..results.records import InputSpec, SplitIdentity, UnitRecord, WeightsProvenance
from ..results.store import MixedRowError, ResultsStore, Unit
from ..report.tables import human_count
from . import distributed as D
from .. import tasks as T
from .config import INPUT_OPTIONS, OptionError, Variant, method_train_config, model_options, unit_seed
from .eta import Eta, clock as _clock
from .executor import fit_and_score, resolve_device
from ..results.identity import digest
from .identity import NUMERICS_VERSION
from .jobs import Workers, finished_now, threads_per_job, validate_jobs
from .inputs import _FEATURE_INPUTS, Inputs  # noqa: F401 (tests patch it)
from .memory import bounded_heap
from .protocol import load_protocol, resolve_protocol
from .plan import Planner, UnitPlan, check_folds, check_variant_name, unit_variant
from .status import (RunReport, changed_slides_unreadable, check_init, check_rows, classify, done_meanwhile,  # noqa: F401
                     only_slides_changed)
from .train import TrainConfig

log = logging.getLogger(__name__)

__all__ = ["run", "grid_order", "RunReport", "UnitPlan", "Variant", "INPUT_OPTIONS", "unit_seed",
           "method_train_config", "model_options"]


def run(methods: list[MethodSpec | Variant], dataset: str, *, tasks: list[str] | None = None,
        folds: list[int] | None = None, results: Path | str = "results", cache: Path | str = "cache",
        n_folds: int = 5, seed: int = 0, train_overrides: dict[str, Any] | None = None,
        model_overrides: dict[str, Any] | None = None, input_overrides: dict[str, Any] | None = None,
        progress: bool = True, tuned: bool = False, dry_run: bool = False, init: Path | str | None = None,
        from_scratch: bool = False, order: str = "fold", variant: str | None = None,
        protocol: str | None = None, row_check: bool = True, device: str = "auto", jobs: int = 1,
        worker_command: Sequence[str] | None = None, worker_of: float | None = None,
        splits_name: str | None = None, keep_weights: bool | None = None) -> RunReport:
    """Run every (task, method[, variant], fold) unit of ``dataset`` (a name or a YAML path) not yet
    done, or whose identity changed since it was done.

    ``methods`` may hold :class:`Variant` s (an ablation's values), each stored under its name;
    ``variant`` names the run's own settings as a variant (``--variant``), so an experiment is a
    row of its own instead of replacing the method's.
    ``init``: a checkpoint every end-to-end unit's model starts from (``bench.engine.pretrain.load_init``;
    its content hash enters the unit's identity); ``from_scratch``: train end-to-end models from
    random initialisation on a dataset that does not allow random weights (their rows are marked).
    ``tuned``: each unit uses the best hyper-parameters that ``bench tune`` found for its outer fold
    (a unit without them fails, naming the command to run). ``dry_run``: plan and classify units
    (done / to do, in ``report.todo``) without training anything.
    ``order``: the order units run in (``grid_order``): ``fold`` (default), ``task`` or ``method``.
    ``row_check``: refuse a run that would leave a table row mixing configurations (a launcher's
    one-unit jobs skip it: their submitter checked the whole grid).
    ``device``: where models train (``auto``: this rank's under torchrun, else CUDA when present).
    ``protocol``: the preset of every unit (``bench.engine.protocol``; default: the dataset YAML's,
    else the method config's, else ``wsi-bench``); its name enters each unit's identity.
    ``jobs``: train independent units on this many processes at once (``bench.engine.jobs``): the
    N - 1 others run ``worker_command`` (this very command) as workers: ``worker_of`` is then the wall
    time the parent run started; a worker trains, skips units another process of the run failed,
    and leaves the summary to the parent.
    ``keep_weights``: each finished unit's trained weights go to ``model.pt`` beside its record
    (None, the default; True also redoes finished units that did not keep them; False: none kept).
    """
    t0 = time.perf_counter()
    validate_jobs(jobs)
    if jobs > 1 and D.active():
        raise OptionError("--jobs trains several units at once on one machine; under torchrun (--nproc) the "
                          "ranks train each unit together: use one or the other")
    started_at = time.time() if worker_of is None else worker_of
    if jobs > 1 and worker_of is None and worker_command is None:
        raise ValueError("jobs > 1 needs the worker_command that runs this run in another process")
    variants = [m if isinstance(m, Variant) else Variant(m) for m in methods]
    if variant is not None:
        variants = [Variant(v.spec, "+".join(p for p in (v.name, check_variant_name(variant)) if p), v.model, v.train, v.inputs)
                    for v in variants]
    store = ResultsStore(results, keep_weights)
    cohort = load_cohort(dataset)
    dataset = cohort.spec.name  # a dataset given as a YAML path is named by its file stem
    for line in cohort.report():
        log.info(line)
    tasks = [t for t in (tasks or cohort.spec.tasks)]
    for t in tasks:
        if t not in cohort.spec.tasks:
            raise ValueError(f"dataset {dataset!r} does not support task {t!r} (it has {cohort.spec.tasks})")
    cohort.require_folds(tasks, n_folds)  # the verdict `bench doctor` gives: enough cases for the folds
    manager = SplitManager(Path(results) / "splits")
    with D.main_first():  # under torchrun, rank 0 writes the split files, the others read them
        splits: dict[str, Splits] = {t: manager.get(dataset, t, cohort.cases(t), n_folds=n_folds, seed=seed,
                                                    name=splits_name) for t in tasks}
    planner = Planner(cohort, splits, cache, progress, seed, Path(init) if init is not None else None,
                      from_scratch, protocol)
    report = RunReport(dataset=dataset)
    plans = _plan_all(planner, variants, tasks, folds, order, tuned, results, n_folds, seed,
                      dict(train_overrides or {}), dict(model_overrides or {}), dict(input_overrides or {}), report)
    if init is not None and not dry_run:
        check_init(plans, Path(init))
    status = classify(plans, store, report, dry_run)
    if row_check:
        check_rows(plans, store, status)
    if dry_run:
        report.seconds = time.perf_counter() - t0
        return report
    todo = [p for p in plans if status[p.unit] in ("run", "slides")]
    if todo:
        log.info("%d unit(s) to run%s", len(todo),
                 f"; {len(report.done_before)} of {len(plans)} already done (resuming)" if report.done_before else "")
    else:
        log.info("nothing to do: all %d unit(s) already done", len(report.done_before))
    if worker_of is not None or (jobs > 1 and len(todo) > 1):
        import torch

        torch.set_num_threads(threads_per_job(jobs))  # jobs × threads ≤ cores
    if worker_of is not None:
        _execute(todo, planner, store, report, progress, t0, device, failed_since=worker_of)
    elif jobs == 1 or len(todo) < 2:
        _execute(todo, planner, store, report, progress, t0, device)
    else:
        _execute_with_workers(todo, planner, store, report, progress, t0, device, jobs, list(worker_command or []),
                              Path(results), started_at)
    if worker_of is not None:  # the process that started this worker writes the summary, once every worker is done
        report.seconds = time.perf_counter() - t0
        return report
    if (report.ran or report.by_workers) and D.is_main():
        try:
            store.summarize(dataset, ddof=int(load_protocol(resolve_protocol(protocol, cohort.spec.protocol))
                                              .report.get("std_ddof", 0)))
        except MixedRowError as exc:
            log.warning("%s", exc)
    report.seconds = time.perf_counter() - t0
    return report


def _plan_all(planner: Planner, variants: list[Variant], tasks: list[str], folds: list[int] | None, order: str,
              tuned: bool, results: Path | str, n_folds: int, seed: int, train_overrides: dict[str, Any],
              model_overrides: dict[str, Any], input_overrides: dict[str, Any], report: RunReport) -> list[UnitPlan]:
    """Every unit's plan. Option errors stop the run here, before anything is touched; an unavailable
    input (an encoder without weights) fails its units only."""
    splits = planner.splits
    check_folds(folds, {t: splits[t].n_folds for t in tasks})
    grid = grid_order(tasks, variants, {t: splits[t].n_folds for t in tasks}, folds, order)
    plans, input_errors = [], set()
    for task, v, k in grid:
        unit = Unit(planner.cohort.spec.name, task, v.spec.name, k, unit_variant(v.name, tuned, seed, n_folds,
                                                                                   planner.splits[task].name))
        tuned_info = None
        if tuned:
            from .tuning import TuningError, load_best

            try:
                tuned_info = load_best(results, planner.cohort.spec.name, task, v.spec.name, k)
            except TuningError as exc:
                report.failed[unit] = str(exc)
                continue
        try:
            plans.append(planner.plan(task, v, k, unit, tuned_info, train_overrides, model_overrides,
                                      input_overrides))
        except (OptionError, TypeError) as exc:
            raise OptionError(f"{unit}: {exc}") from exc
        except Exception as exc:  # noqa: BLE001 — an unavailable encoder fails its units, not the run
            msg = f"inputs of {v.spec.name} unavailable: {type(exc).__name__}: {exc}"
            if v.spec.name not in input_errors:
                log.error("%s", msg)
            input_errors.add(v.spec.name)
            report.failed[unit] = msg
    return plans


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


def _execute_with_workers(todo: list[UnitPlan], planner: Planner, store: ResultsStore, report: RunReport,
                          progress: bool, t0: float, device: Any, jobs: int, command: list[str], results: Path,
                          started_at: float) -> None:
    """``--jobs N``: start N - 1 workers over the same store, train units here too, wait for the workers
    and settle the units they trained (``bench.engine.jobs``)."""
    n = min(jobs, len(todo))
    workers = Workers(command, n - 1, threads_per_job(jobs), started_at,
                      results / "logs" / f"jobs-{time.strftime('%Y%m%d-%H%M%S')}")
    started = time.perf_counter()

    def count_done() -> int:
        return sum(finished_now(store.unit_dir(p.unit), p.chash) for p in todo)

    last = [-1]
    rounds = Rounds(todo, store)
    eta = Eta(p.inputs_key for p in todo)

    def line() -> None:
        done = count_done()
        if done != last[0]:
            last[0] = done
            log.info("[%d/%d] units finished by %d processes (elapsed %s, ETA %s)", done, len(todo), n,
                     _clock(time.perf_counter() - t0), eta.text(time.perf_counter() - started, done, len(todo) - done))
            if (first_look := rounds.check()) is not None:
                log.info("%s", first_look)

    workers.start()
    try:
        _execute(todo, planner, store, report, progress, t0, device, count_done, failed_since=started_at,
                 rounds=rounds, eta=eta)
        if workers.running():
            log.info("waiting for %d worker(s) to finish their units", sum(p.poll() is None for p in workers.procs))
        workers.wait(poll=line)
    except BaseException:
        workers.stop()
        log.warning("stopped: %d of %d unit(s) of this run are finished and kept; its workers are ended", count_done(), len(todo))
        raise
    for u in list(report.busy):  # units another process held when this one reached them
        p = next(p for p in todo if p.unit == u)
        if finished_now(store.unit_dir(u), p.chash):
            report.by_workers.append(u)
        else:
            report.failed[u] = _failed_since(store, u, started_at) or (
                f"not finished by the worker that held it (see the worker logs in {workers.log_dir})")
        report.busy.remove(u)


def _execute(todo: list[UnitPlan], planner: Planner, store: ResultsStore, report: RunReport, progress: bool,
             t0: float, device: Any, count_done: Callable[[], int] | None = None,
             failed_since: float | None = None, rounds: Rounds | None = None, eta: Eta | None = None) -> None:
    """Train the units in ``todo`` that no other process holds. ``count_done``: the units of ``todo``
    finished so far by any process (--jobs), for the progress line. ``failed_since``: a unit that
    failed at or after this time (another process of this ``--jobs`` run tried it) is not tried again.
    ``rounds``: says when every unit of a leading fold is done (default: over ``todo``); ``eta``: the ETA."""
    extracted: set[str] = set()
    rounds = rounds if rounds is not None else Rounds(todo, store)
    eta = eta if eta is not None else Eta(p.inputs_key for p in todo)
    started = time.perf_counter()
    for i, p in enumerate(todo):
        unit = p.unit
        lock = None
        if D.is_main():
            lock = store.try_claim(unit)
            st = "busy" if lock is None else ("done" if done_meanwhile(store, p) else "run")
            failure = _failed_since(store, unit, failed_since) if st == "run" and failed_since is not None else None
            if failure is not None:  # --jobs: another process of this run tried it and it failed
                st = "failed"
        st = D.broadcast(st if D.is_main() else None)
        if st != "run":
            if st == "busy":
                log.log(logging.INFO if count_done is None else logging.DEBUG,
                        "%s: claimed by another process, skipping", unit)
                report.busy.append(unit)
            elif st == "failed":
                report.failed[unit] = failure
            else:  # finished meanwhile by another process: under --jobs, one of this run's workers
                (report.by_workers if count_done is not None else report.done_before).append(unit)
            if lock is not None:
                lock.release()
            continue
        fi = planner.inputs[p.inputs_key]
        try:
            if p.inputs_key not in extracted:
                prepare = time.perf_counter()  # extraction, if the cache misses: the ETA's second part
                with D.main_first():  # rank 0 fills the cache, the others then find it
                    fi.ensure()
                extracted.add(p.inputs_key)
                eta.ensured(p.inputs_key, time.perf_counter() - prepare)
            if p.unit in report.redone and only_slides_changed(store.done_config(unit) or {}, p.config):
                gone = changed_slides_unreadable(p, store.done_config(unit) or {}, fi, planner.cohort.table)
                if gone:
                    log.warning("%s: slide(s) %s changed on disk and cannot be read now; the finished result, made "
                                "from their earlier version, is kept. Fix the file(s) and rerun to redo it",
                                unit, ", ".join(gone))
                    report.redone.pop(unit)
                    report.done_before.append(unit)
                    continue
            if D.is_main():
                store.prepare(unit, p.config, p.chash)
            # end-to-end units only: resident memory stays at one layer's working set, while the MIL
            # units' small steps would pay page faults for nothing (bench/engine/memory.py)
            with bounded_heap(p.spec.family == "end-to-end"):
                pred, train_log, record, weights = _run_unit(p, planner, fi, progress, device)
            if D.is_main():
                store.finish(unit, pred, train_log, record, why="; ".join(report.redone.get(unit, [])),
                             weights=weights)
            report.ran.append(unit)
            _log_finished(record, unit, i, len(todo), len(report.ran), time.perf_counter() - started, t0, eta,
                          count_done)
            if D.is_main() and log.isEnabledFor(logging.INFO) and (first_look := rounds.check()) is not None:
                log.info("%s", first_look)
        except OSError:
            raise  # disk full, unreadable cache...: stop; finished units stay done
        except Exception as exc:  # noqa: BLE001 — one unit's failure must not lose the others
            msg = f"{type(exc).__name__}: {exc}"
            if D.active():
                # Under DDP the ranks train each unit together: a rank that skipped to the next
                # unit would leave the others blocked in this unit's collectives until the process
                # group's timeout (30 min). Stop this process instead; torchrun then tears the
                # whole group down, and a rerun resumes at this unit.
                log.error("rank %d: %s failed: %s -- stopping every rank (a DDP group cannot skip a unit "
                          "on one rank only); finished units are kept, rerun the same command to resume",
                          D.rank(), unit, msg)
                if D.is_main():
                    store.fail(unit, msg)
                raise
            log.error("%s failed: %s%s", unit, msg,
                      " (its previous result stays in place)" if unit in report.redone else "")
            if D.is_main():
                store.fail(unit, msg)
            report.failed[unit] = msg
        finally:
            if lock is not None:
                lock.release()


def _log_finished(record: UnitRecord, unit: Unit, i: int, total: int, ran: int, elapsed: float, t0: float,
                  eta: Eta, count_done: Callable[[], int] | None) -> None:
    """The line of a finished unit, the ``i``-th of ``total``; ``count_done``: every process's (--jobs)."""
    why = f" -- {record.metrics['undefined']}" if "undefined" in record.metrics else ""
    position = i + 1 if count_done is None else count_done()  # --jobs: every process's finished units
    left = eta.text(elapsed, ran if count_done is None else max(position, 1), total - position)
    log.info("[%d/%d] %-44s %s = %s  (%.1f s; elapsed %s, ETA %s)%s", position, total, str(unit),
             record.primary_metric, _fmt(record.metrics.get(record.primary_metric)), record.train_seconds,
             _clock(time.perf_counter() - t0), left, why)


def _failed_since(store: ResultsStore, unit: Unit, since: float) -> str | None:
    """The error of ``unit`` if it failed at or after ``since`` (its staging error.json), else None."""
    try:
        err = json.loads((store.staging_dir(unit) / "error.json").read_text())
    except (OSError, ValueError):
        return None
    return str(err.get("error")) if float(err.get("time", 0)) >= since else None


ORDERS = ("task", "method", "fold")


def grid_order(tasks: list[str], variants: list[Any], n_folds: dict[str, int], folds: list[int] | None,
               order: str = "fold") -> list[tuple[str, Any, int]]:
    """The (task, variant, fold) units of a run, in the order they are trained.

    ``fold`` (default): fold 0 of every (task, method), then fold 1, ...: after the first round
    every table has every row, from one fold (marked ``1/5 folds``), each further round tightens
    them all, and the ETA is measured on a mix of every method (the first round also pays for the
    feature extraction, so the ETA it gives is high: on the demo, round 1 of 5 took 16 min, which
    makes it 80 min for a run that took 60).
    ``task``: every unit of the first task, then the next task — each method's folds together.
    ``method``: every unit of the first method (all its tasks and folds), then the next: a
    method's row is complete in every table early. Which units exist does not depend on the
    order, and a resumed run skips done units in any order.
    """
    if order not in ORDERS:
        raise ValueError(f"unknown order {order!r}; choose one of {', '.join(ORDERS)}")
    keep = [(t, v, k) for t in tasks for v in variants for k in range(n_folds[t])
            if (folds is None or k in folds) and getattr(v, "spec", v).defined_for(t)]
    t_pos = {t: i for i, t in enumerate(tasks)}
    v_pos = {id(v): i for i, v in enumerate(variants)}
    key = {"task": lambda u: (t_pos[u[0]], v_pos[id(u[1])], u[2]),
           "method": lambda u: (v_pos[id(u[1])], t_pos[u[0]], u[2]),
           "fold": lambda u: (u[2], t_pos[u[0]], v_pos[id(u[1])])}[order]
    return sorted(keep, key=key)


def _fmt(v: Any) -> str:
    return "undefined" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.4f}"


def sample_labels(row: pd.Series, task: str) -> dict[str, float]:
    return {c: float(row[c]) for c in T.get_task(task).label_columns}


def _run_unit(p: UnitPlan, planner: Planner, fi: Inputs, progress: bool, device: Any
              ) -> tuple[pd.DataFrame, pd.DataFrame, UnitRecord, dict[str, Any] | None]:
    unit, spec, cohort = p.unit, p.spec, planner.cohort
    device = resolve_device(device)
    splits = planner.splits[unit.task]
    cases = cohort.cases(unit.task).set_index("case_id")
    without = [c for c in cases.index if not fi.has(c)]
    if without:
        log.warning("%s: %d case(s) have no input and are left out (e.g. %s)", unit, len(without),
                    ", ".join(without[:3]))
    train = [fi.sample(c, sample_labels(cases.loc[c], unit.task)) for c in splits.train_cases(unit.fold)
             if c not in without]
    test = [fi.sample(c, sample_labels(cases.loc[c], unit.task)) for c in splits.test_cases(unit.fold)
            if c not in without]
    val = [fi.sample(c, sample_labels(cases.loc[c], unit.task)) for c in splits.val_cases(unit.fold)
           if c not in without]
    name = spec.name + (f"[{unit.variant}]" if unit.variant else "")
    t_unit = time.perf_counter()
    out = fit_and_score(p.recipe, unit.task, train, test, TrainConfig.from_dict(p.train), progress=progress,
                        desc=f"{name} {unit.task} fold {unit.fold}", device=device, val=val)
    unit_seconds = time.perf_counter() - t_unit  # build + train + predict + score (benchmarks/first_run.py)
    task = T.get_task(unit.task)
    cfg = p.config
    record = UnitRecord(
        dataset=unit.dataset, task=unit.task, method=unit.method, fold=unit.fold, variant=unit.variant,
        variant_settings=p.variant.settings, tuned=p.tuned, family=spec.family, label=spec.label,
        group=_group(spec), backbone=ENCODERS[spec.encoder]["backbone"] if spec.encoder in ENCODERS else spec.backbone,
        encoder=spec.cache_encoder, encoder_label=ENCODERS.get(spec.encoder or "", {}).get("label", ""),
        frozen_params_text=_frozen_params(spec, out.params, out.trainable_params, fi.provenance()),
        default_input=_default_input(spec, fi), input=fi.spec, model=cfg["model"], train=cfg["train"],
        protocol=cfg["protocol"], split=SplitIdentity(**cfg["split"]),
        identity={"labels": digest(cfg["labels"]), "slides": digest(cfg["slides"]),
                  "mpp_override": str(cfg["mpp_override"])},
        weights=[WeightsProvenance.from_dict(w) for w in cfg["weights"]], config_hash=p.chash,
        code_version=_code_version(), numerics_version=NUMERICS_VERSION, primary_metric=task.metric,
        higher_is_better=bool(getattr(task, "higher_is_better", True)), metrics=out.scores, params=out.params, trainable_params=out.trainable_params,
        n_train=len(train), n_test=len(test), cases_without_input=without, predictions_sha256="",
        train_seconds=out.info["train_seconds"], train_seconds_per_slide=out.train_seconds_per_slide,
        peak_rss_mb=out.peak_rss_mb, peak_cuda_mb=out.peak_cuda_mb, finished=time.time(),
        info={**{k: v for k, v in out.info.items() if k != "train_seconds"}, "non_default": p.non_default,
              "device": str(device), "weights_loaded": out.loaded + _encoder_loads(fi),
              "unit_seconds": unit_seconds,
              "order": _registry_position(spec.name)},
    )
    return out.predictions, out.train_log, record, out.state_dict


def _encoder_loads(fi: Inputs) -> list[dict[str, Any]]:
    """What the patch encoder's weights were loaded from (file, sha256, key map), when it has a record."""
    enc = getattr(fi, "encoder", None)
    return [w.to_dict() for w in enc.weights_provenance] if enc is not None else []


def _registry_position(name: str) -> int:
    """Registration order = Table 2's row order; recorded so tables need not read the registry."""
    from ..registry import list_methods

    names = [s.name for s in list_methods()]
    return names.index(name) if name in names else len(names)


def _group(spec: MethodSpec) -> str:
    if spec.family == "two-stage" and spec.encoder in ENCODERS:
        return ENCODERS[spec.encoder]["group"]
    return spec.group or ("End-to-end" if spec.family == "end-to-end" else "Two-stage")


def _default_input(spec: MethodSpec, fi: Inputs) -> InputSpec:
    if spec.input == "slide":
        return InputSpec("slide", magnification=float(spec.magnification or 2.5))
    return fi.spec


def _frozen_params(spec: MethodSpec, total: int, trainable: int, weights: list[WeightsProvenance]) -> str:
    """Table 2's frozen part of a two-stage row: a MIL row's patch encoder ("25M"); a hierarchical
    row's first stage together with its frozen second stage ("24.4M", "1.2G"); a stand-in encoder is
    named, not counted. "" for rows without a frozen part."""
    standin = any(w.source == "standin" for w in weights)
    if spec.family != "two-stage":
        return ""
    if spec.encoder in ENCODERS:
        return "stand-in" if standin else ENCODERS[spec.encoder]["params"]
    frozen = total - trainable
    if standin:
        return "stand-in" + (f" + {human_count(frozen)}" if frozen else "")
    return human_count(frozen + SOURCE_PARAMS.get(spec.source or "", 0))


def _code_version() -> str:
    from ..results.store import code_version

    return code_version()
