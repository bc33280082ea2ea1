"""The results store: one directory per unit of work, its record (``metrics.json``) written last.

    results/runs/<dataset>/<task>/<method>[/<variant>]/fold<k>[-repeat<r>]/
        config.json       the unit's identity (bench.engine.plan; bench.results.identity), its hash, code version, environment
        predictions.csv   one row per test case: labels and prediction / risk
        train_log.csv     one row per epoch
        model.pt          the trained network's final state_dict (``keep_weights``, the default), its
                          sha256 and size in the record's ``info["weights_file"]``; what heatmaps load
        metrics.json      the unit record (bench.results.records), written last and atomically:
                          its presence is what "done" means

A repeat r > 0 of a unit (``bench run --repeats``: another training seed on the same fold) lives
beside it in ``fold<k>-repeat<r>/``; repeat 0 is ``fold<k>/``, the unit of a run without repeats.
A unit being (re)done is written into ``fold<k>.next/``; only when its record is written does it
replace ``fold<k>/``, whose previous result moves aside to ``fold<k>.superseded-<hash>`` (never
deleted). So a finished result stays live until its replacement has finished, and a failed or
killed replacement leaves it in place. Units are claimed with an OS file lock (``flock`` through
filelock), released by the kernel when a process dies, so several workers — or a restarted one —
can share one results directory. Reading a record verifies the sha256 of its predictions.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import platform
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
from filelock import FileLock, Timeout

from ..io import atomic_write_json, atomic_write_text, name_component
from . import repeats as R
from .identity import digest, explain, row_signature
from .records import RecordError, UnitRecord
from .summary import summary_csv, variance_csv

log = logging.getLogger(__name__)


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
    repeat: int = 0  # the training-seed repeat; 0 is the unit of a run without --repeats

    def __str__(self) -> str:
        v = f"[{self.variant}]" if self.variant else ""
        r = f"/repeat{self.repeat}" if self.repeat else ""
        return f"{self.dataset}/{self.task}/{self.method}{v}/fold{self.fold}{r}"

    @classmethod
    def of(cls, rec: UnitRecord) -> "Unit":
        """The unit a record belongs to."""
        return cls(rec.dataset, rec.task, rec.method, rec.fold, rec.variant, rec.repeat)


class IntegrityError(RecordError):
    """A unit's files do not match its record (edited or truncated after it finished)."""


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def metrics_sha256(metrics: dict[str, Any]) -> str:
    """The hash of a record's metrics as they read back from metrics.json (numpy scalars as numbers)."""
    plain = json.loads(json.dumps(metrics, default=lambda o: o.item() if hasattr(o, "item") else str(o)))
    return sha256_text(json.dumps(plain, sort_keys=True))


class PlaceError(RecordError):
    """A record that is not where its own dataset, task, method, variant and fold put it."""


FOLD_DIR = re.compile(r"fold(\d+)(?:-repeat([1-9]\d*))?")


WEIGHTS_FILE = "model.pt"


