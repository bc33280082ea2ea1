"""``bench tune``: nested hyper-parameter search (Optuna) per outer fold; ``bench run --tuned`` uses it."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..engine.protocol import list_protocols
from .common import (Formatter, add_dataset, add_paths, add_tracker, check_names, parse_int_list, parse_sets,
                     resolve_dataset, tracker_settings)

log = logging.getLogger("bench")

EPILOG = """examples:
  python -m bench tune --method abmil.conch --dataset luad --trials 50
  python -m bench tune --method abmil.resnet50 --dataset demo --task staging --trials 3 --set epochs=2
  python -m bench tune --method abmil.conch --dataset luad --trials 50 \\
      --storage postgresql://user@db-host/optuna          # many workers: start this on each node
  python -m bench run --methods abmil.conch --dataset luad --tuned   # then train with the best parameters
  python -m bench tune --method abmil.conch --dataset blca --trials 50 --splits mambamil   # an imported set
  python -m bench run --methods abmil.conch --dataset blca --tuned --splits mambamil

Nested: for each outer fold, a trial's value is the mean validation metric over --inner-folds folds
made from that outer fold's training cases only; the outer test fold is never read. One study per
(dataset, task, method, outer fold), SQLite under results/tuning/ by default; rerunning the same
command tops each study up to --trials finished trials (0 new trials when it already has them).
Search spaces: configs/tuning/*.yaml. `--set key=value` fixes an option (it is then not searched).
Best parameters: results/tuning/<dataset>/<task>/<method>[/<split set>]/fold<k>/best.json (the split
set's folder: seed<s>-k<n>, or splits-<name> with --splits); `run --tuned` reads its own split set's
and refuses parameters tuned on other folds.
--tracker (default tensorboard, results/tracking/) records one run per trial,
<dataset>/<task>/<method>/tune/fold<k>/trial<n>: its parameters, the inner folds' training as one loss
curve, each inner fold's validation metric and the trial's value (inner_cv_<metric>).
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tune", help="nested hyper-parameter search per outer fold (Optuna: pip install 'wsi-bench[cluster]')", epilog=EPILOG,
                       formatter_class=Formatter)
    p.add_argument("--method", required=True, help="one method name (e.g. abmil.conch)")
    add_dataset(p)
    add_paths(p)
    p.add_argument("--trials", type=int, required=True, help="finished trials wanted per study (outer fold)")
    p.add_argument("--task", "--tasks", dest="tasks", help="comma list (default: every task of the dataset)")
    p.add_argument("--folds", help="outer folds to tune, comma list (default: all)")
    p.add_argument("--storage", help="SQLAlchemy URL of the Optuna storage (default: SQLite under --results)")
    p.add_argument("--inner-folds", type=int, help="inner CV folds (default: the search space file's, 3)")
    p.add_argument("--prune", action="store_true",
                   help="median pruning: stop a trial whose running inner-fold mean trails the others'")
    p.add_argument("--timeout", type=float, help="stop starting new trials after this many seconds (per study)")
    p.add_argument("--n-folds", type=int, default=5, help="outer folds when splits are first written (default 5)")
    p.add_argument("--seed", type=int, default=0, help="split, inner-split and training seed (default 0)")
    p.add_argument("--splits", metavar="NAME",
                   help="outer folds of the imported split set NAME (`bench splits --import`, docs/splits.md) "
                        "instead of the seeded ones; its early-stopping cases stay out of the inner folds. "
                        "`run --tuned --splits NAME` uses the result")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="fix a training option (not searched)")
    p.add_argument("--model", action="append", metavar="KEY=VALUE", help="fix a model option (not searched)")
    p.add_argument("--input", action="append", metavar="KEY=VALUE", help="fix an input option (magnification)")
    p.add_argument("--init", type=Path, metavar="CHECKPOINT",
                   help="start every trial's network from these weights, as `bench run --init`")
    p.add_argument("--protocol", choices=list_protocols(), default=None,
                   help="protocol preset, as `bench run --protocol` (default: the dataset YAML's `protocol:`, else "
                        "the method config's, else wsi-bench); `run --tuned` must use the same one")
    add_tracker(p, what="each trial (named <dataset>/<task>/<method>/tune/fold<k>/trial<n>)")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    check_names(args.method, args.dataset, tasks=args.tasks.split(",") if args.tasks else None)
    from ..registry import get_method
    from ..engine.settings import Settings
    from ..engine.tuning import tune

    if args.trials < 1:
        raise ValueError("--trials must be >= 1")
    spec = get_method(args.method)
    dataset = resolve_dataset(args.dataset)
    report = tune(spec, dataset, n_trials=args.trials, tasks=args.tasks.split(",") if args.tasks else None,
                  folds=parse_int_list(args.folds), results=args.results, cache=args.cache, storage=args.storage,
                  n_folds=args.n_folds, seed=args.seed, inner=args.inner_folds, prune=args.prune,
                  train_overrides=parse_sets(args.set), model_overrides=parse_sets(args.model),
                  progress=not args.quiet, timeout=args.timeout, init=args.init,
                  input_overrides=parse_sets(args.input), protocol=args.protocol, splits_name=args.splits,
                  tracker=tracker_settings(args), settings=Settings.from_env())
    for f in report.folds:
        added = f.n_after - f.n_before
        val = "–" if f.best_value is None else f"{f.best_value:.4f}"
        print(f"{f.task} outer fold {f.fold}: {f.n_after} trial(s) ({added} new), best inner-CV {val} "
              f"{f.best_params}  -> {f.path / 'best.json'}")
    proto = (f" --protocol {args.protocol}" if args.protocol else "") + (f" --splits {args.splits}" if args.splits
                                                                         else "")
    print(f"tuned {spec.name} on {report.dataset} in {report.seconds:.1f} s; "
          f"`python -m bench run --methods {spec.name} --dataset {dataset} --tuned{proto}` trains with these")
    return 0
