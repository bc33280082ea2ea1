"""``python -m bench``: the command line. Each subcommand lives in its own module and registers
its parser through ``add_parser(subparsers)``; ``main`` owns logging and the terminal."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Sequence

from . import ablate, compare, doctor, extract, ls, pretrain, run, splits, table, tune, weights

COMMANDS = (ls, doctor, splits, extract, run, tune, pretrain, table, compare, ablate, weights)

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


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # the command as typed (`run --nproc` re-launches it under torchrun)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(message)s" if level > logging.DEBUG else "%(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    for noisy in ("matplotlib", "PIL", "urllib3", "filelock", "h5py", "numba", "numexpr", "timm", "huggingface_hub",
                  "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted; finished units are kept, rerun the same command to resume", file=sys.stderr)
        return 130
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
