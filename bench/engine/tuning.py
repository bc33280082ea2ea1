"""``bench tune``: nested hyper-parameter search with Optuna, one study per outer fold.

For outer fold *k* the objective of a trial is the mean validation metric (the task's primary one:
macro-F1, C-index, AUC) over inner folds made **only** from fold *k*'s training cases, with the
same split logic as the outer folds (patient-level, stratified, seeded). The outer test fold is
never loaded, never standardised against, never scored: it is not even handed to the code that
builds the inputs. ``bench run --tuned`` then trains each outer fold once with that fold's best
parameters and scores it on its test fold — the usual nested cross-validation.

Search spaces are data: ``configs/tuning/<method config>.yaml`` (``mil.yaml`` for the two-stage
aggregators, ``end_to_end.yaml`` for the whole-slide models), with per-method-glob sections.

Storage: one SQLite file per (dataset, task, method) under
``results/tuning/<dataset>/<task>/<method>/optuna.db`` by default, or any SQLAlchemy URL
(``--storage postgresql://...``) for many workers. Study names are deterministic —
``<dataset>.<task>.<method>.outer<k>.<hash>``, where the hash covers everything that makes trials
comparable (splits, inner folds, search space, fixed options, inputs) — so a rerun (or another worker)
joins the same study and tops it up to the requested number of finished trials; a changed setting
starts a new study instead of mixing incomparable trials.

Results: ``results/tuning/<dataset>/<task>/<method>[/<split set>]/fold<k>/best.json`` (best
parameters, value, study), ``trials.csv`` and ``inner_folds.csv`` (the inner split, for audit); the
split set's folder is ``seed<s>-k<n>`` or ``splits-<name>`` (``--splits``), none for the default set.
``run --tuned`` reads the ``best.json`` of its own split set and refuses one tuned on other folds.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import time
import warnings
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from .. import tasks as T
from ..data.datasets import Cohort, load_cohort
from ..resources import config_path
from ..io import atomic_write_json, atomic_write_text, name_component, safe_name
from ..registry import MethodSpec
from ..results.identity import digest
from .config import unit_seed
from .executor import fit_and_score
from .inputs import inputs_key, make_inputs
from .pretrain import init_identity
from .tracking import Continued, TrackerSettings, open_run, tracks
from .recipe import MODEL_PREFIX, Overrides, UnitRecipe, resolve_recipe, split_params  # noqa: F401 (public here too)
from .settings import Settings
from ..data.splits import SplitManager, make_folds

log = logging.getLogger(__name__)

COUNTED = ("COMPLETE", "PRUNED")  # trial states that count towards --trials


class TuningError(ValueError):
    """Tuning cannot proceed (or its results are missing); the message says what to do."""


def _optuna():
    try:
        import optuna
    except ImportError:  # pragma: no cover - depends on the environment
        raise TuningError("`bench tune` needs optuna: pip install 'wsi-bench[cluster]' (or pip install optuna)") from None
    return optuna


# ------------------------------------------------------------------------------ search spaces
def load_space(spec: MethodSpec) -> dict[str, Any]:
    """The search space of a method: ``{"inner_folds": int, "space": {name: distribution}, "source": path}``."""
    path = config_path("tuning", spec.config or "")
    if not spec.config or not path.is_file():
        raise TuningError(f"no search space for {spec.name}: add configs/tuning/{spec.config or '<config>'}.yaml "
                          "(see configs/tuning/mil.yaml for the format)")
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    space = dict(data.get("space") or {})
    inner = data.get("inner_folds", 3)
    for pattern, section in (data.get("methods") or {}).items():
        if fnmatch.fnmatchcase(spec.name, pattern):
            section = section or {}
            space.update(section.get("space") or {})
            inner = section.get("inner_folds", inner)
    space = {k: v for k, v in space.items() if v is not None}
    for name, dist in space.items():
        _check_dist(path, name, dist)
    if not space:
        raise TuningError(f"{path}: the search space of {spec.name} is empty")
    return {"inner_folds": int(inner), "space": space, "source": str(path)}


def _check_dist(path: Path, name: str, d: Any) -> None:
    where = f"{path}: `{name}`"
    if not isinstance(d, dict) or d.get("type") not in ("float", "int", "categorical"):
        raise TuningError(f"{where} must be a mapping with type float, int or categorical, got {d!r}")
    if d["type"] == "categorical":
        if not d.get("choices"):
            raise TuningError(f"{where}: categorical needs a non-empty `choices` list")
    else:
        if "low" not in d or "high" not in d or float(d["low"]) > float(d["high"]):
            raise TuningError(f"{where}: needs low <= high, got {d!r}")
        if d.get("log") and float(d["low"]) <= 0:
            raise TuningError(f"{where}: a log scale needs low > 0")


def suggest(trial: Any, space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for name, d in space.items():
        if d["type"] == "float":
            params[name] = trial.suggest_float(name, float(d["low"]), float(d["high"]), log=bool(d.get("log", False)),
                                               step=d.get("step"))
        elif d["type"] == "int":
            params[name] = trial.suggest_int(name, int(d["low"]), int(d["high"]), step=int(d.get("step", 1)),
                                             log=bool(d.get("log", False)))
        else:
            params[name] = trial.suggest_categorical(name, list(d["choices"]))
    return params


# ------------------------------------------------------------------------------ locations
def method_dir(results: Path | str, dataset: str, task: str, method: str) -> Path:
    return Path(results) / "tuning" / name_component(dataset, "dataset") / safe_name(task) / safe_name(method)


def fold_dir(results: Path | str, dataset: str, task: str, method: str, fold: int, split_set: str = "") -> Path:
    """Where outer fold ``fold`` of ``split_set`` (:func:`bench.data.splits.split_set_label`; "" = the
    default seeded set) keeps its study's results."""
    d = method_dir(results, dataset, task, method)
    return (d / safe_name(split_set) if split_set else d) / f"fold{int(fold)}"


