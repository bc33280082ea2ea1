"""A process of a ``bench run`` started by another one (``python -m bench.engine.worker``): a
``--jobs N`` worker, or a DDP rank that ``bench run --nproc N`` starts through torchrun.

The starting process writes its run — the :class:`~bench.engine.options.RunOptions` and the methods
(variants with their own settings) — as JSON into its log directory and names the file in the
environment (``$BENCH_RUN_SPEC``). A ``--jobs`` worker also gets its parent's start time in the file
and trains the units no other process holds, leaving the summary to the parent; a DDP rank runs the
whole run with its group. Nothing is re-parsed from a command line.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import replace

from .jobs import SPEC_ENV, read_worker_spec


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
