"""``bench run``: the (task, method, fold) grid of one dataset under one split manager and one
evaluator, resumable unit by unit.

A run first *plans*: it resolves every unit's options and identity (``bench.engine.identity``),
validates every option and the ``--init`` checkpoint, and checks that no table row would end up
mixing configurations — all before any finished unit is touched. Then it executes the units that
are not done (or whose identity changed, saying why) through the one unit executor.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence


from ..data.datasets import load_cohort
from ..data.splits import SplitManager, Splits
from ..registry import MethodSpec
from ..results.records import UnitRecord
from ..results.store import MixedRowError, ResultsStore, Unit
from . import distributed as D
from .config import INPUT_OPTIONS, OptionError, Variant, method_train_config, model_options, unit_seed
from .executor import resolve_device
from .eta import Eta, clock as _clock
from .jobs import Workers, default_worker_command, finished_now, threads_per_job, validate_jobs, write_worker_spec
from .memory import unit_memory_policy
from .options import RunOptions
from .progress import Rounds, failed_since as _failed_since, metric_text as _fmt
from .protocol import load_protocol, resolve_protocol
from .plan import Planner, UnitPlan, check_folds, check_variant_name, unit_variant
from .status import (RunReport, changed_slides_unreadable, check_rows, classify, done_meanwhile,  # noqa: F401
                     only_slides_changed, recovered_cases)
from . import unit as U

log = logging.getLogger(__name__)

__all__ = ["run", "grid_order", "RunReport", "UnitPlan", "Variant", "INPUT_OPTIONS", "unit_seed",
           "method_train_config", "model_options"]


def _announce(todo: list, n_plans: int, report: RunReport) -> None:
    """The log lines that say what this run is about to do."""
    if len(todo) > len(report.recheck):
        log.info("%d unit(s) to run%s", len(todo) - len(report.recheck),
                 f"; {len(report.done_before)} of {n_plans} already done (resuming)" if report.done_before else "")
    if report.recheck:
        log.info("%d finished unit(s) were trained without some cases (no input then); they are redone if those "
                 "cases have input now", len(report.recheck))
    if not todo:
        log.info("nothing to do: all %d unit(s) already done", len(report.done_before))


def run(methods: list[MethodSpec | Variant], options: RunOptions | str | Path, *,
        worker_command: Sequence[str] | None = None, worker_of: float | None = None, **kw: Any) -> RunReport:
    """Run every (task, method[, variant], fold) unit of ``options.dataset`` (a name or a YAML path)
    not yet done, or whose identity changed since it was done.

    ``options``: a :class:`RunOptions` (what the CLI builds), or a dataset with the options as
    keyword arguments (``tasks``, ``folds``, ``results``, ``train_overrides``, ``model_overrides``,
    ``input_overrides``, ``tuned``, ``init``, ...; see :class:`RunOptions`), turned into one here.
    ``methods`` may hold :class:`Variant` s (an ablation's values), each stored under its name;
    ``options.variant`` names the run's own settings as a variant (``--variant``), so an experiment
    is a row of its own instead of replacing the method's.
    ``init``: a checkpoint every end-to-end unit's model starts from (its content hash enters the
    unit's identity); ``from_scratch``: train end-to-end models from random initialisation on a
    dataset that does not allow random weights (their rows are marked). ``tuned``: each unit uses
    the best hyper-parameters ``bench tune`` found for its outer fold. ``dry_run``: plan and
    classify units (done / to do, in ``report.todo``) without training anything. ``order``: see
    :func:`grid_order`. ``row_check``: refuse a run that would leave a table row mixing
    configurations. ``device``: where models train (``auto``: this rank's under torchrun, else CUDA
    when present). ``protocol``: the preset of every unit (``bench.engine.protocol``).
    ``jobs``: train independent units on this many processes at once (``bench.engine.jobs``): the
    N - 1 others run ``worker_command`` (default: ``bench.engine.worker``), which receives these
    options serialised; ``worker_of`` is then the wall time the parent run started: a worker trains,
    skips units another process of the run failed, and leaves the summary to the parent.
    ``keep_weights``: each finished unit's trained weights go to ``model.pt`` beside its record
    (None, the default; True also redoes finished units that did not keep them; False: none kept).
    """
    if isinstance(options, RunOptions):
        if kw:
            raise TypeError(f"run() got RunOptions and keyword options {sorted(kw)}: put them in the RunOptions")
        opts = options
    else:
        opts = RunOptions.create(options, **kw)
    t0 = time.perf_counter()
    validate_jobs(opts.jobs)
    if opts.jobs > 1 and D.active():
        raise OptionError("--jobs trains several units at once on one machine; under torchrun (--nproc) the "
                          "ranks train each unit together: use one or the other")
    variants = [m if isinstance(m, Variant) else Variant(m) for m in methods]
    if opts.variant is not None:
        variants = [Variant(v.spec, "+".join(p for p in (v.name, check_variant_name(opts.variant)) if p), v.model,
                            v.train, v.inputs)
                    for v in variants]
    planner, plans, report = _prepare(variants, opts)
    store = ResultsStore(opts.results, opts.keep_weights)
    status = classify(plans, store, report, opts.dry_run)
    if opts.row_check:
        check_rows(plans, store, status)
    if opts.dry_run:
        report.seconds = time.perf_counter() - t0
        return report
    todo = [p for p in plans if status[p.unit] in ("run", "slides", "inputs")]
    _announce(todo, len(plans), report)
    if worker_of is not None or (opts.jobs > 1 and len(todo) > 1):
        import torch

        torch.set_num_threads(threads_per_job(opts.jobs))  # jobs × threads ≤ cores
    predicted = _predict(todo, planner, opts) if worker_of is None else None
    ex = _Execution(planner, store, report, opts, t0, predicted)
    if worker_of is not None:
        _execute(todo, ex, failed_since=worker_of)
        report.seconds = time.perf_counter() - t0
        return report  # the process that started this worker writes the summary, once every worker is done
    if opts.jobs == 1 or len(todo) < 2:
        _execute(todo, ex)
    else:
        _execute_with_workers(todo, ex, variants, list(worker_command or default_worker_command()))
    if (report.ran or report.by_workers) and D.is_main():
        try:
            store.summarize(planner.cohort.spec.name, ddof=int(
                load_protocol(resolve_protocol(opts.protocol, planner.cohort.spec.protocol)).report.get("std_ddof", 0)))
        except MixedRowError as exc:
            log.warning("%s", exc)
    report.seconds = time.perf_counter() - t0
    return report


@dataclass(frozen=True)
class _Execution:
    """What every unit of one run shares while it trains."""

    planner: Planner
    store: ResultsStore
    report: RunReport
    opts: RunOptions
    t0: float
    predicted: list[float] | None = None  # every unit's predicted seconds, in the order of the to-do list


def _predict(todo: list[UnitPlan], planner: Planner, opts: RunOptions) -> list[float] | None:
    """Before the first unit trains: measure each distinct end-to-end configuration's cost per pass
    (``bench.engine.cost``), print the predicted cost per setting and in total, and return every
    unit's predicted seconds for the ETA (None when some unit was not predicted)."""
    if not opts.estimate or not D.is_main() or not any(p.spec.family == "end-to-end" for p in todo):
        return None
    from .cost import estimate

    with unit_memory_policy(True, opts.settings):  # as the units will train
        est = estimate(todo, planner, str(resolve_device(opts.device)), opts.cache)
    for line in est.lines(min(opts.jobs, len(todo))):
        log.info("%s", line)
    return est.per_unit()


def _prepare(variants: list[Variant], opts: RunOptions) -> tuple[Planner, list[UnitPlan], RunReport]:
    """Load the cohort, write or read the splits, and plan every unit (options validated, --init
    checked) before anything is touched."""
    cohort = load_cohort(opts.dataset)
    dataset = cohort.spec.name  # a dataset given as a YAML path is named by its file stem
    for line in cohort.report():
        log.info(line)
    tasks = list(opts.tasks or cohort.spec.tasks)
    for t in tasks:
        if t not in cohort.spec.tasks:
            raise ValueError(f"dataset {dataset!r} does not support task {t!r} (it has {cohort.spec.tasks})")
    cohort.require_folds(tasks, opts.n_folds)  # the verdict `bench doctor` gives: enough cases for the folds
    manager = SplitManager(Path(opts.results) / "splits")
    with D.main_first():  # under torchrun, rank 0 writes the split files, the others read them
        splits: dict[str, Splits] = {t: manager.get(dataset, t, cohort.cases(t), n_folds=opts.n_folds,
                                                    seed=opts.seed, name=opts.splits_name) for t in tasks}
    planner = Planner(cohort, splits, opts.cache, opts.progress, opts.seed, opts.init_path, opts.from_scratch,
                      opts.protocol, opts.settings, init_partial=opts.init_partial)
    report = RunReport(dataset=dataset)
    plans = _plan_all(planner, variants, tasks, opts, report)  # --init loads into every network: checked there
    return planner, plans, report


def _plan_all(planner: Planner, variants: list[Variant], tasks: list[str], opts: RunOptions,
              report: RunReport) -> list[UnitPlan]:
    """Every unit's plan. Option errors stop the run here, before anything is touched; an unavailable
    input (an encoder without weights) fails its units only."""
    splits = planner.splits
    folds = list(opts.folds) if opts.folds is not None else None
    check_folds(folds, {t: splits[t].n_folds for t in tasks})
    grid = grid_order(tasks, variants, {t: splits[t].n_folds for t in tasks}, folds, opts.order)
    plans, input_errors = [], set()
    for task, v, k, r in with_repeats(grid, opts):
        unit = Unit(planner.cohort.spec.name, task, v.spec.name, k,
                    unit_variant(v.name, opts.tuned, opts.seed, opts.n_folds,
                                 planner.splits[task].name), r)
        tuned_info = None
        if opts.tuned:
            from .tuning import TuningError, load_best

            try:
                tuned_info = load_best(opts.results, planner.cohort.spec.name, task, v.spec.name, k,
                                       splits[task].label, splits[task].hash)
            except TuningError as exc:
                report.failed[unit] = str(exc)
                continue
        try:
            plans.append(planner.plan(task, v, k, unit, tuned_info, opts.overrides))
        except (OptionError, TypeError) as exc:
            raise OptionError(f"{unit}: {exc}") from exc
        except Exception as exc:  # noqa: BLE001 — an unavailable encoder fails its units, not the run
            msg = f"inputs of {v.spec.name} unavailable: {type(exc).__name__}: {exc}"
            if v.spec.name not in input_errors:
                log.error("%s", msg)
            input_errors.add(v.spec.name)
            report.failed[unit] = msg
    return plans


def _execute_with_workers(todo: list[UnitPlan], ex: _Execution, variants: list[Variant], command: list[str]) -> None:
    """``--jobs N``: start N - 1 workers over the same store, train units here too, wait for the workers
    and settle the units they trained (``bench.engine.jobs``). The workers receive the run's options
    and methods serialised (``bench.engine.worker``)."""
    store, report, opts = ex.store, ex.report, ex.opts
    n = min(opts.jobs, len(todo))
    started_at = time.time() - (time.perf_counter() - ex.t0)
    log_dir = Path(opts.results) / "logs" / f"jobs-{time.strftime('%Y%m%d-%H%M%S')}"
    workers = Workers(command, n - 1, threads_per_job(opts.jobs), started_at, log_dir,
                      write_worker_spec(log_dir, opts, variants, started_at))
    started = time.perf_counter()

    def count_done() -> int:
        return sum(finished_now(store.unit_dir(p.unit), p.chash) for p in todo)

    last = [-1]
    rounds = Rounds(todo, store)
    eta = Eta((p.inputs_key for p in todo), ex.predicted, n)

    def line() -> None:
        done = count_done()
        if done != last[0]:
            last[0] = done
            log.info("[%d/%d] units finished by %d processes (elapsed %s, ETA %s)", done, len(todo), n,
                     _clock(time.perf_counter() - ex.t0), eta.text(time.perf_counter() - started, done, len(todo) - done))
            if (first_look := rounds.check()) is not None:
                log.info("%s", first_look)

    workers.start()
    try:
        _execute(todo, ex, count_done, failed_since=started_at, rounds=rounds, eta=eta)
        if workers.running():
            log.info("waiting for %d worker(s) to finish their units", sum(p.poll() is None for p in workers.procs))
        workers.wait(poll=line, stall_report_s=opts.settings.stall_report_s,
                     takeover_s=opts.settings.stall_takeover_s)
    except BaseException:
        workers.stop()
        log.warning("stopped: %d of %d unit(s) of this run are finished and kept; its workers are ended",
                    count_done(), len(todo))
        raise
    for u in list(report.busy):  # units another process held when this one reached them
        p = next(p for p in todo if p.unit == u)
        if finished_now(store.unit_dir(u), p.chash):
            report.by_workers.append(u)
        else:
            report.failed[u] = _failed_since(store, u, started_at) or (
                f"not finished by the worker that held it (see the worker logs in {workers.log_dir})")
        report.busy.remove(u)


def _claim(p: UnitPlan, ex: _Execution, failed_since: float | None) -> tuple[str, Any, str | None]:
    """(status, lock, failure) of a unit about to run: ``run`` (claimed here), ``busy`` (another
    process holds it), ``done`` (finished meanwhile) or ``failed`` (another process of this run
    failed it). Rank 0 decides; every rank follows."""
    lock, failure, st = None, None, None
    if D.is_main():
        lock = ex.store.try_claim(p.unit)
        st = "busy" if lock is None else ("done" if done_meanwhile(ex.store, p, ex.report) else "run")
        failure = _failed_since(ex.store, p.unit, failed_since) if st == "run" and failed_since is not None else None
        if failure is not None:  # --jobs: another process of this run tried it and it failed
            st = "failed"
    return D.broadcast(st if D.is_main() else None), lock, failure


def _skip(p: UnitPlan, ex: _Execution, st: str, failure: str | None, with_workers: bool) -> None:
    report = ex.report
    if st == "busy":
        log.log(logging.DEBUG if with_workers else logging.INFO, "%s: claimed by another process, skipping", p.unit)
        report.busy.append(p.unit)
    elif st == "failed":
        report.failed[p.unit] = failure or "failed in another process"
    else:  # finished meanwhile by another process: under --jobs, one of this run's workers
        (report.by_workers if with_workers else report.done_before).append(p.unit)


def _execute(todo: list[UnitPlan], ex: _Execution, count_done: Callable[[], int] | None = None,
             failed_since: float | None = None, rounds: Rounds | None = None, eta: Eta | None = None) -> None:
    """Train the units in ``todo`` that no other process holds. ``count_done``: the units of ``todo``
    finished so far by any process (--jobs), for the progress line. ``failed_since``: a unit that
    failed at or after this time (another process of this ``--jobs`` run tried it) is not tried again.
    ``rounds``: says when every unit of a leading fold is done (default: over ``todo``); ``eta``: the ETA."""
    eta = eta if eta is not None else Eta((p.inputs_key for p in todo), ex.predicted)
    extracted: set[str] = set()
    rounds = rounds if rounds is not None else Rounds(todo, ex.store)
    started = time.perf_counter()
    for i, p in enumerate(todo):
        st, lock, failure = _claim(p, ex, failed_since)
        if st != "run":
            _skip(p, ex, st, failure, count_done is not None)
            if lock is not None:
                lock.release()
            continue
        try:
            record = _train_one(p, ex, extracted, eta)
            if record is not None:
                _progress(p, ex, record, i, len(todo), started, count_done, rounds, eta)
        except OSError:
            raise  # disk full, unreadable cache...: stop; finished units stay done
        except Exception as exc:  # noqa: BLE001 — one unit's failure must not lose the others
            _unit_failed(p, ex, exc)
        finally:
            if lock is not None:
                lock.release()


def _train_one(p: UnitPlan, ex: _Execution, extracted: set[str], eta: Eta) -> UnitRecord | None:
    """Prepare a claimed unit's inputs, train it and store its result; None when a finished result
    made from a slide that can no longer be read is kept instead."""
    unit, store, report, planner = p.unit, ex.store, ex.report, ex.planner
    fi = planner.inputs[p.inputs_key]
    if p.inputs_key not in extracted:
        prepare = time.perf_counter()  # extraction, if the cache misses: the ETA's second part
        with D.main_first():  # rank 0 fills the cache, the others then find it
            fi.ensure()
        extracted.add(p.inputs_key)
        eta.ensured(p.inputs_key, time.perf_counter() - prepare)
    if recovered_cases(unit, report, fi) == []:  # trained without cases that still have no input
        report.recheck.pop(unit)
        report.done_before.append(unit)
        return None
    if unit in report.redone and only_slides_changed(store.done_config(unit) or {}, p.config):
        gone = changed_slides_unreadable(p, store.done_config(unit) or {}, fi, planner.cohort.table)
        if gone:
            log.warning("%s: slide(s) %s changed on disk and cannot be read now; the finished result, made "
                        "from their earlier version, is kept. Fix the file(s) and rerun to redo it",
                        unit, ", ".join(gone))
            report.redone.pop(unit)
            report.done_before.append(unit)
            return None
    if D.is_main():
        store.prepare(unit, p.config, p.chash)
    # end-to-end units only: resident memory stays at one layer's working set, while the MIL
    # units' small steps would pay page faults for nothing (bench/engine/memory.py)
    with unit_memory_policy(p.spec.family == "end-to-end", ex.opts.settings):
        pred, train_log, record, weights = U.run_unit(p, planner, fi, ex.opts.progress, ex.opts.device,
                                                       ex.opts.tracker)
    if D.is_main():
        store.finish(unit, pred, train_log, record, why="; ".join(report.redone.get(unit, [])), weights=weights)
    report.ran.append(unit)
    return record


def _progress(p: UnitPlan, ex: _Execution, record: UnitRecord, i: int, n: int, started: float,
              count_done: Callable[[], int] | None, rounds: Rounds, eta: Eta) -> None:
    """The one line per finished unit, and the "every row now" line after a round of folds."""
    why = f" -- {record.metrics['undefined']}" if "undefined" in record.metrics else ""
    position = i + 1 if count_done is None else count_done()  # --jobs: every process's finished units
    left = eta.text(time.perf_counter() - started, len(ex.report.ran) if count_done is None else max(position, 1),
                    n - position)
    log.info("[%d/%d] %-44s %s = %s  (%.1f s; elapsed %s, ETA %s)%s", position, n, str(p.unit),
             record.primary_metric, _fmt(record.metrics.get(record.primary_metric)), record.train_seconds,
             _clock(time.perf_counter() - ex.t0), left, why)
    if D.is_main() and log.isEnabledFor(logging.INFO) and (first_look := rounds.check()) is not None:
        log.info("%s", first_look)


def _unit_failed(p: UnitPlan, ex: _Execution, exc: Exception) -> None:
    unit, store = p.unit, ex.store
    msg = f"{type(exc).__name__}: {exc}"
    if D.active():
        # Under DDP the ranks train each unit together: a rank that skipped to the next unit would
        # leave the others blocked in this unit's collectives until the process group's timeout
        # (30 min). Stop this process instead; torchrun then tears the whole group down, and a
        # rerun resumes at this unit.
        log.error("rank %d: %s failed: %s -- stopping every rank (a DDP group cannot skip a unit "
                  "on one rank only); finished units are kept, rerun the same command to resume",
                  D.rank(), unit, msg)
        if D.is_main():
            store.fail(unit, msg)
        raise exc
    log.error("%s failed: %s%s", unit, msg, " (its previous result stays in place)" if unit in ex.report.redone else "")
    if D.is_main():
        store.fail(unit, msg)
    ex.report.failed[unit] = msg


ORDERS = ("task", "method", "fold")


def with_repeats(grid: list[tuple[str, Any, int]], opts: RunOptions) -> list[tuple[str, Any, int, int]]:
    """The (task, variant, fold, repeat) units of ``grid`` under ``--repeats``: with the ``fold``
    order every unit's repeat 0 first, then repeat 1, ... (every row early, then steadier); with
    the others a unit's repeats follow each other."""
    reps = [opts.repeat] if opts.repeat is not None else list(range(opts.repeats))
    if opts.order == "fold":
        return [(t, v, k, r) for r in reps for t, v, k in grid]
    return [(t, v, k, r) for t, v, k in grid for r in reps]


def grid_order(tasks: list[str], variants: list[Any], n_folds: dict[str, int], folds: list[int] | None,
               order: str = "fold") -> list[tuple[str, Any, int]]:
    """The (task, variant, fold) units of a run, in the order they are trained.

    ``fold`` (default): fold 0 of every (task, method), then fold 1, ...: after the first round
    every table has every row, from one fold (marked ``1/5 folds``), each further round tightens
    them all, and the ETA is measured on a mix of every method (the first round also pays for the
    feature extraction, which the ETA counts apart from the units' training).
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
