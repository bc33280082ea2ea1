"""The patch encoders two-stage methods can consume, as data.

Two sources, one table:

* **declarations**: ``configs/encoders/<name>.yaml``, shipped in ``bench/configs/encoders/`` and the
  user's in the config overlay's ``encoders/`` (an overlay file wins over a shipped one of the same
  name). Each is turned into a ``feature_cache`` encoder spec (:func:`ensure_registered`), so
  ``abmil.<name>`` extracts its features -- no Python written.
* **feature releases** a dataset declares under a name no declaration has (``features: {myenc:
  ...}``): the dim comes from the files (:func:`register_release`); they are read, never built.

Reading the table parses YAML only (no torch), so ``bench ls encoders`` stays instant.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .resources import ConfigError, config_paths, overlay_dir

KIND = "encoders"
# the encoders of the paper's Table 2: `--methods all` / `paper` cross the aggregators with these
PAPER_ENCODERS = ("resnet50", "conch", "gigapath")


@dataclass(frozen=True)
class EncoderInfo:
    """What the harness shows and checks about an encoder without building it."""

    name: str
    dim: int
    label: str
    backbone: str
    params: str  # the tables' Params column ("25M")
    group: str  # the tables' row-group line: the encoder's pretraining
    source: str  # citation (declaration) or the release folder
    declared_in: str  # the YAML file, or "release:<dataset>"
    weights_env: str = ""
    license: str = ""
    gated: bool = False
    release: bool = False  # features only exist as a release a dataset declares
    decl: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def as_row(self) -> dict[str, Any]:
        """The legacy per-encoder mapping the runner and tables read."""
        return {"dim": self.dim, "label": self.label, "backbone": self.backbone, "params": self.params,
                "group": self.group}

    def __getitem__(self, key: str) -> Any:
        return self.as_row()[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.as_row().get(key, default)


def _load_yaml(path: Any) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"{path}: unreadable encoder declaration ({err}). Fix: valid YAML, see docs/encoders.md")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: an encoder declaration is a mapping (see docs/encoders.md)")
    return data


def _info(name: str, path: Any, d: dict[str, Any]) -> EncoderInfo:
    name = str(d.get("name") or name)
    if not isinstance(d.get("dim"), int):
        raise ConfigError(f"{path}: `dim` (the encoder's output width, an integer) is required")
    label = str(d.get("label") or name)
    weights = d.get("weights") or {}
    return EncoderInfo(
        name=name, dim=int(d["dim"]), label=label, backbone=str(d.get("architecture") or ""),
        params=str(d.get("params") or ""),
        group=str(d.get("pretraining") or f"Two-stage MIL; patch features: {label}"),
        source=str(d.get("source") or ""), declared_in=str(path),
        weights_env=str(weights.get("env") or f"BENCH_WEIGHTS_{name.upper().replace('-', '_').replace('.', '_')}"),
        license=str(d.get("license") or ""), gated=bool(d.get("gated")), decl=d)


_CACHE: dict[tuple, dict[str, EncoderInfo]] = {}
_RELEASES: dict[str, EncoderInfo] = {}


def _declarations() -> dict[str, EncoderInfo]:
    paths = config_paths(KIND)
    key = (str(overlay_dir()), tuple((str(p), Path(str(p)).stat().st_mtime_ns if Path(str(p)).exists() else 0)
                                     for p in paths))
    if key not in _CACHE:
        table: dict[str, EncoderInfo] = {}
        for p in paths:
            info = _info(Path(str(p)).stem, p, _load_yaml(p))
            table[info.name] = info
        _CACHE.clear()
        _CACHE[key] = table
    return _CACHE[key]


def encoder_table() -> dict[str, EncoderInfo]:
    """Every encoder by name: declarations first, then the releases datasets declared."""
    table = dict(_declarations())
    for name, info in _RELEASES.items():
        table.setdefault(name, info)
    return table


def register_release(name: str, dim: int, where: str, release: str) -> EncoderInfo:
    """Make a dataset's feature release under an undeclared ``name`` consumable (``abmil.<name>``)."""
    known = _RELEASES.get(name)
    if known is not None and known.dim != dim:
        raise ConfigError(f"{where}: features.{name} has {dim}-d features, but another release under that "
                          f"name has {known.dim}-d ({known.source}). Fix: give the releases different names")
    info = EncoderInfo(name=name, dim=dim, label=name, backbone="", params="",
                       group=f"Two-stage MIL; patch features: {name} (feature release {release})",
                       source=where, declared_in=f"release:{where}", release=True)
    _RELEASES[name] = info
    return info


class EncoderTable(Mapping):
    """``ENCODERS[name]`` -> the encoder's row; reads the declarations when first used."""

    def __getitem__(self, name: str) -> EncoderInfo:
        return encoder_table()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(encoder_table())

    def __len__(self) -> int:
        return len(encoder_table())


def ensure_registered(names: Any = None) -> None:
    """Turn the declarations (of ``names``, default all) into ``feature_cache`` encoder specs; a
    changed declaration (the overlay's file) replaces the registered spec."""
    from feature_cache.encoders.base import list_encoders, register_encoder, registered_spec, unregister_encoder
    from feature_cache.encoders.declared import DeclarationError, spec_from_declaration

    declared = _declarations()
    if names is None:  # a declaration gone from the overlay is gone from the registry
        for name in list_encoders():
            spec = registered_spec(name)
            if spec is not None and "declaration" in spec.extra and name not in declared:
                unregister_encoder(name)
    for name, info in declared.items():
        if names is not None and name not in names:
            continue
        known = registered_spec(name)
        content = json.dumps(info.decl, sort_keys=True, default=str)  # the declaration as read now
        if known is not None and known.extra.get("declared_in") == info.declared_in \
                and known.extra.get("declaration") == content:
            continue
        try:
            spec = spec_from_declaration(info.decl, name, info.declared_in)
        except DeclarationError as err:
            raise ConfigError(str(err)) from None
        spec.extra["declaration"] = content
        register_encoder(spec, replace=True)


def weights_found(info: EncoderInfo) -> str:
    """Where this encoder's weights would come from now ("" when nowhere), without torch."""
    import os

    if info.release:
        return "release"
    if os.environ.get(info.weights_env):
        return f"${info.weights_env}"
    from feature_cache.weights import find_weights

    ensure_registered([info.name])
    from feature_cache.encoders.base import registered_spec

    try:
        source, _kind, how = find_weights(None, registered_spec(info.name).weights_source())
    except Exception:  # noqa: BLE001 -- a listing never fails on one encoder's weights
        return ""
    return how if source is not None else ""
