"""Tasks as objects: what a model predicts for a case, how it is trained, scored and split.

``staging``: 4 AJCC stages (I..IV), cross-entropy (class weights a protocol option), macro-F1.
``survival``: discrete-time hazards over 4 bins, the NLL of the Pixel-Mamba paper's Eq. 2 (as in
MCAT/PORPOISE), risk = −Σ_k S_k, C-index. Bins are cut on the *training fold's* uncensored times
only — the public implementations cut them on the whole cohort, which leaks the test fold.
``classification``: binary label, cross-entropy, AUC and accuracy.

Every behaviour that depends on the task lives on its :class:`Task` (no ``if task == ...``
elsewhere): the spec (label columns, metric, outputs, title), :meth:`Task.fit` on the training fold
(bin edges, class weights) returning a :class:`FittedTask` that gives targets, loss and prediction
rows, :meth:`Task.score`, :meth:`Task.strata` for the split manager and
:meth:`Task.batched_metric` for ``--stats``.

Importing this module imports neither torch nor scikit-learn/scikit-survival (``bench ls`` lists
task names from it): the methods that need them import them when called.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Mapping, Sequence

import numpy as np
import pandas as pd

if TYPE_CHECKING:  # pragma: no cover
    import torch

from .losses import (BINS_CLOSED, CLASS_WEIGHTS, N_BINS, class_weight_vector, nll_survival_loss,  # noqa: F401
                     survival_bin_edges, survival_bins, survival_risk, weighted_cross_entropy)

N_STAGES = 4
STAGE_NAMES = ("I", "II", "III", "IV")


def __getattr__(name: str) -> Any:
    # ``tasks.metrics`` stays available (callers catch ``metrics.UndefinedMetric``) without
    # importing scikit-learn / scikit-survival with this module
    if name == "metrics":
        from . import metrics

        return metrics
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _guarded(f):
    """The metric, or NaN where it is undefined (e.g. no event in a fold)."""
    from . import metrics

    def g(df: pd.DataFrame) -> float:
        try:
            return f(df)
        except metrics.UndefinedMetric:
            return float("nan")
    return g


@dataclass(frozen=True)
class Task:
    """A task's spec (torch-free) and behaviour. Subclasses fill in the behaviour."""

    name: str
    label_columns: tuple[str, ...]
    metric: str  # the primary metric: the table's figure, the tuner's objective
    title: str  # the column group of Table 2 (the table adds the fold count and the metric)
    metric_name: str  # the metric as a table header writes it
    suffix: str  # the paper's model-name suffix (Pixel-Mamba-Surv)
    outputs: int
    higher_is_better: bool = True
    label_arrays: tuple[str, ...] = ("y",)  # the keys of :meth:`columns` that hold labels, not predictions

    def n_out(self, n_bins: int = N_BINS) -> int:
        return self.outputs

    def labelled(self, cohort: pd.DataFrame) -> pd.DataFrame:
        """Rows with every label the task needs."""
        cols = list(self.label_columns)
        if any(c not in cohort.columns for c in cols):
            return cohort.iloc[0:0]
        return cohort.dropna(subset=cols)

    def degenerate(self, cases: pd.DataFrame) -> str | None:
        """Why the task's metric cannot be computed on these labelled cases at all (one class, no
        event), else None."""
        return None

    # training ---------------------------------------------------------------------------------
    def fit(self, train_labels: Sequence[Mapping[str, float]], n_out: int | None = None, *,
            class_weights: str = "inverse_frequency", survival_bins_closed: str = "right") -> "FittedTask":
        """What the task learns from the training fold (never the test fold)."""
        raise NotImplementedError

    def unfitted(self) -> "FittedTask":
        """Predicting without a training fold (nothing learnt: no weights, no bins)."""
        raise NotImplementedError

    def estimator_targets(self, labels: Sequence[Mapping[str, float]]) -> Any:
        """The training labels as scikit-learn (class labels) or scikit-survival (a structured
        event/time array) estimators take them: the closed-form pooled baselines fit on these."""
        return np.array([int(lab[self.label_columns[0]]) for lab in labels])

    # scoring ----------------------------------------------------------------------------------
    def score(self, pred: pd.DataFrame) -> dict[str, float | str]:
        """Metrics of one test fold from its predictions table (one row per case)."""
        from . import metrics

        out: dict[str, float | str] = {}
        try:
            self._score(pred, out)
        except metrics.UndefinedMetric as exc:
            out[self.metric] = float("nan")
            out["undefined"] = str(exc)
        return out

    def _score(self, pred: pd.DataFrame, out: dict[str, float | str]) -> None:
        """Fill ``out`` metric by metric (a later undefined one keeps the earlier ones)."""
        raise NotImplementedError

    def primary(self, pred: pd.DataFrame) -> float:
        """The primary metric on a frame of predictions, NaN where undefined."""
        raise NotImplementedError

    def columns(self, pred: pd.DataFrame) -> dict[str, np.ndarray]:
        """The arrays :meth:`batched_metric` reads."""
        raise NotImplementedError

    def batched_metric(self, cols: dict[str, np.ndarray], idx: np.ndarray) -> np.ndarray:
        """The primary metric on many resamples at once (see ``bench.report.stats``)."""
        raise NotImplementedError

    def permuted_metric(self, cols: dict[str, np.ndarray], perms: np.ndarray, chunk_cells: int = 1 << 24) -> np.ndarray:
        """The primary metric with the labels of case ``perms[b, i]`` paired with the predictions of
        case ``i``, for every row ``b`` of ``perms`` (the permutation test against chance): the
        resamples are laid end to end as one long column set for :meth:`batched_metric`."""
        m = perms.shape[1]
        step = max(1, chunk_cells // max(1, m * m))
        out = []
        for b in range(0, len(perms), step):
            pb = perms[b:b + step]
            flat = {k: (v[pb] if k in self.label_arrays else np.broadcast_to(v, pb.shape)).reshape(-1)
                    for k, v in cols.items()}
            out.append(self.batched_metric(flat, np.arange(pb.size).reshape(pb.shape)))
        return np.concatenate(out) if out else np.empty(0)

    # splits -----------------------------------------------------------------------------------
    def strata(self, cases: pd.DataFrame, n_folds: int) -> np.ndarray:
        """Stratification label per case (cases sorted by case_id)."""
        raise NotImplementedError

    stratum_name: str = "stratum"

    def fold_summary(self, sub: pd.DataFrame) -> dict[str, object]:
        """The audit's counts of one test fold."""
        return {}

    def fold_note(self, sub: pd.DataFrame, cohort: pd.DataFrame) -> str | None:
        """What a test fold lacks that changes its metric (said when folds are written)."""
        return None

    absent_effect: str = ""


@dataclass
class FittedTask:
    """A task fitted on one training fold: the targets and loss of a case, its prediction row."""

    task: Task

    def target(self, labels: Mapping[str, float], device: Any = None) -> dict[str, "torch.Tensor"]:
        raise NotImplementedError

    def loss(self, logits: "torch.Tensor", target: dict[str, "torch.Tensor"]) -> "torch.Tensor":
        raise NotImplementedError

    def row(self, logits: "torch.Tensor", labels: Mapping[str, float]) -> dict[str, Any]:
        """Prediction columns of one case from its (1, n_out) logits."""
        raise NotImplementedError

    def info(self) -> dict[str, Any]:
        """What was fitted, for the unit's record."""
        return {"bin_edges": None}

    voting: ClassVar[bool] = True  # a voting ensemble over views is defined

    def to(self, device: Any) -> "FittedTask":
        return self


# classification-like tasks (staging, classification): one class per case ------------------------


@dataclass(frozen=True)
class _ClassTask(Task):
    label: str = ""

    def fit(self, train_labels, n_out=None, *, class_weights="inverse_frequency", survival_bins_closed="right"):
        n = n_out or self.outputs
        w = class_weight_vector([int(lab[self.label]) for lab in train_labels], n, class_weights)
        return _FittedClass(self, w)

    def unfitted(self):
        return _FittedClass(self, None)

    def degenerate(self, cases):
        values = cases[self.label].dropna().unique() if self.label in cases else []
        if len(cases) and len(values) < 2:
            return (f"every one of its {len(cases)} cases has {self.label} = {values[0]:g} (one class), so "
                    f"{self.metric_name} measures nothing")
        return None

    def _pred(self, pred: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
        return pred[self.label].astype(int), pred["pred"].astype(int)


@dataclass
class _FittedClass(FittedTask):
    weights_np: np.ndarray | None = None
    weights: Any = None

    def __post_init__(self) -> None:
        if self.weights_np is not None:
            import torch

            self.weights = torch.tensor(self.weights_np, dtype=torch.float32)

    def to(self, device: Any) -> "FittedTask":
        if self.weights is not None:
            self.weights = self.weights.to(device)
        return self

    def target(self, labels, device=None):
        import torch

        key = self.task.label  # type: ignore[attr-defined]
        return {key: torch.tensor([int(labels[key])], device=device)}

    def loss(self, logits, target):
        return weighted_cross_entropy(logits, target[self.task.label], self.weights)  # type: ignore[attr-defined]

    def row(self, logits, labels):
        import torch

        prob = torch.softmax(logits, dim=1)[0]
        return {"pred": int(prob.argmax()), **{f"prob{k}": float(v) for k, v in enumerate(prob)}}



@dataclass(frozen=True)
class Staging(_ClassTask):
    stratum_name: str = "stage"
    absent_effect: str = "macro-F1 of those folds averages over the stages present"

    def _score(self, pred, out):
        from . import metrics

        y, p = self._pred(pred)
        out["macro_f1"] = metrics.macro_f1(y, p)
        out["accuracy"] = metrics.accuracy(y, p)

    def primary(self, pred):
        from . import metrics

        return _guarded(lambda d: metrics.macro_f1(*self._pred(d)))(pred)

    def columns(self, pred):
        return {"y": pred[self.label].to_numpy(int), "p": pred["pred"].to_numpy(int)}

    def batched_metric(self, cols, idx):
        y, p = cols["y"][idx], cols["p"][idx]
        k = int(max(cols["y"].max(), cols["p"].max())) + 1
        ky = y[:, :, None] == np.arange(k)  # (B, m, K)
        kp = p[:, :, None] == np.arange(k)
        tp = (ky & kp).sum(1)
        support = ky.sum(1) + kp.sum(1)  # (B, K): true + predicted counts
        present = support > 0  # sklearn's macro average: labels in y_true or y_pred
        f1 = np.where(present, 2 * tp / np.maximum(support, 1), 0.0)
        return f1.sum(1) / present.sum(1)

    def strata(self, cases, n_folds):
        return cases[self.label].astype(int).to_numpy()

    def fold_summary(self, sub):
        return {f"stage_{STAGE_NAMES[s]}": int((sub[self.label] == s).sum()) for s in range(N_STAGES)}

    def fold_note(self, sub, cohort):
        have = set(cohort[self.label].astype(int))
        absent = [STAGE_NAMES[s] for s in range(N_STAGES) if s in have and s not in set(sub[self.label].astype(int))]
        return f"has no stage {', '.join(absent)}" if absent else None


@dataclass(frozen=True)
class Classification(_ClassTask):
    def _score(self, pred, out):
        from . import metrics

        y, p = self._pred(pred)
        out["accuracy"] = metrics.accuracy(y, p)
        out["auc"] = metrics.auc(y, pred["prob1"])

    def primary(self, pred):
        from . import metrics

        return _guarded(lambda d: metrics.auc(d[self.label].astype(int), d["prob1"]))(pred)

    def columns(self, pred):
        return {"y": pred[self.label].to_numpy(int), "s": pred["prob1"].to_numpy(float)}

    def batched_metric(self, cols, idx):
        y, s = cols["y"][idx], cols["s"][idx]
        pos, neg = y == 1, y == 0
        d = s[:, :, None] - s[:, None, :]
        pairs = pos[:, :, None] & neg[:, None, :]
        num = (pairs & (d > 0)).sum((1, 2)) + 0.5 * (pairs & (d == 0)).sum((1, 2))
        den = pairs.sum((1, 2))
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(den > 0, num / np.maximum(den, 1), np.nan)

    def strata(self, cases, n_folds):
        return cases[self.label].astype(int).to_numpy()

    def fold_summary(self, sub):
        return {"positives": int(sub[self.label].sum())}


# survival ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Survival(Task):
    absent_effect: str = "those folds are reported as undefined and left out of the mean"
    label_arrays: tuple[str, ...] = ("time", "event")

    def estimator_targets(self, labels: Sequence[Mapping[str, float]]) -> Any:
        from sksurv.util import Surv

        return Surv.from_arrays(event=[bool(lab["event"]) for lab in labels], time=[float(lab["time"]) for lab in labels])

    def n_out(self, n_bins: int = N_BINS) -> int:
        return n_bins

    def fit(self, train_labels, n_out=None, *, class_weights="inverse_frequency", survival_bins_closed="right"):
        if survival_bins_closed not in BINS_CLOSED:
            raise ValueError(f"survival_bins_closed must be one of {BINS_CLOSED}, got {survival_bins_closed!r}")
        edges = survival_bin_edges(np.array([lab["time"] for lab in train_labels]),
                                   np.array([lab["event"] for lab in train_labels]))
        return _FittedSurvival(self, edges, survival_bins_closed)

    def unfitted(self):
        return _FittedSurvival(self, None)

    def degenerate(self, cases):
        if len(cases) and "event" in cases and not (cases["event"] == 1).any():
            return f"none of its {len(cases)} cases has an observed event (event = 1), so the C-index is undefined"
        return None

    def _score(self, pred, out):
        from . import metrics

        out["c_index"] = metrics.c_index(pred["time"], pred["event"], pred["risk"])

    def primary(self, pred):
        from . import metrics

        return _guarded(lambda d: metrics.c_index(d["time"].to_numpy(), d["event"].to_numpy(),
                                                  d["risk"].to_numpy()))(pred)

    def columns(self, pred):
        return {"time": pred["time"].to_numpy(float), "event": pred["event"].to_numpy(float) > 0,
                "risk": pred["risk"].to_numpy(float)}

    def batched_metric(self, cols, idx):
        t, e, r = cols["time"][idx], cols["event"][idx], cols["risk"][idx]  # (B, m)
        ti, tj = t[:, :, None], t[:, None, :]
        # sksurv: i (an event) is comparable with j if j lives longer, or is censored at the same time
        comp = e[:, :, None] & ((tj > ti) | ((tj == ti) & ~e[:, None, :]))  # (B, m, m)
        if "stratum" in cols:  # only pairs within one stratum (one fold's model: one risk scale)
            st = cols["stratum"][idx]
            comp &= st[:, :, None] == st[:, None, :]
        d = r[:, :, None] - r[:, None, :]
        ties = np.abs(d) <= 1e-8
        num = (comp & (d > 0) & ~ties).sum((1, 2)) + 0.5 * (comp & ties).sum((1, 2))
        den = comp.sum((1, 2))
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(den > 0, num / np.maximum(den, 1), np.nan)

    def permuted_metric(self, cols, perms, chunk_cells=1 << 24):
        # the same null, faster: moving the labels by a permutation is moving the risks by its
        # inverse, so the comparable pairs are found once and only the risks move
        perms = np.argsort(perms, axis=1)
        t, e, r = cols["time"], cols["event"], cols["risk"]
        comp = e[:, None] & ((t[None, :] > t[:, None]) | ((t[None, :] == t[:, None]) & ~e[None, :]))
        if "stratum" in cols:  # as batched_metric; perms must then move cases within their stratum
            comp &= cols["stratum"][:, None] == cols["stratum"][None, :]
        i, j = np.nonzero(comp)
        if len(i) == 0:
            return np.full(len(perms), np.nan)
        # risks as dense ranks, values within 1e-8 of each other tied (as in batched_metric), so
        # C = 1/2 + (concordant - discordant) / (2 * pairs) is a sum of signs of small integers
        order = np.argsort(r, kind="stable")
        rank = np.empty(len(r), np.int32)
        rank[order] = np.cumsum(np.r_[0, np.diff(r[order]) > 1e-8])
        out, step = [], max(1, chunk_cells // len(i))
        for b in range(0, len(perms), step):
            rp = rank[perms[b:b + step]]  # (step, m) risks moved to other cases
            out.append(np.sign(rp[:, i] - rp[:, j]).sum(1, dtype=np.int64))
        return 0.5 + np.concatenate(out) / (2 * len(i))

    def strata(self, cases, n_folds):
        event = cases["event"].astype(int).to_numpy()
        # as many time quantiles as keep every event × quantile stratum at >= n_folds cases
        for q in (4, 3, 2):
            tq = pd.qcut(cases["time"].rank(method="first"), q=q, labels=False).to_numpy()
            s = event * q + tq
            counts = np.bincount(s)
            if (counts[counts > 0] >= n_folds).all():
                return s
        return event

    def fold_summary(self, sub):
        return {"events": int(sub["event"].sum()), "censored": int((sub["event"] == 0).sum()),
                "median_time": round(float(sub["time"].median()), 1)}

    def fold_note(self, sub, cohort):
        return None if (sub["event"] == 1).any() else "has no observed event (its C-index will be undefined)"


@dataclass
class _FittedSurvival(FittedTask):
    edges: np.ndarray | None = None
    closed: str = "right"
    voting: ClassVar[bool] = False

    def y_bin(self, time: float) -> int:
        return int(survival_bins(np.array([time]), self.edges, self.closed)[0])

    def target(self, labels, device=None):
        import torch

        return {"y_bin": torch.tensor([self.y_bin(labels["time"])], device=device),
                "event": torch.tensor([labels["event"]], dtype=torch.float32, device=device)}

    def loss(self, logits, target):
        return nll_survival_loss(logits, target["y_bin"], target["event"])

    def row(self, logits, labels):
        import torch

        surv = torch.cumprod(1 - torch.sigmoid(logits), dim=1)[0]
        row = {"risk": float(survival_risk(logits)[0]), **{f"S{k + 1}": float(v) for k, v in enumerate(surv)}}
        if self.edges is not None:
            row["y_bin"] = self.y_bin(labels["time"])
        return row

    def info(self) -> dict[str, Any]:
        return {"bin_edges": None if self.edges is None else [float(e) for e in self.edges]}


TASKS: dict[str, Task] = {
    "staging": Staging("staging", ("stage",), "macro_f1", "Tumor Staging", "Macro-F1",
                       "Stage", N_STAGES, label="stage"),
    "survival": Survival("survival", ("time", "event"), "c_index", "Survival Analysis",
                         "C-index", "Surv", N_BINS),
    "classification": Classification("classification", ("label",), "auc", "Classification", "AUC", "Cls", 2,
                                     label="label"),
}


def get_task(name: "str | Task") -> Task:
    if isinstance(name, Task):
        return name
    try:
        return TASKS[name]
    except KeyError:
        raise KeyError(f"unknown task {name!r}; tasks are {', '.join(TASKS)}") from None


def labelled(cohort: pd.DataFrame, task: str) -> pd.DataFrame:
    """Rows with every label the task needs."""
    return get_task(task).labelled(cohort)


def score(task: str, pred: pd.DataFrame) -> dict[str, float | str]:
    """Metrics of one test fold from its predictions table (one row per case)."""
    return get_task(task).score(pred)