def default_storage(results: Path | str, dataset: str, task: str, method: str) -> str:
    d = method_dir(results, dataset, task, method)
    d.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(d / 'optuna.db').resolve()}"


def _redact(url: str) -> str:
    """Hide a password in a database URL before it is written anywhere."""
    if "://" in url and "@" in url.split("://", 1)[1]:
        scheme, rest = url.split("://", 1)
        cred, host = rest.rsplit("@", 1)
        user = cred.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}"
    return url


def load_best(results: Path | str, dataset: str, task: str, method: str, fold: int, split_set: str = "",
              split_hash: str | None = None) -> dict[str, Any]:
    """The best parameters ``bench tune`` recorded for one outer fold of ``split_set``; with
    ``split_hash``, refused unless they were tuned on exactly those folds."""
    import json

    p = fold_dir(results, dataset, task, method, fold, split_set) / "best.json"
    again = (f"python -m bench tune --method {method} --dataset {dataset} --task {task}"
             + (f" --splits {split_set[len('splits-'):]}" if split_set.startswith("splits-") else ""))
    if not p.is_file():
        raise TuningError(f"no tuning result for {dataset}/{task}/{method} outer fold {fold} ({p} is missing): run "
                          f"`{again}` first")
    try:
        best = json.loads(p.read_text())
    except (OSError, ValueError) as exc:
        raise TuningError(f"{p} is unreadable ({exc}); rerun `bench tune` for it") from exc
    if split_hash is not None and best.get("split_hash") != split_hash:
        raise TuningError(f"{p} was tuned on other folds (split hash {best.get('split_hash')}, this run's "
                          f"{split_hash}): its outer test fold may have been tuned on. Rerun `{again}`")
    return best


