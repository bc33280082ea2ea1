"""Encoders declared as data: a YAML mapping becomes an :class:`EncoderSpec` without Python.

A declaration says how to build the network (``builder.kind``: ``timm`` architecture + kwargs,
``open_clip`` model, ``torchvision`` model, Hugging Face ``hf`` config class, or ``python``
``"module:attr"`` for bespoke towers), what it eats (input size, resize, interpolation, mean/std),
what it emits (``output``: ``cls``, ``mean`` of patch tokens, ``cls+mean``, or ``pooled`` = the
network's own output) and its ``dim``, its precision on CUDA, where the official weights live
(environment variable, hub files, key maps) and the license / gating note and source citation.
The schema is documented in docs/encoders.md.

Importing this module does not import torch; building an encoder does.
"""

from __future__ import annotations

import functools
import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from feature_cache.encoders.base import EncoderSpec
from feature_cache.weights import KeyMap

if TYPE_CHECKING:
    import torch

KINDS = ("timm", "open_clip", "torchvision", "hf", "python")
OUTPUTS = ("cls", "mean", "cls+mean", "pooled")
PRECISIONS = ("fp32", "fp16", "bf16")
REQUIRED = ("dim", "builder", "input_size", "mean", "std", "output", "source")
OPTIONAL = ("name", "label", "architecture", "params", "parameters", "pretraining", "patch_size", "magnification",
            "resize_size", "interpolation", "precision", "precision_fallback", "weights", "license",
            "gated", "standin", "description")
WEIGHT_KEYS = ("env", "hub", "torch_hub", "download", "files", "keymaps", "official", "sha256",
               "fingerprint_by")
KEYMAP_KEYS = ("name", "container", "renames", "drop", "init_only", "defaults")


class DeclarationError(ValueError):
    """An encoder declaration is unusable; the message names the file, the key and the fix."""


def _import(target: str, where: str) -> Any:
    module, _, attr = str(target).partition(":")
    try:
        obj = importlib.import_module(module)
        for part in attr.split(".") if attr else ():
            obj = getattr(obj, part)
        return obj
    except (ImportError, AttributeError) as err:
        raise DeclarationError(f"{where}: cannot import {target!r} ({err}). Fix: name an importable "
                               "'module:attribute'") from None


