"""``python -m bench``: the command line. Each subcommand lives in its own module and registers
its parser through ``add_parser(subparsers)``; ``main`` owns logging and the terminal."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from typing import Sequence

from . import ablate, compare, doctor, extract, heatmap, ls, pretrain, run, splits, table, tune, weights

COMMANDS = (ls, doctor, splits, extract, run, tune, pretrain, table, compare, ablate, weights, heatmap)

DESCRIPTION = """wsi-bench: end-to-end vs two-stage whole-slide models, under one split manager and one evaluator.

Typical session:
  python -m bench ls                                   # methods, encoders, datasets, ablations
  python -m bench run --methods 'abmil.*' --dataset demo
  python -m bench table --dataset demo                 # LaTeX in results/tables/, markdown here
  python -m bench table --dataset demo --stats --compute   # + significance marks, memory/time columns
  python -m bench ablate alpha --dataset demo --folds 0    # the paper's Table 9 grid, as variants
  python -m bench tune --method abmil.resnet50 --dataset demo --trials 20   # nested tuning
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only; no progress bars")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for mod in COMMANDS:
        mod.add_parser(sub)
    for sp in sub.choices.values():  # -v/-q also after the subcommand (SUPPRESS: absent = keep global)
        sp.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logging")
        sp.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                        help="warnings and errors only; no progress bars")
    return p


def passive_openmp() -> None:
    """OpenMP threads that wait for work by spinning (libgomp's default) are ruinous when the cores
    are shared — a cluster node running other jobs, a laptop, CI: threads spin on cores another
    thread needs, and a small training step takes tens of times longer than with passive threads
    (README: process settings). The command line sets it for its process and every process it
    starts (workers, jobs, DDP ranks inherit it); it must happen before torch loads libgomp, and a
    value the user set wins. Importing ``bench`` sets nothing."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, a scheduler's time limit): unwinds like Ctrl-C, so workers are ended and
    finished units kept."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated()


def main(argv: Sequence[str] | None = None) -> int:
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if main_thread else None
    try:
        return _main(argv)
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


def _main(argv: Sequence[str] | None = None) -> int:
    passive_openmp()
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        parser = build_parser()  # lists the configs of the overlay: a bad $BENCH_CONFIG stops even --help
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    args.argv = argv  # the command as typed (`run --nproc` re-launches it under torchrun)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(message)s" if level > logging.DEBUG else "%(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    for noisy in ("matplotlib", "PIL", "urllib3", "filelock", "h5py", "numba", "numexpr", "timm", "huggingface_hub",
                  "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt as exc:
        what = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"
        print(f"{what}; finished units are kept, rerun the same command to resume", file=sys.stderr)
        return 143 if isinstance(exc, Terminated) else 130
    except Exception as exc:  # noqa: BLE001 — sorted below: user errors get one line, bugs a traceback
        from feature_cache import SlideError
        from feature_cache.encoders import EncoderWeightsError

        from ..io import disk_full

        if args.verbose:
            raise
        if disk_full(exc):
            where = getattr(exc, "filename", None) or "a results/cache file"
            why = getattr(exc, "strerror", None) or str(exc)
            print(f"error: disk full while writing {where} ({why}). Nothing finished is lost: free space on "
                  "that file system, or point --results/--cache (BENCH_RESULTS/BENCH_CACHE) at a bigger one, "
                  "and rerun the same command to resume.", file=sys.stderr)
            return 3
        if isinstance(exc, (KeyError, ValueError, FileNotFoundError, SlideError, EncoderWeightsError)):
            # user errors: one clear line, no traceback (use -v for it)
            msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
            print(f"error: {msg}", file=sys.stderr)
            return 2
        raise
