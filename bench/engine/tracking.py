"""Experiment tracking: one tracked run per unit, in TensorBoard, MLflow or Weights & Biases.

A unit's run is named ``<dataset>/<task>/<method>[/<variant>]/fold<k>[/seed<s>]``; its parameters
are the unit's resolved identity (options, protocol, split set, weights provenance), flattened to
``a.b.c`` keys. The training loop reports each optimizer step (loss, learning rate) and each epoch
(train loss, validation metrics where a validation set exists); the executor reports the final
test metric, so the tracked value is the record's.

The backends are imported only when a run is opened; :func:`check_available` is called by the CLI
before any work so a missing package stops the command at once, naming the extra to install.

- ``tensorboard`` (the default): event files under ``<results>/tracking/tensorboard/<run name>/``;
  offline, no server (``tensorboard --logdir results/tracking/tensorboard``).
- ``mlflow``: a local SQLite store ``<results>/tracking/mlflow.db`` unless ``--tracker-uri`` names
  a server. MLflow 3 keeps its plain-file store (``./mlruns``) in maintenance mode and refuses it
  by default, so the local default is the one-file database its documentation recommends.
- ``wandb``: offline run files under ``<results>/tracking/wandb/`` unless the user is logged in
  (``WANDB_API_KEY`` or a ``api.wandb.ai`` entry in ``~/.netrc``); ``WANDB_MODE`` wins when set.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Protocol

log = logging.getLogger(__name__)

TRACKERS = ("none", "tensorboard", "mlflow", "wandb")
DEFAULT_TRACKER = "tensorboard"
EXTRA = "pip install 'wsi-bench[tracking]'"
# the importable module each backend needs, and the distribution that provides it
_PACKAGES = {"tensorboard": ("tensorboard", "tensorboard"), "mlflow": ("mlflow", "mlflow-skinny"),
             "wandb": ("wandb", "wandb")}


class TrackingError(RuntimeError):
    """A tracker cannot be used (unknown name, package missing); the message says what to install."""


@dataclass(frozen=True)
class TrackerSettings:
    """Which tracker, where it writes, resolved once by the CLI and passed down whole."""

    kind: str = DEFAULT_TRACKER
    root: str = "results/tracking"  # tensorboard/, mlflow.db and wandb/ live here
    uri: str | None = None  # mlflow: a tracking server (default: the local SQLite file)
    wandb_mode: str = "offline"  # "online" when the user is logged in (decided by the CLI)
    project: str = "wsi-bench"

    def __post_init__(self) -> None:
        if self.kind not in TRACKERS:
            raise TrackingError(f"unknown tracker {self.kind!r}; choose one of {', '.join(TRACKERS)}")

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "root": self.root, "uri": self.uri, "wandb_mode": self.wandb_mode,
                "project": self.project}


def check_available(kind: str) -> None:
    """Raise :class:`TrackingError` naming the extra when ``kind``'s package is not installed."""
    if kind not in TRACKERS:
        raise TrackingError(f"unknown tracker {kind!r}; choose one of {', '.join(TRACKERS)}")
    if kind == "none":
        return
    module, dist = _PACKAGES[kind]
    if importlib.util.find_spec(module) is None:
        raise TrackingError(f"--tracker {kind} needs the {dist} package, which is not installed: {EXTRA} "
                            f"(or --tracker none)")


def wandb_mode(env: Mapping[str, str], netrc: Path | None) -> str:
    """``online`` when the user is logged in to W&B (``WANDB_API_KEY``, or an ``api.wandb.ai``
    entry in ``netrc``), else ``offline``; ``WANDB_MODE`` wins when set. The CLI passes its
    environment and ``~/.netrc`` once; nothing here reads process state."""
    if env.get("WANDB_MODE"):
        return env["WANDB_MODE"]
    if env.get("WANDB_API_KEY"):
        return "online"
    try:
        text = netrc.read_text() if netrc is not None else ""
    except OSError:
        text = ""
    return "online" if "api.wandb.ai" in text else "offline"


