"""``bench run --launcher submitit``: the (task, method, fold[, variant]) grid as a submitit job array.

The submitting process resolves the grid exactly as a local run would (same splits, same configs
and config hashes) without training anything, and submits one job per unit that is not done yet —
a rerun therefore resubmits only unfinished units. Every job is an ordinary ``bench run`` restricted
to its unit: it re-checks "done" and claims the unit's file lock in the shared results store, so
jobs, local runs and other submitters can work on one results directory at once (a unit claimed
elsewhere is skipped, not run twice).

On SLURM (``--cluster auto`` finds ``sbatch``) the jobs go out as one array in ``--partition`` with
``--gpus`` GPUs, ``--cpus`` CPUs, ``--mem`` GB and a ``--time`` limit in minutes; without SLURM
``auto`` falls back to submitit's local executor (processes on this machine). ``--cluster debug``
runs the jobs in this process (submitit's DebugExecutor), for debugging.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..registry import MethodSpec
from ..results.store import Unit
from .config import Variant
from .options import RunOptions

log = logging.getLogger(__name__)

CLUSTERS = ("auto", "slurm", "local", "debug")


class LaunchError(ValueError):
    pass


def _submitit():
    try:
        import submitit
    except ImportError:
        raise LaunchError("--launcher submitit needs the submitit package: pip install 'wsi-bench[cluster]' "
                          "(or pip install submitit); --launcher local runs here without it") from None
    return submitit


@dataclass
class ClusterOptions:
    cluster: str = "auto"
    partition: str | None = None
    gpus: int = 0
    time_min: int = 24 * 60
    cpus: int = 4
    mem_gb: float | None = None
    array_parallelism: int = 64
    folder: Path | None = None  # submitit's logs and pickles; default <results>/submitit/<timestamp>
    wait: bool = True


@dataclass
class LaunchReport:
    dataset: str = ""
    done_before: list[Unit] = field(default_factory=list)
    submitted: list[Unit] = field(default_factory=list)
    job_ids: list[str] = field(default_factory=list)
    outcomes: dict[Unit, dict[str, Any]] = field(default_factory=dict)  # filled when waiting
    failed: dict[Unit, str] = field(default_factory=dict)
    folder: Path | None = None
    seconds: float = 0.0


def run_unit_job(job: str) -> dict[str, Any]:
    """Body of one job: ``bench run`` on exactly one unit. Runs in the worker process; ``job`` is the
    JSON the submitter wrote (the unit's :class:`RunOptions` and its method or variant)."""
    from .runner import run

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    from .jobs import declare_releases

    data = json.loads(job)
    opts = RunOptions.from_dict(data["options"])
    declare_releases(opts.dataset)
    rep = run([Variant.from_dict(data["method"])], opts)
    status = ("ran" if rep.ran else "failed" if rep.failed else "busy" if rep.busy else "done")
    return {"status": status, "message": "; ".join(rep.failed.values()), "seconds": rep.seconds}


def job_spec(opts: RunOptions, variant: Variant, task: str, fold: int, repeat: int = 0) -> str:
    """What one job receives: its unit's options (paths made absolute, as a job may start in another
    working directory) and its method or variant (with the variant's own settings), as JSON."""
    return json.dumps({"options": opts.for_job(task, fold, repeat).to_dict(), "method": variant.to_dict()},
                      sort_keys=True)


def make_executor(opts: ClusterOptions, folder: Path, n_jobs: int) -> Any:
    submitit = _submitit()
    if opts.cluster not in CLUSTERS:
        raise LaunchError(f"--cluster must be one of {', '.join(CLUSTERS)}, got {opts.cluster!r}")
    if opts.cluster == "slurm":
        import shutil

        if shutil.which("sbatch") is None:
            raise LaunchError("--cluster slurm: `sbatch` is not on PATH here; submit from a SLURM login node, "
                              "or use --cluster local")
    executor = submitit.AutoExecutor(folder=str(folder), cluster=None if opts.cluster == "auto" else opts.cluster)
    params: dict[str, Any] = {"timeout_min": int(opts.time_min), "name": "wsi-bench",
                              "cpus_per_task": int(opts.cpus), "slurm_array_parallelism": int(opts.array_parallelism)}
    if opts.gpus:
        params["gpus_per_node"] = int(opts.gpus)
    if opts.mem_gb:
        params["mem_gb"] = float(opts.mem_gb)
    if opts.partition:
        params["slurm_partition"] = opts.partition
    if executor.cluster == "local":
        # the local executor starts every job at once; keep it to the machine's cores
        params.pop("cpus_per_task")
    executor.update_parameters(**params)
    log.info("submitit executor: %s, %d job(s), logs in %s", executor.cluster, n_jobs, folder)
    return executor


def submit(methods: list[MethodSpec | Variant], options: RunOptions | str | Path, cluster: ClusterOptions,
           **kw: Any) -> LaunchReport:
    """Submit every unit not yet done as one job array; wait for it unless ``cluster.wait`` is False.

    ``options``: the run's :class:`RunOptions` (or a dataset with ``runner.run``'s keyword options);
    each job receives them whole, restricted to its unit (``device`` included). ``options.order``
    (``runner.grid_order``) orders the array's tasks: with ``array_parallelism`` below the array's
    size, SLURM starts them in that order."""
    from .runner import run

    _submitit()  # fail before any work when it is missing
    opts = options if isinstance(options, RunOptions) else RunOptions.create(options, **{"order": "task", **kw})
    t0 = time.perf_counter()
    plan = run(methods, replace(opts, dry_run=True))
    report = LaunchReport(dataset=plan.dataset, done_before=list(plan.done_before), failed=dict(plan.failed))
    if not plan.todo:
        report.seconds = time.perf_counter() - t0
        return report
    folder = Path(cluster.folder or Path(opts.results) / "submitit" / time.strftime("%Y%m%d-%H%M%S")).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    report.folder = folder
    # the job runs exactly the planned unit's variant (its own settings travel with it)
    jobs_args = [job_spec(opts, p.variant, p.unit.task, p.unit.fold, p.unit.repeat) for p in plan.todo]
    executor = make_executor(cluster, folder, len(jobs_args))
    jobs = []
    with executor.batch():  # one SLURM job array
        for a in jobs_args:
            jobs.append(executor.submit(run_unit_job, a))
    units = [p.unit for p in plan.todo]
    report.submitted = units
    report.job_ids = [str(j.job_id) for j in jobs]
    log.info("submitted %d job(s): %s", len(jobs), ", ".join(report.job_ids[:5]) + (" …" if len(jobs) > 5 else ""))
    if cluster.wait:
        _wait(jobs, units, report, opts.progress)
    report.seconds = time.perf_counter() - t0
    return report


def _wait(jobs: list[Any], units: list[Unit], report: LaunchReport, progress: bool) -> None:
    from tqdm.auto import tqdm

    pending = dict(zip(units, jobs))
    with tqdm(total=len(jobs), desc="jobs", unit="job", disable=None if progress else True) as bar:
        while pending:
            for unit, job in list(pending.items()):
                if not job.done():
                    continue
                del pending[unit]
                bar.update(1)
                try:
                    out = job.result()
                except Exception as exc:  # noqa: BLE001 — a crashed/killed/timed-out job fails its unit only
                    msg = f"job {job.job_id} failed: {type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"
                    report.failed[unit] = f"{msg} (log: {job.paths.stderr})"
                    continue
                report.outcomes[unit] = out
                if out["status"] == "failed":
                    report.failed[unit] = out["message"]
                log.info("%s: %s (job %s)", unit, out["status"], job.job_id)
            if pending:
                time.sleep(1.0)
