"""Kaplan–Meier figures of out-of-fold risk: high/low risk split at the median, log-rank p-value.

Statistics come from scikit-survival (``kaplan_meier_estimator``, ``compare_survival``); a split
that leaves one group empty (all risks equal) draws one curve and reports p as undefined instead of
crashing.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sksurv.compare import compare_survival  # noqa: E402
from sksurv.nonparametric import kaplan_meier_estimator  # noqa: E402
from sksurv.util import Surv  # noqa: E402


def logrank_p(time: np.ndarray, event: np.ndarray, group: np.ndarray) -> float:
    """Log-rank test p-value between groups; NaN when fewer than two groups or no event."""
    if len(np.unique(group)) < 2 or not np.asarray(event).astype(bool).any():
        return float("nan")
    y = Surv.from_arrays(event=np.asarray(event).astype(bool), time=np.asarray(time, dtype=float))
    _, p = compare_survival(y, np.asarray(group))
    return float(p)


def km_figure(pred: pd.DataFrame, title: str, out: Path | str) -> float:
    """Draw the KM curves of the high- and low-risk halves of ``pred`` (columns time, event, risk)
    and write ``out`` (PNG or PDF by suffix). Returns the log-rank p-value (NaN if undefined)."""
    time = pred["time"].to_numpy(float)
    event = pred["event"].to_numpy().astype(bool)
    risk = pred["risk"].to_numpy(float)
    high = risk > np.median(risk)
    p = logrank_p(time, event, high)
    fig, ax = plt.subplots(figsize=(4.2, 3.4), dpi=150)
    for mask, name, color in ((~high, "low risk", "tab:blue"), (high, "high risk", "tab:red")):
        if not mask.any():
            continue
        t, s = kaplan_meier_estimator(event[mask], time[mask])
        ax.step(np.r_[0, t], np.r_[1.0, s], where="post", color=color, label=f"{name} (n={int(mask.sum())})")
        cens = ~event[mask]
        if cens.any():  # censoring ticks at the curve's value
            tc = time[mask][cens]
            ax.plot(tc, np.interp(tc, np.r_[0, t], np.r_[1.0, s], right=s[-1]), "|", color=color, ms=6)
    ptxt = "log-rank p undefined (one group)" if math.isnan(p) else f"log-rank p = {p:.2g}"
    ax.plot([], [], " ", label=ptxt)
    ax.set_xlabel("time (months)")
    ax.set_ylabel("survival probability")
    ax.set_ylim(0, 1.05)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="lower left", frameon=False)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return p
