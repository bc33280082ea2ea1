"""One unit trained and recorded: the executor's step between a :class:`~bench.engine.plan.UnitPlan`
and its :class:`~bench.results.records.UnitRecord` (inside the unit's tracked run)."""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import pandas as pd

from .. import tasks as T
from ..registry import ENCODERS, SOURCE_PARAMS, MethodSpec
from ..report.tables import human_count
from ..results.identity import digest
from ..results.records import InputSpec, SplitIdentity, UnitRecord, WeightsProvenance
from .executor import fit_and_score, resolve_device
from .identity import NUMERICS_VERSION
from .inputs import Inputs
from .plan import Planner, UnitPlan
from .tracking import open_unit_run, tracks
from .train import TrainConfig

log = logging.getLogger(__name__)


def sample_labels(row: pd.Series, task: str) -> dict[str, float]:
    return {c: float(row[c]) for c in T.get_task(task).label_columns}


def run_unit(p: UnitPlan, planner: Planner, fi: Inputs, progress: bool, device: Any, tracker: Any = None
              ) -> tuple[pd.DataFrame, pd.DataFrame, UnitRecord, dict[str, Any] | None]:
    """Train and score one unit inside its tracked run (``bench.engine.tracking``), which ends with
    the record's primary metric."""
    u = p.unit
    with open_unit_run(tracker, u.dataset, u.task, u.method, u.fold, u.variant, p.config, u.repeat) as run:
        pred, train_log, record, weights = _train_unit(p, planner, fi, progress, device, run if tracks(run) else None)
        value = record.metrics.get(record.primary_metric)
        if isinstance(value, (int, float)) and math.isfinite(value):
            run.log_final(**{record.primary_metric: float(value)})
    return pred, train_log, record, weights


def _train_unit(p: UnitPlan, planner: Planner, fi: Inputs, progress: bool, device: Any, run: Any
                ) -> tuple[pd.DataFrame, pd.DataFrame, UnitRecord, dict[str, Any] | None]:
    unit, spec, cohort = p.unit, p.spec, planner.cohort
    device = resolve_device(device)
    splits = planner.splits[unit.task]
    cases = cohort.cases(unit.task).set_index("case_id")
    without = [c for c in cases.index if not fi.has(c)]
    if without:
        log.warning("%s: %d case(s) have no input and are left out (e.g. %s)", unit, len(without),
                    ", ".join(without[:3]))
    train = [fi.sample(c, sample_labels(cases.loc[c], unit.task)) for c in splits.train_cases(unit.fold)
             if c not in without]
    test = [fi.sample(c, sample_labels(cases.loc[c], unit.task)) for c in splits.test_cases(unit.fold)
            if c not in without]
    val = [fi.sample(c, sample_labels(cases.loc[c], unit.task)) for c in splits.val_cases(unit.fold)
           if c not in without]
    if not train or not test:
        raise ValueError(f"{len(without)} of {len(cases)} cases have no input (e.g. {', '.join(without[:3])}), "
                         f"leaving {len(train)} to train on and {len(test)} to test on. Fix: see why they have no "
                         f"input in the warnings above, or run `bench doctor --dataset {unit.dataset}`")
    name = spec.name + (f"[{unit.variant}]" if unit.variant else "") + (f" repeat {unit.repeat}" if unit.repeat else "")
    t_unit = time.perf_counter()
    out = fit_and_score(p.recipe, unit.task, train, test, TrainConfig.from_dict(p.train), progress=progress,
                        desc=f"{name} {unit.task} fold {unit.fold}", device=device, val=val, tracker=run)
    unit_seconds = time.perf_counter() - t_unit  # build + train + predict + score (benchmarks/first_run.py)
    task = T.get_task(unit.task)
    cfg = p.config
    record = UnitRecord(
        dataset=unit.dataset, task=unit.task, method=unit.method, fold=unit.fold, variant=unit.variant,
        repeat=unit.repeat,
        variant_settings=p.variant.settings, tuned=p.tuned, family=spec.family, label=spec.label,
        group=_group(spec), backbone=ENCODERS[spec.encoder]["backbone"] if spec.encoder in ENCODERS else spec.backbone,
        encoder=spec.cache_encoder, encoder_label=ENCODERS.get(spec.encoder or "", {}).get("label", ""),
        frozen_params_text=_frozen_params(spec, out.params, out.trainable_params, fi.provenance()),
        default_input=_default_input(spec, fi), input=fi.spec, model=cfg["model"], train=cfg["train"],
        protocol=cfg["protocol"], split=SplitIdentity(**cfg["split"]),
        identity={"labels": digest(cfg["labels"]), "slides": digest(cfg["slides"]),
                  "mpp_override": str(cfg["mpp_override"])},
        weights=[WeightsProvenance.from_dict(w) for w in cfg["weights"]], config_hash=p.chash,
        code_version=_code_version(), numerics_version=NUMERICS_VERSION, primary_metric=task.metric,
        higher_is_better=bool(getattr(task, "higher_is_better", True)), metrics=out.scores, params=out.params, trainable_params=out.trainable_params,
        n_train=len(train), n_test=len(test), cases_without_input=without, predictions_sha256="",
        train_seconds=out.info["train_seconds"], train_seconds_per_slide=out.train_seconds_per_slide,
        peak_rss_mb=out.peak_rss_mb, peak_cuda_mb=out.peak_cuda_mb, finished=time.time(),
        info={**{k: v for k, v in out.info.items() if k != "train_seconds"}, "non_default": p.non_default,
              "device": str(device), "weights_loaded": out.loaded + _encoder_loads(fi),
              **({"init_loaded": loaded.to_dict()} if (loaded := planner.init_load(p.recipe)) else {}),
              "unit_seconds": unit_seconds,
              "order": _registry_position(spec.name)},
    )
    return out.predictions, out.train_log, record, out.state_dict


