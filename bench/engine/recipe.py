"""The one resolver: (method, dataset, task, overrides, protocol) -> a frozen :class:`UnitRecipe`.

``bench run`` (``plan.Planner``), ``bench tune`` (each trial and the study key), ``bench ablate``
(through ``run``) and the ablation check (``bench.ablation_check``) all call :func:`resolve_recipe`,
so a study searches exactly the network and training recipe that ``run --tuned`` then trains, and
the check before an ablation reasons about the network the ablation builds.

Precedence, highest first: CLI overrides > the variant's settings (what an ablation varies) > tuned
values > the dataset YAML > the protocol preset > the method config > the code's defaults.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ..data.datasets import Cohort
from ..registry import MethodSpec
from .. import tasks as T
from .config import (INPUT_OPTIONS, OptionError, Variant, input_options, method_train_config, model_options,
                     protocol_of, resolved_model_options)
from .executor import ModelRecipe
from .protocol import Protocol
from .train import TrainConfig

MODEL_PREFIX = "model."  # a tuned parameter of the network (``model.dropout``), not of training


def _frozen(d: Mapping[str, Any] | None) -> dict[str, Any]:
    """A private copy (the dataclasses are frozen: their fields are never reassigned, and nobody holds
    the caller's dict). Plain dicts, so recipes pickle and serialise."""
    return dict(d or {})


@dataclass(frozen=True)
class Overrides:
    """What the command line sets for every unit: ``--set`` (train), ``--model``, ``--input``."""

    train: Mapping[str, Any] = field(default_factory=dict)
    model: Mapping[str, Any] = field(default_factory=dict)
    inputs: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("train", "model", "inputs"):
            object.__setattr__(self, name, _frozen(getattr(self, name)))

    def as_dict(self) -> dict[str, dict[str, Any]]:
        return {"train": dict(self.train), "model": dict(self.model), "inputs": dict(self.inputs)}


def split_params(params: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Tuned parameters ``{"lr": .., "model.dropout": ..}`` -> (training options, model options)."""
    train = {k: v for k, v in params.items() if not k.startswith(MODEL_PREFIX)}
    model = {k[len(MODEL_PREFIX):]: v for k, v in params.items() if k.startswith(MODEL_PREFIX)}
    return train, model


@dataclass(frozen=True)
class UnitRecipe:
    """Everything that decides what one unit trains, resolved once: the network's options (input
    options separated out), the input options, the complete training options (without the seed,
    which depends on the fold), the protocol preset and the ``--init`` checkpoint."""

    spec: MethodSpec
    task: str
    protocol: Protocol
    model: Mapping[str, Any]
    inputs: Mapping[str, Any]
    train: Mapping[str, Any]
    init: Path | None = None
    init_sha256: str | None = None

    def __post_init__(self) -> None:
        for name in ("model", "inputs", "train"):
            object.__setattr__(self, name, _frozen(getattr(self, name)))

    @property
    def n_out(self) -> int:
        return T.get_task(self.task).n_out()

    def model_recipe(self, input_kwargs: Mapping[str, Any] | None = None) -> ModelRecipe:
        """The network to build; ``input_kwargs``: builder arguments the inputs decide (second-stage weights)."""
        init = self.init if self.spec.family == "end-to-end" or self.init else None
        return ModelRecipe(self.spec, self.n_out, dict(self.model), dict(input_kwargs or {}), init, self.init_sha256)

    def train_config(self, seed: int) -> TrainConfig:
        return TrainConfig.from_dict({**self.train, "seed": seed})

    def train_options(self, seed: int) -> dict[str, Any]:
        return {**self.train, "seed": seed}

    def resolved_model(self) -> dict[str, Any]:
        """The network's options as built (builder defaults, registry kwargs, then ours)."""
        return resolved_model_options(self.spec, dict(self.model))

    def describe(self) -> dict[str, Any]:
        """What a record or a study says of this recipe (JSON-ready)."""
        return {"method": self.spec.name, "task": self.task, "protocol": self.protocol.name,
                "model": self.resolved_model(), "inputs": dict(self.inputs), "train": dict(self.train),
                "init": self.init_sha256}


def resolve_recipe(spec: MethodSpec, cohort: Cohort, task: str, *, variant: Variant | None = None,
                   overrides: Overrides | None = None, tuned: Mapping[str, Any] | None = None,
                   protocol: str | None = None, init: Path | None = None,
                   init_sha256: str | None = None) -> UnitRecipe:
    """Resolve one unit's recipe. ``tuned``: parameters found by ``bench tune`` (or a trial's), as
    ``{"lr": .., "model.dropout": ..}``; ``protocol``: the ``--protocol`` preset (None: the dataset
    YAML's, else the method config's, else ``wsi-bench``). Raises :class:`OptionError` naming a bad
    option before anything trains."""
    v = variant or Variant(spec)
    ov = overrides or Overrides()
    tuned_train, tuned_model = split_params(tuned or {})
    proto = protocol_of(spec, cohort, protocol)
    model_set = model_options(spec, cohort, {**tuned_model, **v.model, **ov.model}, proto)
    in_model = sorted(set(model_set) & set(INPUT_OPTIONS))
    if in_model:
        raise OptionError(f"{', '.join(in_model)} chooses the inputs of {spec.name}, not its network: "
                          f"use --input {in_model[0]}=... instead of --model")
    inputs = input_options(spec, cohort, {**v.inputs, **ov.inputs})
    train = method_train_config(spec, {**tuned_train, **v.train, **ov.train}, cohort.spec.train, proto)
    train.pop("seed", None)
    return UnitRecipe(spec, task, proto, model_set, inputs, train, init, init_sha256)
