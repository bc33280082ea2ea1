"""One registry for every method the benchmark compares.

Entries are registered as data (name, family, what the method consumes, a lazy ``"module:attr"``
builder), so ``python -m bench ls`` lists everything without importing torch-heavy or CUDA-only
modules. Two-stage names are ``<aggregator>.<encoder>``; end-to-end names stand alone.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable

from .encoders import PAPER_ENCODERS, EncoderTable, ensure_registered
from .resources import ConfigError

if TYPE_CHECKING:  # torch is imported only when a model is built, so `bench ls` stays instant
    import torch

# Encoders the two-stage rows are crossed with: the declarations in configs/encoders/ (dim, label,
# backbone, Params column, the pretraining line of the table group) and undeclared feature releases
# datasets name (bench/encoders.py). The paper's grid crosses the aggregators with PAPER_ENCODERS.
ENCODERS = EncoderTable()
# Parameters of the feature_cache encoders that the hierarchical rows read (their frozen first
# stage, which Table 2's Params column counts: "24M + 2.2M", "1.2G + 6.1K"). Kept here so tables
# need not build a 1.1G-parameter network; tests compare them with the built encoders.
SOURCE_PARAMS: dict[str, int] = {"hipt-vit256": 21_665_664, "gigapath": 1_134_953_984}


@dataclass(frozen=True)
class MethodSpec:
    """What the harness needs to know about a method before building it."""

    name: str
    family: str  # "two-stage" | "end-to-end"
    builder: str  # "module:attr", imported only when the model is built
    label: str  # display name in tables, e.g. "ABMIL"
    encoder: str | None = None  # two-stage: which cached features it consumes (and its table group)
    # "features": a bag (N, D); "tiles": Bag(features, grid coords); "region_features": HIPT's regions;
    # "slide": the whole slide image
    input: str = "features"
    source: str | None = None  # hierarchical rows: the feature_cache encoder whose outputs they read
    magnification: float | None = None  # end-to-end: slide magnification it reads
    config: str | None = None  # configs/methods/<config>.yaml holds its training defaults
    kwargs: dict[str, Any] = field(default_factory=dict)
    needs_cuda: bool = False
    group: str = ""  # row group in tables
    backbone: str = ""  # end-to-end: the network family shown in the tables' Backbone column
    # end-to-end: the model takes raw uint8 RGB and normalises it itself (a slide held as 3 bytes
    # per pixel instead of 12: part of Pixel-Mamba's memory budget, docs/pixelmamba.md)
    raw_rgb: bool = False
    tasks: tuple[str, ...] = ()  # the tasks it is defined for (empty: every task); runs skip the others

    @property
    def feature_dim(self) -> int | None:
        return ENCODERS[self.encoder].dim if self.encoder else None

    def defined_for(self, task: str) -> bool:
        """A method restricted to some tasks (``linear.*``: classification; ``coxnet.*``: survival) has
        no units for the others."""
        return not self.tasks or task in self.tasks

    @property
    def cache_encoder(self) -> str | None:
        """The patch encoder whose cached outputs this method reads."""
        return self.source or self.encoder


METHODS: dict[str, MethodSpec] = {}
# aggregator name -> (label, builder, config, kwargs): crossed with any encoder on demand
_AGGREGATORS: dict[str, tuple[str, str, str, dict[str, Any], tuple[str, ...]]] = {}
_CROSSED: dict[str, MethodSpec] = {}  # `<aggregator>.<encoder>` outside the paper grid, built on demand
# named method sets `--methods` accepts besides globs and names
SETS = {"all": "the paper's grid (Table 2's methods: aggregators x resnet50, conch, gigapath; "
               "hierarchical; end-to-end)",
        "paper": "the same as all",
        "all-encoders": "the paper's grid plus every aggregator and pooled-embedding baseline over every "
                        "declared encoder and feature release"}


def register(spec: MethodSpec) -> MethodSpec:
    if spec.name in METHODS:
        raise ValueError(f"method {spec.name!r} is registered twice")
    if spec.family not in ("two-stage", "end-to-end"):
        raise ValueError(f"method {spec.name!r}: unknown family {spec.family!r}")
    METHODS[spec.name] = spec
    return spec


def _crossed(aggregator: str, encoder: str) -> MethodSpec:
    label, builder, config, kwargs, tasks = _AGGREGATORS[aggregator]
    return MethodSpec(name=f"{aggregator}.{encoder}", family="two-stage", builder=builder, label=label,
                      encoder=encoder, input="features", config=config, kwargs=dict(kwargs), tasks=tasks)


def register_aggregator(aggregator: str, label: str, builder: str, config: str = "mil",
                        encoders: Iterable[str] = PAPER_ENCODERS, tasks: tuple[str, ...] = (),
                        **kwargs: Any) -> None:
    """Register ``<aggregator>.<encoder>`` for the paper's encoders; any other declared encoder
    (or feature release) is crossed on demand by :func:`get_method`."""
    _AGGREGATORS[aggregator] = (label, builder, config, dict(kwargs), tuple(tasks))
    for enc in encoders:
        register(_crossed(aggregator, enc))


def aggregators() -> list[str]:
    return list(_AGGREGATORS)


def _every_crossed() -> list[MethodSpec]:
    """Every aggregator over every encoder outside the paper grid (registration order)."""
    out = []
    for agg in _AGGREGATORS:
        for enc in ENCODERS:
            name = f"{agg}.{enc}"
            if name not in METHODS:
                out.append(_CROSSED.setdefault(name, _crossed(agg, enc)))
    return out


def list_methods(pattern: str = "*") -> list[MethodSpec]:
    """Specs whose name matches a glob, in registration order."""
    return [s for n, s in METHODS.items() if fnmatch.fnmatchcase(n, pattern)]


def get_method(name: str) -> MethodSpec:
    if name in METHODS:
        return METHODS[name]
    aggregator, _, encoder = name.partition(".")
    if aggregator in _AGGREGATORS and encoder in ENCODERS:  # any aggregator over any encoder
        return _CROSSED.setdefault(name, _crossed(aggregator, encoder))
    known = list(METHODS) + [f"{a}.{e}" for a in _AGGREGATORS for e in ENCODERS]
    close = difflib.get_close_matches(name, known, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise KeyError(f"unknown method {name!r}.{hint} `python -m bench ls methods` lists them; "
                   "`python -m bench ls encoders` lists the encoders an aggregator can read.")


def resolve_methods(expr: str) -> list[MethodSpec]:
    """Named sets (:data:`SETS`: ``all`` = ``paper``, ``all-encoders``), a comma list, and globs,
    de-duplicated in order. A glob matches the paper grid (``'abmil.*'``: its three rows); one that
    matches nothing there matches every aggregator over every declared encoder (``'*.virchow2'``)."""
    out: list[MethodSpec] = []
    for part in [p.strip() for p in expr.split(",") if p.strip()]:
        if part in ("all", "paper"):
            found = list_methods("*")
        elif part == "all-encoders":
            found = list_methods("*") + _every_crossed()
        elif any(ch in part for ch in "*?["):
            found = list_methods(part) or [s for s in _every_crossed() if fnmatch.fnmatchcase(s.name, part)]
            if not found:
                raise KeyError(f"--methods {part!r} matches no method; `python -m bench ls methods` lists them.")
        else:
            found = [get_method(part)]
        out.extend(s for s in found if s not in out)
    if not out:
        raise KeyError("--methods names no method")
    return out


def import_target(target: str) -> Callable[..., "torch.nn.Module"]:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def build_model(name: str, n_out: int, **overrides: Any) -> "torch.nn.Module":
    """Build a registered method's network mapping one slide's input to ``n_out`` logits."""
    spec = get_method(name)
    kwargs = {**spec.kwargs, **overrides}
    if spec.input == "features":
        kwargs.setdefault("in_dim", spec.feature_dim)
    return import_target(spec.builder)(n_out=n_out, **kwargs)


def count_parameters(model: "torch.nn.Module") -> int:
    return sum(p.numel() for p in model.parameters())


def count_trainable_parameters(model: "torch.nn.Module") -> int:
    """Parameters that train (``requires_grad``): a frozen stage (HIPT's ViT-4K, the Prov-GigaPath
    slide encoder) is the difference to :func:`count_parameters`."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# --- the methods -------------------------------------------------------------------------------