class ResultsStore:
    def __init__(self, root: Path | str = "results", keep_weights: bool | None = None) -> None:
        """``keep_weights``: None (default) writes each unit it finishes's final weights (``model.pt``);
        True also redoes finished units that did not keep them; False keeps none."""
        self.root = Path(root)
        self.keep_weights = keep_weights is not False
        self.redo_without_weights = keep_weights is True

    # --- layout ---------------------------------------------------------------------------
    def unit_dir(self, u: Unit) -> Path:
        d = (self.root / "runs" / name_component(u.dataset, "dataset") / name_component(u.task, "task")
             / name_component(u.method, "method"))
        if u.variant is not None:
            d = d / name_component(u.variant, "variant")
        return d / (f"fold{int(u.fold)}" + (f"-repeat{int(u.repeat)}" if u.repeat else ""))

    def staging_dir(self, u: Unit) -> Path:
        d = self.unit_dir(u)
        return d.with_name(d.name + ".next")

    def summary_path(self, dataset: str) -> Path:
        return self.root / name_component(dataset, "dataset") / "summary.csv"

    # --- state ----------------------------------------------------------------------------
    def _promote_finished_staging(self, u: Unit) -> None:
        """A replacement that finished but was killed before it took the unit's place takes it now."""
        nxt = self.staging_dir(u)
        if (nxt / "metrics.json").is_file() and not (self.unit_dir(u) / "metrics.json").is_file():
            d = self.unit_dir(u)
            if d.exists():
                shutil.rmtree(d)
            os.replace(nxt, d)

    def done_record(self, u: Unit, verify: bool = True) -> UnitRecord | None:
        """The unit's record if it is done and intact, else None (with a warning naming the file
        when one exists but cannot be used)."""
        self._promote_finished_staging(u)
        p = self.unit_dir(u) / "metrics.json"
        if not p.is_file():
            return None
        try:
            rec = UnitRecord.from_json(p.read_text(), str(p))
            if verify:
                self.check_predictions(u, rec)
        except (OSError, RecordError) as exc:
            log.warning("%s: %s; the unit will be redone", u, exc)
            return None
        theirs = Unit.of(rec)
        if theirs != u:
            raise PlaceError(f"{u} and the finished unit {theirs} share the directory {p.parent}; running it would "
                             f"replace that result. Fix: give this run another name (e.g. another --variant), or "
                             f"move {p.parent} away if it does not belong there")
        return rec

    def done_config(self, u: Unit) -> dict[str, Any] | None:
        """The identity (config.json) a finished unit was run with."""
        try:
            return json.loads((self.unit_dir(u) / "config.json").read_text())
        except (OSError, json.JSONDecodeError):
            return None

    def check_predictions(self, u: Unit, rec: UnitRecord) -> None:
        p = self.unit_dir(u) / "predictions.csv"
        try:
            got = sha256_text(p.read_text())
        except OSError as exc:
            raise IntegrityError(f"{p} is missing or unreadable ({exc})") from exc
        if got != rec.predictions_sha256:
            raise IntegrityError(f"{p} does not match its record (sha256 {got[:12]} != {rec.predictions_sha256[:12]}): "
                                 "it was edited or truncated after the unit finished")
        want = rec.info.get("metrics_sha256")
        if want is not None and metrics_sha256(rec.metrics) != want:
            raise IntegrityError(f"the metrics in {p.with_name('metrics.json')} do not match the ones computed from "
                                 "its predictions (they were edited after the unit finished)")

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
        try:  # who holds it, for the parent of a --jobs run to name a stuck worker's unit
            atomic_write_json(f"{lk.lock_file}.info", {"pid": os.getpid(), "unit": str(u), "since": time.time()})
        except OSError:
            pass
        return lk

    def prepare(self, u: Unit, config: dict[str, Any], chash: str) -> Path:
        """Start (or restart) a unit in its staging directory (leftovers of an interrupted attempt
        are cleared) and write its ``config.json``. A finished result stays where it is."""
        d = self.staging_dir(u)
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
        atomic_write_json(d / "config.json", {**config, "config_hash": chash, "code_version": code_version(),
                                             "environment": environment(), "started": time.time()})
        return d

    def finish(self, u: Unit, predictions: pd.DataFrame, train_log: pd.DataFrame, record: UnitRecord,
               why: str = "", weights: dict[str, Any] | None = None) -> UnitRecord:
        """Write the unit's files into its staging directory, its record last, then let it replace
        the previous result (kept aside as ``fold<k>.superseded-<hash>``). ``weights``: the trained
        model's state_dict, written as ``model.pt`` when the store keeps weights."""
        nxt, d = self.staging_dir(u), self.unit_dir(u)
        if weights is not None and self.keep_weights:
            record.info["weights_file"] = save_weights(nxt / WEIGHTS_FILE, weights)
        text = predictions.to_csv(index=False)
        record.predictions_sha256 = sha256_text(text)
        record.info["metrics_sha256"] = metrics_sha256(record.metrics)
        atomic_write_text(nxt / "predictions.csv", text)
        atomic_write_text(nxt / "train_log.csv", train_log.to_csv(index=False))
        atomic_write_json(nxt / "metrics.json", record.to_dict())  # the done-marker
        if d.exists():
            old = self._old_hash(d)
            aside = d.with_name(f"{d.name}.superseded-{old}")
            if aside.exists():
                shutil.rmtree(aside)
            os.replace(d, aside)
            log.info("%s: previous result kept at %s%s", u, aside, f" ({why})" if why else "")
        os.replace(nxt, d)
        return record

    @staticmethod
    def _old_hash(d: Path) -> str:
        for name in ("metrics.json", "config.json"):
            try:
                return str(json.loads((d / name).read_text()).get("config_hash") or "unknown")
            except (OSError, json.JSONDecodeError, AttributeError):
                continue
        return "unknown"

    def fail(self, u: Unit, message: str) -> None:
        d = self.staging_dir(u)
        d.mkdir(parents=True, exist_ok=True)
        atomic_write_json(d / "error.json", {"error": message, "time": time.time()})

    # --- reading --------------------------------------------------------------------------
    def records(self, dataset: str | None = None, verify: bool = True) -> Iterator[UnitRecord]:
        """Every finished unit's record. A record that cannot be read, or whose predictions do not
        match it, is an error naming the file and the command that redoes it."""
        base = self.root / "runs"
        pattern = f"{name_component(dataset, 'dataset')}/*/*/**/metrics.json" if dataset else "*/*/*/**/metrics.json"
        for p in sorted(base.glob(pattern)):
            if ".superseded-" in str(p) or p.parent.name.endswith(".next"):
                continue
            if not FOLD_DIR.fullmatch(p.parent.name):
                log.warning("%s is not read: only fold<k>[-repeat<r>] directories hold results (a backup copy? move it out "
                            "of %s)", p.parent, base)
                continue
            try:
                rec = UnitRecord.from_json(p.read_text(), str(p))
            except OSError as exc:
                raise RecordError(f"cannot read {p}: {exc}") from exc
            self.check_place(p, rec)
            if verify:
                try:
                    self.check_predictions(Unit.of(rec), rec)
                except IntegrityError as exc:
                    raise IntegrityError(f"{exc}. Redo it: {redo_command(rec)}") from exc
            yield rec

    def check_place(self, p: Path, rec: UnitRecord) -> None:
        """A record counts only where its own dataset, task, method, variant and fold put it, and for a
        fold of its split set: a record copied from another dataset or method is refused."""
        u = Unit.of(rec)
        want = self.unit_dir(u)
        if want.absolute() != p.parent.absolute() or not 0 <= rec.fold < rec.split.n_folds:
            raise PlaceError(f"{p} is the record of {u} (dataset {rec.dataset!r}, variant {rec.variant!r}, fold "
                             f"{rec.fold} of {rec.split.n_folds}), whose place is {want}: it was copied or moved. "
                             f"Fix: move {p.parent} back to its place, or out of {self.root / 'runs'}")

    def row_config(self, rec: UnitRecord) -> dict[str, Any]:
        """The identity (config.json) a finished unit was run with; an error naming the file when it
        is gone, since its row could not be checked for one configuration."""
        u = Unit.of(rec)
        config = self.done_config(u)
        if config is None:
            raise RecordError(f"{self.unit_dir(u) / 'config.json'} is missing or unreadable, so the row's folds "
                              f"cannot be checked for one configuration. Redo it: {redo_command(rec)}")
        return config

    def datasets(self) -> list[str]:
        base = self.root / "runs"
        return sorted(p.name for p in base.iterdir() if p.is_dir()) if base.is_dir() else []

    def predictions(self, dataset: str, task: str, method: str, variant: str | None = None,
                    repeat: int | None = None) -> pd.DataFrame:
        """Out-of-fold predictions of every finished fold and repeat (each verified against its record),
        concatenated in (fold, repeat) order, with ``fold`` and ``repeat`` columns; ``repeat``: that one only."""
        parts = []
        for rec in sorted(self.records(dataset), key=lambda r: (r.fold, r.repeat)):
            if rec.task == task and rec.method == method and rec.variant == variant and repeat in (None, rec.repeat):
                df = pd.read_csv(self.unit_dir(Unit.of(rec)) / "predictions.csv", dtype={"case_id": str})
                df["fold"] = rec.fold
                df["repeat"] = rec.repeat
                parts.append(df)
        return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()

    def summarize(self, dataset: str, ddof: int = 0) -> pd.DataFrame:
        """Aggregate finished folds -> one row per (method, variant, task, metric), in memory with
        typed values (``folds`` a list, ``provenance`` a list of dicts, ``non_default`` a dict,
        ``ablation``: the row is a value of an ablation, i.e. its variant sets options of its own);
        also writes summary.csv, an output only (:func:`summary_csv`).
        The folds of a row must share one configuration (:func:`bench.results.identity.row_signature`
        of their ``config.json``): a row that mixes configurations is an error naming its folds, what
        differs and the fix. ``split_set``: the rows' split set as results name it (``splits-<name>``,
        ``seed<s>-k<n>``, "" for the default set)."""
        from ..data.splits import split_set_label

        groups: dict[tuple[str, str, str], list[UnitRecord]] = {}
        for rec in self.records(dataset):
            groups.setdefault((rec.method, rec.variant or "", rec.task), []).append(rec)
        out = []
        for (method, variant, task), recs in sorted(groups.items()):
            recs = sorted(recs, key=lambda r: (r.fold, r.repeat))
            check_one_configuration(recs, [self.row_config(r) for r in recs])
            first = recs[0]
            for metric in first.metrics:
                if metric == "undefined":
                    continue
                per_fold = R.by_fold(recs, metric)  # the mean over a fold's repeats is the fold's value
                vals = R.fold_means(per_fold)
                defined = [v for v in vals if not np.isnan(v)]
                out.append({
                    "dataset": dataset, "method": method, "variant": variant, "family": first.family,
                    "encoder": first.encoder or "", "encoder_label": first.encoder_label, "label": first.label,
                    "group": first.group, "backbone": first.backbone, "params": first.params,
                    "trainable_params": first.trainable_params, "frozen_params_text": first.frozen_params_text,
                    "task": task, "metric": metric, "primary": metric == first.primary_metric,
                    "higher_is_better": first.higher_is_better,
                    "mean": float(np.mean(defined)) if defined else float("nan"),
                    # population std (ddof=0) by default, as CLAM-style scripts print; captions say so
                    "std": float(np.std(defined, ddof=ddof)) if len(defined) > ddof else float("nan"),
                    "ddof": ddof, "n_folds": len(vals), "n_defined": len(defined),
                    "expected_folds": first.split.n_folds,
                    "folds": vals,
                    "random_weights": any(r.random_weights for r in recs),
                    "weights": first.weights_label,
                    "random_parts": "; ".join(sorted({w.part for r in recs for w in r.weights if w.random})),
                    "standin": any(w.source == "standin" for r in recs for w in r.weights),
                    "tuned": any(r.tuned for r in recs), "protocol": first.protocol,
                    "split_seed": first.split.seed,
                    "split_set": split_set_label(first.split.seed, first.split.n_folds, first.split.name),
                    "input": first.input.label(), "default_input": first.default_input.label(),
                    "magnification": first.input.magnification,
                    "provenance": [w.to_dict() for w in first.weights],
                    "non_default": _fixed_options(first),
                    "ablation": any(bool(v) for v in first.variant_settings.values()),
                    "order": first.info.get("order"),
                    "train_seconds": float(np.mean([r.train_seconds for r in recs])),
                    "repeats": [len(v) for v in per_fold.values()], **R.variance_components(per_fold),
                    **_compute(recs),
                })
        df = pd.DataFrame(out)
        if not df.empty:
            for p, text in ((self.summary_path(dataset), summary_csv(df)),
                            (self.summary_path(dataset).with_name("variance.csv"), variance_csv(df))):
                if p.is_dir():
                    raise RecordError(f"{p} is a directory, so the summary cannot be written there. Fix: move it "
                                      f"away (e.g. `mv {p} {p}.old`) and rerun")
                p.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_text(p, text)
        return df


