"""Planning a run: every unit's options, inputs and identity, resolved before anything is trained."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data.datasets import Cohort
from ..data.splits import Splits, split_set_name
from ..registry import MethodSpec
from feature_cache.weights import WeightsProvenance
from ..results.store import Unit
from .. import tasks as T
from .config import (INPUT_OPTIONS, OptionError, Variant, input_options, method_defaults, method_train_config,
                     model_options, protocol_of, resolved_model_options, unit_seed)
from .executor import ModelRecipe
from ..results.identity import digest
from .identity import NUMERICS_VERSION, labels_of, slide_identities
from .inputs import Inputs, inputs_key, make_inputs
from .pretrain import init_identity
from .train import TrainConfig


@dataclass
class UnitPlan:
    """One unit of work, fully resolved (what a launcher hands to a worker)."""

    unit: Unit
    spec: MethodSpec
    variant: Variant
    recipe: ModelRecipe
    train: dict[str, Any]
    input_opts: dict[str, Any]
    inputs_key: str
    config: dict[str, Any]  # the unit's identity, written as config.json
    chash: str
    tuned: dict[str, Any] | None = None
    non_default: dict[str, Any] = field(default_factory=dict)


def unit_variant(name: str | None, tuned: bool, seed: int, n_folds: int, splits: str | None = None) -> str | None:
    """The stored variant of a unit: the variant's own name, ``tuned``, and the split set when it is
    not the default one (``seed1-k3``, or ``splits-<name>`` for an imported set) — results of
    different split sets never share a row."""
    sset = f"splits-{splits}" if splits else split_set_name(seed, n_folds) or None
    parts = [p for p in (name, "tuned" if tuned else None, sset) if p]
    return "+".join(parts) or None


class Planner:
    """Resolves units of one run: options, inputs (shared between methods that consume the same
    thing), identities."""

    def __init__(self, cohort: Cohort, splits: dict[str, Splits], cache: Path | str, progress: bool, seed: int,
                 init: Path | None, from_scratch: bool, protocol: str | None) -> None:
        self.cohort, self.splits, self.cache, self.progress, self.seed = cohort, splits, cache, progress, seed
        self.init, self.from_scratch, self.protocol = init, from_scratch, protocol
        self.init_id = init_identity(init) if init is not None else None
        self.inputs: dict[str, Inputs] = {}
        self._labels: dict[str, dict[str, list[float]]] = {}
        self._slides: dict[str, dict[str, str]] = {}

    def labels(self, task: str) -> dict[str, list[float]]:
        if task not in self._labels:
            self._labels[task] = labels_of(self.cohort.cases(task), T.get_task(task).label_columns)
        return self._labels[task]

    def slides(self, task: str) -> dict[str, str]:
        if task not in self._slides:
            self._slides[task] = slide_identities(self.cohort.table, self.cohort.cases(task)["case_id"])
        return self._slides[task]

    def get_inputs(self, spec: MethodSpec, opts: dict[str, Any]) -> tuple[str, Inputs]:
        key = inputs_key(spec, opts)
        if key not in self.inputs:
            self.inputs[key] = make_inputs(spec, self.cohort, self.cache, opts, self.progress)
        return key, self.inputs[key]

    def plan(self, task: str, v: Variant, k: int, unit: Unit, tuned_info: dict[str, Any] | None,
             train_overrides: dict[str, Any], model_overrides: dict[str, Any],
             input_overrides: dict[str, Any]) -> UnitPlan:
        spec, dataset = v.spec, self.cohort.spec.name
        tuned_train, tuned_model = {}, {}
        if tuned_info is not None:
            from .tuning import split_params

            tuned_train, tuned_model = split_params(tuned_info["params"])
        proto = protocol_of(spec, self.cohort, self.protocol)
        # CLI > the variant's setting (what an ablation varies) > tuned values > dataset > preset > defaults
        model_set = model_options(spec, self.cohort, {**tuned_model, **v.model, **model_overrides}, proto)
        in_model = sorted(set(model_set) & set(INPUT_OPTIONS))
        if in_model:
            raise OptionError(f"{', '.join(in_model)} chooses the inputs of {spec.name}, not its network: "
                              f"use --input {in_model[0]}=... instead of --model")
        input_opts = input_options(spec, self.cohort, {**v.inputs, **input_overrides})
        key, fi = self.get_inputs(spec, input_opts)
        train_cfg = method_train_config(spec, {**tuned_train, **v.train, **train_overrides}, self.cohort.spec.train,
                                        proto)
        # same seed for every variant of a method: an ablation compares settings, not initialisations
        train_cfg["seed"] = unit_seed(self.seed, spec.name, task, k)
        if spec.family == "end-to-end" and self.init is None and not self.from_scratch \
                and not self.cohort.spec.allow_random_weights:
            raise OptionError(
                f"{spec.name} would train from random initialisation on dataset {dataset!r}, which does not allow "
                "random weights: start it from a checkpoint (--init CHECKPOINT, e.g. from `bench pretrain`) or "
                "say so explicitly with --from-scratch (its table row is then marked)")
        recipe = ModelRecipe(spec, T.get_task(task).n_out(), model_set, dict(getattr(fi, "model_kwargs", {})),
                             self.init if spec.family == "end-to-end" or self.init else None,
                             self.init_id["sha256"] if self.init_id else None)
        weights = fi.provenance() + recipe.provenance()
        if self.from_scratch and spec.family == "end-to-end" and self.init is None:
            weights = [WeightsProvenance("model", "scratch", "random initialisation (--from-scratch)")]
        sp = self.splits[task]
        config = {
            "dataset": dataset, "task": task, "method": spec.name, "fold": k, "family": spec.family,
            "variant": unit.variant, "variant_settings": v.settings,
            "split": {"hash": sp.hash, "seed": sp.seed, "n_folds": sp.n_folds, **({"name": sp.name} if sp.name else {})},
            "labels": self.labels(task), "slides": self.slides(task),
            "mpp_override": self.cohort.spec.mpp_override,
            "inputs": {**fi.identity, **input_opts},
            "model": resolved_model_options(spec, model_set), "train": train_cfg,
            "weights": [w.to_dict() for w in weights], "init": self.init_id,
            "protocol": proto.name, "numerics_version": NUMERICS_VERSION,
        }
        if tuned_info is not None:
            config["tuned"] = {k2: tuned_info.get(k2) for k2 in ("params", "value", "metric", "study_name",
                                                                 "n_trials", "inner_folds")}
        # what differs from the method's defaults under its preset (the table notes it on the row; the
        # preset itself is named by the protocol mark)
        base_train = {**TrainConfig().to_dict(), **method_defaults(spec), **proto.train_options(spec.family)}
        preset_model = proto.model_options(spec.name, spec.family)
        non_default = {**{k2: v2 for k2, v2 in model_set.items() if preset_model.get(k2, object()) != v2},
                       **{k2: v2 for k2, v2 in input_opts.items()
                          if not (k2 == "magnification" and spec.magnification == v2)},
                       **{k2: v2 for k2, v2 in train_cfg.items() if k2 != "seed" and base_train.get(k2) != v2}}
        return UnitPlan(unit, spec, v, recipe, train_cfg, input_opts, key, config, digest(config),
                        config.get("tuned"), non_default)