def _encoder_loads(fi: Inputs) -> list[dict[str, Any]]:
    """What the patch encoder's weights were loaded from (file, sha256, key map), when it has a record."""
    enc = getattr(fi, "encoder", None)
    return [w.to_dict() for w in enc.weights_provenance] if enc is not None else []


def _registry_position(name: str) -> int:
    """Registration order = Table 2's row order; recorded so tables need not read the registry."""
    from ..registry import list_methods

    names = [s.name for s in list_methods()]
    return names.index(name) if name in names else len(names)


def _group(spec: MethodSpec) -> str:
    if spec.family == "two-stage" and spec.encoder in ENCODERS:
        return ENCODERS[spec.encoder]["group"]
    return spec.group or ("End-to-end" if spec.family == "end-to-end" else "Two-stage")


def _default_input(spec: MethodSpec, fi: Inputs) -> InputSpec:
    if spec.input == "slide":
        return InputSpec("slide", magnification=float(spec.magnification or 2.5))
    return fi.spec


def _frozen_params(spec: MethodSpec, total: int, trainable: int, weights: list[WeightsProvenance]) -> str:
    """Table 2's frozen part of a two-stage row: a MIL row's patch encoder ("25M"); a hierarchical
    row's first stage together with its frozen second stage ("24.4M", "1.2G"); a stand-in encoder is
    named, not counted. "" for rows without a frozen part."""
    standin = any(w.source == "standin" for w in weights)
    if spec.family != "two-stage":
        return ""
    if spec.encoder in ENCODERS:
        return "stand-in" if standin else ENCODERS[spec.encoder]["params"]
    frozen = total - trainable
    if standin:
        return "stand-in" + (f" + {human_count(frozen)}" if frozen else "")
    return human_count(frozen + SOURCE_PARAMS.get(spec.source or "", 0))


def _code_version() -> str:
    from ..results.store import code_version

    return code_version()
