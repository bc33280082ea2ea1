"""Tasks: what a model predicts for a case, its loss, and how its predictions are scored.

``staging``: 4 AJCC stages (I..IV), cross-entropy, macro-F1.
``survival``: discrete-time hazards over 4 bins, the NLL of the Pixel-Mamba paper's Eq. 2 (as in
MCAT/PORPOISE), risk = −Σ_k S_k, C-index. Bins are cut on the *training fold's* uncensored times
only — the public implementations cut them on the whole cohort, which leaks the test fold.
``classification``: binary label, cross-entropy, AUC and accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from .. import metrics

N_STAGES = 4
N_BINS = 4


def nll_survival_loss(logits: torch.Tensor, y_bin: torch.Tensor, event: torch.Tensor,
                      alpha: float = 0.0, eps: float = 1e-7) -> torch.Tensor:
    """Negative log-likelihood of discrete-time survival (Eq. 2), mean over the batch.

    hazards h = sigmoid(logits), S = cumprod(1 − h), S_pad = [1, S]. For an observed death in bin
    y: −log S_pad[y] − log h[y]; for a case censored in bin y: −log S_pad[y+1]. ``alpha`` weights
    the uncensored term alone (MCAT's mixing); runs use 0.

    Args:
        logits: (B, K) one logit per time bin.
        y_bin: (B,) bin index of the case's time.
        event: (B,) 1 = death observed, 0 = censored.
    """
    y = y_bin.long().view(-1, 1)
    c = 1.0 - event.float().view(-1, 1)  # censorship indicator
    hazards = torch.sigmoid(logits)
    surv = torch.cumprod(1 - hazards, dim=1)
    surv_pad = torch.cat([torch.ones_like(surv[:, :1]), surv], dim=1)  # (B, K+1)
    s_prev = torch.gather(surv_pad, 1, y).clamp(min=eps)
    h_this = torch.gather(hazards, 1, y).clamp(min=eps)
    s_this = torch.gather(surv_pad, 1, y + 1).clamp(min=eps)
    uncensored = -(1 - c) * (torch.log(s_prev) + torch.log(h_this))
    censored = -c * torch.log(s_this)
    loss = (1 - alpha) * (censored + uncensored) + alpha * uncensored
    return loss.mean()


def survival_risk(logits: torch.Tensor) -> torch.Tensor:
    """risk = −Σ_k S_k: higher means earlier expected death."""
    return -torch.cumprod(1 - torch.sigmoid(logits), dim=1).sum(dim=1)


def survival_bin_edges(train_time: np.ndarray, train_event: np.ndarray, n_bins: int = N_BINS) -> np.ndarray:
    """Quartiles of the training fold's uncensored times; outer edges open (−inf, +inf), so a test
    case outside the training range falls in the first or last bin."""
    t = np.asarray(train_time, dtype=float)[np.asarray(train_event).astype(bool)]
    if len(t) < n_bins:
        raise ValueError(f"cannot cut {n_bins} survival bins from {len(t)} observed events in the training fold")
    _, edges = pd.qcut(t, q=n_bins, retbins=True, duplicates="drop")
    edges = np.asarray(edges, dtype=float)
    edges[0], edges[-1] = -np.inf, np.inf
    return edges


def survival_bins(time: np.ndarray, edges: np.ndarray) -> np.ndarray:
    # right-closed bins like pd.cut: (e_{k}, e_{k+1}]
    return np.clip(np.searchsorted(edges, np.asarray(time, dtype=float), side="left") - 1, 0, len(edges) - 2)


@dataclass(frozen=True)
class Task:
    name: str
    label_columns: tuple[str, ...]
    metric: str
    higher_is_better: bool = True

    def n_out(self, n_bins: int = N_BINS) -> int:
        return {"staging": N_STAGES, "survival": n_bins, "classification": 2}[self.name]


TASKS: dict[str, Task] = {
    "staging": Task("staging", ("stage",), "macro_f1"),
    "survival": Task("survival", ("time", "event"), "c_index"),
    "classification": Task("classification", ("label",), "auc"),
}


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise KeyError(f"unknown task {name!r}; tasks are {', '.join(TASKS)}") from None


def labelled(cohort: pd.DataFrame, task: str) -> pd.DataFrame:
    """Rows with every label the task needs."""
    cols = list(get_task(task).label_columns)
    missing = [c for c in cols if c not in cohort.columns]
    if missing:
        return cohort.iloc[0:0]
    return cohort.dropna(subset=cols)


def score(task: str, pred: pd.DataFrame) -> dict[str, float | str]:
    """Metrics of one test fold from its predictions table (one row per case)."""
    out: dict[str, float | str] = {}
    try:
        if task == "staging":
            out["macro_f1"] = metrics.macro_f1(pred["stage"].astype(int), pred["pred"].astype(int))
            out["accuracy"] = metrics.accuracy(pred["stage"].astype(int), pred["pred"].astype(int))
        elif task == "survival":
            out["c_index"] = metrics.c_index(pred["time"], pred["event"], pred["risk"])
        elif task == "classification":
            out["accuracy"] = metrics.accuracy(pred["label"].astype(int), pred["pred"].astype(int))
            out["auc"] = metrics.auc(pred["label"].astype(int), pred["prob1"])
        else:
            raise KeyError(task)
    except metrics.UndefinedMetric as exc:
        out[get_task(task).metric] = float("nan")
        out["undefined"] = str(exc)
    return out


def loss_fn(task: str, logits: torch.Tensor, target: dict[str, torch.Tensor]) -> torch.Tensor:
    if task == "survival":
        return nll_survival_loss(logits, target["y_bin"], target["event"])
    key = "stage" if task == "staging" else "label"
    return F.cross_entropy(logits, target[key].long())
