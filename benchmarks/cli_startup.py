"""Start-up time of the listing commands against a bare ``import torch``, side by side.

The target: ``python -m bench ls``, ``python -m bench --help`` and every
``python -m bench <command> --help`` take under half the time of ``python -c "import torch"`` on
the same machine (they import no torch, scikit-learn or scikit-survival;
``tests/cli/test_cli_startup.py`` enforces that part).

    python benchmarks/cli_startup.py                  # 5 rounds, every command's --help too
    python benchmarks/cli_startup.py --repeat 9 --quick   # only torch, ls, --help
    python benchmarks/cli_startup.py --installed      # the installed `bench`, not this checkout

Each round runs every command once, in turn (interleaved, so a change in the machine's load hits
them alike); the table reports the median and the minimum wall time over the rounds, the median
CPU time (user + sys of the child), and both as a ratio to ``import torch``'s median. On a shared
machine the CPU ratio is the steadier of the two.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ("ls", "doctor", "splits", "extract", "run", "tune", "pretrain", "table", "ablate")


def _time(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stderr}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5, help="rounds (default 5)")
    ap.add_argument("--quick", action="store_true", help="only import torch, bench ls and bench --help")
    ap.add_argument("--installed", action="store_true",
                    help="time the installed package (default: this checkout, put first on PYTHONPATH)")
    args = ap.parse_args()

    env = dict(os.environ)
    if not args.installed:
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    py = sys.executable
    rows: list[tuple[str, list[str]]] = [("import torch", [py, "-c", "import torch"]),
                                        ("bench ls", [py, "-m", "bench", "ls"]),
                                        ("bench --help", [py, "-m", "bench", "--help"])]
    if not args.quick:
        rows += [(f"bench {c} --help", [py, "-m", "bench", c, "--help"]) for c in COMMANDS]
    rows.append(("python -c pass", [py, "-c", "pass"]))  # the interpreter's own start-up, for scale

    _time(rows[0][1], env)  # warm the page cache once so round 1 is not torch's cold read
    walls: dict[str, list[float]] = {name: [] for name, _ in rows}
    cpus: dict[str, list[float]] = {name: [] for name, _ in rows}
    for _ in range(args.repeat):
        for name, argv in rows:
            w, c = _time(argv, env)
            walls[name].append(w)
            cpus[name].append(c)

    tw, tc = statistics.median(walls["import torch"]), statistics.median(cpus["import torch"])
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}, {args.repeat} rounds, "
          f"{'installed package' if args.installed else f'checkout {ROOT}'}")
    print("| command | median wall s | min wall s | median CPU s | wall / torch | CPU / torch |")
    print("|---|---|---|---|---|---|")
    worst = 0.0
    for name, _ in rows:
        w, c = statistics.median(walls[name]), statistics.median(cpus[name])
        print(f"| {name} | {w:.3f} | {min(walls[name]):.3f} | {c:.3f} | {w / tw:.2f} | {c / tc:.2f} |")
        if name.startswith("bench"):
            worst = max(worst, w / tw)
    print(f"\nslowest bench command / import torch (median wall): {worst:.2f} "
          f"({'under' if worst < 0.5 else 'NOT under'} the 0.5 bar)")


if __name__ == "__main__":
    main()
