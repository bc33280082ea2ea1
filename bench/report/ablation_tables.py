"""The ablation tables (the paper's Tables 3–6 and 9) from summaries and records only, rendered by
:mod:`bench.report.render`. The ablation's YAML (``table:``) says which columns, in which order,
and whether the table is transposed (Table 9); the rows are its grid items (``bench.ablations``).

A row's name, backbone, parameters and magnification come from the summary (written from the unit
records), never from the live registry; a grid item without results keeps its method's name and
shows ``–``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Hashable

import pandas as pd

from ..ablations import Ablation, GridItem, format_value, lookup_value
from .render import Cell, Column, Row as TableRow, Table, Tex, mean_std_cell, to_latex as render_latex, \
    to_markdown as render_markdown
from ..tasks import get_task
from .repeats import seed_strata, with_repeats
from .tables import CHANCE_MARK, Marks, ddof_and_folds, spread_phrase, two_sig

# the paper's names of the end-to-end models, by backbone, suffixed with the task (Tables 3–6)
PAPER_NAMES = {"ViT-S": "LongViT", "Vim-Ti": "Vision-Mamba", "Pixel-Mamba": "Pixel-Mamba"}
TASK_SUFFIX = {"survival": "Surv", "staging": "Stage", "classification": "Cls"}
HEADERS = {"method": "Method", "backbone": "Backbone", "params": "Params(M)", "magnification": "Magnification",
           "scan_window": "Scan window", "token_scale": "Token Scale", "peak_memory": "Peak mem. (GB)",
           "seconds_per_slide": "Train s/slide"}
COMPUTE_COLUMNS = ["peak_memory", "seconds_per_slide"]


@dataclass
class Row:
    """One grid item with its summary row (``summary`` None: not run yet)."""

    item: GridItem
    cells: dict[str, str]
    metric: Cell
    n: int
    summary: dict[str, Any] | None = None
    published: float | None = None
    marks: tuple[str, ...] = field(default_factory=tuple)


def _plain_tex(s: str) -> str:
    return s.replace(r"$\alpha$", "α").replace("$", "")


def build_rows(ablation: Ablation, items: list[GridItem], summary: pd.DataFrame, task: str,
               options: dict[tuple[str, str | None], dict[str, Any]] | None = None) -> list[Row]:
    """One row per grid item from ``summary`` (``ResultsStore.summarize``); ``options`` maps a row
    key to its units' resolved model options (for columns such as the scan window of a plain run)."""
    prim = summary[(summary["task"] == task) & summary["primary"].astype(bool)] if not summary.empty else summary
    rows = []
    for it in items:
        hit = prim[(prim["method"] == it.method) & (prim["variant"].fillna("") == (it.stored_variant or ""))] \
            if not prim.empty else prim
        h = hit.iloc[0].to_dict() if len(hit) else None
        cells: dict[str, str] = {}
        for col in ablation.table["columns"]:
            if col == "metric":
                continue
            if col == "method":
                cells[col] = (f"{PAPER_NAMES.get(h['backbone'], h['label'])}-{TASK_SUFFIX.get(task, task)}"
                              if h is not None else it.method)
            elif col == "backbone":
                cells[col] = str(h["backbone"]) if h is not None else "–"
            elif col == "params":
                p = h["params"] if h is not None else None
                cells[col] = "–" if p is None or pd.isna(p) else two_sig(float(p) / 1e6)
            elif col == ablation.override or col == "value":
                cells[col] = format_value(it.value) + ("x" if col == "magnification" else "")
            elif col in ablation.table.get("cells", {}):
                cells[col] = str(ablation.table["cells"][col].get(it.method, "–"))
            elif col == "magnification":
                mag = h.get("magnification") if h is not None else None
                cells[col] = "–" if mag is None or pd.isna(mag) else f"{format_value(float(mag))}x"
            else:
                v = (options or {}).get(it.key, {}).get(col)
                cells[col] = "–" if v is None else format_value(v)
        cells.update(_compute_cells(h))
        n = 0
        if h is not None:
            n = int(h["n_folds"]) if pd.isna(h.get("n_defined")) else min(int(h["n_folds"]), int(h["n_defined"]))
        metric = (with_repeats(mean_std_cell(float(h["mean"]), float(h["std"]), n, int(h.get("expected_folds", 5))), h)
                  if h is not None else Cell("–"))
        pub = lookup_value(ablation.published, it.paper_value if it.variant else it.method, None) if ablation.published else None
        rows.append(Row(it, cells, metric, n, h,
                        pub if isinstance(pub, (int, float)) and not isinstance(pub, bool) else None))
    return rows