# ------------------------------------------------------------------------------ the objective
def inner_folds(outer_train: pd.DataFrame, task: str, n_inner: int, seed: int) -> pd.DataFrame:
    """Inner folds (``case_id, fold``) over an outer fold's training cases only, by the outer split logic
    (patient-level, stratified, seeded)."""
    return make_folds(outer_train, task, n_folds=n_inner, seed=seed)


@dataclass
class FoldTuning:
    task: str
    fold: int
    study_name: str
    n_before: int
    n_after: int
    best_value: float | None
    best_params: dict[str, Any]
    path: Path


@dataclass
class TuneReport:
    dataset: str
    method: str
    folds: list[FoldTuning] = field(default_factory=list)
    seconds: float = 0.0


class Objective:
    """Mean inner-CV validation metric of one parameter set, on one outer fold's training cases.
    Each trial's recipe is resolved by the one resolver (``bench.engine.recipe``) with the trial's
    parameters as tuned values — exactly what ``bench run --tuned`` resolves from ``best.json`` —
    and each inner fold is one call of the unit executor."""

    def __init__(self, spec: MethodSpec, task: str, cases: pd.DataFrame, inner: pd.DataFrame, inputs: Any,
                 space: dict[str, Any], overrides: Overrides, cohort: Cohort, seed: int, outer_fold: int,
                 prune: bool, init: Path | None = None, protocol: str | None = None,
                 tracker: TrackerSettings | None = None) -> None:
        self.spec, self.task, self.inputs, self.space = spec, task, inputs, space
        self.cases = cases.set_index("case_id")
        self.inner = inner
        self.overrides, self.protocol = overrides, protocol
        self.cohort, self.seed, self.outer_fold, self.prune = cohort, seed, outer_fold, prune
        self.init = init
        self.init_sha = init_identity(init)["sha256"] if init is not None else None
        self.metric = T.get_task(task).metric
        self.tracker = tracker

    def samples(self, case_ids: list[str]) -> list[Any]:
        cols = T.get_task(self.task).label_columns
        return [self.inputs.sample(c, {k: float(self.cases.loc[c, k]) for k in cols}) for c in case_ids]

    def recipe(self, params: dict[str, Any]) -> UnitRecipe:
        """The recipe of a trial with ``params``: the run's resolver, the run's overrides and protocol."""
        return resolve_recipe(self.spec, self.cohort, self.task, overrides=self.overrides, tuned=params,
                              protocol=self.protocol, init=self.init, init_sha256=self.init_sha)

    def run_name(self, trial: Any) -> str:
        """A trial's tracked run: ``<dataset>/<task>/<method>/tune/fold<k>/trial<n>``."""
        return f"{self.cohort.spec.name}/{self.task}/{self.spec.name}/tune/fold{self.outer_fold}/trial{trial.number}"

    def __call__(self, trial: Any) -> float:
        """One trial: its own tracked run (``--tracker``) holds the inner folds' training one after the
        other (one loss curve), each inner fold's validation metric and the trial's value."""
        params = suggest(trial, self.space)
        r = self.recipe(params)
        trial.set_user_attr("recipe", r.describe())
        with open_run(self.tracker, self.run_name(trial),
                      {"params": params, "outer_fold": self.outer_fold, "recipe": r.describe()}) as run:
            value = self._inner_cv(trial, r, Continued(run) if tracks(run) else None)
            run.log_final(**{f"inner_cv_{self.metric}": value})
        return value

    def _inner_cv(self, trial: Any, r: UnitRecipe, run: Continued | None) -> float:
        optuna = _optuna()
        model = r.model_recipe(getattr(self.inputs, "model_kwargs", {}))
        scores = []
        n_inner = int(self.inner["fold"].max()) + 1
        for j in range(n_inner):
            val_ids = sorted(self.inner.loc[self.inner["fold"] == j, "case_id"])
            tr_ids = sorted(self.inner.loc[self.inner["fold"] != j, "case_id"])
            # the seed depends on the fold, not the trial: trials differ by their parameters only
            cfg = r.train_config(unit_seed(self.seed, self.spec.name, self.task, self.outer_fold, "inner", j))
            out = fit_and_score(model, self.task, self.samples(tr_ids), self.samples(val_ids), cfg, progress=False,
                                tracker=run)
            v = out.scores.get(self.metric, float("nan"))
            scores.append(float(v) if v is not None else float("nan"))
            if run is not None:
                run.log_final(**{f"inner{j}_{self.metric}": scores[-1]})
                run.next_part()
            trial.set_user_attr(f"inner{j}", scores[-1])
            running = float(np.nanmean(scores)) if not np.all(np.isnan(scores)) else float("nan")
            if self.prune and j < n_inner - 1 and not np.isnan(running):
                trial.report(running, j)
                if trial.should_prune():
                    raise optuna.TrialPruned()
        if np.all(np.isnan(scores)):
            raise T.metrics.UndefinedMetric(f"{self.metric} undefined on every inner fold")
        return float(np.nanmean(scores))


