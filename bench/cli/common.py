"""Options and helpers several subcommands share."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger("bench")

PREFERRED_DATASET = "blca"  # the paper ran its ablations on BLCA


class Formatter(argparse.RawDescriptionHelpFormatter):
    pass


def add_paths(p: argparse.ArgumentParser) -> None:
    p.add_argument("--results", type=Path, default=Path(os.environ.get("BENCH_RESULTS", "results")),
                   help="results root (env BENCH_RESULTS; default %(default)s)")
    p.add_argument("--cache", type=Path, default=Path(os.environ.get("BENCH_CACHE", "cache")),
                   help="feature/slide cache root (env BENCH_CACHE; default %(default)s)")


def add_estimate(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-estimate", dest="estimate", action="store_false",
                   help="skip the cost probe before training (a few timed forward + backward passes of each "
                        "end-to-end configuration, cached under <cache>/step_costs/, that print the predicted "
                        "cost per setting and seed the ETA)")


def add_dataset(p: argparse.ArgumentParser, required: bool = False) -> None:
    p.add_argument("--dataset", required=required,
                   help="dataset name (configs/datasets/<name>.yaml in $BENCH_CONFIG or ./configs, else shipped) "
                        "or the path of a dataset YAML. Default: blca if its data is "
                        "present under $BENCH_DATA, else the built-in demo cohort")


def resolve_dataset(name: str | None, preferred: str = PREFERRED_DATASET) -> str:
    if name:
        return name
    from ..data.datasets import DatasetError, find_slides, load_spec

    try:
        spec = load_spec(preferred)
        if spec.path(spec.clinical).is_file():
            find_slides(spec)
            log.info("no --dataset given: using %s (its data is present)", preferred)
            return preferred
    except DatasetError:
        pass
    log.info("no --dataset given and %s data is not present: using the demo cohort", preferred)
    return "demo"


def check_names(methods: str | None = None, dataset: str | None = None, encoders: list[str] | None = None,
                tasks: list[str] | None = None) -> None:
    """A typo in a method, dataset, encoder or task name reported at once, with its did-you-mean:
    the registries and YAML read here import no deep-learning library, so the error comes before a
    command pays seconds for torch. Raises KeyError/ValueError (one line from the CLI)."""
    from feature_cache.encoders import list_encoders

    from ..data.schema import did_you_mean
    from ..registry import resolve_methods

    if methods:
        resolve_methods(methods)
    known = list_encoders()
    for name in encoders or []:
        if name not in known:
            raise KeyError(f"unknown encoder {name!r}{did_you_mean(name, known)}; known: {', '.join(known)} "
                           "(`python -m bench ls encoders` lists them)")
    if dataset:
        from ..data.datasets import load_spec

        spec = load_spec(dataset)
        for task in tasks or []:
            if task not in spec.tasks:
                raise ValueError(f"dataset {spec.name!r} has no task {task!r}{did_you_mean(task, spec.tasks)}; "
                                 f"it has {', '.join(spec.tasks)}")


def dataset_name(arg: str) -> str:
    """The name results are stored under for ``--dataset arg``: a dataset YAML given by path is
    stored under its spec's name (its ``name:`` key, else the file's stem), as ``bench run`` stores it."""
    path = Path(arg.strip())
    if path.suffix not in (".yaml", ".yml"):
        return arg.strip()
    from ..data.datasets import load_spec

    return load_spec(str(path)).name


def parse_sets(items: list[str] | None) -> dict[str, Any]:
    """``--set lr=1e-4 --set epochs=5`` → {"lr": 1e-4, "epochs": 5} (values parsed as YAML scalars)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"--set expects key=value, got {item!r}")
        k, v = item.split("=", 1)
        val = yaml.safe_load(v)
        if isinstance(val, str):  # YAML 1.1 reads 1e-4 (no dot) as a string; users mean a number
            try:
                val = int(val) if val.lstrip("+-").isdigit() else float(val)
            except ValueError:
                pass
        out[k.strip()] = val
    return out


