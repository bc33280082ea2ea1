"""``bench run``: train and evaluate methods on every fold of every task of a dataset."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ..engine.protocol import list_protocols
from .common import (Formatter, add_dataset, add_estimate, add_launch_args, add_paths, add_repeats, add_tracker,
                     check_names, cluster_options, parse_int_list, parse_sets, print_failed, print_launch_report,
                     resolve_dataset, tracker_settings)

if TYPE_CHECKING:
    from ..engine.options import RunOptions

log = logging.getLogger("bench")

EPILOG = """examples:
  python -m bench run --methods 'meanmil.resnet50,maxmil.resnet50,abmil.resnet50' --dataset demo
  python -m bench run --methods 'abmil.*' --dataset luad --tasks survival
  python -m bench run --methods all --dataset blca --folds 0,1 --set epochs=5
  python -m bench run --methods all --dataset luad --order task   # one task's units at a time
  python -m bench run --methods abmil.conch --dataset luad --tuned    # after `bench tune`
  python -m bench run --methods 'abmil.*' --dataset luad --launcher submitit --partition gpu --gpus 1 --time 240
  python -m bench run --methods pixelmamba-6m --dataset luad --nproc 8      # DDP, one slide per rank
  torchrun --nproc_per_node 8 -m bench run --methods pixelmamba-6m --dataset luad   # the same
  python -m bench run --methods pixelmamba-6m --dataset luad --init results/pretrain/pixelmamba-6m/last.pt
  python -m bench run --methods 'abmil.*,pixelmamba-6m' --dataset blca --protocol paper   # docs/protocol.md
  python -m bench run --methods all --dataset demo --jobs 1      # one process (default: auto, one per core)
  python -m bench run --methods meanmil.resnet50 --dataset blca --splits mambamil   # an imported split set
  python -m bench run --methods 'abmil.*' --dataset blca --splits mambamil --launcher submitit --partition gpu
  python -m bench run --methods abmil.resnet50 --dataset demo --repeats 3   # 3 training seeds per fold
