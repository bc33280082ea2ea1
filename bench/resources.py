"""Where the YAML configs come from: the one resolver every part reads them through.

Two places, looked up in this order (a file in the first wins over a file of the same name in the
second; files are not merged):

1. the **user overlay**: ``$BENCH_CONFIG`` when set, else ``./configs`` when that directory exists
   in the working directory. It has the shipped layout: ``<overlay>/datasets/<name>.yaml``,
   ``<overlay>/methods/``, ``<overlay>/ablations/``, ``<overlay>/tuning/``, ``<overlay>/encoders/``; any may be
   missing. A user's own cohort is one file, ``configs/datasets/mycohort.yaml``.
2. the **shipped configs**, ``bench/configs/<kind>/`` inside the installed package (package data,
   read with :mod:`importlib.resources`, so a wheel works as well as a checkout).

Imports nothing beyond the standard library, so ``bench ls`` and ``--help`` stay cheap.
"""

from __future__ import annotations

import os
from importlib import resources
from importlib.abc import Traversable
from pathlib import Path

KINDS = ("datasets", "methods", "ablations", "tuning", "protocols", "encoders")
ENV = "BENCH_CONFIG"
DEFAULT_OVERLAY = Path("configs")
SUFFIX = ".yaml"


class ConfigError(ValueError):
    """The overlay directory or a config kind is unusable; the message says what to fix."""


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ConfigError(f"unknown config kind {kind!r}; known: {', '.join(KINDS)}")


def overlay_dir() -> Path | None:
    """The user's config directory: ``$BENCH_CONFIG`` (must exist when set), else ``./configs`` if it
    exists, else None."""
    env = os.environ.get(ENV)
    if env:
        path = Path(env).expanduser()
        if not path.is_dir():
            raise ConfigError(f"${ENV}={env} is not a directory; create it (with datasets/, methods/, "
                              f"ablations/ or tuning/ inside) or unset {ENV}")
        return path
    return DEFAULT_OVERLAY if DEFAULT_OVERLAY.is_dir() else None


def shipped_dir(kind: str) -> Traversable:
    """``bench/configs/<kind>`` of the installed package."""
    _check_kind(kind)
    return resources.files("bench").joinpath("configs", kind)


def _as_path(t: Traversable) -> Path | Traversable:
    # an installed wheel or a checkout gives real paths; a zipped package gives a Traversable
    return Path(os.fspath(t)) if isinstance(t, os.PathLike) else t


def config_path(kind: str, name: str) -> Path | Traversable:
    """The file of config ``name`` of ``kind`` (``"datasets"``, ``"methods"``, ``"ablations"``,
    ``"tuning"``): the overlay's if it has one, else the shipped one. When neither exists the
    shipped location is returned (``.is_file()`` is False), so callers keep one existence check."""
    _check_kind(kind)
    overlay = overlay_dir()
    if overlay is not None:
        candidate = overlay / kind / f"{name}{SUFFIX}"
        if candidate.is_file():
            return candidate
    return _as_path(shipped_dir(kind).joinpath(f"{name}{SUFFIX}"))


def list_configs(kind: str) -> list[str]:
    """Names (file stems) of every config of ``kind``, shipped and overlay together, sorted."""
    _check_kind(kind)
    names = set()
    shipped = shipped_dir(kind)
    if shipped.is_dir():
        names.update(t.name[: -len(SUFFIX)] for t in shipped.iterdir() if t.name.endswith(SUFFIX) and t.is_file())
    overlay = overlay_dir()
    if overlay is not None and (overlay / kind).is_dir():
        names.update(p.stem for p in (overlay / kind).glob(f"*{SUFFIX}") if p.is_file())
    return sorted(names)


def config_paths(kind: str) -> list[Path | Traversable]:
    """The file of every config of ``kind`` (as :func:`config_path` resolves each name), by name."""
    return [config_path(kind, n) for n in list_configs(kind)]
