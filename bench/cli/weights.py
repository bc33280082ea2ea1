"""``bench weights``: for every method, which published weights each pretrained part would load,
from where, with which fingerprint -- or what is missing, the exact file to fetch, where it comes
from and where to put it. A report: exits 0 when files are missing. Reads local files only (the
Hugging Face cache offline; nothing is downloaded) and imports no deep-learning library."""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from typing import Any

from .common import Formatter

EPILOG = """examples:
  python -m bench weights --methods all
  python -m bench weights --methods 'abmil.*,hipt,prov-gigapath-*' --json
  python -m bench weights --methods abmil.resnet50 --check   # also load each file into its model
See docs/weights.md for every component's source, file, environment variable and key mapping.
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("weights", help="which published weights each method loads, and what is missing",
                       epilog=EPILOG, formatter_class=Formatter)
    p.add_argument("--methods", default="all", help="all, a comma list, or globs (default %(default)s)")
    p.add_argument("--json", action="store_true", help="one JSON object per method instead of text")
    p.add_argument("--check", action="store_true",
                   help="also load every file found into its model (imports torch; builds each model once), "
                        "which finds tensors of the wrong shape; without it, files are checked without loading")
    p.set_defaults(func=main)


@dataclass
class Part:
    """One pretrained part of one method, resolved."""

    part: str
    component: str
    status: str  # "found" | "unloadable" | "missing" | "invalid" | "none published"
    path: str | None = None
    how: str = ""
    sha256: str | None = None
    layouts: tuple[str, ...] = ()
    fetch: str = ""  # missing: the exact file name(s)
    official: str = ""
    put: str = ""  # missing: where to put it
    published_sha256: str | None = None
    note: str = ""


def _parts(spec: Any) -> list[tuple[str, Any]]:
    """(label, WeightsSource or None) for a method's pretrained parts, from the registry's data."""
    from baselines.weights import source_for_builder
    from feature_cache.encoders import encoder_spec

    from ..encoders import encoder_table, ensure_registered

    parts: list[tuple[str, Any]] = []
    if spec.cache_encoder and not encoder_table()[spec.cache_encoder].release:  # a release has no weights
        ensure_registered([spec.cache_encoder])
        parts.append((f"patch encoder {spec.cache_encoder}", encoder_spec(spec.cache_encoder).weights_source()))
    second = source_for_builder(spec.builder, spec.kwargs)
    if second is not None:
        parts.append(("second stage" if spec.family == "two-stage" else "initialisation (--init)", second))
    elif spec.family == "end-to-end":
        parts.append(("initialisation (--init)", None))
    return parts


def _resolve(label: str, source: Any) -> Part:
    from feature_cache.weights import WeightsError, file_sha256, find_weights, hub_cache_path

    if source is None:
        return Part(label, "", "none published",
                    note="no published checkpoint fits this model; `python -m bench pretrain` writes one "
                         "(<out>/last.pt, docs/weights.md) for `bench run --init`")
    layouts = tuple(k.name for k in source.keymaps)
    try:
        path, _, how = find_weights(None, source)
    except WeightsError as err:
        return Part(label, source.component, "invalid", note=str(err), layouts=layouts)
    if path is not None:
        from feature_cache.checkpoint_scan import scan_checkpoint

        known = source.sha256.get(path.name)
        if (why := scan_checkpoint(path)) is not None:
            return Part(label, source.component, "unloadable", path=str(path), how=how, layouts=layouts,
                        official=source.official, note=why)
        return Part(label, source.component, "found", path=str(path), how=how, sha256=file_sha256(path),
                    layouts=layouts, official=source.official, published_sha256=known, note=source.note)
    places = [f"${source.env}=/path/to/{source.files[0]}"]
    places += [hub_cache_path(repo, name) for repo, name in source.hub]
    gated = " (gated: accept its terms on the hub and set HF_TOKEN)" if source.gated else ""
    return Part(label, source.component, "missing", fetch=" or ".join(source.files), layouts=layouts,
                official=source.official + gated, put=" or ".join(places),
                published_sha256=next(iter(source.sha256.values()), None), note=source.note)


def main(args: argparse.Namespace) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a report: never reach for the network
    from ..registry import resolve_methods

    seen: dict[str, Part] = {}
    out = []
    for spec in resolve_methods(args.methods):
        rows = []
        for label, source in _parts(spec):
            key = f"{label}|{getattr(source, 'component', '')}"
            if key not in seen:
                seen[key] = _resolve(label, source)
                if args.check and seen[key].status == "found":
                    _load_check(spec, seen[key])
            rows.append(seen[key])
        out.append((spec.name, rows))
    code = 1 if any(r.status == "unloadable" for r in seen.values()) else 0
    if args.json:
        for name, rows in out:
            print(json.dumps({"method": name, "parts": [vars(r) for r in rows]}))
        return code
    for name, rows in out:
        print(name)
        if not rows:
            print("  no pretrained part")
        for r in rows:
            if r.status == "found":
                check = ("" if r.published_sha256 is None or not r.sha256 else
                         "  (matches the published sha256)" if r.sha256.startswith(r.published_sha256.rstrip("…"))
                         else f"  (DIFFERS from the published sha256 {r.published_sha256})")
                use = (f"\n      not loaded by itself: `python -m bench run --init {r.path}`"
                       if r.part.startswith("initialisation") else "")
                print(f"  {r.part}: {r.component}: found {r.path} ({r.how})\n"
                      f"      sha256 {r.sha256}{check}; layouts: {', '.join(r.layouts)}{use}")
            elif r.status == "missing":
                print(f"  {r.part}: {r.component}: MISSING {r.fetch}\n      from: {r.official}\n"
                      f"      put it at: {r.put}" + (f"\n      note: {r.note}" if r.note else ""))
            elif r.status == "unloadable":
                print(f"  {r.part}: {r.component}: CANNOT LOAD {r.path} ({r.how}): {r.note}")
            elif r.status == "invalid":
                print(f"  {r.part}: {r.component}: INVALID: {r.note}")
            else:
                print(f"  {r.part}: {r.note}")
    published = [r for r in seen.values() if r.status != "none published"]
    found = sum(r.status == "found" for r in published)
    print(f"{found} of {len(published)} published parts found{' and loaded' if args.check else ''}; missing ones "
          "fall back to random weights only on datasets that allow it (marked in every table)")
    bad = [r for r in published if r.status == "unloadable"]
    if bad:
        print(f"error: {len(bad)} file(s) found cannot load: " + "; ".join(f"{r.path}: {r.note}" for r in bad),
              file=sys.stderr)
    return code


def _load_check(spec: Any, part: Part) -> None:
    """``--check``: load ``part``'s file into its model as a run would; a failure makes it unloadable."""
    import importlib
    import inspect

    from ..registry import build_model

    try:
        if part.part.startswith("patch encoder"):
            from feature_cache import get_encoder

            get_encoder(spec.cache_encoder, weights=part.path, device="cpu")
        elif part.part.startswith("initialisation"):
            from ..engine.pretrain import load_init

            load_init(build_model(spec.name, 4), part.path)
        else:  # a hierarchical row's second stage: its builder takes the file as a keyword
            module, attr = spec.builder.split(":")
            params = inspect.signature(getattr(importlib.import_module(module), attr)).parameters
            build_model(spec.name, 4, **{"weights_4k" if "weights_4k" in params else "weights": part.path})
    except Exception as err:  # noqa: BLE001 -- any failure to load is the report's answer
        part.status, part.note = "unloadable", f"loading it into {spec.name} failed: {type(err).__name__}: {err}"
