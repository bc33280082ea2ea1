"""Kaplan–Meier figures of out-of-fold risk, drawn as clinical journals expect them.

Risk groups: each test fold's predicted risks split at that fold's median (high: risk above it),
then the folds' groups pooled. Each fold's model scores risks on its own scale, so one median over
all folds would sort cases by which model scored them as much as by their risk. Per group, lifelines' ``KaplanMeierFitter`` gives the curve, its 95% confidence band
(exponential Greenwood) and the median survival with its confidence interval; ``logrank_test``
the p-value; ``add_at_risk_counts`` the number-at-risk table under the axis. The legend sits
above the axes, so no curve crosses it, and a footer states how the groups were formed. A split
that leaves one group empty (all risks equal) draws one curve and reports p as undefined.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

GROUPS = (("Low risk", "#1f77b4"), ("High risk", "#d62728"))
TIME_UNIT = "months"


def folds_text(n: int) -> str:
    return f"{n} fold" if n == 1 else f"{n} folds"


def logrank_p(time: np.ndarray, event: np.ndarray, group: np.ndarray) -> float:
    """Log-rank test p-value between two groups; NaN when a group is empty or there is no event."""
    from lifelines.statistics import logrank_test

    group = np.asarray(group).astype(bool)
    event = np.asarray(event).astype(bool)
    if group.all() or not group.any() or not event.any():
        return float("nan")
    time = np.asarray(time, dtype=float)
    return float(logrank_test(time[~group], time[group], event[~group], event[group]).p_value)


def _median_text(kmf: Any) -> str:
    """"median 31.2 (95% CI 20.1–NR)"; NR: not reached (the curve stays above 0.5)."""
    from lifelines.utils import median_survival_times

    def num(v: float) -> str:
        return "NR" if not math.isfinite(v) else f"{v:.1f}"

    ci = median_survival_times(kmf.confidence_interval_).to_numpy(float).ravel()
    return f"median {num(kmf.median_survival_time_)} mo (95% CI {num(ci[0])}–{num(ci[1])})"


def risk_groups(pred: pd.DataFrame) -> np.ndarray:
    """True for the high-risk cases of ``pred``: risk above the median of its own fold's risks
    (all cases one fold when there is no ``fold`` column)."""
    risk = pred["risk"].to_numpy(float)
    folds = pred["fold"].to_numpy() if "fold" in pred else np.zeros(len(risk))
    high = np.zeros(len(risk), bool)
    for f in np.unique(folds):
        s = folds == f
        high[s] = risk[s] > np.median(risk[s])
    return high


def _draw(ax: Any, pred: pd.DataFrame, title: str, risk_labels: bool = True) -> float:
    """One panel: both risk groups with bands, censoring ticks, the at-risk table, the legend above."""
    from lifelines import KaplanMeierFitter
    from lifelines.plotting import add_at_risk_counts

    time = pred["time"].to_numpy(float)
    event = pred["event"].to_numpy().astype(bool)
    high = risk_groups(pred)
    p = logrank_p(time, event, high)
    fitters = []
    for mask, (name, color) in zip((~high, high), GROUPS):
        if not mask.any():
            continue
        if mask.all():  # every risk tied at the median: one group, no split
            name = "All cases (risks tied)"
        kmf = KaplanMeierFitter(label=name).fit(time[mask], event[mask])
        kmf.plot_survival_function(ax=ax, ci_show=True, ci_alpha=0.15, show_censors=True, color=color,
                                   censor_styles={"ms": 5, "marker": "|"}, linewidth=1.4)
        ax.get_lines()[-1].set_label(f"{name} (n={int(mask.sum())}): {_median_text(kmf)}")
        fitters.append(kmf)
    ax.set_ylim(0, 1.02)
    ax.set_xlim(left=0)
    ax.set_xlabel(f"Time ({TIME_UNIT})", fontsize=8)
    ax.set_ylabel("Survival probability", fontsize=8)
    ax.tick_params(labelsize=7)
    ptxt = "log-rank p undefined (one group)" if math.isnan(p) else f"log-rank p = {p:.2g}" if p >= 1e-4 else "log-rank p < 0.0001"
    handles = [h for h in ax.get_lines() if not h.get_label().startswith("_")]
    ax.legend(handles=handles, loc="lower left", bbox_to_anchor=(0, 1.01), fontsize=6.5, frameon=False,
              title=f"{title}; {ptxt}", title_fontsize=7.5, alignment="left", borderaxespad=0)
    add_at_risk_counts(*fitters, ax=ax, rows_to_show=["At risk"], xticks=None, fontsize=6.5,
                       labels=None if risk_labels else [""] * len(fitters))
    return p


FOOTER = ("Risk groups: each test fold's risks split at that fold's median (high: above it), the folds' "
          "groups pooled. Bands: 95% CI; ticks: censored; mo: months.")


def _footer(ax: Any, width: int) -> None:
    """The split rule under the at-risk table of ``ax`` (wrapped to ``width`` characters)."""
    import textwrap

    ax.text(0, -0.5, textwrap.fill(FOOTER, width), transform=ax.transAxes, fontsize=6, ha="left", va="top",
            clip_on=False)


def km_figure(pred: pd.DataFrame, title: str, *out: Path | str) -> float:
    """Draw the KM curves of the high- and low-risk halves of ``pred`` (columns fold, time, event,
    risk) once and write it to each ``out`` (PNG or PDF by suffix). Returns the log-rank p-value
    (NaN if undefined)."""
    fig, ax = plt.subplots(figsize=(4.6, 4.4), dpi=200)
    try:
        p = _draw(ax, pred, title)
        fig.tight_layout()
        _footer(ax, 80)  # after the layout, which it would squeeze
        for o in out:
            _save(fig, o)
    finally:
        plt.close(fig)
    return p


def km_panel(preds: Sequence[tuple[str, pd.DataFrame]], *out: Path | str) -> list[float]:
    """Several methods side by side on one dataset with shared axes (the paper's Figure 4)."""
    fig, axes = plt.subplots(1, len(preds), figsize=(3.6 * len(preds), 4.4), dpi=200, sharex=True, sharey=True,
                             squeeze=False)
    try:
        # the at-risk rows are named once, under the first panel (the colours match across panels)
        ps = [_draw(ax, pred, f"{name} ({folds_text(pred['fold'].nunique())})", risk_labels=i == 0)
              for i, (ax, (name, pred)) in enumerate(zip(axes[0], preds))]
        for ax in axes[0][1:]:
            ax.set_ylabel("")
        fig.tight_layout()
        _footer(axes[0][0], 200)  # after the layout, which it would squeeze
        for o in out:
            _save(fig, o)
    finally:
        plt.close(fig)
    return ps


def _save(fig: Any, out: Path | str) -> None:
    from ..io import atomic_path

    out = Path(out)
    with atomic_path(out, suffix=".tmp" + out.suffix) as tmp:
        fig.savefig(tmp, bbox_inches="tight")


def km_figures(store: Any, summary: pd.DataFrame, datasets: Sequence[str], panel: Sequence[str] = ()) -> list[str]:
    """One KM figure (PNG and PDF) per survival row of each dataset, and with ``panel`` the
    multi-panel figure of those methods; returns the lines to print."""
    printed = []
    for d in datasets:
        rows = summary.loc[(summary["dataset"] == d) & (summary["task"] == "survival"), "method"].unique()
        preds = {m: store.predictions(d, "survival", m, repeat=0) for m in rows}  # one risk per patient
        names = {r["method"]: r["label"] + (f" ({r['encoder_label']})" if isinstance(r.get("encoder_label"), str)
                                            and r["encoder_label"] else "")
                 for _, r in summary[(summary["dataset"] == d) & (summary["task"] == "survival")].iterrows()}
        missing = [m for m in panel if preds.get(m) is None or preds[m].empty]
        if missing:  # before drawing anything
            raise ValueError(f"--km-panel: no survival results for {', '.join(missing)} on dataset {d!r} "
                             f"(have: {', '.join(preds) or 'none'}); run them or pick others")
        for method, pred in preds.items():
            if pred.empty:
                continue
            fig = store.root / "figures" / d / f"km_{method}.png"
            title = f"{names[method]} — {d} (out-of-fold, {folds_text(pred['fold'].nunique())})"
            p = km_figure(pred, title, fig, fig.with_suffix(".pdf"))
            printed.append(f"KM: {fig}  log-rank p = {'undefined' if p != p else f'{p:.3g}'}")
        if panel:
            fig = store.root / "figures" / d / f"km_panel_{'_'.join(panel)}.png"
            chosen = [(names[m], preds[m]) for m in panel]
            km_panel(chosen, fig, fig.with_suffix(".pdf"))
            printed.append(f"KM panel: {fig}")
    return printed
