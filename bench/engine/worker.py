"""A process of a ``bench run`` started by another one (``python -m bench.engine.worker``): a
``--jobs N`` worker, or a DDP rank that ``bench run --nproc N`` starts through torchrun.

The starting process writes its run — the :class:`~bench.engine.options.RunOptions` and the methods
(variants with their own settings) — as JSON into its log directory and names the file in the
environment (``$BENCH_RUN_SPEC``). A ``--jobs`` worker also gets its parent's start time in the file
and trains the units no other process holds, leaving the summary to the parent; a DDP rank runs the
whole run with its group. Nothing is re-parsed from a command line.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..io import atomic_write_json
from .config import Variant
from .jobs import SPEC_ENV
from .options import RunOptions


def default_worker_command() -> list[str]:
    return [sys.executable, "-m", "bench.engine.worker"]


def write_worker_spec(log_dir: Path, opts: RunOptions, variants: list[Variant], started_at: float | None) -> Path:
    """Write what a worker runs (options, methods, a ``--jobs`` parent's start time); returns the file."""
    log_dir.mkdir(parents=True, exist_ok=True)
    path = log_dir / "run.json"
    atomic_write_json(path, {"options": opts.to_dict(), "methods": [v.to_dict() for v in variants],
                             "started_at": started_at})
    return path


def read_worker_spec(path: Path | str) -> tuple[RunOptions, list[Variant], float | None]:
    try:
        data: dict[str, Any] = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: cannot read the run a --jobs worker was given ({exc})") from exc
    return (RunOptions.from_dict(data["options"]), [Variant.from_dict(v) for v in data["methods"]],
            None if data.get("started_at") is None else float(data["started_at"]))


def main() -> int:
    """A ``--jobs`` worker trains the units of the parent's run that no other process holds (the
    parent prints and summarises); a DDP rank runs the run with its group, rank 0 printing."""
    from . import distributed as D
    from .runner import run

    path = os.environ.get(SPEC_ENV, "").strip()
    if not path:
        print(f"error: ${SPEC_ENV} is not set: this module is started by `bench run --jobs N` or `--nproc N`",
              file=sys.stderr)
        return 2
    opts, variants, started_at = read_worker_spec(path)
    D.init_from_env()
    quiet = started_at is not None or not D.is_main()
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(message)s", stream=sys.stderr)
    report = run(variants, replace(opts, progress=opts.progress and not quiet), worker_of=started_at)
    if not quiet:
        print(report.line())
        for unit, msg in report.failed.items():
            print(f"FAILED {unit}: {msg}")
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