try:  # the declared encoders become feature_cache specs (overlay files are re-read where used)
    ensure_registered()
except ConfigError:
    pass  # a broken overlay declaration is reported, with its file, by the command that reads it
register_aggregator("meanmil", "MeanMIL", "baselines.mil.pooling:MeanMIL")
register_aggregator("maxmil", "MaxMIL", "baselines.mil.pooling:MaxMIL")
register_aggregator("abmil", "ABMIL", "baselines.mil.abmil:ABMIL")
register_aggregator("transmil", "TransMIL", "baselines.mil.transmil:TransMIL")
register_aggregator("ilra", "ILRA-MIL", "baselines.mil.ilra:ILRA")
register_aggregator("mambamil", "MambaMIL", "baselines.mil.mambamil:MambaMIL")
# pooled-embedding baselines (Patho-Bench's floor): outside the paper's grid, crossed by name
# (`linear.uni_v2`, `coxnet.*`) and in `all-encoders`
register_aggregator("linear", "Linear probe (mean-pooled)", "baselines.pooled:LinearProbe", config="pooled",
                    encoders=(), tasks=("staging", "classification"))
register_aggregator("coxnet", "CoxNet (mean-pooled)", "baselines.pooled:CoxNetProbe", config="pooled",
                    encoders=(), tasks=("survival",))