def _compute_cells(h: dict[str, Any] | None) -> dict[str, str]:
    if h is None:
        return {"peak_memory": "–", "seconds_per_slide": "–"}
    cuda, rss = h.get("peak_cuda_mb"), h.get("peak_rss_mb")
    mem = cuda if cuda is not None and not pd.isna(cuda) else rss
    sps = h.get("train_seconds_per_slide")
    return {"peak_memory": "–" if mem is None or pd.isna(mem) else f"{float(mem) / 1024:.2f}",
            "seconds_per_slide": "–" if sps is None or pd.isna(sps) else two_sig(float(sps))}


def _columns(ablation: Ablation, compute: bool) -> list[str]:
    cols = list(ablation.table["columns"])
    if compute:
        cols = [c for c in cols if c != "metric"] + COMPUTE_COLUMNS + ["metric"]
    return cols


def ablation_table(ablation: Ablation, rows: list[Row], dataset: str, task: str, summary: pd.DataFrame,
                   notes: list[str] | None = None, similar: set[int] | None = None, stats_note: str = "",
                   compute: bool = False, published: bool = False, chance: set[int] | None = None,
                   chance_note: str = "") -> Table:
    """The table model in the paper's layout. ``similar``: row indices not significantly different
    from the best (≈). ``chance``: row indices not distinguishable from chance (∘, ``chance_note``
    states the test). ``published``: a last column with the paper's figure (the Markdown form)."""
    similar, chance = similar or set(), chance or set()
    metric_name = get_task(task).metric_name
    prim = summary[(summary["task"] == task) & summary["primary"].astype(bool)] if not summary.empty else summary
    hib = bool(prim["higher_is_better"].iloc[0]) if len(prim) and "higher_is_better" in prim else True
    marks = Marks(skip_options=[ablation.override] if ablation.override else [])
    columns, keys = [], _columns(ablation, compute)
    for c in keys:
        if c == "metric":
            columns.append(Column(metric_name, "c", rank=True, higher_is_better=hib))
        else:
            h = ablation.table.get("headers", {}).get(c) or HEADERS.get(c, c.replace("_", " ").capitalize())
            columns.append(Column(Tex(h, _plain_tex(h)) if "$" in h else h, "l"))
    if published:
        columns.append(Column(f"paper ({ablation.dataset.upper()})", "c"))
    trows = []
    for i, r in enumerate(rows):
        m = r.metric
        extra = ("≈",) * (i in similar) + (CHANCE_MARK,) * (i in chance)
        if extra:
            m = replace(m, marks=m.marks + extra)
        cells: list[Cell | str] = [m if c == "metric" else r.cells.get(c, "–") for c in keys]
        if published:
            cells.append("–" if r.published is None else f"{r.published:.4f}")
        trows.append(TableRow(cells, marks.of(r.summary) if r.summary is not None else ()))
    ddof, n_folds = ddof_and_folds(prim) if len(prim) else (0, None)
    what = Tex(ablation.caption, _plain_tex(ablation.caption)) if ablation.caption else ablation.description
    layout = f"; layout of the paper's Table {ablation.paper_table}" if ablation.paper_table else ""
    caption: list[str | Tex] = [what, f"on {dataset.upper()} ({task}, {metric_name}: "
                                      f"{spread_phrase(ddof, n_folds)}{layout})."]
    caption += [n[0].upper() + n[1:] + "." for n in notes or []]
    todo = sum(1 for r in rows if r.summary is None)
    if todo:
        caption.append(f"–: not run yet ({todo} of {len(rows)} rows still to run).")
    if compute:
        caption.append("Peak mem.: the largest peak resident memory of a fold's unit (CUDA: max allocated); "
                       "Train s/slide: training wall time per slide per epoch (forward, backward, optimizer).")
    if stats_note or similar:
        plain = "≈ not significantly different from the best (paired patient-level bootstrap)."
        caption.append(Tex(stats_note, plain) if stats_note else plain)
    foot = marks.footnotes() + ([(CHANCE_MARK, chance_note + ".")] if chance else [])
    return Table(columns, trows, caption, foot, label=f"tab:ablation-{ablation.name}-{dataset}-{task}",
                 transpose=bool(ablation.table.get("transpose")))


def to_latex(ablation: Ablation, rows: list[Row], dataset: str, task: str, summary: pd.DataFrame, **kw: Any) -> str:
    return render_latex(ablation_table(ablation, rows, dataset, task, summary, **kw))


def to_markdown(ablation: Ablation, rows: list[Row], dataset: str, task: str, summary: pd.DataFrame,
                **kw: Any) -> str:
    """The same rows for the terminal (never transposed), with the paper's figure beside ours when
    the YAML records it."""
    pub = any(r.published is not None for r in rows)
    return render_markdown(ablation_table(ablation, rows, dataset, task, summary, published=pub, **kw))


def row_keys(rows: list[Row]) -> list[Hashable]:
    return [r.item.key for r in rows]


