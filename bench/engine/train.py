"""One trainer for every method: AdamW, cosine schedule, gradient accumulation, one case per step.

Model selection never looks at the test fold. ``schedule="fixed"`` (the default): a unit trains
for the configured number of epochs and the final weights predict the test fold (the paper's
end-to-end protocol). ``schedule="early_stopping"`` (the MIL originals' default, CLAM's
``EarlyStopping(patience=20, stop_epoch=50)``): a stratified, seeded validation split is carved
from the *training fold* (``validation_split``), the model trains on the rest, and the weights of
the epoch with the lowest validation loss predict the test fold — never selected on the test
fold, a defect of several public pipelines.
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import asdict, dataclass, fields
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from baselines.bag import Bag

from . import distributed as D
from .steps import StepLoop
from .. import tasks as T
from ..tasks import weighted_cross_entropy  # noqa: F401  (public here since the trainer introduced it)

log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """A unit cannot be trained (e.g. its loss became NaN); other units go on."""


SCHEDULES = ("fixed", "early_stopping")


@dataclass
class TrainConfig:
    epochs: int = 20
    lr: float = 2e-4
    weight_decay: float = 1e-5
    grad_accum: int = 8  # cases per optimizer step (one case per forward pass)
    warmup_epochs: float = 0.0
    max_patches: int | None = None  # random subset of a bag per training step (None: whole bag)
    # loss weights of staging/classification: "inverse_frequency" (n / (C * n_c) on the training
    # fold) or "none" (plain cross-entropy, the paper's)
    class_weights: str = "inverse_frequency"
    # survival bins (e_k, e_k+1] ("right", pd.cut's default) or [e_k, e_k+1) ("left", MCAT's)
    survival_bins_closed: str = "right"
    schedule: str = "fixed"  # "fixed" (epochs, final weights) or "early_stopping" (see the module)
    val_fraction: float = 0.1  # early stopping: share of the training fold held out for validation
    patience: int = 20  # early stopping: epochs without a lower validation loss before stopping
    min_epochs: int = 50  # early stopping: never stop before this many epochs (CLAM's stop_epoch)
    grad_clip: float | None = None
    # "zscore": standardise patch features with the training fold's per-dimension mean/std (never
    # the test fold's). Off by default — published pipelines feed raw features — but needed for
    # randomly initialised encoders, whose features have a tiny dynamic range (the demo turns it on).
    feature_norm: str = "none"
    seed: int = 0

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown training options {sorted(unknown)}; allowed: {sorted(names)}")
        for f in fields(cls):  # a value of the wrong type fails here, naming the option, not mid-training
            if f.name in d and f.type in ("float", "int", "float | None", "int | None") and d[f.name] is not None:
                v = d[f.name]
                if isinstance(v, bool) or not isinstance(v, (int, float)):
                    raise ValueError(f"training option {f.name}={v!r} must be a number")
        cfg = cls(**d)
        choices = {"feature_norm": ("none", "zscore"), "class_weights": T.CLASS_WEIGHTS,
                   "survival_bins_closed": T.BINS_CLOSED, "schedule": SCHEDULES}
        for name, allowed in choices.items():
            if getattr(cfg, name) not in allowed:
                raise ValueError(f"training option {name} must be one of {allowed}, got {getattr(cfg, name)!r}")
        if cfg.schedule == "early_stopping" and not 0 < cfg.val_fraction < 1:
            raise ValueError(f"val_fraction must lie in (0, 1), got {cfg.val_fraction}")
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Sample:
    """One case: how to get its input tensor, and its labels."""

    case_id: str
    load: Callable[[], "torch.Tensor | Bag"]  # the input of one training step
    labels: dict[str, float]
    views: Callable[[], Iterable[torch.Tensor]] | None = None  # the inputs predicted at test time
    # how the views' outputs become one prediction: None = mean of logits; "majority" / "mean_prob" =
    # a voting ensemble over the views (see `vote`; classification and staging only)
    vote: str | None = None


VOTING = ("majority", "mean_prob")


def vote(probs: torch.Tensor, how: str) -> torch.Tensor:
    """One case's class scores from its views' class probabilities ``probs`` (V, C).

    ``majority``: each view votes for its arg-max class; the score of a class is its share of the
    votes (for a binary task, the fraction of regions called positive — the AUC is computed on it).
    The predicted class is the arg-max of the scores; a tie between classes is broken by the mean
    probability, mixed into the scores with weight 1e-6 / V (less than a vote), so ranking by score is
    unchanged otherwise and the scores stay probabilities (in [0, 1], summing to 1).
    ``mean_prob``: the mean of the views' probabilities (soft voting).
    """
    if probs.dim() != 2 or probs.shape[0] == 0:
        raise ValueError(f"vote expects (V >= 1, C) probabilities, got {tuple(probs.shape)}")
    if how == "mean_prob":
        return probs.mean(0)
    if how == "majority":
        n_views, n_cls = probs.shape
        share = torch.bincount(probs.argmax(1), minlength=n_cls).double() / n_views
        eps = 1e-6 / n_views
        return ((1 - eps) * share + eps * probs.double().mean(0)).float()
    raise ValueError(f"unknown voting {how!r}; use one of {VOTING}")


def zscore_samples(train: Sequence[Sample], test: Sequence[Sample]) -> tuple[list[Sample], list[Sample]]:
    """Standardise every input with per-dimension statistics of the *training* patches only."""
    n, s1, s2 = 0, None, None
    for s in train:
        x = s.load()
        x = (x.valid_features() if isinstance(x, Bag) else x.reshape(-1, x.shape[-1])).double()
        s1 = x.sum(0) if s1 is None else s1 + x.sum(0)
        s2 = (x * x).sum(0) if s2 is None else s2 + (x * x).sum(0)
        n += x.shape[0]
    mean = (s1 / n).float()
    std = (s2 / n - (s1 / n) ** 2).clamp(min=0).sqrt().float().clamp(min=1e-6)

    def norm(x: "torch.Tensor | Bag") -> "torch.Tensor | Bag":
        return x.map_features(lambda f: (f - mean) / std) if isinstance(x, Bag) else (x - mean) / std

    def wrap(s: Sample) -> Sample:
        load = s.load
        return Sample(s.case_id, lambda: norm(load()), s.labels,
                      None if s.views is None else (lambda v=s.views: (norm(x) for x in v())), s.vote)

    return [wrap(s) for s in train], [wrap(s) for s in test]


def _at_most(x: "torch.Tensor | Bag", n: int, gen: torch.Generator) -> "torch.Tensor | Bag":
    """A random subset of ``n`` patches of a flat bag (a bag of regions is left whole)."""
    feats = x.features if isinstance(x, Bag) else x
    if feats.dim() != 2 or feats.shape[0] <= n:
        return x
    idx = torch.randperm(feats.shape[0], generator=gen)[:n]
    return x.subsample(idx) if isinstance(x, Bag) else x[idx]


def _to(x: Any, device: torch.device) -> Any:
    """Move a tensor or ``Bag`` input to the model's device."""
    return x.to(device) if isinstance(x, (torch.Tensor, Bag)) else x


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def validation_split(task: str, labels: Sequence[dict[str, float]], fraction: float, seed: int) -> list[int]:
    """Positions of the training cases held out for early stopping: stratified by the task's
    strata (as the folds are), seeded, about ``fraction`` of the cases and at least one. The
    cases are ordered by stratum (shuffled within) and every ``round(1 / fraction)``-th is taken,
    so each stratum gives its share."""
    n = len(labels)
    if n < 2:
        raise TrainingError(f"early stopping needs at least 2 training cases to hold one out, got {n}")
    step = max(2, round(1 / fraction))
    t = T.get_task(task)
    strata = t.strata(pd.DataFrame(list(labels)), step) if n >= 2 * step else np.zeros(n, dtype=int)
    rng = np.random.default_rng(seed)
    order = np.lexsort((rng.permutation(n), strata))
    start = int(rng.integers(step))
    return sorted(int(i) for i in order[start::step]) or [int(order[0])]