@dataclass(frozen=True)
class TuneSetup:
    """What every study of one ``bench tune`` shares: the method, cohort, search space, the fixed
    options (CLI overrides), the protocol and the inputs."""

    spec: MethodSpec
    cohort: Cohort
    space: dict[str, Any]
    n_inner: int
    overrides: Overrides
    protocol: str | None
    base: UnitRecipe  # the recipe with no tuned values (its model options and protocol enter the study key)
    inputs: Any
    init: Path | None
    seed: int
    prune: bool
    tracker: TrackerSettings | None = None  # one tracked run per trial


def _setup(spec: MethodSpec, cohort: Cohort, task: str, overrides: Overrides, protocol: str | None,
           inner: int | None, cache: Path | str, progress: bool, init: Path | None, seed: int,
           prune: bool, settings: Settings) -> TuneSetup:
    sp = load_space(spec)
    space = {k: v for k, v in sp["space"].items()
             if k not in overrides.train and not (k.startswith(MODEL_PREFIX) and k[len(MODEL_PREFIX):] in overrides.model)}
    for k in set(sp["space"]) - set(space):
        log.info("%s is fixed by --set/--model: not searched", k)
    if not space:
        raise TuningError("every parameter of the search space is fixed by --set/--model: nothing to tune")
    n_inner = int(inner or sp["inner_folds"])
    if n_inner < 2:
        raise TuningError(f"inner folds must be >= 2, got {n_inner}")
    base = resolve_recipe(spec, cohort, task, overrides=overrides, protocol=protocol, init=init)
    inputs = make_inputs(spec, cohort, cache, dict(base.inputs), progress, settings)
    return TuneSetup(spec, cohort, space, n_inner, overrides, protocol, base, inputs, init, seed, prune)


