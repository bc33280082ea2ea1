"""Pooled-embedding baselines (the floor Patho-Bench reports every MIL model against): the mean of a
slide's patch embeddings, standardised with training-fold statistics, then

* ``linear``: scikit-learn ``LogisticRegression`` with balanced class weights, C chosen by an inner
  cross-validation on the training fold (``LogisticRegressionCV``, stratified);
* ``coxnet``: scikit-survival ``CoxnetSurvivalAnalysis`` (elastic net, l1_ratio 0.5), alpha chosen
  by an inner cross-validation of Harrell's C on the training fold.

Both are fitted in closed form (no gradient steps): the unit executor calls :meth:`fit` on the
training fold's pooled embeddings, then predicts through ``forward`` like any aggregator. The
fitted map is held as a ``torch.nn.Linear`` so records, predictions and tables are the usual ones.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

INNER_FOLDS = 5
MISSING_CLASS_LOGIT = -30.0  # a class absent from the training fold is never predicted


def pooled(x: Any) -> torch.Tensor:
    """A bag (N, D) or a ``Bag`` -> its mean embedding (D,)."""
    feats = x.valid_features() if hasattr(x, "valid_features") else x
    return feats.reshape(-1, feats.shape[-1]).float().mean(dim=0)  # (D,)


class PooledLinear(nn.Module):
    """mean-pool -> standardise -> linear map to ``n_out`` logits."""

    closed_form = True

    def __init__(self, n_out: int, in_dim: int) -> None:
        super().__init__()
        self.register_buffer("center", torch.zeros(in_dim))
        self.register_buffer("scale", torch.ones(in_dim))
        self.head = nn.Linear(in_dim, n_out)

    def forward(self, x: Any) -> torch.Tensor:
        z = (pooled(x) - self.center) / self.scale  # (D,)
        return self.head(z)[None]  # (1, n_out)

    def _standardise(self, X: np.ndarray) -> np.ndarray:
        self.center.copy_(torch.from_numpy(X.mean(0)))
        self.scale.copy_(torch.from_numpy(np.where(X.std(0) > 0, X.std(0), 1.0)))
        return (X - self.center.numpy()) / self.scale.numpy()


class LinearProbe(PooledLinear):
    """Class-balanced logistic regression on the pooled embedding (staging, classification)."""

    def fit(self, X: np.ndarray, y: np.ndarray, seed: int) -> dict[str, Any]:
        from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
        from sklearn.model_selection import StratifiedKFold

        if y.dtype.names:  # scikit-survival's structured (event, time) targets
            raise ValueError("linear.<encoder> is a classification probe; survival uses coxnet.<encoder>")
        Xs = self._standardise(X)
        classes, counts = np.unique(y, return_counts=True)
        k = min(INNER_FOLDS, int(counts.min()))
        if len(classes) < 2:
            raise ValueError(f"the training fold holds one class only ({classes[0]}); a probe needs two")
        if k >= 2:
            clf = LogisticRegressionCV(Cs=10, cv=StratifiedKFold(k, shuffle=True, random_state=seed),
                                       class_weight="balanced", max_iter=2000, scoring="balanced_accuracy")
        else:  # a class with one training case: no stratified inner split exists
            clf = LogisticRegression(C=1.0, class_weight="balanced", max_iter=2000)
        clf.fit(Xs, y)
        coef, bias = clf.coef_, clf.intercept_
        if len(classes) == 2:  # sklearn's binary model: one score for the second class
            coef, bias = np.vstack([np.zeros_like(coef), coef]), np.concatenate([[0.0], bias])
        with torch.no_grad():
            self.head.weight.zero_()
            self.head.bias.fill_(MISSING_CLASS_LOGIT)
            for row, c in enumerate(classes.astype(int)):
                self.head.weight[c] = torch.from_numpy(coef[row]).float()
                self.head.bias[c] = float(bias[row])
        C = float(np.atleast_1d(getattr(clf, "C_", [1.0]))[0])
        return {"C": C, "inner_folds": k if k >= 2 else 0}


class CoxNetProbe(PooledLinear):
    """Elastic-net Cox model on the pooled embedding (survival): every hazard logit is the linear
    predictor, so the harness's risk (minus the summed survival) orders cases as the Cox risk does."""

    def fit(self, X: np.ndarray, y: np.ndarray, seed: int) -> dict[str, Any]:
        from sklearn.model_selection import GridSearchCV, StratifiedKFold
        from sksurv.linear_model import CoxnetSurvivalAnalysis

        if not y.dtype.names:  # class labels, not scikit-survival's (event, time) targets
            raise ValueError("coxnet.<encoder> is a survival model; staging and classification use linear.<encoder>")
        Xs = self._standardise(X)
        path = CoxnetSurvivalAnalysis(l1_ratio=0.5, alpha_min_ratio=0.01, n_alphas=20).fit(Xs, y)
        k = min(INNER_FOLDS, int(y["event"].sum()), int((~y["event"]).sum()) or INNER_FOLDS)
        best = float(path.alphas_[len(path.alphas_) // 2])
        if k >= 2:
            grid = GridSearchCV(CoxnetSurvivalAnalysis(l1_ratio=0.5),
                                {"alphas": [[float(a)] for a in path.alphas_]},
                                # stratified by event, so no inner test fold is all censored
                                cv=list(StratifiedKFold(k, shuffle=True, random_state=seed).split(Xs, y["event"])),
                                error_score=0.5)
            grid.fit(Xs, y)
            best = float(grid.best_params_["alphas"][0])
        model = CoxnetSurvivalAnalysis(l1_ratio=0.5, alphas=[best]).fit(Xs, y)
        with torch.no_grad():
            self.head.weight.copy_(torch.from_numpy(model.coef_[:, 0]).float().expand_as(self.head.weight))
            self.head.bias.zero_()
        return {"alpha": best, "inner_folds": k if k >= 2 else 0}