def _early_stopping_set(task: str, train: list[Sample], given: list[Sample], cfg: TrainConfig
                        ) -> tuple[list[Sample], list[Sample]]:
    """(cases to train on, early-stopping set): the given set (an imported split set's val cases),
    else under ``early_stopping`` a share carved from the training fold, never the test fold."""
    if cfg.schedule != "early_stopping":
        return train, []
    if given:
        return train, given
    held = set(validation_split(task, [s.labels for s in train], cfg.val_fraction, cfg.seed))
    return [s for i, s in enumerate(train) if i not in held], [s for i, s in enumerate(train) if i in held]


def train_and_predict(model: torch.nn.Module, task: str, train: Sequence[Sample], test: Sequence[Sample],
                      cfg: TrainConfig, *, progress: bool = True, desc: str = "",
                      before_step: Callable[[torch.nn.Module], None] | None = None,
                      val: Sequence[Sample] | None = None, tracker: Any = None,
                      ) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Train on ``train``, predict ``test``. Returns (predictions, train log, info).

    ``val``: an early-stopping set named by an imported split set; under the ``early_stopping``
    schedule it replaces the set carved from ``train``, under a fixed schedule it is left out.

    Under torchrun (``bench.engine.distributed``) the model is wrapped in ``DistributedDataParallel``:
    each rank takes every ``world_size``-th case of the epoch's order (one case per forward
    pass), gradients are averaged across ranks once per optimizer step (``no_sync`` in between),
    and the predictions of the ranks' shares of ``test`` are gathered on every rank.
    ``before_step(model)`` is called before every optimizer step (gradients complete).
    ``tracker``: the unit's tracked run (``bench.engine.tracking``): each optimizer step's loss and
    learning rate, each epoch's losses.
    """
    seed_everything(cfg.seed)
    given = list(val or [])
    if cfg.feature_norm == "zscore":
        train, rest = zscore_samples(train, [*test, *given])
        test, given = rest[:len(test)], rest[len(test):]
    n_out = model.head.out_features if hasattr(model, "head") else None
    fitted = T.get_task(task).fit([s.labels for s in train], n_out or 4, class_weights=cfg.class_weights,
                                  survival_bins_closed=cfg.survival_bins_closed)
    train, val = _early_stopping_set(task, list(train), given, cfg)
    world = D.world_size()
    dev = D.device() if world > 1 else next(model.parameters()).device
    per_rank = len(D.shard(list(range(len(train)))))
    steps_per_epoch = math.ceil(per_rank / cfg.grad_accum)
    loop = StepLoop(model, dev, model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, accum=cfg.grad_accum,
                    total_steps=steps_per_epoch * cfg.epochs, warmup_steps=int(cfg.warmup_epochs * steps_per_epoch),
                    grad_clip=cfg.grad_clip, before_step=before_step)
    loop.tracker = tracker
    fitted.to(dev)
    t0 = time.perf_counter()
    bar = tqdm(total=cfg.epochs * per_rank, desc=desc or "train", unit="case",
               disable=None if progress and D.is_main() else True, leave=False, dynamic_ncols=True)
    try:
        rows, best = _epochs(loop, train, val, fitted, cfg, bar, t0)
    finally:
        bar.close()
    if best is not None:
        model.load_state_dict(best[2])
    train_seconds = time.perf_counter() - t0
    pred = _predict_shared(model, task, test, fitted, world)
    info = {"train_seconds": train_seconds, "train_cases": len(train), "test_cases": len(test),
            "world_size": world, **fitted.info()}
    if val:
        info.update(val_cases=len(val), best_epoch=best[1] if best else None, epochs_run=len(rows))
    return pred, pd.DataFrame(rows), info


def _epochs(loop: StepLoop, train: Sequence[Sample], val: Sequence[Sample], fitted: T.FittedTask, cfg: TrainConfig,
            bar: Any, t0: float) -> tuple[list[dict[str, Any]], tuple[float, int, dict[str, torch.Tensor]] | None]:
    """The epochs of one unit: one case per forward pass, ``cfg.grad_accum`` cases per optimizer step;
    with early stopping, the weights of the epoch with the lowest validation loss. Returns the train
    log's rows and (val loss, epoch, weights) of the best epoch (None without validation)."""
    model, dev = loop.model, loop.device
    gen = torch.Generator().manual_seed(cfg.seed)
    rows: list[dict[str, Any]] = []
    best: tuple[float, int, dict[str, torch.Tensor]] | None = None
    for epoch in range(cfg.epochs):
        model.train()
        order = D.shard(torch.randperm(len(train), generator=gen).tolist())  # same on every rank
        losses = []
        loop.opt.zero_grad(set_to_none=True)
        for i, idx in enumerate(order):
            s = train[idx]
            sync = (i + 1) % cfg.grad_accum == 0 or i == len(order) - 1
            with loop.pass_(sync):
                x = s.load()
                if cfg.max_patches:
                    x = _at_most(x, cfg.max_patches, gen)
                loss = fitted.loss(loop.net(_to(x, dev)), fitted.target(s.labels, dev))
                loop.backward(loss, lambda here, s=s, e=epoch: _non_finite(e, s.case_id, here))
            losses.append(loss.item())
            if sync:
                loop.step()
            bar.update(1)
        rows.append({"epoch": epoch + 1, "loss": float(np.mean([v for r in D.all_gather(losses) for v in r])),
                     "lr": loop.last_lr(), "seconds": time.perf_counter() - t0})
        if val:
            rows[-1]["val_loss"] = v = validation_loss(model, val, fitted, dev)
            if best is None or v < best[0]:
                best = (v, epoch + 1, {k: t.detach().clone() for k, t in model.state_dict().items()})
            elif epoch + 1 - best[1] >= cfg.patience and epoch + 1 > cfg.min_epochs:
                break
        if loop.tracker is not None and D.is_main():
            loop.tracker.log_epoch(epoch + 1, **{k: rows[-1][k] for k in ("loss", "val_loss") if k in rows[-1]})
        bar.set_postfix(loss=f"{rows[-1]['loss']:.3f}")
    return rows, best


