"""``bench run --jobs N``: one run's independent units trained on N processes at once.

The results store already lets several processes share one results directory (a lock per unit,
the staging directory ``fold<k>.next``, the done-marker written last), and the feature cache one
cache (a lock per slide). So ``--jobs N`` is N copies of the same run over the same store: the
parent plans and checks the run (splits written, options validated, rows checked), then starts
N - 1 *workers* — ``python -m bench.engine.worker``, given the run's options and methods as JSON
(``bench.engine.worker``) and marked as workers — and trains units itself. Every process
walks the same unit list and trains the units nobody holds; a slide's features are extracted once,
by whichever process reaches it first. Workers print nothing but warnings and errors; the parent
prints one overall progress line (units finished by any process, elapsed, ETA), waits for its
workers, and writes the summary.

Threads: each process gets ``cores // N`` torch threads (at least one), so N × threads ≤ cores.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from ..io import atomic_write_json
from .config import Variant
from .options import RunOptions

log = logging.getLogger(__name__)

# set by the parent in a worker's environment: the wall time (time.time()) its run started, so a
# worker knows which failures are this run's (it does not retry a unit another process just failed)
WORKER_ENV = "BENCH_RUN_WORKER"
SPEC_ENV = "BENCH_RUN_SPEC"  # the file holding the run a worker does (bench.engine.worker)


def worker_of() -> float | None:
    """The start time of the ``bench run --jobs N`` that started this process as a worker, else None."""
    value = os.environ.get(WORKER_ENV, "").strip()
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"{WORKER_ENV} is set by `bench run --jobs` for its workers (a start time); "
                         f"got {value!r} -- unset it") from None


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def total_memory_gb() -> float | None:
    """Physical memory in GB (Linux ``sysconf``), None where the OS does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    except (AttributeError, ValueError, OSError):
        return None


GB_PER_JOB = 4  # what one CPU process may hold: torch (~0.5 GB), a unit's model, bags or slide, its heap
JOBS_ENV = "BENCH_JOBS"  # the default of `bench run --jobs` ("auto" when unset)