def _fixed_options(rec: UnitRecord) -> dict[str, Any]:
    """The row's non-default options, less those tuned per outer fold (their values differ by fold)."""
    tuned = set((rec.tuned or {}).get("params", {}))
    return {k: v for k, v in rec.info.get("non_default", {}).items() if k not in tuned and f"model.{k}" not in tuned}


def redo_command(rec: UnitRecord) -> str:
    """The command that redoes one unit (its damaged files are then replaced)."""
    cmd = f"python -m bench run --methods {rec.method} --dataset {rec.dataset} --tasks {rec.task} --folds {rec.fold}"
    if rec.repeat:
        cmd += f" --repeats {rec.repeat + 1}"
    if rec.variant and not rec.tuned:
        cmd += f"  (variant {rec.variant}: rerun the command that made it)"
    return cmd


def save_weights(path: Path, state: dict[str, Any]) -> dict[str, Any]:
    """Write a state_dict atomically (CPU tensors, loadable with ``weights_only=True``); return the
    record entry: file name, sha256 and bytes."""
    import torch

    tmp = path.with_name(path.name + ".tmp")
    try:
        torch.save({k: v.detach().cpu() for k, v in state.items()}, tmp)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, RuntimeError):  # torch reports a short write (a full disk) as a RuntimeError
            raise OSError(errno.ENOSPC, f"short write: {exc}", str(path)) from exc
        raise
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    os.replace(tmp, path)
    return {"file": path.name, "sha256": digest, "bytes": path.stat().st_size}


