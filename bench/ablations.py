"""Ablation grids (configs/ablations/*.yaml): an ablation value is a variant of a method that shares
the splits and the results store with every other run."""

from __future__ import annotations

from typing import Any

import yaml

from .datasets import CONFIG_DIR


def list_ablations() -> list[dict[str, Any]]:
    out = []
    for p in sorted((CONFIG_DIR / "ablations").glob("*.yaml")):
        with open(p) as f:
            d = yaml.safe_load(f) or {}
        d.setdefault("name", p.stem)
        out.append(d)
    return out


def get_ablation(name: str) -> dict[str, Any]:
    for a in list_ablations():
        if a["name"] == name:
            return a
    raise KeyError(f"unknown ablation {name!r}; known: {', '.join(a['name'] for a in list_ablations())}")