def auto_jobs(*, cuda: bool, cores: int | None = None, memory_gb: float | None = None) -> tuple[int, str]:
    """``--jobs auto``: (processes, why). One process per available core on the CPU, at most one per
    ``GB_PER_JOB`` GB of memory; one on a GPU (units sharing a device would only queue on it).

    One per core because one process of small units keeps about one core busy whatever its torch
    threads (tiny bags and slides are per-step overhead, not parallel work), so the cores are filled
    by processes instead; each unit's metrics do not depend on which process trains it."""
    if cuda:
        return 1, "one process on the GPU"
    cores = cores or available_cores()
    memory_gb = total_memory_gb() if memory_gb is None else memory_gb
    by_memory = max(1, int(memory_gb // GB_PER_JOB)) if memory_gb else cores
    n = max(1, min(cores, by_memory))
    why = f"{cores} core(s)" + (f", {memory_gb:.0f} GB (at most one process per {GB_PER_JOB} GB)"
                                if memory_gb and by_memory < cores else "")
    return n, why


def parse_jobs(value: str | int) -> int | str:
    """``--jobs`` / ``$BENCH_JOBS``: a positive number of processes or ``auto``."""
    if isinstance(value, int) and not isinstance(value, bool):
        return validate_jobs(value)
    text = str(value).strip().lower()
    if text == "auto":
        return "auto"
    try:
        return validate_jobs(int(text))
    except ValueError:
        raise ValueError(f"--jobs must be a positive number of processes or 'auto', got {value!r}") from None


def threads_per_job(jobs: int, cores: int | None = None) -> int:
    """Torch threads for each of ``jobs`` processes, so that jobs × threads ≤ cores."""
    return max(1, (cores or available_cores()) // max(1, jobs))


def validate_jobs(jobs: int) -> int:
    if not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1:
        raise ValueError(f"--jobs must be a positive number of processes, got {jobs!r}")
    return jobs


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(parent: int) -> Callable[[], None]:
    """A ``preexec_fn`` that makes the child get SIGTERM when its parent dies (Linux ``prctl``), even
    by SIGKILL, so no worker trains on alone re-parented to init."""
    def set_pdeathsig() -> None:
        if sys.platform.startswith("linux"):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(143)
    return set_pdeathsig


def worker_preexec(parent: int) -> Callable[[], None]:
    """A worker's ``preexec_fn``: its own process group (so a stalled worker can be ended with
    everything it started, and nothing else), and death with its parent (:func:`die_with_parent`)."""
    pdeathsig = die_with_parent(parent)

    def setup() -> None:
        os.setpgid(0, 0)
        pdeathsig()
    return setup


def stopped_since(pid: int, seen: dict[int, float]) -> float | None:
    """Seconds since ``pid`` was first seen stopped (SIGSTOP, Ctrl-Z, a debugger), None when it runs."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None
    if state not in ("T", "t"):
        seen.pop(pid, None)
        return None
    return time.time() - seen.setdefault(pid, time.time())


def units_held_by(pid: int, results: Path) -> list[str]:
    """The units whose lock ``pid`` holds (the ``.info`` written beside each unit lock)."""
    out = []
    for info in (results / "runs").rglob(".fold*.lock.info"):
        try:
            d = json.loads(info.read_text())
        except (OSError, ValueError):
            continue
        if d.get("pid") == pid:
            out.append(str(d.get("unit")))
    return out


class Workers:
    """The N - 1 worker processes of a ``--jobs N`` run."""

    def __init__(self, command: Sequence[str], n: int, threads: int, started_at: float, log_dir: Path,
                 spec: Path | None = None) -> None:
        self.command, self.n, self.threads, self.log_dir = list(command), n, threads, log_dir
        self.spec = spec  # the run the workers do, serialised (bench.engine.worker)
        self.started_at = started_at
        self.procs: list[subprocess.Popen] = []
        self.logs: list[Path] = []

    def start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        env = self._env()
        for i in range(self.n):
            path = self.log_dir / f"worker{i + 1}.log"
            self.procs.append(self._spawn(path, env))
            self.logs.append(path)
        log.info("--jobs %d: %d worker process(es) started (pid %s; %d torch thread(s) each; logs in %s)",
                 self.n + 1, self.n, ", ".join(str(p.pid) for p in self.procs), self.threads, self.log_dir)

    def _env(self) -> dict[str, str]:
        env = {**os.environ, WORKER_ENV: repr(self.started_at), "OMP_NUM_THREADS": str(self.threads)}
        if self.spec is not None:
            env[SPEC_ENV] = str(self.spec)
        return env

    def _spawn(self, path: Path, env: dict[str, str]) -> subprocess.Popen:
        with open(path, "a") as out:  # the child keeps its own descriptor
            return subprocess.Popen(self.command, env=env, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, preexec_fn=worker_preexec(os.getpid()))

    def take_over(self, i: int, held: float, units: list[str], after: float) -> None:
        """End stalled worker ``i`` with its process group (its unit lock dies with it) and start a
        fresh worker in its place, which trains the units nobody holds: the released one too."""
        old = self.procs[i]
        try:
            os.killpg(old.pid, signal.SIGKILL)  # a stopped process dies of SIGKILL too
        except ProcessLookupError:
            pass
        old.wait()
        self.procs[i] = self._spawn(self.logs[i], self._env())
        log.warning("worker pid %d was stopped for %.0f s holding %s: ended it (its process group) and started "
                    "worker pid %d to train %s (the stalled worker is taken over after %g s: "
                    "$BENCH_STALL_TAKEOVER_S)", old.pid, held, ", ".join(units) or "no unit", self.procs[i].pid,
                    "that unit" if units else "the units left", after)

    def running(self) -> bool:
        return any(p.poll() is None for p in self.procs)

    def wait(self, poll: Callable[[], None] | None = None, every: float = 5.0,
             stall_report_s: float = 300.0, takeover_s: float = 0.0) -> list[int]:
        """Wait for every worker, calling ``poll()`` every ``every`` seconds meanwhile. A worker stopped
        (SIGSTOP) for ``stall_report_s`` seconds is named, and named again every ``stall_report_s``
        seconds; after ``takeover_s`` seconds it is taken over (:meth:`take_over`; 0: never). Returns
        the exit codes; a worker that failed is reported with the tail of its log."""
        stall, takeover = float(stall_report_s), float(takeover_s)
        seen: dict[int, float] = {}
        said: dict[int, float] = {}
        while self.running():
            time.sleep(min(every, stall, takeover or every))
            if poll is not None:
                poll()
            for i, p in enumerate(self.procs):
                held = stopped_since(p.pid, seen) if p.poll() is None else None
                if held is None:
                    continue
                units = units_held_by(p.pid, self.log_dir.parents[1])
                if takeover and held >= takeover:
                    self.take_over(i, held, units, takeover)
                elif held >= stall and held - said.get(p.pid, -stall) >= stall:
                    said[p.pid] = held
                    log.warning("worker pid %d has been stopped for %.0f s (SIGSTOP, Ctrl-Z or a debugger), holding "
                                "%s; this run waits for it%s. Fix: resume it (`kill -CONT %d`) or end it (`kill %d`): "
                                "its unit is then left to the next run", p.pid, held, ", ".join(units) or "no unit",
                                f" and takes its unit over after {takeover:g} s ($BENCH_STALL_TAKEOVER_S)"
                                if takeover else "", p.pid, p.pid)
        codes = [p.wait() for p in self.procs]
        for code, path in zip(codes, self.logs):
            if code != 0:
                tail = path.read_text(errors="replace").strip().splitlines()[-5:] if path.is_file() else []
                log.warning("worker (log %s) exited with status %d%s", path, code,
                            (":\n  " + "\n  ".join(tail)) if tail else "")
        return codes

    def stop(self) -> None:
        """End the workers this process started (on Ctrl-C or an error in the parent)."""
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()


def default_worker_command() -> list[str]:
    return [sys.executable, "-m", "bench.engine.worker"]


def write_worker_spec(log_dir: Path, opts: RunOptions, variants: list[Variant], started_at: float | None) -> Path:
    """Write what a worker runs (options, methods, a ``--jobs`` parent's start time); returns the file."""
    log_dir.mkdir(parents=True, exist_ok=True)
    path = log_dir / "run.json"
    atomic_write_json(path, {"options": opts.to_dict(), "methods": [v.to_dict() for v in variants],
                             "started_at": started_at})
    return path


def declare_releases(dataset: str) -> None:
    """Register the dataset's feature releases as encoders (``abmil.<name>``), as the CLI does before
    resolving methods, so a worker or job finds the methods its run names."""
    from ..data.datasets import DatasetError, load_spec
    from ..data.features import register_releases

    try:
        register_releases(load_spec(dataset))
    except DatasetError:
        return  # reported by the run itself, with the fix


def read_worker_spec(path: Path | str) -> tuple[RunOptions, list[Variant], float | None]:
    try:
        data: dict[str, Any] = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: cannot read the run a --jobs worker was given ({exc})") from exc
    opts = RunOptions.from_dict(data["options"])
    declare_releases(opts.dataset)
    return (opts, [Variant.from_dict(v) for v in data["methods"]],
            None if data.get("started_at") is None else float(data["started_at"]))


def finished_now(unit_dir: Path, chash: str) -> bool:
    """Whether the unit in ``unit_dir`` is done with identity ``chash``, read without side effects
    (``ResultsStore.done_record`` may promote a staging directory, which must not race with the
    worker that is finishing it)."""
    try:
        return json.loads((unit_dir / "metrics.json").read_text()).get("config_hash") == chash
    except (OSError, ValueError, AttributeError):
        return False
