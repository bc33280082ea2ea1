"""Public pre-extracted features as a dataset's input: TRIDENT/CLAM-format releases, one ``.h5``
per slide named by its full barcode (``TCGA-05-4244-01Z-00-DX1.<UUID>.h5``), under per-project
folders, with ``features`` (N, D) and level-0 ``coords`` (N, 2).

A dataset YAML declares them per encoder name -- the name two-stage methods consume
(``abmil.resnet50`` reads ``resnet50``)::

    features:
      resnet50: {path: features/TCGA-LUAD, encoder: resnet50, patch_size: 256, magnification: 20}

``encoder`` is the release's own name for its encoder (checked against a file's ``encoder``
attribute where present), ``patch_size`` and ``magnification`` are checked against the files'
``patch_size`` / ``target_magnification`` attributes where present, and the feature dim against
the encoder the methods expect. The name may be one no encoder declaration has (``uni_v2``
features from TRIDENT without the weights, or any other release): its dim then comes from the
files (and from the optional ``dim:``, which every file must match), and ``abmil.<name>``,
``linear.<name>``, ... read it; tables mark those rows as from a release. Those methods then read the files in place: no slide, no
weights, no re-extraction. Without a slide folder the cohort is the set of feature files
(:func:`cohort_slides`), filtered by the same TCGA sample rule as slides.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from .clinical import DatasetError
from .schema import ConfigError, Source, check_keys, check_type, did_you_mean
from .slides import slide_table

if TYPE_CHECKING:
    from feature_cache.importer import PreExtracted

KEYS = ("path", "encoder", "patch_size", "magnification")
OPTIONAL = ("dim",)  # the release's feature width: checked against every file (and a declaration)


def validate_features(features: dict[str, Any], src: Source) -> None:
    import re

    from ..registry import ENCODERS

    for name, decl in features.items():
        w = src.where(f"features.{name}")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.+-]*", str(name)) or "." in str(name):
            raise ConfigError(f"{w}: {name!r} cannot name an encoder (letters, digits, _ + -; no dots: "
                              f"`abmil.<name>` reads it){did_you_mean(str(name), ENCODERS)}")
        check_keys(decl, KEYS + OPTIONAL, w)
        if "dim" in decl and check_type(decl["dim"], int, src.where(f"features.{name}.dim")) <= 0:
            raise ConfigError(f"{src.where(f'features.{name}.dim')} must be > 0")
        for key in KEYS:
            if key not in decl:
                raise ConfigError(f"{w}: `{key}` is required ({', '.join(KEYS)}: the folder, the encoder that "
                                  "made the release, its patch size in px and magnification)")
        check_type(decl["path"], str, src.where(f"features.{name}.path"))
        check_type(decl["encoder"], str, src.where(f"features.{name}.encoder"))
        if check_type(decl["patch_size"], int, src.where(f"features.{name}.patch_size")) <= 0:
            raise ConfigError(f"{src.where(f'features.{name}.patch_size')} must be > 0")
        if not 0 < check_type(decl["magnification"], float, src.where(f"features.{name}.magnification")) <= 100:
            raise ConfigError(f"{src.where(f'features.{name}.magnification')} must be in (0, 100]")


def _file_dim(path: Path) -> int:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            shape = f["features"].shape
    except (OSError, KeyError) as err:
        raise DatasetError(f"{path}: cannot read its `features` dataset ({err}). Fix: use the release's "
                           "per-slide .h5 files (TRIDENT/CLAM layout: features (N, D), coords (N, 2))") from None
    return int(shape[-1])


def _release_dim(spec: Any, name: str, files: dict[str, Path]) -> int:
    """The feature width: a declared encoder's dim, else the files' (the first, sorted, file; every
    file is checked against it when read), equal to ``dim:`` when the dataset gives one."""
    from ..encoders import encoder_table, register_release

    decl = spec.features[name]
    where = f"dataset {spec.name!r}: features.{name}"
    known = encoder_table().get(name)
    first = files[sorted(files)[0]]
    dim = known.dim if known is not None and not known.release else _file_dim(first)
    if "dim" in decl and int(decl["dim"]) != dim:
        what = f"the {name} declaration" if known is not None and not known.release else str(first)
        raise DatasetError(f"{where}: dim {decl['dim']} declared, but {what} has {dim}-d features. Fix: "
                           f"correct `dim:` or point `path:` at the release made with {decl['encoder']}")
    if known is None or known.release:
        register_release(name, dim, where, str(decl["encoder"]))
    return dim


def _release(spec: Any, name: str) -> "PreExtracted":
    from feature_cache.importer import PreExtracted, ReleaseEncoder, release_files

    decl = spec.features[name]
    root = spec.path(decl["path"])
    if not root.is_dir():
        raise DatasetError(f"dataset {spec.name!r}: features.{name}.path {root} is not a directory. Fix: download "
                          "the release's per-slide .h5 files there, or correct the path (relative paths "
                          "resolve against $BENCH_DATA and the dataset's root)")
    files = release_files(root)
    if not files:
        raise DatasetError(f"dataset {spec.name!r}: no .h5 files under {root} (features.{name}). Fix: point "
                          "`path:` at the folder holding the release's <slide barcode>.h5 files")
    listing = sorted((sid, p.stat().st_size, p.stat().st_mtime_ns) for sid, p in files.items())
    key = {"encoder": decl["encoder"], "patch_size": int(decl["patch_size"]),
           "magnification": float(decl["magnification"]), "root": str(root.resolve()), "files": listing}
    fp = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    enc = ReleaseEncoder(name=name, dim=_release_dim(spec, name, files), patch_size=int(decl["patch_size"]),
                         magnification=float(decl["magnification"]), release=str(decl["encoder"]),
                         fingerprint=fp, source=str(root))
    return PreExtracted(root, enc, files)


_RELEASES: dict[tuple[str, str, str], "PreExtracted"] = {}


def pre_extracted(spec: Any, encoder_name: str) -> "PreExtracted | None":
    """The release declared for ``encoder_name`` in the dataset (None: extract from slides).
    Its ``.encoder`` stands for the encoder and the object itself for the feature cache."""
    if encoder_name not in (spec.features or {}):
        return None
    key = (spec.name, encoder_name, json.dumps(spec.features[encoder_name], sort_keys=True, default=str))
    if key not in _RELEASES:
        _RELEASES[key] = _release(spec, encoder_name)
    return _RELEASES[key]


def register_releases(spec: Any) -> None:
    """Make the dataset's releases under undeclared names consumable (``abmil.<name>``) before
    methods are resolved; a release whose folder is missing is reported when it is read."""
    for name in spec.features or {}:
        try:
            pre_extracted(spec, name)
        except DatasetError:
            continue


def cohort_slides(spec: Any) -> pd.DataFrame:
    """``slide_id, slide_path`` from the feature files (no slide folder): the union over the
    declared releases, filtered by the dataset's TCGA slide filter like slides are."""
    files: dict[str, Path] = {}
    for name in spec.features:
        files.update({s: p for s, p in _release(spec, name).files.items() if s not in files})
    return slide_table(files, spec.filter)