def tune(spec: MethodSpec, dataset: str, *, n_trials: int, tasks: list[str] | None = None,
         folds: list[int] | None = None, results: Path | str = "results", cache: Path | str = "cache",
         storage: str | None = None, n_folds: int = 5, seed: int = 0, inner: int | None = None,
         prune: bool = False, train_overrides: dict[str, Any] | None = None,
         model_overrides: dict[str, Any] | None = None, progress: bool = True,
         timeout: float | None = None, init: Path | str | None = None,
         input_overrides: dict[str, Any] | None = None, protocol: str | None = None,
         splits_name: str | None = None,
         tracker: TrackerSettings | None = None, settings: Settings = Settings()) -> TuneReport:
    """Tune ``spec`` on every (task, outer fold) of ``dataset`` up to ``n_trials`` finished trials each.
    ``splits_name``: the outer folds are those of this imported split set (``bench splits --import``)
    instead of the seeded ones; its early-stopping cases are left out of the inner folds.
    ``init``: the checkpoint every trial's network starts from, as ``bench run --init``;
    ``protocol``: the preset, as ``bench run --protocol`` (default: the dataset's, the method's, wsi-bench);
    ``tracker``: one tracked run per trial (``bench.engine.tracking``; None: untracked);
    ``settings``: the process settings the CLI read (the slide reader and extraction of the inputs)."""
    optuna = _optuna()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    t0 = time.perf_counter()
    cohort = load_cohort(dataset)
    dataset = cohort.spec.name
    tasks = list(tasks or cohort.spec.tasks)
    for t in tasks:
        if t not in cohort.spec.tasks:
            raise TuningError(f"dataset {dataset!r} does not support task {t!r} (it has {cohort.spec.tasks})")
    overrides = Overrides(train_overrides or {}, model_overrides or {}, input_overrides or {})
    init = Path(init) if init is not None else None
    setup = replace(_setup(spec, cohort, tasks[0], overrides, protocol, inner, cache, progress, init, seed, prune,
                           settings),
                    tracker=tracker)
    manager = SplitManager(Path(results) / "splits")
    report = TuneReport(dataset=dataset, method=spec.name)
    for task in tasks:
        splits = manager.get(dataset, task, cohort.cases(task), n_folds=n_folds, seed=seed, name=splits_name)
        for k in range(splits.n_folds):
            if folds is None or k in folds:
                report.folds.append(_tune_fold(optuna, setup, task, k, splits, results, storage, n_trials,
                                               timeout, progress))
    report.seconds = time.perf_counter() - t0
    return report


def _tune_fold(optuna: Any, s: TuneSetup, task: str, k: int, splits: Any, results: Path | str,
               storage: str | None, n_trials: int, timeout: float | None, progress: bool) -> FoldTuning:
    """Top the study of outer fold ``k`` up to ``n_trials`` finished trials and write its best.json."""
    spec, dataset, inputs = s.spec, s.cohort.spec.name, s.inputs
    all_cases = s.cohort.cases(task)
    outer_train_ids = splits.train_cases(k)
    # only the outer fold's training slides are ever prepared or read
    inputs.ensure(outer_train_ids)
    usable = [c for c in outer_train_ids if inputs.has(c)]
    if len(usable) < len(outer_train_ids):
        log.warning("%s fold %d: %d training case(s) have no input and are left out of tuning", task, k,
                    len(outer_train_ids) - len(usable))
    train_cases = all_cases[all_cases["case_id"].isin(set(usable))]
    inner_split = inner_folds(train_cases, task, s.n_inner, unit_seed_inner(s.seed, k))
    key = {"split_hash": splits.hash, "outer_fold": k, "inner": inner_split.sort_values("case_id").to_dict("list"),
           "space": s.space, "fixed_train": dict(s.overrides.train), "model": dict(s.base.model),
           "inputs": inputs.identity, "input_key": inputs_key(spec, dict(s.base.inputs)), "seed": s.seed,
           "init": init_identity(s.init) if s.init is not None else None, "protocol": s.base.protocol.name}
    study_name = f"{dataset}.{task}.{spec.name}.outer{k}.{digest(key)[:8]}"
    fd = fold_dir(results, dataset, task, spec.name, k, splits.label)
    fd.mkdir(parents=True, exist_ok=True)
    atomic_write_text(fd / "inner_folds.csv", inner_split.to_csv(index=False))
    url = storage or default_storage(results, dataset, task, spec.name)
    study = _study(optuna, url, study_name)
    n_before = _n_counted(study)
    todo = n_trials - n_before
    log.info("%s %s outer fold %d: study %s has %d finished trial(s); %s", dataset, task, k, study_name,
             n_before, f"running {todo} more" if todo > 0 else "nothing to do")
    if todo > 0:
        objective = Objective(spec, task, train_cases, inner_split, inputs, s.space, s.overrides, s.cohort,
                              s.seed, k, s.prune, s.init, s.protocol, s.tracker)
        study.sampler = optuna.samplers.TPESampler(seed=_sampler_seed(s.seed, study_name, study, storage))
        # samplers and pruners are not stored with a study: every worker sets its own
        study.pruner = (optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=0) if s.prune
                        else optuna.pruners.NopPruner())
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
            study.optimize(objective, n_trials=todo, timeout=timeout, gc_after_trial=True,
                           catch=(T.metrics.UndefinedMetric, _training_error()),
                           callbacks=[optuna.study.MaxTrialsCallback(
                               n_trials, states=tuple(getattr(optuna.trial.TrialState, st) for st in COUNTED)),
                               _log_trial(task, k)],
                           show_progress_bar=progress)
    best = _write_best(study, fd, url, study_name, task, k, s.n_inner, s.space, splits.hash,
                       T.get_task(task).metric, s.base.protocol.name)
    return FoldTuning(task, k, study_name, n_before, _n_counted(study), best.get("value"), best.get("params", {}), fd)