def run_name(dataset: str, task: str, method: str, fold: int, variant: str | None = None,
             repeat: int | None = None) -> str:
    """``<dataset>/<task>/<method>[/<variant>]/fold<k>[/seed<s>]``: one name per unit."""
    parts = [dataset, task, method] + ([variant] if variant else []) + [f"fold{fold}"]
    if repeat is not None:
        parts.append(f"seed{repeat}")
    return "/".join(parts)


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested options as ``a.b.c`` keys with scalar values (lists and None as JSON text), the form
    every tracker's parameter table takes."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        elif isinstance(value, (bool, int, float, str)):
            out[name] = value
        else:
            out[name] = json.dumps(value, default=str, sort_keys=True)
    return out


class UnitRun(Protocol):
    """What the training loop and the executor report to. Every method is cheap and never raises
    for a finite number; a non-finite value is logged as is (the loop stops on it anyway)."""

    def log_step(self, step: int, **scalars: float) -> None: ...

    def log_epoch(self, epoch: int, **scalars: float) -> None: ...

    def log_final(self, **metrics: float) -> None: ...

    def close(self) -> None: ...


class NullRun:
    """``--tracker none``: reports go nowhere."""

    def log_step(self, step: int, **scalars: float) -> None:
        pass

    def log_epoch(self, epoch: int, **scalars: float) -> None:
        pass

    def log_final(self, **metrics: float) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> "NullRun":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Continued(NullRun):
    """One tracked run over several trainings in a row (a tuning trial's inner folds, a resumed
    pre-training): each training's steps and epochs continue the previous one's numbering, so the
    run holds one curve. ``next_part()`` starts the next training; ``start`` a resumed run's step."""

    def __init__(self, run: NullRun, start: int = 0) -> None:
        self.run = run
        self.step0 = self.last_step = start
        self.epoch0 = self.last_epoch = 0

    def next_part(self) -> None:
        self.step0, self.epoch0 = self.last_step, self.last_epoch

    def log_step(self, step: int, **scalars: float) -> None:
        self.last_step = self.step0 + step
        self.run.log_step(self.last_step, **scalars)

    def log_epoch(self, epoch: int, **scalars: float) -> None:
        self.last_epoch = self.epoch0 + epoch
        self.run.log_epoch(self.last_epoch, **scalars)

    def log_final(self, **metrics: float) -> None:
        self.run.log_final(**metrics)

    def close(self) -> None:
        self.run.close()


def _safe_dir(name: str) -> str:
    """A run name as a relative directory: each ``/``-separated part kept, characters outside
    ``[A-Za-z0-9._=+-]`` replaced, so a variant such as ``lr=1e-3`` stays readable."""
    return "/".join(re.sub(r"[^A-Za-z0-9._=+-]", "_", p) or "_" for p in name.split("/"))


class TensorBoardRun(NullRun):
    """Scalars ``train/loss``, ``train/lr`` per step, ``epoch/<name>`` per epoch, ``test/<metric>``
    at the end; the parameters as the HParams plugin's table and as JSON text (``params``)."""

    def __init__(self, settings: TrackerSettings, name: str, params: Mapping[str, Any]) -> None:
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        self.dir = Path(settings.root) / "tensorboard" / _safe_dir(name)
        self.writer = SummaryWriter(log_dir=str(self.dir))
        flat = flatten(params)
        self.writer.add_text("params", json.dumps(flat, sort_keys=True), 0)
        exp, ssi, sei = hparams(flat, {})
        for summary in (exp, ssi, sei):
            self.writer.file_writer.add_summary(summary)

    def log_step(self, step: int, **scalars: float) -> None:
        for key, value in scalars.items():
            self.writer.add_scalar(f"train/{key}", value, step)

    def log_epoch(self, epoch: int, **scalars: float) -> None:
        for key, value in scalars.items():
            self.writer.add_scalar(f"epoch/{key}", value, epoch)

    def log_final(self, **metrics: float) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(f"test/{key}", value, 0)

    def close(self) -> None:
        self.writer.close()