def _non_finite(epoch: int, case_id: str, here: bool) -> TrainingError:
    where = f"case {case_id}" if here else "another rank's case"
    return TrainingError(f"loss became non-finite at epoch {epoch + 1}, {where}: "
                         "lower the learning rate (--set lr=...) or check this case's input")


def _predict_shared(model: torch.nn.Module, task: str, test: Sequence[Sample], fitted: T.FittedTask,
                    world: int) -> pd.DataFrame:
    """Predictions of ``test``: each rank predicts its share, gathered in the test order."""
    mine = list(range(len(test)))[D.rank()::world]
    part = predict(model, task, [test[i] for i in mine], fitted)
    if world == 1:
        return part
    parts = D.all_gather((mine, part))
    concat = [i for idx, _ in parts for i in idx]  # test index of each gathered row
    pred = pd.concat([p for _, p in parts], ignore_index=True)
    return pred.iloc[np.argsort(concat, kind="stable")].reset_index(drop=True)


@torch.no_grad()
def validation_loss(model: torch.nn.Module, val: Sequence[Sample], fitted: T.FittedTask, dev: torch.device) -> float:
    """Mean loss over the validation cases (whole bags, eval mode), the same on every rank."""
    model.eval()
    out = float(np.mean([fitted.loss(model(_to(s.load(), dev)), fitted.target(s.labels, dev)).item() for s in val]))
    model.train()
    return out