# Hierarchical rows (Table 2, "Two-stage hierarchical representation"): a frozen first stage whose
# outputs are cached, then a pretrained second stage (ViT-4K / LongNet slide encoder) and a head.
HIERARCHICAL = "Two-stage hierarchical representation"
register(MethodSpec(name="hipt", family="two-stage", builder="baselines.hipt:HIPT", label="HIPT",
                    input="region_features", source="hipt-vit256", config="hierarchical", group=HIERARCHICAL,
                    backbone="HIPT-ViT-6"))
for _variant, _label in (("cls", "Prov-GigaPath (CLS token)"), ("feat", "Prov-GigaPath (feature)")):
    register(MethodSpec(name=f"prov-gigapath-{_variant}", family="two-stage",
                        builder="baselines.prov_gigapath:ProvGigaPath", label=_label, input="tiles",
                        source="gigapath", config="hierarchical", kwargs={"variant": _variant}, group=HIERARCHICAL,
                        backbone="ViT-LongNet"))


def register_end_to_end(name: str, label: str, builder: str, backbone: str, magnification: float = 2.5,
                        raw_rgb: bool = False, **kwargs: Any) -> None:
    register(MethodSpec(name=name, family="end-to-end", builder=builder, label=label, input="slide",
                        magnification=magnification, config="end_to_end", kwargs=kwargs, group="End-to-end",
                        backbone=backbone, raw_rgb=raw_rgb))


# End-to-end rows: the whole slide at 2.5x (the paper's setting), ImageNet-style initialisation.
register_end_to_end("longvit-s", "LongViT", "baselines.longvit:longvit_s", "ViT-S")
register_end_to_end("vim-ti", "Vision Mamba (16)", "baselines.vim:vim_ti", "Vim-Ti", patch_size=16)
register_end_to_end("vim-ti-32", "Vision Mamba (32)", "baselines.vim:vim_ti", "Vim-Ti", patch_size=32)
register_end_to_end("vim-ti-16+32", "Vision Mamba (16+32)", "baselines.vim:vim_ti_multiscale", "Vim-Ti")
register_end_to_end("pixelmamba-6m", "Pixel-Mamba-6M", "bench.engine.models:pixelmamba", "Pixel-Mamba",
                    raw_rgb=True, variant="pixelmamba-6m")
register_end_to_end("pixelmamba-21m", "Pixel-Mamba-21M", "bench.engine.models:pixelmamba", "Pixel-Mamba",
                    raw_rgb=True, variant="pixelmamba-21m")