class MlflowRun(NullRun):
    """One MLflow run per unit in the experiment named after the dataset; parameters are the
    flattened identity (values cut to MLflow's 6,000-character limit)."""

    def __init__(self, settings: TrackerSettings, name: str, params: Mapping[str, Any]) -> None:
        from mlflow import MlflowClient

        uri = settings.uri or f"sqlite:///{(Path(settings.root) / 'mlflow.db').resolve()}"
        Path(settings.root).mkdir(parents=True, exist_ok=True)
        self.client = MlflowClient(tracking_uri=uri)
        experiment = name.split("/", 1)[0]
        found = self.client.get_experiment_by_name(experiment)
        exp_id = found.experiment_id if found else self._create(experiment)
        self.run_id = self.client.create_run(exp_id, run_name=name, tags={"wsi-bench.unit": name}).info.run_id
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in flatten(params).items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 parameters per batch
            self.client.log_batch(self.run_id, params=items[i:i + 100])

    def _create(self, experiment: str) -> str:
        try:
            return self.client.create_experiment(experiment)
        except Exception:  # noqa: BLE001 — another --jobs process created it meanwhile
            return self.client.get_experiment_by_name(experiment).experiment_id

    def log_step(self, step: int, **scalars: float) -> None:
        for key, value in scalars.items():
            self.client.log_metric(self.run_id, f"train/{key}", value, step=step)

    def log_epoch(self, epoch: int, **scalars: float) -> None:
        for key, value in scalars.items():
            self.client.log_metric(self.run_id, f"epoch/{key}", value, step=epoch)

    def log_final(self, **metrics: float) -> None:
        for key, value in metrics.items():
            self.client.log_metric(self.run_id, f"test/{key}", value)

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


class WandbRun(NullRun):
    """A W&B run per unit (``reinit="create_new"``: several units in one process each get their
    own run, never a continuation of the first)."""

    def __init__(self, settings: TrackerSettings, name: str, params: Mapping[str, Any]) -> None:
        import wandb

        root = Path(settings.root)
        root.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(project=settings.project, name=name, group=name.rsplit("/", 1)[0],
                              config=flatten(params), dir=str(root), mode=settings.wandb_mode,
                              reinit="create_new", settings=wandb.Settings(silent=True, console="off"))

    def log_step(self, step: int, **scalars: float) -> None:
        self.run.log({f"train/{k}": v for k, v in scalars.items()}, step=step)

    def log_epoch(self, epoch: int, **scalars: float) -> None:
        self.run.log({f"epoch/{k}": v for k, v in scalars.items()} | {"epoch": epoch})

    def log_final(self, **metrics: float) -> None:
        for key, value in metrics.items():
            self.run.summary[f"test/{key}"] = value

    def close(self) -> None:
        self.run.finish()


_BACKENDS = {"tensorboard": TensorBoardRun, "mlflow": MlflowRun, "wandb": WandbRun}


def open_run(settings: TrackerSettings | None, name: str, params: Mapping[str, Any]) -> NullRun:
    """The tracked run of one unit (a context manager). ``None`` or ``kind="none"``: a run that
    records nothing. A backend that fails to open (a full disk, a server that went away) logs one
    warning and the unit trains untracked: tracking never costs a finished unit."""
    if settings is None or settings.kind == "none":
        return NullRun()
    try:
        return _BACKENDS[settings.kind](settings, name, params)
    except ImportError as exc:
        raise TrackingError(f"--tracker {settings.kind}: {exc}; {EXTRA}") from exc
    except Exception as exc:  # noqa: BLE001 — see the docstring
        log.warning("tracker %s could not open run %s (%s); this unit trains untracked", settings.kind, name, exc)
        return NullRun()


def unit_params(config: Mapping[str, Any]) -> dict[str, Any]:
    """A unit's tracked parameters: its resolved identity (``config.json``) with the per-case labels
    and per-slide fingerprints replaced by their digests (the tables of a cohort are not parameters)."""
    from ..results.identity import digest

    out = {k: v for k, v in config.items() if k not in ("labels", "slides")}
    out["labels_digest"] = digest(config.get("labels", {}))
    out["slides_digest"] = digest(config.get("slides", {}))
    return out


def open_unit_run(settings: TrackerSettings | None, dataset: str, task: str, method: str, fold: int,
                  variant: str | None, config: Mapping[str, Any], repeat: int = 0) -> NullRun:
    """The tracked run of one unit (see :func:`open_run`); a repeat r > 0 of ``--repeats`` is named
    ``.../fold<k>/seed<r>``."""
    if settings is None or settings.kind == "none":
        return NullRun()
    return open_run(settings, run_name(dataset, task, method, fold, variant, repeat or None), unit_params(config))


def tracks(run: NullRun) -> bool:
    """Whether ``run`` records anything (the training loop skips its per-step bookkeeping if not)."""
    return type(run) is not NullRun
