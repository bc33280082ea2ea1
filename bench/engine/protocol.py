"""Protocol presets: every open protocol choice as a named option, set together by one name.

``wsi-bench`` (the default) keeps this project's corrections; ``paper`` reads the Pixel-Mamba
paper where it speaks and the original implementations' defaults where it says "default
settings". The presets are data (``bench/configs/protocols/<name>.yaml``) with a dataset's shape:
``train`` by ``all`` / family, ``model`` by family / method glob, ``report`` for the tables.
docs/protocol.md lists each choice, the sentence it interprets and its effect.

Which preset a unit uses: ``bench run --protocol`` > the dataset YAML's ``protocol:`` > the
method config's ``protocol:`` > ``wsi-bench``. Its name is written into the unit's config, so
units of different protocols never share a config hash (or, for tables that check, a row).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..resources import config_path, list_configs

DEFAULT = "wsi-bench"


class ProtocolError(ValueError):
    """An unknown or malformed protocol preset."""


@dataclass(frozen=True)
class Protocol:
    name: str
    description: str = ""
    train: dict[str, dict[str, Any]] = field(default_factory=dict)
    model: dict[str, dict[str, Any]] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)

    def train_options(self, family: str) -> dict[str, Any]:
        """Training options of a method family: ``all`` first, then the family's."""
        return {**self.train.get("all", {}), **self.train.get(family, {})}

    def model_options(self, name: str, family: str) -> dict[str, Any]:
        """Model options of a method: its family's, then every matching method glob's."""
        opts = dict(self.model.get(family, {}))
        for key, val in self.model.items():
            if key != family and fnmatch.fnmatchcase(name, key):
                opts.update(val)
        return opts


def list_protocols() -> list[str]:
    return list_configs("protocols")


def load_protocol(name: str | None = None) -> Protocol:
    name = name or DEFAULT
    path = config_path("protocols", name)
    if not path.is_file():
        raise ProtocolError(f"unknown protocol {name!r}; protocols are {', '.join(list_protocols())}")
    from ..data.schema import ConfigError, load_yaml

    try:
        data = dict(load_yaml(Path(str(path)), "protocol preset").data)
    except ConfigError as exc:
        raise ProtocolError(str(exc)) from None
    known = {"description", "train", "model", "report"}
    if set(data) - known:
        raise ProtocolError(f"{path}: unknown keys {sorted(set(data) - known)}; allowed: {sorted(known)}")
    return Protocol(name, **data)


def resolve_protocol(cli: str | None = None, dataset: str | None = None, method: str | None = None) -> str:
    """The preset's name: the CLI's, else the dataset YAML's, else the method config's, else the default."""
    name = cli or dataset or method or DEFAULT
    load_protocol(name)  # fails here, naming the known presets
    return name