class MissingWeightsError(RecordError):
    """A finished unit whose trained weights were not kept, or do not match their record."""


def load_weights(store: ResultsStore, rec: UnitRecord) -> dict[str, Any]:
    """The unit's kept state_dict, its sha256 checked against the record."""
    import torch

    u = Unit.of(rec)
    entry = rec.info.get("weights_file")
    path = store.unit_dir(u) / WEIGHTS_FILE
    if not entry or not path.is_file():
        raise MissingWeightsError(
            f"{u}: no trained weights in {path.parent} (the unit finished without keeping them): redo it with "
            f"`{redo_command(rec)}` and --keep-weights")
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise MissingWeightsError(f"{path}: sha256 differs from its record's ({entry['sha256'][:12]}...): the file "
                                  f"changed after the unit finished; redo it with `{redo_command(rec)}` and --keep-weights")
    import io

    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


class MixedRowError(RecordError):
    """The finished folds of one table row were run with different configurations."""


def check_one_configuration(recs: list[UnitRecord], configs: list[dict[str, Any]]) -> None:
    """A table row is one configuration: refuse folds whose row signatures (computed from their
    ``configs``) differ, naming the folds and what differs."""
    sigs = [row_signature(c) for c in configs]
    hashes = [digest(sig) for sig in sigs]
    if len(set(hashes)) <= 1:
        return
    diffs = [f"fold {r.fold} differs from fold {recs[0].fold} in {'; '.join(explain(sigs[0], sig))}"
             for r, sig, h in zip(recs[1:], sigs[1:], hashes[1:]) if h != hashes[0]]
    first = recs[0]
    raise MixedRowError(
        f"{first.dataset}/{first.task}/{first.method}{'[' + first.variant + ']' if first.variant else ''}: the "
        f"finished folds were run with different configurations ({'; '.join(diffs)}); a row is one "
        "configuration. Fix: rerun every fold with one configuration (`bench run` without --folds), or run the "
        "experiment as a variant of its own (`bench run ... --variant NAME`)")


def _compute(recs: list[UnitRecord]) -> dict[str, float]:
    """Compute accounting over a row's folds: the largest peak memory, the mean time per training slide."""
    def vals(key: str) -> list[float]:
        return [float(getattr(r, key)) for r in recs if getattr(r, key) is not None]

    rss, cuda, per = vals("peak_rss_mb"), vals("peak_cuda_mb"), vals("train_seconds_per_slide")
    return {"peak_rss_mb": max(rss) if rss else float("nan"), "peak_cuda_mb": max(cuda) if cuda else float("nan"),
            "train_seconds_per_slide": float(np.mean(per)) if per else float("nan")}
