"""The evaluator's metrics: thin wrappers over scikit-learn and scikit-survival so that every
method is scored by the same, audited code."""

from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score
from sksurv.metrics import concordance_index_censored


class UndefinedMetric(ValueError):
    """The metric has no value on this data (e.g. a C-index on a fold with no observed event)."""


def macro_f1(y_true, y_pred) -> float:
    """Macro-averaged F1 over the labels present in ``y_true`` or ``y_pred`` (scikit-learn's
    default label set), so a stage absent from a test fold neither crashes nor counts as zero
    unless it was predicted."""
    return float(f1_score(np.asarray(y_true), np.asarray(y_pred), average="macro", zero_division=0))


def c_index(time, event, risk) -> float:
    """Harrell's C-index (scikit-survival). ``event`` 1 = death observed; higher risk = earlier death.

    Raises :class:`UndefinedMetric` when no event is observed, where the C-index is undefined.
    """
    time = np.asarray(time, dtype=float)
    event = np.asarray(event).astype(bool)
    risk = np.asarray(risk, dtype=float)
    if not event.any():
        raise UndefinedMetric("C-index is undefined: no observed event (all cases censored)")
    if not np.isfinite(risk).all():
        raise UndefinedMetric("C-index is undefined: predicted risks contain NaN or inf")
    try:
        return float(concordance_index_censored(event, time, risk)[0])
    except ValueError as exc:  # e.g. no comparable pairs
        raise UndefinedMetric(f"C-index is undefined: {exc}") from exc


def auc(y_true, score) -> float:
    y_true = np.asarray(y_true)
    if len(np.unique(y_true)) < 2:
        raise UndefinedMetric("AUC is undefined: the test fold holds one class only")
    return float(roc_auc_score(y_true, np.asarray(score, dtype=float)))


def accuracy(y_true, y_pred) -> float:
    return float(accuracy_score(np.asarray(y_true), np.asarray(y_pred)))


def is_defined(value: float | None) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))
