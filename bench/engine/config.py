"""A unit's options, resolved once: the network's (``model``), what it consumes (``inputs``) and how
it trains (``train``), each from CLI > variant > tuned values > dataset > method config > defaults,
and validated before anything is trained or any finished unit is touched."""

from __future__ import annotations

import fnmatch
import hashlib
import inspect
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable


from ..data.datasets import Cohort
from ..data.schema import ConfigError, check_keys, load_yaml
from ..registry import MethodSpec, import_target, get_method
from ..resources import config_layers
from .protocol import Protocol, load_protocol, resolve_protocol
from .train import TrainConfig

# options that choose a method's inputs, not its network: never passed to the model's builder
INPUT_OPTIONS = ("magnification", "regions")


class OptionError(ValueError):
    """An option has a value no unit can train with; the message names the option and the fix."""


@dataclass(frozen=True)
class Variant:
    """A method with settings of its own, stored as ``<method>/<name>/`` beside the method's plain runs
    (an ablation value, e.g. ``pixelmamba-6m`` with ``alpha=0.4``). ``name=None`` is the method itself."""

    spec: MethodSpec
    name: str | None = None
    model: dict[str, Any] = field(default_factory=dict)  # network options it sets
    train: dict[str, Any] = field(default_factory=dict)  # training options it sets
    inputs: dict[str, Any] = field(default_factory=dict)  # input options it sets (magnification, regions)

    def __post_init__(self) -> None:
        moved = {k: self.model[k] for k in INPUT_OPTIONS if k in self.model}
        if moved:  # an input option given among the model's: it belongs to the inputs
            object.__setattr__(self, "model", {k: v for k, v in self.model.items() if k not in moved})
            object.__setattr__(self, "inputs", {**self.inputs, **moved})

    def __hash__(self) -> int:
        return hash((self.spec.name, self.name))

    @property
    def settings(self) -> dict[str, Any]:
        return {"model": dict(self.model), "inputs": dict(self.inputs), "train": dict(self.train)}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the method by its registered name, the variant's name and settings."""
        return {"method": self.spec.name, "name": self.name, **self.settings}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Variant":
        from ..registry import get_method

        return cls(get_method(d["method"]), d.get("name"), dict(d.get("model") or {}), dict(d.get("train") or {}),
                   dict(d.get("inputs") or {}))


def grid_variants(items: Iterable[Any]) -> list[Variant]:
    """The method variants that run an ablation's rows (``bench.ablations.GridItem``: a method, or a
    value of its swept setting)."""
    return [Variant(get_method(i.method), i.variant, dict(i.model)) for i in items]


def unit_seed(seed: int, *parts: Any) -> int:
    h = hashlib.sha256("|".join(map(str, (seed, *parts))).encode()).hexdigest()
    return int(h[:8], 16)


METHOD_CONFIG_KEYS = ("train", "protocol")


def method_config(spec: MethodSpec) -> dict[str, Any]:
    """configs/methods/<config>.yaml of a method ({} without one): the shipped file with the overlay's
    file of the same name merged over it key by key (one level down: ``train: {lr: ...}`` changes lr
    only). Unknown keys are an error naming the file and line."""
    out: dict[str, Any] = {}
    for path in config_layers("methods", spec.config) if spec.config else []:
        try:
            src = load_yaml(Path(str(path)), "method config")
            check_keys(src.data, METHOD_CONFIG_KEYS, str(path))
        except ConfigError as exc:
            raise OptionError(str(exc)) from None
        for key, val in src.data.items():
            if isinstance(val, dict) and isinstance(out.get(key), dict):
                out[key] = {**out[key], **val}
            else:
                out[key] = val
    return out


def method_defaults(spec: MethodSpec) -> dict[str, Any]:
    """The method config's ``train:`` section."""
    return dict(method_config(spec).get("train", {}))


def protocol_of(spec: MethodSpec, cohort: Cohort, cli: str | None = None) -> Protocol:
    """The preset a unit runs under: ``--protocol`` > the dataset YAML's > the method config's > wsi-bench."""
    return load_protocol(resolve_protocol(cli, getattr(cohort.spec, "protocol", None),
                                          method_config(spec).get("protocol")))


def method_train_config(spec: MethodSpec, overrides: dict[str, Any] | None = None,
                        dataset_train: dict[str, dict[str, Any]] | None = None,
                        protocol: Protocol | None = None) -> dict[str, Any]:
    """Training options: CLI overrides > the dataset's per-family options > the protocol preset's >
    configs/methods/<config>.yaml > TrainConfig defaults; validated (:func:`check_train_options`)."""
    cfg = method_defaults(spec)
    cfg.update((protocol or load_protocol(None)).train_options(spec.family))
    cfg.update((dataset_train or {}).get(spec.family, {}))
    cfg.update(overrides or {})
    return check_train_options(cfg)


