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

if TYPE_CHECKING:  # torch is imported only when a model is built, so `bench ls` stays instant
    import torch

# Encoders the two-stage rows are crossed with. Dimensions are those of the public models
# (REFERENCE.md); the feature_cache registry owns how they are built.
ENCODERS: dict[str, dict[str, Any]] = {
    "resnet50": {"dim": 1024, "label": "ResNet-50", "backbone": "ResNet-50", "params": "25M",
                 "group": "Two-stage MIL; patch features: ResNet-50 (ImageNet)"},
    "conch": {"dim": 512, "label": "CONCH", "backbone": "ViT-B", "params": "86M",
              "group": "Two-stage MIL; patch features: VL-FM (CONCH)"},
    "gigapath": {"dim": 1536, "label": "GigaPath", "backbone": "ViT-G", "params": "1.1G",
                 "group": "Two-stage MIL; patch features: V-FM (GigaPath)"},
}
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

    @property
    def feature_dim(self) -> int | None:
        return ENCODERS[self.encoder]["dim"] if self.encoder else None

    @property
    def cache_encoder(self) -> str | None:
        """The patch encoder whose cached outputs this method reads."""
        return self.source or self.encoder


_METHODS: dict[str, MethodSpec] = {}


def register(spec: MethodSpec) -> MethodSpec:
    if spec.name in _METHODS:
        raise ValueError(f"method {spec.name!r} is registered twice")
    if spec.family not in ("two-stage", "end-to-end"):
        raise ValueError(f"method {spec.name!r}: unknown family {spec.family!r}")
    _METHODS[spec.name] = spec
    return spec


def register_aggregator(aggregator: str, label: str, builder: str, config: str = "mil",
                        encoders: Iterable[str] = tuple(ENCODERS), **kwargs: Any) -> None:
    """Register ``<aggregator>.<encoder>`` for every encoder."""
    for enc in encoders:
        register(MethodSpec(name=f"{aggregator}.{enc}", family="two-stage", builder=builder,
                            label=label, encoder=enc, input="features", config=config,
                            kwargs=dict(kwargs), group=ENCODERS[enc]["group"]))


def list_methods(pattern: str = "*") -> list[MethodSpec]:
    """Specs whose name matches a glob, in registration order."""
    return [s for n, s in _METHODS.items() if fnmatch.fnmatchcase(n, pattern)]


def get_method(name: str) -> MethodSpec:
    try:
        return _METHODS[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(_METHODS), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise KeyError(f"unknown method {name!r}.{hint} `python -m bench ls methods` lists them.") from None


def resolve_methods(expr: str) -> list[MethodSpec]:
    """``all``, a comma list, and globs (``'abmil.*'``, ``'*.gigapath'``), de-duplicated in order."""
    out: list[MethodSpec] = []
    for part in [p.strip() for p in expr.split(",") if p.strip()]:
        if part == "all":
            found = list_methods("*")
        elif any(ch in part for ch in "*?["):
            found = list_methods(part)
            if not found:
                raise KeyError(f"--methods {part!r} matches no method; `python -m bench ls methods` lists them.")
        else:
            found = [get_method(part)]
        out.extend(s for s in found if s not in out)
    if not out:
        raise KeyError("--methods names no method")
    return out


def _import(target: str) -> Callable[..., "torch.nn.Module"]:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def build_model(name: str, n_out: int, **overrides: Any) -> "torch.nn.Module":
    """Build a registered method's network mapping one slide's input to ``n_out`` logits."""
    spec = get_method(name)
    kwargs = {**spec.kwargs, **overrides}
    if spec.input == "features":
        kwargs.setdefault("in_dim", spec.feature_dim)
    return _import(spec.builder)(n_out=n_out, **kwargs)


def count_parameters(model: "torch.nn.Module") -> int:
    return sum(p.numel() for p in model.parameters())


def count_trainable_parameters(model: "torch.nn.Module") -> int:
    """Parameters that train (``requires_grad``): a frozen stage (HIPT's ViT-4K, the Prov-GigaPath
    slide encoder) is the difference to :func:`count_parameters`."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# --- the methods -------------------------------------------------------------------------------
register_aggregator("meanmil", "MeanMIL", "baselines.mil.pooling:MeanMIL")
register_aggregator("maxmil", "MaxMIL", "baselines.mil.pooling:MaxMIL")
register_aggregator("abmil", "ABMIL", "baselines.mil.abmil:ABMIL")
register_aggregator("transmil", "TransMIL", "baselines.mil.transmil:TransMIL")
register_aggregator("ilra", "ILRA-MIL", "baselines.mil.ilra:ILRA")
register_aggregator("mambamil", "MambaMIL", "baselines.mil.mambamil:MambaMIL")

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
