"""Table 2 and the classification table, from summaries only (``ResultsStore.summarize``: one row
per (method, variant, task, metric), built from unit records). Rendering is :mod:`bench.report.render`.

Table 2 follows the Pixel-Mamba paper's layout: rows in sections (MIL rows by patch encoder, then
hierarchical, then end-to-end), one column per (task, dataset), mean ± std over the folds, best
bold and second underlined. Every row says what a first look must know (:class:`Marks`): random
initialisation of a pretrained part, stand-in encoders, end-to-end training from scratch, a
protocol other than the paper's, and every option that differs from the method's defaults.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, Iterable, Mapping, Sequence

import pandas as pd

from ..tasks import get_task
from .render import (LATEX_PACKAGES, LAYOUTS, Cell, Column, ColumnGroup, Footnotes, Row, Table, Tex, latex_escape,  # noqa: F401
                     mean_std_cell)
from .repeats import caption_note as repeats_note, with_repeats

# Table 2's sections: MIL rows by patch encoder in the paper's order, then hierarchical, end-to-end
PAPER_ENCODER_ORDER = ("resnet50", "gigapath", "conch")
PENDING_SECTION = "Still to run"

RANDOM_MARK = "\u2020"  # † a pretrained part of a two-stage row randomly initialised
STANDIN_MARK = "\u2021"  # ‡ a small stand-in architecture replaced the encoder
SCRATCH_MARK = "\u00b6"  # ¶ an end-to-end network trained from random initialisation
PROTOCOL_MARK = "\u00a7"  # § a protocol other than the paper's (§§ for a second one)
CHANCE_MARK = "\u2218"  # ∘ not distinguishable from chance (permutation test)
TUNED_NOTE = ("(tuned): hyper-parameters chosen for each outer fold by nested cross-validation (Optuna, "
              "inner folds made from that fold's training cases only).")


def human_count(n: float | int | None) -> str:
    """4100 → 4.1K, 921221 → 0.9M, 1134953984 → 1.1G (the paper's Params column)."""
    if n is None or (isinstance(n, float) and math.isnan(n)):
        return "–"
    n = float(n)
    for unit, div, floor in (("G", 1e9, 1e9), ("M", 1e6, 1e5), ("K", 1e3, 1e3)):
        if n >= floor:
            return f"{n / div:.1f}{unit}"
    return str(int(n))


def two_sig(v: float) -> str:
    """Two significant digits for a table cell, never in exponent notation: 0.0042, 0.99, 2.0,
    23, 120 (``f"{v:.2g}"`` would print 2, 1.2e+02)."""
    if v == 0 or not math.isfinite(v):
        return f"{v:g}"
    if abs(v) >= 10:
        return f"{round(v, 1 - int(math.floor(math.log10(abs(v))))):.0f}"
    return f"{v:#.2g}".rstrip(".")


def fmt_value(v: Any) -> str:
    """An option's value in a footnote: 0.4, 64, True, (n=3, size=64)."""
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, dict):
        return "(" + ", ".join(f"{k}={fmt_value(x)}" for k, x in v.items()) + ")"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(fmt_value(x) for x in v) + "]"
    return str(v)


def _number(v: object) -> float:
    try:
        return float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return float("nan")


def _text(v: object) -> str:
    return v if isinstance(v, str) else ""