@torch.no_grad()
def predict(model: torch.nn.Module, task: str, samples: Sequence[Sample], fitted: T.FittedTask | None = None
            ) -> pd.DataFrame:
    """One row per case: its labels and the task's prediction columns (``fitted``: the task as fitted
    on the training fold; without it nothing fitted is added, e.g. no survival bin)."""
    fitted = fitted if fitted is not None else T.get_task(task).unfitted()
    model.eval()
    rows = []
    for s in samples:
        xs = s.views() if s.views is not None else [s.load()]
        dev = next(model.parameters(), torch.empty(0)).device  # a parameter-free model runs on the CPU
        row: dict[str, Any] = {"case_id": s.case_id, **s.labels}
        if s.vote is not None:
            if not fitted.voting:
                raise TrainingError(f"voting over views is defined for classification and staging, not {task}")
            probs = torch.cat([torch.softmax(model(_to(x, dev)).float().cpu(), dim=1) for x in xs])  # (V, C), views one by one
            if not torch.isfinite(probs).all():
                raise TrainingError(f"the model predicted NaN/inf for case {s.case_id}")
            score = vote(probs, s.vote)
            row["pred"] = int(score.argmax())
            row.update({f"prob{k}": float(v) for k, v in enumerate(score)})
            row["n_views"] = int(probs.shape[0])
            rows.append(row)
            continue
        logits = torch.stack([model(_to(x, dev)).float().cpu() for x in xs]).mean(dim=0)
        if not torch.isfinite(logits).all():  # a saturated sigmoid would turn inf into a finite risk
            raise TrainingError(f"the model predicted NaN/inf logits for case {s.case_id}; it is not scored. "
                                "Fix: check that case's input (`bench doctor --dataset ...`)")
        row.update(fitted.row(logits, s.labels))
        if not all(np.isfinite(v) for k, v in row.items() if isinstance(v, float) and k not in s.labels):
            raise TrainingError(f"the model predicted NaN/inf for case {s.case_id}")
        rows.append(row)
    return pd.DataFrame(rows)