# (option, predicate, what it must be) — checked before any unit trains
_TRAIN_RULES: tuple[tuple[str, Any, str], ...] = (
    ("epochs", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1, "an integer >= 1"),
    ("grad_accum", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1, "an integer >= 1"),
    ("lr", lambda v: _number(v) and v > 0 and math.isfinite(v), "a number > 0"),
    ("weight_decay", lambda v: _number(v) and v >= 0, "a number >= 0"),
    ("warmup_epochs", lambda v: _number(v) and v >= 0, "a number >= 0"),
    ("max_patches", lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= 1),
     "an integer >= 1, or null for whole bags"),
    ("grad_clip", lambda v: v is None or (_number(v) and v > 0), "a number > 0, or null for none"),
    ("val_fraction", lambda v: _number(v) and 0 < v < 1, "a number in (0, 1)"),
    ("patience", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1, "an integer >= 1"),
    ("min_epochs", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, "an integer >= 0"),
    ("seed", lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def check_train_options(cfg: dict[str, Any]) -> dict[str, Any]:
    """``cfg`` completed with TrainConfig's defaults, every option type- and range-checked with the
    option named (``epochs=2.5`` or ``grad_accum=0`` fail here, not mid-training)."""
    try:
        check_keys(cfg, sorted(f.name for f in fields(TrainConfig)), "training options (--set / train:)")
    except ConfigError as exc:
        raise OptionError(str(exc)) from None
    full = {**TrainConfig().to_dict(), **cfg}
    for name, ok, what in _TRAIN_RULES:
        if name in full and not ok(full[name]):
            raise OptionError(f"training option {name}={full[name]!r} must be {what} "
                              f"(set with --set {name}=... or the method/dataset YAML's train: section)")
    return TrainConfig.from_dict(full).to_dict()


def _scoped(section: dict[str, dict[str, Any]], spec: MethodSpec) -> dict[str, Any]:
    """A dataset section keyed by family, then by method name or glob (later keys win)."""
    opts = dict(section.get(spec.family, {}))
    for key, val in section.items():  # then method names / globs, e.g. "pixelmamba-*"
        if key != spec.family and fnmatch.fnmatchcase(spec.name, key):
            opts.update(val)
    return opts


def model_options(spec: MethodSpec, cohort: Cohort, overrides: dict[str, Any] | None = None,
                  protocol: Protocol | None = None) -> dict[str, Any]:
    """Network options: ``overrides`` (CLI --model, the variant's, tuned values) > the dataset's
    per-method-glob options > its per-family options (e.g. the demo's smaller scan window) > the
    protocol preset's (``protocol=None``: the default preset)."""
    opts = {**(protocol or load_protocol(None)).model_options(spec.name, spec.family), **_scoped(cohort.spec.model, spec)}
    misplaced = sorted(set(opts) & set(INPUT_OPTIONS))
    if misplaced:
        raise OptionError(f"dataset {cohort.spec.name!r}: {', '.join(misplaced)} under model: chooses the "
                          "method's inputs, not its network: move it to the dataset's inputs: section")
    return {**opts, **(overrides or {})}


def input_options(spec: MethodSpec, cohort: Cohort, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Input options (magnification, regions): overrides > the dataset's inputs: section > the
    method's registered magnification."""
    opts = _scoped(getattr(cohort.spec, "inputs", {}) or {}, spec)
    opts.update(overrides or {})
    unknown = sorted(set(opts) - set(INPUT_OPTIONS))
    if unknown:
        raise OptionError(f"unknown input option(s) {unknown} for {spec.name}; allowed: {list(INPUT_OPTIONS)}")
    if spec.input == "slide" and "regions" not in opts:
        opts.setdefault("magnification", float(spec.magnification or 2.5))
    if "magnification" in opts:
        m = opts["magnification"]
        if not _number(m) or not 0 < m <= 80:
            raise OptionError(f"input option magnification={m!r} must be a number in (0, 80]")
        opts["magnification"] = float(m)
    return opts


def resolved_model_options(spec: MethodSpec, options: dict[str, Any]) -> dict[str, Any]:
    """The network's options as built: the builder's keyword defaults, the registry's kwargs, then
    ``options`` — so a record says what the network was, not only what was changed."""
    try:
        sig = inspect.signature(import_target(spec.builder))
        defaults = {k: p.default for k, p in sig.parameters.items()
                    if p.default is not inspect.Parameter.empty and k not in ("n_out", "in_dim")
                    and _jsonable(p.default)}
    except (ImportError, AttributeError, TypeError, ValueError):
        defaults = {}
    return {**defaults, **spec.kwargs, **options}


def _jsonable(v: Any) -> bool:
    return v is None or isinstance(v, (bool, int, float, str)) or (
        isinstance(v, (list, tuple)) and all(_jsonable(x) for x in v))
