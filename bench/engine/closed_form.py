"""Models fitted in closed form on the training fold (``model.closed_form``: the pooled-embedding
baselines, ``baselines/pooled.py``): no gradient steps; the same samples in, the same prediction
rows, train log and info out as :func:`bench.engine.train.train_and_predict`."""

from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from .. import tasks as T
from .train import Sample, TrainConfig, TrainingError, predict


def fit_and_predict(model: torch.nn.Module, task: str, train: Sequence[Sample], test: Sequence[Sample],
                    cfg: TrainConfig) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Fit ``model`` on the pooled embeddings of ``train``, predict ``test``."""
    from baselines.pooled import pooled

    t0 = time.perf_counter()
    fitted = T.get_task(task).fit([s.labels for s in train], model.head.out_features)
    with torch.no_grad():
        X = torch.stack([pooled(s.load()) for s in train]).double().numpy()  # (n_train, D)
    try:
        chosen = model.fit(X, T.get_task(task).estimator_targets([s.labels for s in train]), cfg.seed)
    except ValueError as err:
        raise TrainingError(str(err)) from None
    seconds = time.perf_counter() - t0
    pred = predict(model, task, test, fitted)
    info = {"train_seconds": seconds, "train_cases": len(train), "test_cases": len(test), "world_size": 1,
            **fitted.info(), **{f"inner_cv_{k}": v for k, v in chosen.items()}}
    return pred, pd.DataFrame([{"epoch": 1, "loss": float("nan"), "lr": 0.0, "seconds": seconds}]), info
