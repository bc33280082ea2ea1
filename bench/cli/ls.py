"""``bench ls``: what the harness knows, without importing heavy backends (no torch, scikit-learn
or scikit-survival: ``tests/cli/test_cli_startup.py``)."""

from __future__ import annotations

import argparse
import fnmatch
from pathlib import Path

from .common import Formatter

EPILOG = """examples:
  python -m bench ls                 # everything
  python -m bench ls methods 'abmil.*'
  python -m bench ls encoders 'g*'   # dim, weights found or the variable to set, source
  python -m bench ls datasets        # shipped ones and those of the config overlay ($BENCH_CONFIG or ./configs)
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ls", help="list methods, encoders, datasets, tasks, ablations", epilog=EPILOG,
                       formatter_class=Formatter)
    p.add_argument("what", nargs="?", default="all",
                   choices=["all", "methods", "encoders", "datasets", "tasks", "ablations"])
    p.add_argument("pattern", nargs="?", default="*", help="glob over the names listed (default: all)")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    what, pattern = args.what, args.pattern

    def match(name: str) -> bool:
        return fnmatch.fnmatchcase(name, pattern)

    if what in ("all", "methods"):
        from ..registry import list_methods

        print("methods:")
        for s in list_methods(pattern):
            consumes = (f"slide@{s.magnification}x" if s.input == "slide"
                        else f"{s.input}:{s.cache_encoder}")
            print(f"  {s.name:28s} {s.family:11s} {consumes}")
    if what in ("all", "encoders"):
        # the declarations (configs/encoders) and the releases of loaded datasets; reading them and
        # looking for weights imports no torch
        from ..encoders import encoder_table, ensure_registered, weights_found

        ensure_registered()  # the registry follows the declarations as they are now

        print("encoders:")  # name, output dim, label, weights (where found, or the variable to set), source
        for name, info in encoder_table().items():
            if match(name):
                found = weights_found(info) or f"not found (set {info.weights_env})"
                print(f"  {name:14s} {info.dim:>5d}-d  {info.label:16s} weights: {found:42s} "
                      f"{info.source.split(';')[0]}")
    if what in ("all", "datasets"):
        from ..data.datasets import list_datasets, load_spec
        from ..resources import config_path, overlay_dir, overlay_files

        overlay = overlay_dir()
        if overlay is not None:
            print(f"config overlay {overlay}:")
            for path, how in overlay_files():
                print(f"  {path.relative_to(overlay)}  ({how})")
        print("datasets:" + (f" (config overlay: {overlay})" if overlay else ""))
        for name in filter(match, list_datasets()):
            spec = load_spec(name)
            mine = overlay is not None and Path(str(config_path("datasets", name))).is_relative_to(overlay)
            print(f"  {name:28s} {','.join(spec.tasks):24s} {spec.description}" + ("  [overlay]" if mine else ""))
    if what in ("all", "tasks"):
        from ..tasks import TASKS  # importing it imports no torch, sklearn or sksurv

        print("tasks:")
        for t in TASKS.values():
            if match(t.name):
                print(f"  {t.name:28s} metric: {t.metric}")
    if what in ("all", "ablations"):
        from ..ablations import list_ablations

        print("ablations:")
        for a in list_ablations():
            if match(a.name):
                print(f"  {a.name:28s} {a.description}")
    return 0