# --- marks -----------------------------------------------------------------------------------------
class Marks:
    """The marks of a table's rows and the footnotes that explain them. ``skip_options``: options a
    table shows in a column of its own (an ablation's swept setting), not repeated in a footnote."""

    def __init__(self, skip_options: Iterable[str] = ()) -> None:
        self.skip = set(skip_options)
        self.random: dict[str, None] = {}
        self.standin: dict[str, None] = {}
        self.scratch: dict[str, None] = {}
        self.protocols: list[str] = []
        self.rows = Footnotes()
        self.tuned = False

    def of(self, row: Mapping[str, Any]) -> tuple[str, ...]:
        """Marks of one summary row (or a row of :func:`build_table`'s frame)."""
        if row.get("pending"):
            return ()
        marks: list[str] = []
        prov = row.get("provenance") or []
        e2e = row.get("family") == "end-to-end"
        for w in prov:
            text = f"{w['part']}: {w['label']}"
            if w["source"] == "standin":
                self.standin[text] = None
            elif w["source"] in ("random", "scratch"):
                (self.scratch if e2e else self.random)[text] = None
        sources = {w["source"] for w in prov}
        if not e2e and "random" in sources:
            marks.append(RANDOM_MARK)
        if "standin" in sources:
            marks.append(STANDIN_MARK)
        if e2e and sources & {"random", "scratch"}:
            marks.append(SCRATCH_MARK)
        protocol = row.get("protocol") or ""
        if protocol and protocol != "paper":
            if protocol not in self.protocols:
                self.protocols.append(protocol)
            marks.append(PROTOCOL_MARK * (self.protocols.index(protocol) + 1))
        self.tuned = self.tuned or bool(row.get("tuned"))
        note = [w["label"] for w in prov if w["source"] in ("init", "init-partial")]
        note += [f"features from a release: {w['label']}" for w in prov if w["source"] == "release"]
        opts = {k: v for k, v in (row.get("non_default") or {}).items() if k not in self.skip}
        if opts:
            note.append(", ".join(f"{k}={fmt_value(v)}" for k, v in opts.items()))
        if note:
            marks.append(self.rows.mark("; ".join(note)))
        return tuple(marks)

    def footnotes(self) -> list[tuple[str, str]]:
        out = []
        if self.random:
            out.append((RANDOM_MARK, "Random initialisation of a pretrained part, not comparable to published "
                                     "numbers: " + "; ".join(self.random) + "."))
        if self.standin:
            out.append((STANDIN_MARK, "Small stand-in architecture of the encoder's family (same input and output "
                                      "dimension), not the published network: " + "; ".join(self.standin) + "."))
        if self.scratch:
            out.append((SCRATCH_MARK, "Trained end to end from random initialisation, no pretrained weights: "
                                      + "; ".join(self.scratch) + "."))
        for i, p in enumerate(self.protocols):
            out.append((PROTOCOL_MARK * (i + 1), f"Protocol {p}, not the paper's (bench run --protocol paper "
                                                 "runs the paper's reading)."))
        out += [(m, f"{t}.") for m, t in self.rows.items()]
        return out


def spread_phrase(ddof: int, n_folds: int | None, complete_rows: bool = False) -> str:
    """What ± means, with the ddof it was computed with. ``complete_rows``: the fold count is that
    of the rows with every fold (a table that also shows partial rows)."""
    kind = "population" if ddof == 0 else "sample"
    folds = f"the {n_folds} patient-level test folds" if n_folds else "the patient-level test folds"
    return f"mean ± standard deviation ({kind}, ddof={ddof}) over {folds}" + (" of each complete row" if complete_rows else "")


def task_folds(summary: pd.DataFrame | None, task: str) -> str:
    """The fold count a column header states: "5-fold" when every complete row of ``task`` has 5
    folds, "3/5-fold" for rows from split sets of different sizes, "1–2 of 5 folds" when no row is
    complete yet."""
    if summary is None or summary.empty:
        return ""
    prim = summary[(summary["task"] == task) & summary["primary"].astype(bool)]
    n = pd.concat([prim["n_folds"], prim.get("n_defined", prim["n_folds"])], axis=1).min(axis=1).astype(int)
    exp = prim["expected_folds"].astype(int)
    done = sorted(set(exp[n >= exp]))
    if done:
        return "/".join(map(str, done)) + "-fold"
    if prim.empty:
        return ""
    lo, hi, of = int(n.min()), int(n.max()), "/".join(map(str, sorted(set(exp))))
    return f"{lo if lo == hi else f'{lo}–{hi}'} of {of} folds"


def ddof_and_folds(frame: pd.DataFrame) -> tuple[int, int | None]:
    ddof = int(frame["ddof"].dropna().iloc[0]) if "ddof" in frame and frame["ddof"].notna().any() else 0
    folds = set(pd.to_numeric(frame.get("expected_folds", pd.Series(dtype=float)), errors="coerce").dropna().astype(int))
    return ddof, (folds.pop() if len(folds) == 1 else None)


# --- Table 2 ---------------------------------------------------------------------------------------
def _section_key(row: Mapping[str, Any]) -> tuple[int, int]:
    if row.get("pending"):
        return (3, 0)
    if row["family"] == "two-stage" and row.get("encoder_label"):
        enc = row.get("encoder") or ""
        return (0, PAPER_ENCODER_ORDER.index(enc) if enc in PAPER_ENCODER_ORDER else len(PAPER_ENCODER_ORDER))
    return (1, 0) if row["family"] == "two-stage" else (2, 0)


