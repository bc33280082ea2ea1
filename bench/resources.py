"""Where the YAML configs come from: the one resolver every part reads them through.

Two places, looked up in this order (a method config of the overlay is merged over the shipped
file of the same name key by key, see :func:`config_layers`; a file of any other kind replaces the
shipped one of its name):

1. the **user overlay**: ``$BENCH_CONFIG`` when set, else ``./configs`` when that directory exists
   in the working directory. It has the shipped layout: ``<overlay>/datasets/<name>.yaml``,
   ``<overlay>/methods/``, ``<overlay>/ablations/``, ``<overlay>/tuning/``, ``<overlay>/encoders/``; any may be
   missing. A user's own cohort is one file, ``configs/datasets/mycohort.yaml``.
2. the **shipped configs**, ``bench/configs/<kind>/`` inside the installed package (package data,
   read with :mod:`importlib.resources`, so a wheel works as well as a checkout).

Imports nothing beyond the standard library, so ``bench ls`` and ``--help`` stay cheap.
"""

from __future__ import annotations

import difflib
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
        return check_overlay(path)
    return check_overlay(DEFAULT_OVERLAY) if DEFAULT_OVERLAY.is_dir() else None


# overlay folders that hold data tables rather than YAML configs, and the suffix of their files
DATA_FOLDERS = {"published": ".csv"}  # bench table --published SOURCE (bench/report/published.py)


def check_overlay(path: Path) -> Path:
    """Every folder of the overlay is a config kind and every file in one ends in ``.yaml``: a
    ``method/`` folder or a ``mil.yml`` file would otherwise be ignored without a word."""
    for entry in sorted(path.iterdir()):
        if entry.name.startswith("."):
            continue
        folders = (*KINDS, *DATA_FOLDERS)
        if entry.is_dir() and entry.name not in folders:
            close = difflib.get_close_matches(entry.name, folders, n=1)
            raise ConfigError(f"{entry}: the config overlay has no folder {entry.name!r}"
                              f"{f' (did you mean {close[0]!r}?)' if close else ''}; its folders are "
                              f"{', '.join(folders)}. Fix: rename or remove it")
        if entry.is_dir():
            suffix = DATA_FOLDERS.get(entry.name, SUFFIX)
            for f in sorted(entry.iterdir()):
                if f.is_file() and not f.name.startswith(".") and f.suffix != suffix:
                    raise ConfigError(f"{f}: files in {entry.name}/ end in {suffix}, so this one would be ignored. "
                                      f"Fix: rename it to {f.stem}{suffix}" if f.suffix.lower() in (".yml", ".yaml", ".csv")
                                      else f"{f}: files in {entry.name}/ end in {suffix}, so this one would be "
                                      f"ignored. Fix: remove it from {entry}")
    return path


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


def config_layers(kind: str, name: str) -> list[Path | Traversable]:
    """The files config ``name`` of ``kind`` is read from, in the order they apply: the shipped one,
    then the overlay's. Method configs are merged over these key by key (the overlay's
    ``train: {lr: 1e-3}`` changes lr and keeps the shipped file's other training options)."""
    _check_kind(kind)
    shipped = _as_path(shipped_dir(kind).joinpath(f"{name}{SUFFIX}"))
    overlay = overlay_dir()
    mine = overlay / kind / f"{name}{SUFFIX}" if overlay is not None else None
    return [p for p in (shipped, mine) if p is not None and p.is_file()]


def overlay_files() -> list[tuple[Path, str]]:
    """The overlay's config files and how each is used (``merged over`` / ``replaces`` the shipped
    file of its name, or ``adds``), for ``bench ls``."""
    overlay = overlay_dir()
    out = []
    for kind in KINDS if overlay is not None else ():
        for p in sorted((overlay / kind).glob(f"*{SUFFIX}")) if (overlay / kind).is_dir() else ():
            shipped = shipped_dir(kind).joinpath(p.name).is_file()
            out.append((p, ("merged over" if kind == "methods" else "replaces") + " the shipped one" if shipped
                        else "adds"))
    return out


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


SETTINGS_FILE = "settings.yaml"
SETTINGS_KEYS = ("tracker", "tracker_uri")


def read_settings() -> dict[str, str]:
    """The overlay's ``settings.yaml`` (command defaults such as ``tracker: mlflow``), or ``{}``.
    Unknown keys are an error naming the file."""
    overlay = overlay_dir()
    path = overlay / SETTINGS_FILE if overlay is not None else None
    if path is None or not path.is_file():
        return {}
    import yaml

    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings ({', '.join(SETTINGS_KEYS)}), got a "
                          f"{type(data).__name__}")
    unknown = sorted(set(data) - set(SETTINGS_KEYS))
    if unknown:
        close = difflib.get_close_matches(unknown[0], SETTINGS_KEYS, n=1)
        raise ConfigError(f"{path}: unknown setting {unknown[0]!r}{f' (did you mean {close[0]!r}?)' if close else ''}; "
                          f"known: {', '.join(SETTINGS_KEYS)}")
    return {k: str(v) for k, v in data.items() if v is not None}
