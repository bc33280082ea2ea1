"""Planning a run: every unit's options, inputs and identity, resolved before anything is trained."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data.datasets import Cohort
from ..data.splits import Splits, split_set_label
from ..io import name_component
from ..registry import MethodSpec
from feature_cache.weights import WeightsProvenance
from ..results.store import Unit
from .. import tasks as T
from .config import OptionError, Variant, method_defaults, unit_seed
from .executor import ModelRecipe
from ..results.identity import digest
from .identity import NUMERICS_VERSION, labels_of, slide_identities
from .inputs import Inputs, inputs_key, make_inputs
from .pretrain import InitReport, init_identity
from .protocol import DEFAULT as DEFAULT_PROTOCOL
from .recipe import Overrides, UnitRecipe, resolve_recipe
from .settings import Settings
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
    sset = split_set_label(seed, n_folds, splits) or None
    parts = [p for p in (name, "tuned" if tuned else None, sset) if p]
    return "+".join(parts) or None


_RESERVED = re.compile(r"tuned|seed\d+-k\d+|splits-.*")


def check_variant_name(name: str) -> str:
    """A ``--variant`` name: not empty, not over-long, and none of the parts the harness adds itself
    (``tuned``, a split set's ``seed<s>-k<n>``), so a user's row never takes the place of another."""
    try:
        name_component(name, "variant")
    except ValueError as exc:
        raise OptionError(f"--variant {name!r}: {exc}") from None
    reserved = [p for p in name.split("+") if _RESERVED.fullmatch(p)]
    if reserved:
        raise OptionError(f"--variant {name!r}: {reserved[0]!r} is reserved (the harness names rows of another split "
                          "set seed<s>-k<n> or splits-<name>, and tuned rows 'tuned'). Fix: choose another name, or use --seed/"
                          "--n-folds/--tuned for those rows")
    return name


def check_folds(folds: list[int] | None, n_folds: dict[str, int]) -> None:
    """``--folds`` within every task's split set (a fold beyond it would make a run with nothing to do)."""
    for t, n in n_folds.items():
        bad = sorted(k for k in folds or [] if not 0 <= k < n)
        if bad:
            raise OptionError(f"--folds {','.join(map(str, bad))}: the {t} split set has folds 0..{n - 1}. "
                              f"Fix: use fold indices below {n}, or another split set (--n-folds)")


class Planner:
    """Resolves units of one run: options, inputs (shared between methods that consume the same
    thing), identities."""

    def __init__(self, cohort: Cohort, splits: dict[str, Splits], cache: Path | str, progress: bool, seed: int,
                 init: Path | None, from_scratch: bool, protocol: str | None, settings: Settings = Settings(), *,
                 init_partial: bool = False) -> None:
        self.cohort, self.splits, self.cache, self.progress, self.seed = cohort, splits, cache, progress, seed
        self.settings = settings  # the process settings the inputs need (slide reader, extraction)
        self.init, self.from_scratch, self.protocol, self.init_partial = init, from_scratch, protocol, init_partial
        self.init_id = init_identity(init) if init is not None else None
        self._init_reports: dict[tuple[Any, ...], InitReport] = {}
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
            self.inputs[key] = make_inputs(spec, self.cohort, self.cache, opts, self.progress, self.settings)
        return key, self.inputs[key]

    def init_load(self, recipe: ModelRecipe) -> InitReport | None:
        """What ``--init`` loads into ``recipe``'s network (built once per architecture, before any
        unit is touched); a checkpoint that cannot start it is refused here."""
        if recipe.init is None:
            return None
        key = (recipe.spec.name, recipe.n_out, digest(recipe.options), digest(recipe.input_kwargs))
        if key not in self._init_reports:
            try:
                self._init_reports[key] = recipe.build_with_init()[1]
            except (ValueError, RuntimeError, FileNotFoundError) as exc:
                raise OptionError(f"--init {self.init} cannot start {recipe.spec.name}: {exc}. Nothing was run; "
                                  "finished results are untouched") from exc
        return self._init_reports[key]

    def _partial_init(self, recipe: ModelRecipe) -> WeightsProvenance | None:
        """An end-to-end network that ``--init`` fills only in part: refused without ``--init-partial``,
        else its provenance saying the share (the row is marked)."""
        report = self.init_load(recipe)
        partial = report.partial() if report is not None and recipe.spec.family == "end-to-end" else None
        if partial is None:
            return None
        if not self.init_partial:
            raise OptionError(f"--init {self.init} fills only part of {recipe.spec.name}: {partial}. Nothing was run. "
                              "Fix: start from a checkpoint of this architecture (e.g. one `bench pretrain --model "
                              f"{recipe.spec.name}` writes), or accept it with --init-partial (the share is recorded and "
                              "the row marked)")
        return WeightsProvenance("model", "init-partial", f"--init {self.init.name} (sha256 {recipe.init_sha256}): "
                                 f"{partial} (--init-partial)", str(self.init), recipe.init_sha256)

    def plan(self, task: str, v: Variant, k: int, unit: Unit, tuned_info: dict[str, Any] | None,
             overrides: Overrides) -> UnitPlan:
        spec, dataset = v.spec, self.cohort.spec.name
        r = resolve_recipe(spec, self.cohort, task, variant=v, overrides=overrides,
                           tuned=tuned_info["params"] if tuned_info is not None else None, protocol=self.protocol,
                           init=self.init, init_sha256=self.init_id["sha256"] if self.init_id else None)
        if tuned_info is not None:
            check_tuned_protocol(tuned_info, r.protocol.name, unit)
        key, fi = self.get_inputs(spec, dict(r.inputs))
        # same seed for every variant of a method: an ablation compares settings, not initialisations
        train_cfg = r.train_options(training_seed(self.seed, spec.name, task, k, unit.repeat))
        if spec.family == "end-to-end" and self.init is None and not self.from_scratch \
                and not self.cohort.spec.allow_random_weights:
            raise OptionError(
                f"{spec.name} would train from random initialisation on dataset {dataset!r}, which does not allow "
                "random weights: start it from a checkpoint (--init CHECKPOINT, e.g. from `bench pretrain`) or "
                "say so explicitly with --from-scratch (its table row is then marked)")
        recipe = r.model_recipe(getattr(fi, "model_kwargs", {}))
        weights = fi.provenance() + recipe.provenance()
        if (partial := self._partial_init(recipe)) is not None:
            weights = fi.provenance() + [partial]
        if self.from_scratch and spec.family == "end-to-end" and self.init is None:
            weights = [WeightsProvenance("model", "scratch", "random initialisation (--from-scratch)")]
        sp = self.splits[task]
        input_opts = dict(r.inputs)
        config = {
            "dataset": dataset, "task": task, "method": spec.name, "fold": k, "family": spec.family,
            "variant": unit.variant, "variant_settings": v.settings,
            "split": {"hash": sp.hash, "seed": sp.seed, "n_folds": sp.n_folds, **({"name": sp.name} if sp.name else {})},
            "labels": self.labels(task), "slides": self.slides(task),
            "mpp_override": self.cohort.spec.mpp_override,
            "inputs": {**fi.identity, **input_opts},
            "model": r.resolved_model(), "train": train_cfg,
            "weights": [w.to_dict() for w in weights], "init": self.init_id,
            "protocol": r.protocol.name, "numerics_version": NUMERICS_VERSION,
        }
        if unit.repeat:  # repeat 0 keeps the identity (and digest) of a unit run without --repeats
            config["repeat"] = unit.repeat
        if tuned_info is not None:
            config["tuned"] = {k2: tuned_info.get(k2) for k2 in ("params", "value", "metric", "study_name",
                                                                 "n_trials", "inner_folds")}
        return UnitPlan(unit, spec, v, recipe, train_cfg, input_opts, key, config, digest(config),
                        config.get("tuned"), non_default(r, train_cfg))


def training_seed(seed: int, method: str, task: str, fold: int, repeat: int = 0) -> int:
    """The training seed of a unit (model initialisation, data order, dropout): a hash of the split
    seed, method, task and fold, and for a repeat r > 0 of ``--repeats`` also of ``repeat<r>``. So
    repeat 0 trains exactly as a run without repeats, every repeat gets its own seed, and the split
    (made from the split seed alone) stays the same."""
    return unit_seed(seed, method, task, fold) if not repeat else unit_seed(seed, method, task, fold, f"repeat{repeat}")


def non_default(r: UnitRecipe, train_cfg: dict[str, Any]) -> dict[str, Any]:
    """What differs from the method's defaults under its preset (the table notes it on the row; the
    preset itself is named by the protocol mark)."""
    spec, proto = r.spec, r.protocol
    base_train = {**TrainConfig().to_dict(), **method_defaults(spec), **proto.train_options(spec.family)}
    preset_model = proto.model_options(spec.name, spec.family)
    return {**{k: v for k, v in r.model.items() if preset_model.get(k, object()) != v},
            **{k: v for k, v in r.inputs.items() if not (k == "magnification" and spec.magnification == v)},
            **{k: v for k, v in train_cfg.items() if k != "seed" and base_train.get(k) != v}}


def check_tuned_protocol(tuned_info: dict[str, Any], protocol: str, unit: Unit) -> None:
    """``run --tuned`` trains the recipe the study searched: the tuned values of another protocol
    preset were found for another network or training recipe. (A ``best.json`` without a protocol was
    written when ``bench tune`` searched the default preset.)"""
    tuned_under = tuned_info.get("protocol") or DEFAULT_PROTOCOL
    if tuned_under != protocol:
        raise OptionError(f"its tuned parameters were searched under protocol {tuned_under!r}, this run "
                          f"uses {protocol!r}: rerun `python -m bench tune --method {unit.method} --dataset "
                          f"{unit.dataset} --task {unit.task} --protocol {protocol}` (or run with --protocol "
                          f"{tuned_under})")
