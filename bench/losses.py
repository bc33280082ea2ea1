"""The losses and the survival arithmetic the tasks train with (torch imported when called).

``nll_survival_loss``: the discrete-time survival NLL of the Pixel-Mamba paper's Eq. 2 (as MCAT /
PORPOISE); ``survival_risk``: −Σ_k S_k; ``survival_bin_edges``/``survival_bins``: quartiles of the
training fold's uncensored times and a case's bin; ``class_weight_vector``/``weighted_cross_entropy``:
the staging/classification loss weights.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np
import pandas as pd

if TYPE_CHECKING:  # pragma: no cover
    import torch

N_BINS = 4
CLASS_WEIGHTS = ("inverse_frequency", "none")
BINS_CLOSED = ("right", "left")


# -- survival: the loss, the risk, the bins -------------------------------------------------------


def nll_survival_loss(logits: "torch.Tensor", y_bin: "torch.Tensor", event: "torch.Tensor",
                      alpha: float = 0.0, eps: float = 1e-7) -> "torch.Tensor":
    """Negative log-likelihood of discrete-time survival (Eq. 2), mean over the batch.

    hazards h = sigmoid(logits), S = cumprod(1 − h), S_pad = [1, S]. For an observed death in bin
    y: −log S_pad[y] − log h[y]; for a case censored in bin y: −log S_pad[y+1]. ``alpha`` weights
    the uncensored term alone (MCAT's mixing); runs use 0.

    Args:
        logits: (B, K) one logit per time bin.
        y_bin: (B,) bin index of the case's time.
        event: (B,) 1 = death observed, 0 = censored.
    """
    import torch

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


def survival_risk(logits: "torch.Tensor") -> "torch.Tensor":
    """risk = −Σ_k S_k: higher means earlier expected death."""
    import torch

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


def survival_bins(time: np.ndarray, edges: np.ndarray, closed: str = "right") -> np.ndarray:
    """Bin index of each time. ``closed="right"``: (e_k, e_{k+1}] as ``pd.cut``'s default;
    ``"left"``: [e_k, e_{k+1}) as MCAT's ``pd.cut(..., right=False)`` — a time equal to an inner
    edge lands one bin higher."""
    if closed not in BINS_CLOSED:
        raise ValueError(f"survival bins are closed 'right' or 'left', got {closed!r}")
    side = "left" if closed == "right" else "right"
    return np.clip(np.searchsorted(edges, np.asarray(time, dtype=float), side=side) - 1, 0, len(edges) - 2)


def class_weight_vector(labels: Sequence[int], n_out: int, how: str = "inverse_frequency") -> np.ndarray | None:
    """Per-class loss weights from the training fold's labels. ``inverse_frequency``: n / (C·n_c)
    over the C classes present (mean 1 over the cases; an absent class gets 1); ``none``: None."""
    if how not in CLASS_WEIGHTS:
        raise ValueError(f"class_weights must be one of {CLASS_WEIGHTS}, got {how!r}")
    if how == "none":
        return None
    counts = np.bincount(np.asarray(labels, dtype=int), minlength=n_out).astype(float)
    return np.where(counts > 0, counts.sum() / (np.count_nonzero(counts) * np.maximum(counts, 1)), 1.0)


def weighted_cross_entropy(logits: "torch.Tensor", target: "torch.Tensor",
                           weights: "torch.Tensor | None") -> "torch.Tensor":
    """Cross-entropy of each case times its class weight, averaged over the batch.

    Not ``F.cross_entropy(weight=...)``: its mean divides by the summed weights of the batch, so
    with one slide per step (the protocol here) the weight cancels and class balancing does
    nothing. The weights average 1 over the training cases, so the loss keeps its scale."""
    import torch.nn.functional as F

    loss = F.cross_entropy(logits, target, reduction="none")
    return (loss * weights[target]).mean() if weights is not None else loss.mean()


# -- tasks ----------------------------------------------------------------------------------------
