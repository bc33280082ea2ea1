"""What the first run costs: ``python -m bench run --methods all --dataset demo``, cold (fresh
BENCH_DATA / BENCH_RESULTS / BENCH_CACHE in a temporary directory: demo generation, extraction for
every encoder, every unit, the summary), timed as a user would run it.

    python benchmarks/first_run.py                     # the whole cold main job, one process
    python benchmarks/first_run.py --sample            # fold 0 of staging, 1 epoch, every method: extrapolated
    python benchmarks/first_run.py --sample --jobs 2   # the same sample with `--jobs 2`
    python benchmarks/first_run.py --jobs auto         # the cold main job as `bench run` runs it by default
    python benchmarks/first_run.py --methods 'abmil.*' --folds 0 --tasks staging

``--sample`` runs one unit per method (fold 0 of the first task) for one epoch, then extrapolates
each method to the full grid from the measured per-step time: a unit = its fixed part (build,
predict, score: measured) + epochs × training cases × seconds per step (measured at one epoch), the
same for every task and fold. Demo generation, extraction and process start are measured, not
extrapolated (the sample extracts every slide, as the full run does). Extrapolated numbers are
labelled as such.

Printed: per-family and per-method unit time, seconds per training step, when every unit's folds
0..k were done (the table then has every row from k + 1 folds), the time outside units
(demo generation, feature extraction, slide caches, start-up), the total and its ratio to the
15-minute goal; and, since the machine may be shared, the load average before/after and the CPU
time of the command (its processes together), so the numbers can be read.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GOAL_S = 15 * 60


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", default="all")
    ap.add_argument("--tasks", help="comma list (default: every task)")
    ap.add_argument("--folds", help="comma list (default: every fold)")
    ap.add_argument("--sample", action="store_true",
                    help="fold 0 of the first task, 1 epoch, every method; extrapolate to the full grid")
    ap.add_argument("--jobs", default="1",
                    help="bench run --jobs: a number or auto (default 1: per-step times without a second process "
                         "competing; bench run's own default is auto)")
    ap.add_argument("--workdir", type=Path, help="keep BENCH_DATA/RESULTS/CACHE here (default: a temp dir)")
    ap.add_argument("--json", type=Path, help="also write the numbers here")
    args = ap.parse_args()

    work = args.workdir or Path(tempfile.mkdtemp(prefix="first_run_"))
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "BENCH_DATA": str(work / "data"), "BENCH_RESULTS": str(work / "results"),
           "BENCH_CACHE": str(work / "cache"), "PYTHONPATH": os.pathsep.join(
               [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])}
    cmd = [sys.executable, "-m", "bench", "run", "--methods", args.methods, "--dataset", "demo", "--quiet"]
    if args.sample:
        cmd += ["--tasks", (args.tasks or "staging").split(",")[0], "--folds", "0", "--set", "epochs=1"]
    else:
        cmd += (["--tasks", args.tasks] if args.tasks else []) + (["--folds", args.folds] if args.folds else [])
    cmd += ["--jobs", str(args.jobs)]
    print("command:", " ".join(cmd), f"\nworkdir: {work}", flush=True)

    load0, up0 = os.getloadavg(), _uptime()
    r0, t0, started = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter(), time.time()
    with open(work / "first_run.log", "w") as logf:
        rc = subprocess.run(cmd, env=env, cwd=work, stdout=logf, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - t0
    r1, load1, up1 = resource.getrusage(resource.RUSAGE_CHILDREN), os.getloadavg(), _uptime()
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    if rc != 0:
        print(f"bench run exited with {rc}; see {work / 'first_run.log'}")

    records = [json.loads(p.read_text()) for p in sorted((work / "results" / "runs").glob("*/*/*/fold*/metrics.json"))]
    in_units = sum(r["info"].get("unit_seconds", r["train_seconds"]) for r in records)
    out = {"command": cmd, "wall_s": wall, "cpu_s": cpu, "cpu_per_wall": cpu / wall, "jobs": args.jobs,
           "load_before": load0, "load_after": load1, "uptime_before": up0, "uptime_after": up1,
           "cores": len(os.sched_getaffinity(0)), "units": len(records), "unit_seconds_sum": in_units}
    print(f"\nmeasured: {len(records)} unit(s) in {_clock(wall)} wall, CPU {_clock(cpu)} (CPU/wall {cpu / wall:.2f}) on "
          f"{out['cores']} cores; load average before {_load(load0)}, after {_load(load1)}")
    if args.jobs == "1":
        print(f"  outside units (demo generation, feature extraction, slide caches, start-up): "
              f"{_clock(wall - in_units)}")
    else:
        print(f"  unit-seconds {_clock(in_units)} over {_clock(wall)} wall: {in_units / wall:.2f} unit(s) at once on average")

    rounds = _rounds(records, started)
    if len(rounds) > 1:  # units run fold by fold (bench run's default order): when each round was in the table
        print("  every unit's fold(s) 0.." + ", ..".join(str(k) for k in rounds) + " done after "
              + ", ".join(_clock(t) for t in rounds.values()))
        out["rounds_done_s"] = {str(k): t for k, t in rounds.items()}

    full = _full_grid(env, records) if args.sample else None
    by_family: dict[str, list] = defaultdict(list)
    print(f"\n{'method':28s} {'family':10s} {'units':>5s} {'unit s':>8s} {'train s':>8s} {'s/step':>7s}"
          + (f" {'epochs':>6s} {'full-grid units':>15s} {'extrapolated s':>14s}" if full else ""))
    total_extra = 0.0
    for method in sorted({r["method"] for r in records}, key=lambda m: min(r["info"].get("order", 0)
                                                                            for r in records if r["method"] == m)):
        rs = [r for r in records if r["method"] == method]
        unit = _mean([r["info"].get("unit_seconds", r["train_seconds"]) for r in rs])
        train = _mean([r["train_seconds"] for r in rs])
        step = _mean([r["train_seconds_per_slide"] or 0.0 for r in rs])
        line = f"{method:28s} {rs[0]['family']:10s} {len(rs):5d} {unit:8.1f} {train:8.1f} {step:7.3f}"
        by_family[rs[0]["family"]].append((method, unit, step))
        if full:
            n_units, epochs, cases = full[method]
            per_unit = (unit - train) + epochs * cases * step
            total_extra += n_units * per_unit
            line += f" {epochs:6d} {n_units:15d} {n_units * per_unit:14.0f}"
        print(line)
    print()
    for fam, rows in by_family.items():
        print(f"{fam:10s}: {len(rows)} method(s), measured unit time {min(r[1] for r in rows):.1f}–"
              f"{max(r[1] for r in rows):.1f} s, seconds per step {min(r[2] for r in rows):.3f}–{max(r[2] for r in rows):.3f}")
    if full:
        outside = wall - in_units if args.jobs == "1" else None
        print(f"\nEXTRAPOLATED (from the measured per-step times at 1 epoch, fold 0 of one task) to the full grid of "
              f"{sum(v[0] for v in full.values())} units:")
        print(f"  units: {_clock(total_extra)} of training+prediction on one process")
        if outside is not None:
            est = outside + total_extra
            print(f"  + measured outside units {_clock(outside)} = {_clock(est)} for the cold main job "
                  f"({est / GOAL_S:.1f}× the 15-minute goal)")
            out["extrapolated_total_s"] = est
        else:
            n = min(out["cores"], out["cores"] if args.jobs == "auto" else int(args.jobs))
            print(f"  ÷ {n} processes = {_clock(total_extra / n)} if the units split evenly (a lower bound; "
                  f"the time outside units is measured only with --jobs 1)")
        out["extrapolated_units_s"] = total_extra
    else:
        print(f"\nmeasured total {_clock(wall)} ({wall / GOAL_S:.2f}× the 15-minute goal)")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


def _rounds(records: list[dict], started: float) -> dict[int, float]:
    """Seconds from the start until every unit of folds 0..k had finished (its record's ``finished``
    stamp), for each fold k: when ``bench table`` had every row from k + 1 folds."""
    out, last = {}, 0.0
    for k in sorted({int(r["fold"]) for r in records}):
        last = max([last] + [float(r["finished"]) - started for r in records if int(r["fold"]) == k])
        out[k] = last
    return out


def _full_grid(env: dict[str, str], records: list[dict]) -> dict[str, tuple[int, int, int]]:
    """For each sampled method: (units in the full grid, its default epochs, training cases per unit)."""
    os.environ.update({k: env[k] for k in ("BENCH_DATA", "BENCH_RESULTS", "BENCH_CACHE")})
    sys.path.insert(0, str(ROOT))
    from bench.data.datasets import load_cohort
    from bench.engine.config import method_train_config
    from bench.registry import get_method

    cohort = load_cohort("demo")
    n_units_per_method = len(cohort.spec.tasks) * 5
    out = {}
    for r in records:
        spec = get_method(r["method"])
        epochs = method_train_config(spec, {}, cohort.spec.train)["epochs"]
        out[r["method"]] = (n_units_per_method, int(epochs), int(r["n_train"]))
    return out


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return ""


def _load(load: tuple[float, float, float]) -> str:
    return "/".join(f"{x:.1f}" for x in load)


def _clock(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


if __name__ == "__main__":
    main()