def build_table(summary: pd.DataFrame, tasks: Iterable[str] = ("staging", "survival", "classification"),
                expected: Sequence[str] | None = None) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """Rows (method, variant) × columns (task, dataset) of primary-metric :class:`Cell` s (None:
    not run). ``expected``: method names the table must list; those without results become rows
    of ``–`` in a last section (their names are all a summary can say about them)."""
    prim = summary[summary["primary"].astype(bool)].copy() if not summary.empty else summary
    tasks = [t for t in tasks if not prim.empty and t in set(prim["task"])]
    datasets = list(dict.fromkeys(prim["dataset"])) if not prim.empty else []
    cols = [(t, d) for t in tasks for d in datasets if ((prim["task"] == t) & (prim["dataset"] == d)).any()]
    rows = []
    if not prim.empty:
        prim["variant"] = prim["variant"].fillna("")
        for (method, variant), g in prim.groupby(["method", "variant"], sort=False):
            first = g.iloc[0]
            row = {"method": method, "variant": variant, "label": first["label"], "family": first["family"],
                   "encoder": _text(first.get("encoder")), "encoder_label": _text(first.get("encoder_label")),
                   "group": first["group"], "backbone": _text(first.get("backbone")), "params": first["params"],
                   "trainable_params": _number(first.get("trainable_params")),
                   "frozen_params_text": _text(first.get("frozen_params_text")),
                   "tuned": bool(g["tuned"].astype(bool).any()), "protocol": _text(first.get("protocol")),
                   "provenance": list(first.get("provenance") or []),
                   "non_default": dict(first.get("non_default") or {}), "order": _number(first.get("order")),
                   "pending": False, **_compute_cells(g)}
            for t, d in cols:
                hit = g[(g["task"] == t) & (g["dataset"] == d)]
                row[(t, d)] = None if hit.empty else _cell(hit.iloc[0])
            rows.append(row)
    have = {r["method"] for r in rows}
    for m in expected or []:
        if m not in have:
            rows.append({"method": m, "variant": "", "label": m, "family": "", "group": PENDING_SECTION,
                         "backbone": "", "params": float("nan"), "trainable_params": float("nan"),
                         "frozen_params_text": "", "tuned": False, "protocol": "", "provenance": [],
                         "non_default": {}, "order": float("nan"), "pending": True,
                         **{c: None for c in cols}})
    wide = pd.DataFrame(rows)
    if not wide.empty:
        wide["_s"] = [_section_key(r) for _, r in wide.iterrows()]
        wide = wide.sort_values(["_s", "group", "order", "method", "variant"], kind="stable").drop(columns=["_s"])
        wide = wide.reset_index(drop=True)
    return wide, cols


def _cell(hit: pd.Series) -> Cell:
    """One summary row's mean ± std, counting folds with a defined metric (a fold without events
    has no C-index)."""
    n = int(hit["n_folds"])
    if pd.notna(hit.get("n_defined")):
        n = min(n, int(hit["n_defined"]))
    return with_repeats(mean_std_cell(float(hit["mean"]), float(hit["std"]), n, int(hit.get("expected_folds", 5))), hit)


def _compute_cells(g: pd.DataFrame) -> dict[str, float]:
    def col(name: str) -> pd.Series:
        return pd.to_numeric(g[name], errors="coerce") if name in g else pd.Series([float("nan")])

    cuda, rss = col("peak_cuda_mb").max(), col("peak_rss_mb").max()
    return {"peak_mb": cuda if not math.isnan(cuda) else rss, "seconds_per_slide": col("train_seconds_per_slide").mean()}


def params_text(row: Mapping[str, Any]) -> str:
    """Table 2's "frozen + trained": a MIL row's patch encoder + its aggregator ("25M + 0.9M"); a
    hierarchical row's first stage with its frozen second stage + what trains (HIPT "24.4M + 0.6M",
    Prov-GigaPath "1.2G + 6.1K"); a stand-in encoder is named, not counted. Rows without a frozen
    part show their total."""
    frozen = row.get("frozen_params_text") or ""
    trainable = row.get("trainable_params")
    if frozen and trainable is not None and not math.isnan(trainable):
        return f"{frozen} + {human_count(trainable)}"
    return human_count(row["params"])


