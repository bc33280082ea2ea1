"""The results store: one directory per unit of work, ``metrics.json`` written last.

    results/runs/<dataset>/<task>/<method>[/<variant>]/fold<k>/
        config.json       resolved config, its hash, split hash, code version, environment
        predictions.csv   one row per test case: labels and prediction / risk
        train_log.csv     one row per epoch
        metrics.json      written last and atomically: its presence is what "done" means

A rerun skips units whose ``metrics.json`` carries the same config hash and redoes the rest (a
unit whose config changed is moved aside to ``fold<k>.superseded-<hash>``, not deleted). Units are
claimed with an OS file lock (``flock`` through filelock), released by the kernel when a process
dies, so several workers — or a restarted one — can share one results directory.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
from filelock import FileLock, Timeout

from ..io import atomic_write_json, atomic_write_text, safe_name

log = logging.getLogger(__name__)


def config_hash(config: dict[str, Any]) -> str:
    blob = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def code_version() -> str:
    """git commit of the checkout (with ``+dirty``), else the package version."""
    root = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("wsi-bench")
        except PackageNotFoundError:
            return "unknown"


def environment() -> dict[str, str]:
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__,
            "cuda": str(torch.cuda.is_available()), "host": platform.node()}


@dataclass(frozen=True)
class Unit:
    dataset: str
    task: str
    method: str
    fold: int
    variant: str | None = None

    def __str__(self) -> str:
        v = f"[{self.variant}]" if self.variant else ""
        return f"{self.dataset}/{self.task}/{self.method}{v}/fold{self.fold}"


class ResultsStore:
    def __init__(self, root: Path | str = "results") -> None:
        self.root = Path(root)

    # --- layout ---------------------------------------------------------------------------
    def unit_dir(self, u: Unit) -> Path:
        d = self.root / "runs" / safe_name(u.dataset) / safe_name(u.task) / safe_name(u.method)
        if u.variant:
            d = d / safe_name(u.variant)
        return d / f"fold{int(u.fold)}"

    def summary_path(self, dataset: str) -> Path:
        return self.root / safe_name(dataset) / "summary.csv"

    # --- state ----------------------------------------------------------------------------
    def done_metrics(self, u: Unit, chash: str | None = None) -> dict[str, Any] | None:
        """The unit's metrics if it is done (and, when given, with this config hash)."""
        p = self.unit_dir(u) / "metrics.json"
        if not p.is_file():
            return None
        try:
            m = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError):
            log.warning("%s is unreadable; the unit will be redone", p)
            return None
        if chash is not None and m.get("config_hash") != chash:
            return None
        return m

    def lock(self, u: Unit) -> FileLock:
        d = self.unit_dir(u)
        d.parent.mkdir(parents=True, exist_ok=True)
        return FileLock(str(d.parent / f".{d.name}.lock"))

    def try_claim(self, u: Unit) -> FileLock | None:
        """The unit's lock if no other live process holds it, else None."""
        lk = self.lock(u)
        try:
            lk.acquire(timeout=0)
        except Timeout:
            return None
        return lk

    def prepare(self, u: Unit, config: dict[str, Any], chash: str, keep_previous: str | None = None) -> Path:
        """Start (or restart) a unit: keep a finished unit of another config aside (or of the same
        config, when ``keep_previous`` names why it is redone), clear partial files of an
        interrupted attempt, write ``config.json``."""
        d = self.unit_dir(u)
        old = self.done_metrics(u)
        if old is not None and (old.get("config_hash") != chash or keep_previous):
            tag = old.get("config_hash", "unknown") + (f"-{keep_previous}" if keep_previous else "")
            aside = d.with_name(f"{d.name}.superseded-{tag}")
            if aside.exists():
                shutil.rmtree(aside)
            os.replace(d, aside)
            log.info("%s: %s; previous result kept at %s", u,
                     "config changed" if not keep_previous else f"redone ({keep_previous})", aside)
        elif d.exists():
            for p in d.iterdir():  # leftovers of an interrupted attempt (no metrics.json)
                if p.is_file():
                    p.unlink()
        d.mkdir(parents=True, exist_ok=True)
        atomic_write_json(d / "config.json", {**config, "config_hash": chash, "code_version": code_version(),
                                             "environment": environment(), "started": time.time()})
        return d

    def finish(self, u: Unit, predictions: pd.DataFrame, train_log: pd.DataFrame, metrics: dict[str, Any]) -> None:
        d = self.unit_dir(u)
        atomic_write_text(d / "predictions.csv", predictions.to_csv(index=False))
        atomic_write_text(d / "train_log.csv", train_log.to_csv(index=False))
        atomic_write_json(d / "metrics.json", metrics)  # last: the done-marker

    def fail(self, u: Unit, message: str) -> None:
        atomic_write_json(self.unit_dir(u) / "error.json", {"error": message, "time": time.time()})

    # --- reading --------------------------------------------------------------------------
    def iter_metrics(self, dataset: str | None = None) -> Iterator[dict[str, Any]]:
        base = self.root / "runs"
        pattern = f"{safe_name(dataset)}/*/*/**/metrics.json" if dataset else "*/*/*/**/metrics.json"
        for p in sorted(base.glob(pattern)):
            if ".superseded-" in str(p):
                continue
            try:
                yield json.loads(p.read_text())
            except (OSError, json.JSONDecodeError):
                log.warning("skipping unreadable %s", p)

    def datasets(self) -> list[str]:
        base = self.root / "runs"
        return sorted(p.name for p in base.iterdir() if p.is_dir()) if base.is_dir() else []

    def predictions(self, dataset: str, task: str, method: str, variant: str | None = None) -> pd.DataFrame:
        """Out-of-fold predictions of every finished fold, concatenated."""
        parts = []
        for m in self.iter_metrics(dataset):
            if m["task"] == task and m["method"] == method and m.get("variant") == variant:
                u = Unit(dataset, task, method, m["fold"], variant)
                df = pd.read_csv(self.unit_dir(u) / "predictions.csv", dtype={"case_id": str})
                df["fold"] = m["fold"]
                parts.append(df)
        return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()

    def _input(self, m: dict[str, Any]) -> str:
        """What the unit consumed (``slide@2.5x``, ``features:conch``); results written before
        metrics.json carried it are read from their config.json."""
        if m.get("input"):
            return str(m["input"])
        try:
            u = Unit(m["dataset"], m["task"], m["method"], m["fold"], m.get("variant"))
            cfg = json.loads((self.unit_dir(u) / "config.json").read_text())
        except (OSError, KeyError, json.JSONDecodeError):
            return ""
        return str(cfg.get("input") or (f"features:{cfg['encoder']}" if cfg.get("encoder") else ""))

    def _trainable(self, m: dict[str, Any], memo: dict[str, int | None]) -> int | None:
        """Trainable parameters of a unit's model. Results written before metrics.json carried them
        are counted again for the hierarchical rows (the only ones with a frozen stage) by building
        the unit's model, with its config.json options, on the meta device (no memory, no weights)."""
        if m.get("trainable_params") is not None:
            return int(m["trainable_params"])
        from ..registry import _METHODS

        spec = _METHODS.get(m.get("method", ""))
        if spec is None or not spec.source or m.get("params") is None:
            return None
        try:
            u = Unit(m["dataset"], m["task"], m["method"], m["fold"], m.get("variant"))
            opts = json.loads((self.unit_dir(u) / "config.json").read_text()).get("model") or {}
        except (OSError, KeyError, json.JSONDecodeError):
            opts = {}
        key = spec.name + json.dumps(opts, sort_keys=True, default=str)
        if key not in memo:
            import torch

            from ..registry import build_model
            from ..engine.runner import INPUT_OPTIONS

            kwargs = {k: v for k, v in opts.items() if k not in INPUT_OPTIONS and not k.startswith("weights")}
            try:
                with torch.device("meta"):
                    model = build_model(spec.name, 4, **kwargs)
                memo[key] = sum(p.numel() for p in model.parameters() if not p.requires_grad)  # frozen
            except (TypeError, ValueError, RuntimeError, NotImplementedError) as e:  # e.g. an option
                # this code no longer knows: the table shows the total
                log.warning("cannot recount the trainable parameters of %s (%s)", spec.name, e)
                memo[key] = None
        frozen = memo[key]
        return None if frozen is None else int(m["params"]) - frozen

    def summarize(self, dataset: str, ddof: int = 0) -> pd.DataFrame:
        """Aggregate finished folds → one row per (method, variant, task, metric); writes summary.csv.

        ``ddof``: the ± over folds, 0 = population std (the default; the protocol presets'
        ``report.std_ddof``), 1 = sample std. The paper does not say which."""
        rows = list(self.iter_metrics(dataset))
        out = []
        key = lambda m: (m["method"], m.get("variant") or "", m["task"])  # noqa: E731
        groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
        frozen_memo: dict[str, int | None] = {}
        for m in rows:
            groups.setdefault(key(m), []).append(m)
        for (method, variant, task), ms in sorted(groups.items()):
            ms = sorted(ms, key=lambda m: m["fold"])
            first = ms[0]
            for metric in first["metrics"]:
                if metric == "undefined":
                    continue
                vals = [m["metrics"].get(metric, float("nan")) for m in ms]
                defined = [v for v in vals if v is not None and not np.isnan(v)]
                out.append({
                    "method": method, "variant": variant, "family": first["family"],
                    "encoder": first.get("encoder") or "", "label": first.get("label", method),
                    "params": first.get("params"), "trainable_params": self._trainable(first, frozen_memo),
                    "task": task, "metric": metric,
                    "primary": metric == first["primary_metric"],
                    "mean": float(np.mean(defined)) if defined else float("nan"),
                    # population std (ddof=0) by default: what CLAM-style scripts print (np.std)
                    "std": float(np.std(defined, ddof=ddof)) if len(defined) > ddof else float("nan"),
                    "std_ddof": ddof,
                    "n_folds": len(ms), "n_defined": len(defined), "expected_folds": first.get("n_folds", 5),
                    "folds": ";".join("nan" if v is None or np.isnan(v) else f"{v:.4f}" for v in vals),
                    "random_weights": any(m.get("random_weights") for m in ms),
                    "tuned": any(m.get("tuned") for m in ms),
                    "encoder_standin": next((m["encoder_standin"] for m in ms if m.get("encoder_standin")), ""),
                    "train_seconds": float(np.mean([m.get("train_seconds", np.nan) for m in ms])),
                    **_compute(ms), "input": self._input(first),
                })
        df = pd.DataFrame(out)
        if not df.empty:
            p = self.summary_path(dataset)
            p.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(p, df.to_csv(index=False))
        return df


def _compute(ms: list[dict[str, Any]]) -> dict[str, float]:
    """Compute accounting over a row's folds: the largest peak memory, the mean time per training slide
    (NaN for results written before the runner recorded them)."""
    def vals(key: str) -> list[float]:
        return [float(m[key]) for m in ms if m.get(key) is not None]

    rss, cuda, per = vals("peak_rss_mb"), vals("peak_cuda_mb"), vals("train_seconds_per_slide")
    return {"peak_rss_mb": max(rss) if rss else float("nan"), "peak_cuda_mb": max(cuda) if cuda else float("nan"),
            "train_seconds_per_slide": float(np.mean(per)) if per else float("nan")}