def unit_seed_inner(seed: int, outer_fold: int) -> int:
    return unit_seed(seed, "inner-folds", outer_fold) % (2**31)


def _training_error() -> type[Exception]:
    from .train import TrainingError

    return TrainingError


def _sampler_seed(seed: int, study_name: str, study: Any, storage: str | None) -> int:
    """Deterministic for one worker on the default storage; workers sharing an explicit storage add
    their pid, so simultaneous workers do not propose the same parameters."""
    return unit_seed(seed, study_name, len(study.trials), os.getpid() if storage else 0) % (2**31)


def _study(optuna: Any, url: str, name: str) -> Any:
    kwargs: dict[str, Any] = {"heartbeat_interval": 60, "grace_period": 180}
    if url.startswith("sqlite"):
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        try:
            storage = optuna.storages.RDBStorage(url, **kwargs)
        except Exception as exc:  # noqa: BLE001 — SQLAlchemy raises many kinds
            raise TuningError(f"cannot open the Optuna storage {_redact(url)}: {type(exc).__name__}: {exc}") from exc
        # a worker killed mid-trial leaves it RUNNING; its missing heartbeat marks it FAIL
        return optuna.create_study(study_name=name, storage=storage, direction="maximize", load_if_exists=True)


def _n_counted(study: Any) -> int:
    return sum(1 for t in study.get_trials(deepcopy=False) if t.state.name in COUNTED)


def _log_trial(task: str, k: int):
    def cb(study: Any, trial: Any) -> None:
        v = "pruned" if trial.state.name == "PRUNED" else (
            "failed" if trial.value is None else f"{trial.value:.4f}")
        log.info("%s outer fold %d trial %d: %s %s", task, k, trial.number, v, trial.params)

    return cb


def _write_best(study: Any, fd: Path, url: str, study_name: str, task: str, k: int, n_inner: int,
                space: dict[str, Any], split_hash: str, metric: str, protocol: str) -> dict[str, Any]:
    """best.json: the best trial's parameters and value, and the recipe it trained (its protocol,
    network and training options, as ``bench run --tuned`` resolves them)."""
    done = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    if done:
        df = study.trials_dataframe()
        atomic_write_text(fd / "trials.csv", df.to_csv(index=False))
    if not done:
        raise TuningError(f"{study_name}: no trial finished (all failed or were pruned); see the log above, "
                          "narrow the search space or fix the failing option")
    best = max(done, key=lambda t: t.value)
    out = {"params": best.params, "value": best.value, "trial": best.number, "metric": metric, "task": task,
           "outer_fold": k, "inner_folds": n_inner, "n_trials": _n_counted(study), "study_name": study_name,
           "storage": _redact(url), "space": space, "split_hash": split_hash,
           "inner_values": {k2: v for k2, v in best.user_attrs.items() if k2.startswith("inner")},
           "protocol": protocol, "recipe": best.user_attrs.get("recipe"),
           "written": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    atomic_write_json(fd / "best.json", out)
    return out
