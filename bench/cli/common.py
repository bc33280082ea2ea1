"""Options and helpers several subcommands share."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger("bench")

PREFERRED_DATASET = "blca"  # the paper ran its ablations on BLCA


class Formatter(argparse.RawDescriptionHelpFormatter):
    pass


def add_paths(p: argparse.ArgumentParser) -> None:
    p.add_argument("--results", type=Path, default=Path(os.environ.get("BENCH_RESULTS", "results")),
                   help="results root (env BENCH_RESULTS; default %(default)s)")
    p.add_argument("--cache", type=Path, default=Path(os.environ.get("BENCH_CACHE", "cache")),
                   help="feature/slide cache root (env BENCH_CACHE; default %(default)s)")


def add_dataset(p: argparse.ArgumentParser, required: bool = False) -> None:
    p.add_argument("--dataset", required=required,
                   help="dataset name (configs/datasets/<name>.yaml). Default: blca if its data is "
                        "present under $BENCH_DATA, else the built-in demo cohort")


def resolve_dataset(name: str | None, preferred: str = PREFERRED_DATASET) -> str:
    if name:
        return name
    from ..datasets import DatasetError, find_slides, load_spec

    try:
        spec = load_spec(preferred)
        if spec.path(spec.clinical).is_file():
            find_slides(spec)
            log.info("no --dataset given: using %s (its data is present)", preferred)
            return preferred
    except DatasetError:
        pass
    log.info("no --dataset given and %s data is not present: using the demo cohort", preferred)
    return "demo"


def parse_sets(items: list[str] | None) -> dict[str, Any]:
    """``--set lr=1e-4 --set epochs=5`` → {"lr": 1e-4, "epochs": 5} (values parsed as YAML scalars)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"--set expects key=value, got {item!r}")
        k, v = item.split("=", 1)
        val = yaml.safe_load(v)
        if isinstance(val, str):  # YAML 1.1 reads 1e-4 (no dot) as a string; users mean a number
            try:
                val = int(val) if val.lstrip("+-").isdigit() else float(val)
            except ValueError:
                pass
        out[k.strip()] = val
    return out


def parse_int_list(s: str | None) -> list[int] | None:
    if s is None:
        return None
    try:
        return [int(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"expected a comma list of integers, got {s!r}") from None