--methods takes `all`, comma lists and globs ('abmil.*', '*.gigapath').
A unit (task, method, fold[, repeat]) is done when its record (metrics.json) exists with the same identity:
the labels of its cases, its slides' fingerprints, the split set (--seed, --n-folds), every option
and the fingerprint of every pretrained part. Rerunning the same command skips done units, redoes
unfinished ones (also after a crash or kill) and stale ones (saying why); a finished result stays in
place until its replacement has finished. Options and --init are checked before anything runs.
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="train and evaluate methods (resumable)", epilog=EPILOG,
                       formatter_class=Formatter)
    p.add_argument("--methods", required=True,
                   help="`all` (= `paper`: the paper's grid), `all-encoders` (every aggregator, linear and coxnet over "
                        "every declared encoder and feature release), a comma list, globs (`'*.virchow2'`)")
    add_dataset(p)
    add_paths(p)
    p.add_argument("--tasks", help="comma list (default: every task of the dataset)")
    p.add_argument("--folds", help="comma list of fold indices (default: all)")
    p.add_argument("--n-folds", type=int, default=5, help="folds when splits are first written (default 5)")
    p.add_argument("--seed", type=int, default=0, help="split and training seed (default 0)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="training option override (epochs, lr, weight_decay, grad_accum, max_patches, ...)")
    p.add_argument("--model", action="append", metavar="KEY=VALUE", help="network option override (scan_window, alpha, ...)")
    p.add_argument("--input", action="append", metavar="KEY=VALUE",
                   help="input option override (magnification for end-to-end rows)")
    p.add_argument("--splits", metavar="NAME",
                   help="train and test on the imported split set NAME (`bench splits --import`, docs/splits.md) "
                        "instead of the seeded folds; stored as variant splits-NAME, a row of its own")
    p.add_argument("--variant", metavar="NAME",
                   help="store this run's settings as a row of its own (<method>/<NAME>/) instead of the method's")
    p.add_argument("--from-scratch", action="store_true",
                   help="train end-to-end models from random initialisation on a dataset that does not allow "
                        "random weights (without --init); their rows are marked")
    p.add_argument("--device", default="auto",
                   help="where models train: auto (CUDA when present; under --nproc/torchrun each rank's GPU), "
                        "cpu, cuda, cuda:N")
    p.add_argument("--order", choices=("fold", "task", "method"), default="fold",
                   help="order units run in: fold = fold 0 of everything first, then fold 1, ... (default: "
                        "every table row early, from fewer folds, and an ETA measured on a mix of every "
                        "method); task = each task's units together; method = a method's every unit "
                        "before the next method")
    p.add_argument("--tuned", action="store_true",
                   help="use the best parameters `bench tune` found for each outer fold (rows marked 'tuned')")
    p.add_argument("--init", type=Path, metavar="CHECKPOINT",
                   help="start every unit's model from these weights (e.g. `bench pretrain`'s last.pt; "
                        "loaded with weights_only=True, heads of another shape dropped, a report of "
                        "what loaded is logged)")
    p.add_argument("--init-partial", action="store_true",
                   help="accept an --init checkpoint that fills only part of a network's backbone (by default "
                        "every backbone tensor must load); the share loaded is recorded and the row marked")
    p.add_argument("--protocol", choices=list_protocols(), default=None,
                   help="protocol preset: wsi-bench = this project's corrections (default), paper = the paper's "
                        "reading and its baselines' default settings; every choice is in docs/protocol.md "
                        "(default: the dataset YAML's `protocol:`, else the method config's, else wsi-bench)")
    p.add_argument("--jobs", type=_jobs_arg, default=None, metavar="N|auto",
                   help="train N independent units at once, on N processes over the same results store (each "
                        "with cores/N torch threads; features extracted once, shared). One overall progress "
                        "line counts every process's units; workers log to <results>/logs/jobs-*/. auto (the "
                        "default, or $BENCH_JOBS): one process per core on the CPU (at most one per 4 GB of "
                        "memory), 1 on a GPU, with --nproc or with --launcher submitit")
    p.add_argument("--keep-weights", action=argparse.BooleanOptionalAction, default=None,
                   help="write each finished unit's trained weights to model.pt beside its record, sha256 in the "
                        "record (what `bench heatmap` loads). Default: kept for the units this run trains; "
                        "--keep-weights also redoes finished units that did not keep them; --no-keep-weights "
                        "keeps none (the cost, per unit, is the model's size: docs/heatmaps.md)")
    add_repeats(p)
    add_estimate(p)
    add_tracker(p)
    g = add_launch_args(p)
    g.add_argument("--nproc", type=int, default=1, metavar="N",
                   help="train each unit on N processes with DDP (one slide per rank, gradient accumulation), "
                        "launched with torch.distributed.run: gloo on CPU, nccl on CUDA (default 1)")
    p.set_defaults(func=main)


def _jobs_arg(value: str) -> int | str:
    from ..engine.jobs import parse_jobs

    try:
        return parse_jobs(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def resolve_jobs(args: argparse.Namespace) -> int:
    """The processes this run trains on: ``--jobs``, else ``$BENCH_JOBS``, else ``auto``
    (``bench.engine.jobs.auto_jobs``; one process for DDP ranks and scheduler jobs)."""
    from ..engine import distributed as D
    from ..engine.executor import resolve_device
    from ..engine.jobs import JOBS_ENV, auto_jobs, parse_jobs

    jobs = args.jobs
    if jobs is None:  # read when the command runs, not when the parser is built
        try:
            jobs = parse_jobs(os.environ.get(JOBS_ENV, "auto"))
        except ValueError as err:
            raise SystemExit(f"${JOBS_ENV}: {err}") from None
    if jobs != "auto":
        return jobs
    if args.nproc > 1 or args.launcher == "submitit" or D.launched():
        return 1
    n, why = auto_jobs(cuda=resolve_device(args.device).type == "cuda")
    if n > 1:
        log.info("--jobs auto: %d processes (%s); --jobs 1 trains on this process only", n, why)
    return n


def run_options(args: argparse.Namespace) -> "RunOptions":
    """The run's options, built once from the command line and the environment (``Settings``)."""
    from ..engine.options import RunOptions, Settings

    return RunOptions.create(
        resolve_dataset(args.dataset), tasks=args.tasks.split(",") if args.tasks else None,
        folds=parse_int_list(args.folds), results=args.results, cache=args.cache, n_folds=args.n_folds,
        seed=args.seed, train_overrides=parse_sets(args.set), model_overrides=parse_sets(args.model),
        input_overrides=parse_sets(args.input), progress=not args.quiet, tuned=args.tuned, init=args.init,
        init_partial=args.init_partial, from_scratch=args.from_scratch, order=args.order, variant=args.variant, device=args.device,
        protocol=args.protocol, jobs=args.jobs, splits_name=args.splits,
        keep_weights=args.keep_weights, settings=Settings.from_env(), tracker=tracker_settings(args),
        repeats=args.repeats, estimate=args.estimate)


def _declare_releases(dataset: str) -> None:
    """The dataset's feature releases under names no encoder declares become encoders
    (``abmil.<name>``) before ``--methods`` is resolved."""
    from ..data.datasets import DatasetError, load_spec
    from ..data.features import register_releases

    try:
        register_releases(load_spec(dataset))
    except DatasetError:
        return  # reported by the run itself, with the fix


def main(args: argparse.Namespace) -> int:
    check_names(args.methods, args.dataset, tasks=args.tasks.split(",") if args.tasks else None)
    from ..engine import distributed as D
    from ..registry import resolve_methods
    from ..engine.runner import run

    args.jobs = resolve_jobs(args)
    if args.jobs > 1 and (args.nproc > 1 or args.launcher == "submitit"):
        raise SystemExit("--jobs runs several units at once on this machine; it does not combine with --nproc "
                         "(DDP: the ranks train each unit together) or --launcher submitit (one job per unit)")
    D.init_from_env()
    if not D.is_main():  # one voice: rank 0 logs and prints
        logging.getLogger().setLevel(logging.WARNING)
        args.quiet = True

    from ..io import check_writable

    for root, what, env in ((args.results, "results directory", "BENCH_RESULTS"), (args.cache, "cache directory",
                                                                                   "BENCH_CACHE")):
        check_writable(root, what, f"point --{what.split()[0]} (or ${env}) at a directory you can write", create=False)
    opts = run_options(args)
    _declare_releases(opts.dataset)
    methods = resolve_methods(args.methods)
    if args.nproc > 1 and not D.launched():
        return _torchrun(args.nproc, methods, opts)
    log.info("dataset %s; %d method(s): %s", opts.dataset, len(methods), ", ".join(m.name for m in methods))
    if args.launcher == "submitit":
        return _submit(args, methods, opts)
    report = run(methods, opts)
    if not D.is_main():
        return 1 if report.failed else 0
    if not report.ran and not report.failed and not report.busy:
        print(f"nothing to do: all {len(report.done_before)} unit(s) already done in "
              f"{args.results}/runs/{report.dataset} — `python -m bench table --dataset {report.dataset}` shows them")
    else:
        print(report.line())
    print_failed(report.failed)
    if report.ran:
        print(f"summary: {args.results / report.dataset / 'summary.csv'}")
    return 1 if report.failed else 0


def _torchrun(nproc: int, methods: list, opts: "RunOptions") -> int:
    """Run ``opts`` under ``torch.distributed.run`` on ``nproc`` processes: each rank receives the run
    serialised (``bench.engine.worker``)."""
    import subprocess
    import time

    from ..engine.config import Variant
    from ..engine.jobs import SPEC_ENV, write_worker_spec

    spec = write_worker_spec(Path(opts.results) / "logs" / f"ddp-{time.strftime('%Y%m%d-%H%M%S')}", opts,
                             [Variant(m) for m in methods], None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           "-m", "bench.engine.worker"]
    log.info("launching %d processes: %s (the run: %s)", nproc, " ".join(cmd), spec)
    return subprocess.run(cmd, env={**os.environ, SPEC_ENV: str(spec)}).returncode


def _submit(args: argparse.Namespace, methods: list, opts: "RunOptions") -> int:
    from ..engine.launch import submit

    rep = submit(methods, opts, cluster_options(args))
    print_launch_report(rep, args)
    print_failed(rep.failed)
    return 1 if rep.failed else 0
