"""``bench ls``: what the harness knows, without importing heavy backends."""

from __future__ import annotations

import argparse

from .common import Formatter

EPILOG = """examples:
  python -m bench ls                 # everything
  python -m bench ls methods 'abmil.*'
  python -m bench ls datasets
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ls", help="list methods, encoders, datasets, tasks, ablations", epilog=EPILOG,
                       formatter_class=Formatter)
    p.add_argument("what", nargs="?", default="all",
                   choices=["all", "methods", "encoders", "datasets", "tasks", "ablations"])
    p.add_argument("pattern", nargs="?", default="*", help="glob over method names")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from ..ablations import list_ablations
    from ..data.datasets import list_datasets, load_spec
    from ..registry import ENCODERS, list_methods
    from ..engine.tasks import TASKS

    what = args.what
    if what in ("all", "methods"):
        print("methods:")
        for s in list_methods(args.pattern):
            consumes = (f"slide@{s.magnification}x" if s.input == "slide"
                        else f"{s.input}:{s.cache_encoder}")
            print(f"  {s.name:28s} {s.family:11s} {consumes}")
    if what in ("all", "encoders"):
        print("encoders:")
        for name, e in ENCODERS.items():
            print(f"  {name:28s} {e['dim']}-d  {e['backbone']}")
    if what in ("all", "datasets"):
        print("datasets:")
        for name in list_datasets():
            spec = load_spec(name)
            print(f"  {name:28s} {','.join(spec.tasks):24s} {spec.description}")
    if what in ("all", "tasks"):
        print("tasks:")
        for t in TASKS.values():
            print(f"  {t.name:28s} metric: {t.metric}")
    if what in ("all", "ablations"):
        print("ablations:")
        for a in list_ablations():
            print(f"  {a.name:28s} {a.description}")
    return 0