def row_name(row: Mapping[str, Any]) -> str:
    variant = row.get("variant") or ""
    extra = [x for x in (variant, "tuned" if row.get("tuned") and variant != "tuned" else "") if x]
    return str(row["label"]) + (f" ({', '.join(extra)})" if extra else "")


def _compute_text(row: Mapping[str, Any]) -> list[str]:
    mb, sps = row.get("peak_mb"), row.get("seconds_per_slide")
    return ["–" if mb is None or math.isnan(mb) else f"{mb / 1024:.2f}",
            "–" if sps is None or math.isnan(sps) else two_sig(sps)]


def pending_note(wide: pd.DataFrame) -> str:
    """"3 of 12 rows still to run" (and cells of other rows still missing), or ""."""
    if wide.empty:
        return ""
    cols = [c for c in wide.columns if isinstance(c, tuple)]
    empty = [all(r[c] is None for c in cols) for _, r in wide.iterrows()]
    missing = sum(r[c] is None for (_, r), e in zip(wide.iterrows(), empty) if not e for c in cols)
    parts = [f"{sum(empty)} of {len(wide)} rows still to run"] if any(empty) else []
    if missing:
        parts.append(f"{missing} missing cell(s) in other rows")
    return "; ".join(parts)


def table2(wide: pd.DataFrame, cols: list[tuple[str, str]], summary: pd.DataFrame | None = None,
           label: str = "tab:main", similar: dict[tuple[str, str], set[int]] | None = None,
           stats_note: str = "", compute: bool = False, chance: dict[tuple[str, str], set[int]] | None = None,
           chance_note: str = "", layout: str = "compact") -> Table:
    """The table model of Table 2. ``summary`` (for ddof and fold counts in the caption; else
    population std over 5 folds). ``similar``: per column, the row indices not significantly
    different from the best (marked ≈; ``stats_note`` states the test). ``chance``: per column,
    the row indices not distinguishable from chance (marked ∘; ``chance_note`` states the test).
    ``compute``: peak memory and training time per slide columns after Params. ``layout``
    (:data:`LAYOUTS`): ``compact`` a full-width ``table*`` with the spread under the mean in a smaller
    font; ``split`` the same one-line cells a table per task (call once per task's ``cols``);
    ``landscape`` a rotated full-page ``sidewaystable``."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown LaTeX layout {layout!r}: choose one of {', '.join(LAYOUTS)}")
    similar, chance = similar or {}, chance or {}
    fixed = [Column("Methods", "l", md_header="Method"), Column("Backbone", "l"), Column("Params.", "r", md_header="Params")]
    if compute:
        fixed += [Column("Peak mem. (GB)", "r"), Column("Train s/slide", "r")]
    columns = fixed + [Column(d.upper(), "c", rank=True, higher_is_better=get_task(t).higher_is_better,
                              md_header=f"{t} {d}") for t, d in cols]
    groups = [ColumnGroup("Tasks", len(fixed), rule=False, align="l")]
    tasks = list(dict.fromkeys(t for t, _ in cols))
    for t in tasks:
        folds = task_folds(summary, t)
        head = f"{get_task(t).title} ({folds + ' - ' if folds else ''}{get_task(t).metric_name})"
        span = sum(1 for tt, _ in cols if tt == t)
        if layout == "compact" and span < 3:  # a narrow group: the title over two lines
            head = Tex(r"\begin{tabular}[b]{@{}c@{}}" + latex_escape(get_task(t).title) + r"\\"
                       + latex_escape(head[len(get_task(t).title) + 1:]) + r"\end{tabular}", head)
        groups.append(ColumnGroup(head, span))
    marks = Marks()
    rows = []
    for i, r in wide.iterrows():
        cells: list[Cell | str] = [row_name(r), r["backbone"], params_text(r)] + (_compute_text(r) if compute else [])
        for c in cols:
            cell = r[c] if r[c] is not None else Cell("–")
            extra = ("≈",) * (i in similar.get(c, ())) + (CHANCE_MARK,) * (i in chance.get(c, ()))
            cells.append(replace(cell, marks=cell.marks + extra) if extra else cell)
        rows.append(Row(cells, marks.of(r), r["group"]))
    caption = _table2_caption(wide, summary, tasks, compute, similar, stats_note)
    notes = list(marks.footnotes())
    if any(chance.values()):
        notes.append((CHANCE_MARK, chance_note + "."))
    return Table(columns, rows, caption, notes, [], groups, label, wide=True,
                 tabcolsep="3pt" if layout == "compact" else "4pt", font=r"\footnotesize",
                 # the spread under the mean only where one line per cell would not fit the width: a
                 # table of one cohort (two metric columns) keeps one line per row, so its height fits
                 stack=layout == "compact" and len(cols) > 2, env="sidewaystable" if layout == "landscape" else None)


def _table2_caption(wide: pd.DataFrame, summary: pd.DataFrame | None, tasks: list[str], compute: bool,
                    similar: dict, stats_note: str) -> list[str | Tex]:
    ddof, n_folds = ddof_and_folds(summary) if summary is not None and not summary.empty else (0, 5)
    what = " and ".join(f"{get_task(t).title.lower()} ({get_task(t).metric_name})" for t in tasks)
    partial = any(isinstance(r[c], Cell) and r[c].partial for _, r in wide.iterrows() for c in wide.columns
                  if isinstance(c, tuple))
    caption: list[str | Tex] = [(what[:1].upper() + what[1:] + ": " if what else "")
                                + spread_phrase(ddof, n_folds, complete_rows=partial) + "."]
    caption += [n for n in [repeats_note(summary)] if n]
    if not wide.empty and wide["tuned"].any():
        caption.append("Rows marked " + TUNED_NOTE)
    pend = pending_note(wide)
    if pend:
        caption.append(f"–: not run yet ({pend}).")
    if compute:
        caption.append("Peak mem.: largest peak resident memory of the row's units (CUDA: max allocated); "
                       "Train s/slide: mean training wall time per slide per epoch.")
    if stats_note or any(similar.values()):
        plain = "≈ not significantly different from the best of its column (paired patient-level bootstrap)."
        caption.append(Tex(stats_note or latex_escape(plain), plain))
    return caption


def to_latex(wide: pd.DataFrame, cols: list[tuple[str, str]], label: str = "tab:main", **kw: Any) -> str:
    from .render import to_latex as render

    return render(table2(wide, cols, label=label, **kw))


def to_markdown(wide: pd.DataFrame, cols: list[tuple[str, str]], **kw: Any) -> str:
    from .render import to_markdown as render

    return render(table2(wide, cols, **kw))


# --- the supplement's Table 4 layout: one classification dataset, AUC and accuracy -------------------
CLASSIFICATION_METRICS = (("auc", "AUC"), ("accuracy", "ACC"))


def classification(summary: pd.DataFrame, dataset: str) -> Table:
    """The classification results of ``dataset`` in the layout of the Pixel-Mamba supplement's
    Table 4: Method | AUC | ACC, mean ± std over folds."""
    sub = summary[(summary["task"] == "classification") & (summary["dataset"] == dataset)].copy()
    sub["variant"] = sub["variant"].fillna("")
    marks = Marks()
    rows = []
    for (_, variant), g in sub.groupby(["method", "variant"], sort=False):
        first = g.iloc[0]
        row = {**first.to_dict(), "variant": variant, "tuned": bool(g["tuned"].astype(bool).any())}
        name = row_name(row)
        if first["family"] == "two-stage" and _text(first.get("encoder_label")):
            name = f"{first['encoder_label']}+{name}"
        cells: list[Cell | str] = [name]
        for metric, _ in CLASSIFICATION_METRICS:
            hit = g[g["metric"] == metric]
            cells.append(_cell(hit.iloc[0]) if len(hit) else Cell("–"))
        rows.append(Row(cells, marks.of(row)))
    ddof, n_folds = ddof_and_folds(sub) if not sub.empty else (0, None)
    columns = [Column("Method")] + [Column(h, "c", rank=True) for _, h in CLASSIFICATION_METRICS]
    caption: list[str | Tex] = [f"Classification on {dataset.upper()}: AUC and accuracy, {spread_phrase(ddof, n_folds)}."]
    if marks.tuned:
        caption.append("Rows marked " + TUNED_NOTE)
    return Table(columns, rows, caption, marks.footnotes(), label=f"tab:classification_{dataset}")