def parse_int_list(s: str | None) -> list[int] | None:
    if s is None:
        return None
    try:
        return [int(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"expected a comma list of integers, got {s!r}") from None


def add_launch_args(p: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """``--launcher`` and the SLURM options (``bench run``, ``bench ablate``); see docs/cluster.md."""
    g = p.add_argument_group("launching (see docs/cluster.md)")
    g.add_argument("--launcher", choices=("local", "submitit"), default="local",
                   help="local: run the units here (default); submitit: one job per unit not yet done, "
                        "as a SLURM job array (or local processes when SLURM is absent); needs "
                        "pip install 'wsi-bench[cluster]'")
    g.add_argument("--partition", help="SLURM partition")
    g.add_argument("--gpus", type=int, default=0, help="GPUs per job (default 0)")
    g.add_argument("--time", type=int, default=24 * 60, metavar="MIN", help="time limit per job in minutes (default 1440)")
    g.add_argument("--cpus", type=int, default=4, help="CPUs per job (default 4)")
    g.add_argument("--mem", type=float, metavar="GB", help="memory per job in GB (default: the partition's)")
    g.add_argument("--array-parallelism", type=int, default=64, help="jobs of the array running at once (default 64)")
    g.add_argument("--cluster", choices=("auto", "slurm", "local", "debug"), default="auto",
                   help="submitit executor: auto = SLURM if sbatch is found, else local processes; "
                        "debug = in this process")
    g.add_argument("--submitit-folder", type=Path, help="job logs and pickles (default <results>/submitit/<time>)")
    g.add_argument("--no-wait", action="store_true", help="submit and return (default: wait and report each unit)")
    return g


def cluster_options(args: argparse.Namespace) -> Any:
    """``launch.ClusterOptions`` from the options ``add_launch_args`` added."""
    from ..engine.launch import ClusterOptions

    return ClusterOptions(cluster=args.cluster, partition=args.partition, gpus=args.gpus, time_min=args.time,
                          cpus=args.cpus, mem_gb=args.mem, array_parallelism=args.array_parallelism,
                          folder=args.submitit_folder, wait=not args.no_wait)


def print_launch_report(rep: Any, args: argparse.Namespace) -> None:
    """What ``launch.submit`` did, for ``bench run`` and ``bench ablate``."""
    from ..results.store import ResultsStore

    if not rep.submitted:
        print(f"nothing to submit: {len(rep.done_before)} unit(s) already done"
              + (f", {len(rep.failed)} cannot run" if rep.failed else ""))
        return
    print(f"submitted {len(rep.submitted)} job(s) ({len(rep.done_before)} unit(s) already done); "
          f"logs: {rep.folder}")
    if args.no_wait:
        print("job ids: " + ", ".join(rep.job_ids))
        print("rerun the same command later: finished units are skipped, unfinished ones resubmitted")
        return
    ran = sum(1 for o in rep.outcomes.values() if o["status"] == "ran")
    print(f"{ran} unit(s) run by the jobs, {len(rep.failed)} failed ({rep.seconds:.1f} s)")
    if ran:
        ResultsStore(args.results).summarize(rep.dataset)
        print(f"summary: {args.results / rep.dataset / 'summary.csv'}")


def print_failed(failed: dict) -> None:
    """One line per failure; units failing with the same message (an unusable encoder fails every
    unit of its methods) share one line."""
    by_msg: dict[str, list[str]] = {}
    for unit, msg in failed.items():
        by_msg.setdefault(msg, []).append(str(unit))
    for msg, units in by_msg.items():
        if len(units) == 1:
            print(f"FAILED {units[0]}: {msg}")
        else:
            print(f"FAILED {len(units)} units ({', '.join(units)}): {msg}")


def _positive(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of 1 or more, got {value!r}")
    return n


def add_repeats(p: argparse.ArgumentParser) -> None:
    """``--repeats N`` (docs/repeats.md)."""
    p.add_argument("--repeats", type=_positive, default=1, metavar="N",
                   help="train each fold with N training seeds on the same split; each (fold, repeat) is a unit "
                        "of its own (resumable, fanned out by --jobs and --launcher); repeat 0 is the unit of a run "
                        "without repeats, so --repeats 3 after a plain run adds repeats 1 and 2. A table cell is "
                        "then the mean over repeats within each fold, then mean ± std over folds; variance.csv "
                        "splits the spread into split and seed variance (default 1)")


def add_tracker(p: argparse.ArgumentParser, what: str = "") -> None:
    """``--tracker`` / ``--tracker-uri`` (docs/tracking.md); ``what``: what one tracked run is, when
    not a unit."""
    runs = (f"one tracked run for {what}: per-step loss and learning rate and its parameters" if what else
            "one tracked run per unit: per-step loss and learning rate, per-epoch losses, the final test metric, "
            "the unit's resolved options as parameters")
    p.add_argument("--tracker", choices=("none", "tensorboard", "mlflow", "wandb"), default=None,
                   help=f"{runs} (default: the overlay's settings.yaml `tracker:`, else tensorboard, written to "
                        "<results>/tracking/)")
    p.add_argument("--tracker-uri", default=None, metavar="URI",
                   help="mlflow: a tracking server (default: the SQLite file <results>/tracking/mlflow.db)")


def tracker_settings(args: argparse.Namespace) -> Any:
    """The tracker of this command: ``--tracker``, else the overlay's ``settings.yaml``, else
    TensorBoard; checked to be installed before any work. Reads the environment (W&B login) once."""
    from ..engine.tracking import DEFAULT_TRACKER, TrackerSettings, check_available, wandb_mode
    from ..resources import read_settings

    file = read_settings()
    kind = args.tracker or file.get("tracker") or DEFAULT_TRACKER
    check_available(kind)
    return TrackerSettings(kind=kind, root=str(Path(args.results) / "tracking"),
                           uri=args.tracker_uri or file.get("tracker_uri"),
                           wandb_mode=wandb_mode(os.environ, Path.home() / ".netrc") if kind == "wandb" else "offline")