def _resolve_refs(value: Any, where: str) -> Any:
    """kwargs values ``{import: "module:attr"}`` become the object (timm's ``mlp_layer``)."""
    if isinstance(value, Mapping):
        if set(value) == {"import"}:
            return _import(value["import"], where)
        return {k: _resolve_refs(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve_refs(v, where) for v in value]
    return value


class TokenOutput:
    """Factory for the module that turns a token model into one vector per patch (``output``)."""

    @staticmethod
    def wrap(body: "torch.nn.Module", mode: str) -> "torch.nn.Module":
        import torch

        class Tokens(torch.nn.Module):
            """``cls``: the class token; ``mean``: the mean of the patch tokens (register and class
            tokens excluded); ``cls+mean``: both concatenated (Virchow's embedding)."""

            def __init__(self) -> None:
                super().__init__()
                self.body = body
                self.mode = mode
                self.prefix = int(getattr(body, "num_prefix_tokens", 1))

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                tokens = _tokens(self.body, x)  # (B, prefix + h*w, D)
                cls = tokens[:, 0]  # (B, D)
                mean = tokens[:, self.prefix:].mean(dim=1)  # (B, D)
                if self.mode == "cls":
                    return cls
                if self.mode == "mean":
                    return mean
                return torch.cat([cls, mean], dim=-1)  # (B, 2D)

        return Tokens()


def _tokens(body: Any, x: "torch.Tensor") -> "torch.Tensor":
    if hasattr(body, "forward_features"):  # timm
        return body.forward_features(x)
    out = body(pixel_values=x)  # Hugging Face
    return out.last_hidden_state


def _build_timm(arch: str, kwargs: dict[str, Any]) -> "torch.nn.Module":
    import timm

    return timm.create_model(arch, pretrained=False, **kwargs)


def _build_open_clip(arch: str, kwargs: dict[str, Any]) -> "torch.nn.Module":
    import open_clip

    return open_clip.create_model(arch, pretrained=None, **kwargs).visual


def _build_torchvision(arch: str, kwargs: dict[str, Any]) -> "torch.nn.Module":
    import torchvision

    return torchvision.models.get_model(arch, weights=None, **kwargs)


def _build_hf(arch: str, kwargs: dict[str, Any], config: dict[str, Any]) -> "torch.nn.Module":
    try:
        import transformers
    except ImportError:
        raise DeclarationError(f"builder kind 'hf' ({arch}) needs Hugging Face transformers. Fix: "
                               "pip install 'wsi-bench[hf]'") from None
    model_cls = getattr(transformers, arch)
    return model_cls(model_cls.config_class(**config), **kwargs)


def _build(kind: str, arch: str, kwargs: dict[str, Any], config: dict[str, Any], output: str,
           where: str) -> "torch.nn.Module":
    kwargs = _resolve_refs(kwargs, f"{where}.builder.kwargs")
    if kind == "timm":
        body = _build_timm(arch, kwargs)
    elif kind == "open_clip":
        body = _build_open_clip(arch, kwargs)
    elif kind == "torchvision":
        body = _build_torchvision(arch, kwargs)
    elif kind == "hf":
        body = _build_hf(arch, kwargs, config)
    else:
        body = _import(arch, f"{where}.builder.target")(**kwargs)
    return body if output == "pooled" else TokenOutput.wrap(body, output)


def _builder(decl: Mapping[str, Any], where: str, output: str) -> Callable[[], "torch.nn.Module"]:
    b = decl
    if not isinstance(b, Mapping) or b.get("kind") not in KINDS:
        raise DeclarationError(f"{where}: builder.kind must be one of {', '.join(KINDS)}; got "
                               f"{(b or {}).get('kind') if isinstance(b, Mapping) else b!r}")
    kind = b["kind"]
    arch = b.get("target" if kind == "python" else "arch")
    if not isinstance(arch, str) or not arch:
        key = "target ('module:attr')" if kind == "python" else "arch"
        raise DeclarationError(f"{where}: builder.{key} is required for kind {kind!r}")
    extra = set(b) - {"kind", "arch", "target", "kwargs", "config"}
    if extra:
        raise DeclarationError(f"{where}: unknown builder keys {sorted(extra)}; known: kind, arch, target, "
                               "kwargs, config")
    return functools.partial(_build, kind, arch, dict(b.get("kwargs") or {}), dict(b.get("config") or {}),
                             output, where)


def _keymap(d: Mapping[str, Any], where: str, prefix: str) -> KeyMap:
    unknown = set(d) - set(KEYMAP_KEYS)
    if unknown:
        raise DeclarationError(f"{where}: unknown key-map keys {sorted(unknown)}; known: {', '.join(KEYMAP_KEYS)}")
    renames = tuple((str(a), str(b)) for a, b in d.get("renames") or ())
    if prefix:  # the output wrapper holds the network as `body`
        renames = renames + ((r"^", prefix),)
    return KeyMap(name=str(d.get("name") or "official"), container=tuple(d.get("container") or ("",)),
                  renames=renames, drop=tuple(d.get("drop") or ()), init_only=tuple(d.get("init_only") or ()),
                  defaults=tuple((str(a), int(b)) for a, b in d.get("defaults") or ()))


def _triple(value: Any, where: str) -> tuple[float, float, float]:
    if not (isinstance(value, (list, tuple)) and len(value) == 3
            and all(isinstance(v, (int, float)) for v in value)):
        raise DeclarationError(f"{where} must be a list of 3 numbers (R, G, B); got {value!r}")
    return (float(value[0]), float(value[1]), float(value[2]))


def _check(decl: Mapping[str, Any], where: str) -> None:
    if not isinstance(decl, Mapping):
        raise DeclarationError(f"{where}: an encoder declaration is a mapping; got {type(decl).__name__}")
    unknown = set(decl) - set(REQUIRED) - set(OPTIONAL)
    if unknown:
        raise DeclarationError(f"{where}: unknown keys {sorted(unknown)}; known: "
                               f"{', '.join(REQUIRED + OPTIONAL)} (docs/encoders.md)")
    missing = [k for k in REQUIRED if k not in decl]
    if missing:
        raise DeclarationError(f"{where}: missing {', '.join(missing)} (docs/encoders.md lists every key)")
    if decl["output"] not in OUTPUTS:
        raise DeclarationError(f"{where}: output must be one of {', '.join(OUTPUTS)}; got {decl['output']!r}")
    for key in ("precision", "precision_fallback"):
        if decl.get(key, "fp32") not in PRECISIONS:
            raise DeclarationError(f"{where}: {key} must be one of {', '.join(PRECISIONS)}; got {decl[key]!r}")
    if not isinstance(decl["dim"], int) or decl["dim"] <= 0:
        raise DeclarationError(f"{where}: dim must be a positive integer; got {decl['dim']!r}")
    unknown_w = set(decl.get("weights") or {}) - set(WEIGHT_KEYS)
    if unknown_w:
        raise DeclarationError(f"{where}: unknown weights keys {sorted(unknown_w)}; known: {', '.join(WEIGHT_KEYS)}")


def spec_from_declaration(decl: Mapping[str, Any], name: str, where: str) -> EncoderSpec:
    """The :class:`EncoderSpec` of one declaration; ``where`` (the file) prefixes every error."""
    _check(decl, where)
    name = str(decl.get("name") or name)
    output = decl["output"]
    prefix = "" if output == "pooled" else "body."
    w = dict(decl.get("weights") or {})
    keymaps = tuple(_keymap(k, f"{where}: weights.keymaps", prefix) for k in w.get("keymaps") or ())
    if not keymaps:
        keymaps = (_keymap({"name": f"{name} official"}, where, prefix),)
    standin = decl.get("standin") or {}
    hub = tuple((str(r), str(f)) for r, f in w.get("hub") or ())
    download = w.get("download")
    extra = {k: decl[k] for k in ("label", "architecture", "params", "parameters", "pretraining", "license", "source",
                                  "gated", "output") if k in decl}
    extra["declared_in"] = where
    extra["files"] = tuple(w.get("files") or ())
    return EncoderSpec(
        name=name, dim=int(decl["dim"]), patch_size=int(decl.get("patch_size", 256)),
        magnification=float(decl.get("magnification", 20.0)), input_size=int(decl["input_size"]),
        mean=_triple(decl["mean"], f"{where}: mean"), std=_triple(decl["std"], f"{where}: std"),
        build=_builder(decl["builder"], where, output),
        weights_env=str(w.get("env") or f"BENCH_WEIGHTS_{name.upper().replace('-', '_').replace('.', '_')}"),
        hub_files=hub, torch_hub_files=tuple(w.get("torch_hub") or ()),
        download=(str(download[0]), str(download[1])) if download else None,
        resize_size=decl.get("resize_size"), interpolation=str(decl.get("interpolation", "bilinear")),
        precision_cuda=str(decl.get("precision", "bf16")),
        precision_cuda_fallback=str(decl.get("precision_fallback", "fp32")),
        fingerprint_by=str(w.get("fingerprint_by", "values")), keymaps=keymaps,
        official=str(w.get("official", "")), published_sha256=dict(w.get("sha256") or {}),
        description=str(decl.get("description") or decl.get("label") or name), extra=extra,
        standin_build=_builder(standin["builder"], f"{where}: standin", standin.get("output", output))
        if standin else None,
        standin_arch=str(standin.get("arch", "")) if standin else "",
    )


def load_declaration(path: str | Path) -> EncoderSpec:
    """Read one YAML declaration file (``safe_load``); the encoder's name is the file's stem
    unless the file sets ``name``."""
    import yaml

    path = Path(path)
    try:
        decl = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise DeclarationError(f"{path}: unreadable encoder declaration ({err}). Fix: valid YAML, see "
                               "docs/encoders.md") from None
    return spec_from_declaration(decl, path.stem, str(path))