# --- writing an ablation's tables from a results store ----------------------------------------------
def write_ablation_tables(store: Any, ablation: Ablation, items: list[GridItem], notes: list[str], dataset: str,
                          task: str, *, stats: bool = False, n_boot: int = 1000, alpha: float = 0.05,
                          compute: bool = False, ddof: int = 0, split_set: str = "") -> tuple[list[Path], str]:
    """LaTeX + Markdown (and the stats CSV with ``stats``) under ``results/<dataset>/tables/``, named
    ``<ablation>_<task>[_<split set>]`` (``split_set``: :func:`bench.data.splits.split_set_label`, ""
    for the default set, so another set's table never overwrites it); returns the paths written and
    the Markdown."""
    from ..io import atomic_write_text
    from .stats import N_PERM, caption_note, chance_note, comparisons_frame, compare_to_best

    summary = store.summarize(dataset, ddof=ddof)
    options: dict[tuple[str, str | None], dict[str, Any]] = {}
    for rec in store.records(dataset):  # per row, the resolved model options (columns such as scan_window)
        if rec.task == task:
            options.setdefault((rec.method, rec.variant), rec.model)
    rows = build_rows(ablation, items, summary, task, options)
    if all(r.n == 0 for r in rows):
        raise ValueError(f"no finished unit of ablation {ablation.name!r} ({task}) under {store.root / 'runs' / dataset}: "
                         f"run `python -m bench ablate {ablation.name} --dataset {dataset}` first")
    notes = notes + identical_rows(store, dataset, task, rows)
    similar: set[int] = set()
    note = ""
    out = store.root / dataset / "tables" / f"{ablation.name}_{task}{'_' + split_set if split_set else ''}.tex"
    paths = [out, out.with_suffix(".md")]
    chance, chance_csv = _chance(store, rows, dataset, task, alpha, out)
    paths.append(chance_csv)
    if stats:
        preds = {r.item.key: seed_strata(store.predictions(dataset, task, r.item.method, r.item.stored_variant))
                 for r in rows}
        comps = compare_to_best(preds, task, n_boot=n_boot, alpha=alpha)
        keys = row_keys(rows)
        similar = {keys.index(k) for k, c in comps.items() if not c.different}
        note = caption_note(n_boot, alpha)
        csv = out.with_name(out.stem + "_stats.csv")
        atomic_write_text(csv, comparisons_frame(comps, lambda k: k[0] + (f"/{k[1]}" if k[1] else "")).to_csv(index=False))
        paths.append(csv)
    kw = dict(notes=notes, similar=similar, stats_note=note, compute=compute, chance=chance,
              chance_note=chance_note(N_PERM, alpha))
    atomic_write_text(out, to_latex(ablation, rows, dataset, task, summary, **kw))
    md = to_markdown(ablation, rows, dataset, task, summary, **kw)
    atomic_write_text(out.with_suffix(".md"), md)
    return paths, md


def _chance(store: Any, rows: list[Row], dataset: str, task: str, alpha: float, out: Path) -> tuple[set[int], Path]:
    """Every row with results against chance (:func:`bench.report.stats.chance_test`): the indices
    of the rows at chance, and the CSV of the p-values beside the table."""
    from .chance import write_chance_csv
    from .stats import chance_test

    at, lines = set(), []
    for k, r in enumerate(rows):
        pred = store.predictions(dataset, task, r.item.method, r.item.stored_variant, repeat=0) if r.n else None
        if pred is None or pred.empty:
            continue
        c = chance_test(pred, task, alpha=alpha)
        if c.at_chance:
            at.add(k)
        lines.append({"row": r.item.method + (f"/{r.item.stored_variant}" if r.item.stored_variant else ""),
                      "task": task, "dataset": dataset, "pooled_metric": c.observed, "shuffled_mean": c.null_mean,
                      "p_chance": c.p, "at_chance": c.at_chance, "n_cases": c.n_cases, "n_permutations": c.n_perm,
                      "alpha": alpha})
    return at, write_chance_csv(pd.DataFrame(lines), out)


def identical_rows(store: Any, dataset: str, task: str, rows: list[Row]) -> list[str]:
    """A note when several values of a setting gave exactly the same predictions — the setting then
    changed nothing at this input size (e.g. Region Fusion's alpha on slides of few regions, where
    ceil(alpha * n0 / 24) is 1 for every alpha). Said, so nobody reads a flat row as a finding."""
    seen: dict[str, list[str]] = {}
    for r in rows:
        if not r.item.variant or not r.n:
            continue
        pred = store.predictions(dataset, task, r.item.method, r.item.stored_variant, repeat=0)
        if pred.empty:
            continue
        cols = [c for c in ("risk", "pred", "prob1") if c in pred]
        key = pred.sort_values(["fold", "case_id"])[["fold", "case_id", *cols]].to_csv(index=False)
        seen.setdefault(key, []).append(r.item.variant)
    return [f"{', '.join(v)} gave identical predictions: the setting changes nothing at this input size"
            for v in seen.values() if len(v) > 1]
