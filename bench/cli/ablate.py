"""``bench ablate``: the paper's ablations (Tables 3–6, 9) as grids of method variants."""

from __future__ import annotations

import argparse

from .common import Formatter, add_dataset

EPILOG = """examples:
  python -m bench ablate                 # list the ablations and their grids
  python -m bench ablate alpha           # show one grid (running it needs Pixel-Mamba in the registry)
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ablate", help="list or run an ablation grid", epilog=EPILOG, formatter_class=Formatter)
    p.add_argument("name", nargs="?", help="ablation name (configs/ablations/<name>.yaml)")
    add_dataset(p)
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from ..ablations import get_ablation, list_ablations
    from ..registry import list_methods

    if not args.name:
        for a in list_ablations():
            grid = a.get("values") or a.get("methods")
            print(f"{a['name']:14s} Table {a.get('paper_table', '?'):<3} {a.get('description', '')}: {grid}")
        return 0
    a = get_ablation(args.name)
    needed = [a["method"]] if "method" in a else list(a.get("methods", []))
    known = {s.name for s in list_methods()}
    missing = [m for m in needed if m not in known]
    print(f"{a['name']}: {a.get('description', '')}")
    print(f"  grid: {a.get('override', 'method')} ∈ {a.get('values') or a.get('methods')}  task: {a.get('task')}")
    if missing:
        print(f"  not runnable yet: method(s) {', '.join(missing)} are not registered in this version")
        return 1
    print("  running ablations arrives with the ablation issue; the grid above is what it will run")
    return 1
