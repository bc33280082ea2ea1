"""The paper's ablations (Tables 3–6 and 9) as grids of method variants.

An ablation is data, ``configs/ablations/<name>.yaml``: either one method and one setting swept over
values (``method``, ``override``, ``values``: α, scan window, magnification) — each value becomes the
variant ``<override>=<value>`` of the method, stored as ``runs/<ds>/<task>/<method>/<variant>/`` — or a
list of methods compared as they are (``methods``: the end-to-end and token-scale tables; their runs
are the same units ``bench run`` makes, so Table 2 and the ablation share them). Every unit goes through
the one runner: same splits, same results store, reruns resume, a changed config supersedes.

A dataset may map an ablation's grid to values it can afford (``ablations:`` in its YAML; the demo
does, so a CPU can run every grid) — the mapping is printed and stated in the table's caption.
The table keeps the paper's layout (its columns, its rows; Table 9 transposed); ``table:`` in the
ablation's YAML says which.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Hashable

import pandas as pd
import yaml

from .resources import config_paths
from .report.tables import two_sig

# the paper's names of the end-to-end models, by backbone, suffixed with the task (Tables 3–6)
PAPER_NAMES = {"ViT-S": "LongViT", "Vim-Ti": "Vision-Mamba", "Pixel-Mamba": "Pixel-Mamba"}
TASK_SUFFIX = {"survival": "Surv", "staging": "Stage", "classification": "Cls"}
METRIC_NAMES = {"c_index": "C-index", "macro_f1": "Macro-F1", "auc": "AUC"}
HEADERS = {"method": "Method", "backbone": "Backbone", "params": "Params(M)", "magnification": "Magnification",
           "scan_window": "Scan window", "token_scale": "Token Scale", "peak_memory": "Peak mem. (GB)",
           "seconds_per_slide": "Train s/slide"}
COMPUTE_COLUMNS = ["peak_memory", "seconds_per_slide"]


class AblationError(ValueError):
    """A malformed ablation file or an unusable request; the message names the file and the fix."""


@dataclass
class GridItem:
    """One row of an ablation: a method, or a variant of one."""

    method: str
    variant: str | None = None
    value: Any = None  # the setting used on this dataset
    paper_value: Any = None  # the grid's value before the dataset's mapping
    model: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str | None]:
        return (self.method, self.variant)


@dataclass
class Ablation:
    name: str
    path: Path
    description: str = ""
    paper_table: int | None = None
    task: str = "survival"
    dataset: str = "blca"
    method: str | None = None
    override: str | None = None
    values: list[Any] = field(default_factory=list)
    methods: list[str] = field(default_factory=list)
    published: dict[Any, float] = field(default_factory=dict)
    caption: str = ""
    table: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> "Ablation":
        with open(path) as f:
            d = yaml.safe_load(f) or {}
        d.setdefault("name", path.stem)
        known = set(cls.__dataclass_fields__) - {"path"}
        unknown = set(d) - known
        if unknown:
            raise AblationError(f"{path}: unknown keys {sorted(unknown)}; allowed: {sorted(known)}")
        a = cls(path=path, **d)
        if bool(a.method) == bool(a.methods):
            raise AblationError(f"{path}: give either `method` + `override` + `values` or `methods`")
        if a.method and (not a.override or not a.values):
            raise AblationError(f"{path}: `method: {a.method}` needs `override` and `values`")
        if "columns" not in a.table:
            raise AblationError(f"{path}: `table: {{columns: [...]}}` is missing (the paper's column order)")
        return a

    @property
    def grid_values(self) -> list[Any]:
        return list(self.values) if self.method else list(self.methods)

    def grid(self, values: list[Any] | None = None, dataset_options: dict[str, Any] | None = None
             ) -> tuple[list[GridItem], list[str]]:
        """The rows to run, and notes on what the dataset changed (printed and put in the caption).

        ``values`` replaces the grid (``--values``). ``dataset_options`` is the dataset's
        ``ablations: {<name>: {values: ...}}`` entry: a list replaces the grid on that dataset, a
        mapping replaces the values it names (paper value → value run here).
        """
        from .registry import get_method

        grid = list(values) if values is not None else self.grid_values
        notes: list[str] = []
        mapping: dict[Any, Any] = {}
        ds_values = (dataset_options or {}).get("values")
        if isinstance(ds_values, dict):
            mapping = ds_values
        elif isinstance(ds_values, list) and values is None:
            notes.append(f"grid {_fmt_list(self.grid_values)} replaced by {_fmt_list(ds_values)} on this dataset")
            grid = list(ds_values)
        if self.methods:
            for m in grid:
                get_method(str(m))  # unknown names fail here, with suggestions
            return [GridItem(str(m)) for m in grid], notes
        get_method(self.method)  # type: ignore[arg-type]
        items = []
        mapped = []
        for v in grid:
            used = _lookup(mapping, v)
            if used != v:
                mapped.append(f"{_fmt(v)} -> {_fmt(used)}")
            items.append(GridItem(self.method, f"{self.override}={_fmt(used)}", used, v,  # type: ignore[arg-type]
                                  {self.override: used}))
        if mapped:
            notes.append(f"{self.override} mapped for this dataset's size: " + ", ".join(mapped))
        if len({i.variant for i in items}) < len(items):
            raise AblationError(f"{self.name}: two grid values run the same setting ({[i.variant for i in items]})")
        return items, notes


def _lookup(mapping: dict[Any, Any], v: Any) -> Any:
    for k, used in mapping.items():
        if k == v or (isinstance(k, (int, float)) and isinstance(v, (int, float)) and math.isclose(k, v)):
            return used
    return v


def _fmt(v: Any) -> str:
    """0.4 -> "0.4", 1.0 -> "1.0" (as the paper prints its grids), 0.3125 -> "0.3125", 32 -> "32"."""
    if isinstance(v, float):
        return f"{v:.1f}" if v.is_integer() else f"{v:g}"
    return str(v)


def _fmt_list(vs: list[Any]) -> str:
    return "[" + ", ".join(_fmt(v) for v in vs) + "]"


def list_ablations() -> list[Ablation]:
    return [Ablation.load(p) for p in config_paths("ablations")]


def get_ablation(name: str) -> Ablation:
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return Ablation.load(path)
    for a in list_ablations():
        if a.name == name:
            return a
    raise KeyError(f"unknown ablation {name!r}; known: {', '.join(a.name for a in list_ablations())}")


def parse_values(text: str | None) -> list[Any] | None:
    """``--values 0.4,0.6`` → [0.4, 0.6]; ``--values vim-ti,pixelmamba-6m`` → names (YAML scalars)."""
    if text is None:
        return None
    out = [yaml.safe_load(x.strip()) for x in text.split(",") if x.strip()]
    if not out:
        raise AblationError("--values is empty")
    return out


# --- running ---------------------------------------------------------------------------------------
@dataclass
class AblationGrid:
    """An ablation resolved on one dataset: its task, grid items (rows), the dataset's mapping
    notes, and the rows as the runner's variants (what ``bench ablate`` runs, locally or as jobs)."""

    dataset: str  # the dataset's name (a YAML path is named by its stem)
    task: str
    items: list[GridItem]
    notes: list[str]
    variants: list[Any]  # runner.Variant


def ablation_grid(ablation: Ablation, dataset: str, task: str | None = None,
                  values: list[Any] | None = None) -> AblationGrid:
    """``ablation`` on ``dataset`` (a name or a YAML path): ``task`` defaults to the ablation's,
    ``values`` replace its grid; the dataset's mapping (``ablations:`` in its YAML) applies."""
    from .data.datasets import load_spec
    from .registry import get_method
    from .engine.runner import Variant

    spec = load_spec(dataset)
    task = task or ablation.task
    if task not in spec.tasks:
        raise AblationError(f"dataset {spec.name!r} has no task {task!r} (it has {spec.tasks}); pick one with --task")
    items, notes = ablation.grid(values, spec.ablations.get(ablation.name))
    _dataset_model_options(ablation, items, notes, spec.ablations.get(ablation.name))
    variants = [Variant(get_method(i.method), i.variant, dict(i.model)) for i in items]
    return AblationGrid(spec.name, task, items, notes, variants)


def _dataset_model_options(ablation: Ablation, items: list[GridItem], notes: list[str],
                           options: dict[str, Any] | None) -> None:
    """``ablations: {<name>: {model: {...}}}`` in a dataset's YAML: model options every row of a
    setting sweep runs with on that dataset (e.g. a magnification at which the values differ; the
    check before training, bench/ablation_check.py, says when one is needed). The swept setting wins."""
    extra = dict((options or {}).get("model") or {})
    if not extra:
        return
    if not ablation.method:
        raise AblationError(f"{ablation.name}: `model:` options apply to a setting sweep only; its rows are "
                            "the methods' plain runs (shared with Table 2)")
    for it in items:
        it.model = {**extra, **it.model}
    notes.append("every row runs with " + ", ".join(f"{k}={_fmt(v)}" for k, v in extra.items()) + " on this dataset")


# --- the table -------------------------------------------------------------------------------------
@dataclass
class Row:
    item: GridItem
    cells: dict[str, str]
    mean: float
    std: float
    n: int
    expected: int
    random_weights: bool = False
    published: float | None = None


def _metric_text(r: Row, latex: bool) -> str:
    if r.n == 0 or math.isnan(r.mean):
        return "–"
    pm = r"$\pm$" if latex else "±"
    partial = f" ({r.n}/{r.expected} folds)" if r.n < r.expected else ""
    return f"{r.mean:.4f} {pm} {r.std:.4f}{partial}"


def _magnification(inp: str) -> float | None:
    if isinstance(inp, str) and inp.startswith("slide@") and inp.endswith("x"):
        try:
            return float(inp[len("slide@"):-1])
        except ValueError:
            return None
    return None


def build_rows(ablation: Ablation, items: list[GridItem], summary: pd.DataFrame, task: str,
               configs: dict[tuple[str, str | None], dict[str, Any]] | None = None) -> list[Row]:
    """One row per grid item from ``summary`` (``ResultsStore.summarize``); ``configs`` maps a row key
    to one of its units' config.json (for columns such as the scan window of a plain run)."""
    from .registry import get_method

    prim = summary[(summary["task"] == task) & summary["primary"].astype(bool)] if not summary.empty else summary
    rows = []
    for it in items:
        spec = get_method(it.method)
        hit = prim[(prim["method"] == it.method) & (prim["variant"].fillna("") == (it.variant or ""))] \
            if not prim.empty else prim
        h = hit.iloc[0] if len(hit) else None
        cells: dict[str, str] = {}
        mag = _magnification(h["input"]) if h is not None and "input" in h else None
        for col in ablation.table["columns"]:
            if col == "metric":
                continue
            if col == "method":
                name = f"{PAPER_NAMES.get(spec.backbone, spec.label)}-{TASK_SUFFIX.get(task, task)}"
                default_mag = spec.magnification
                if ("magnification" not in ablation.table["columns"] and mag is not None and default_mag
                        and not math.isclose(mag, default_mag)):
                    name += f" ({_fmt(mag)}x)"  # the paper's rows are at 2.5x; say so when this one is not
                cells[col] = name
            elif col == "backbone":
                cells[col] = spec.backbone or spec.label
            elif col == "params":
                p = h["params"] if h is not None else None
                cells[col] = "–" if p is None or pd.isna(p) else two_sig(float(p) / 1e6)
            elif col == ablation.override or col == "value":
                cells[col] = _fmt(it.value) + ("x" if col == "magnification" else "")
            elif col in ablation.table.get("cells", {}):
                cells[col] = str(ablation.table["cells"][col].get(it.method, "–"))
            elif col == "magnification":
                cells[col] = f"{_fmt(mag)}x" if mag is not None else "–"
            else:
                cfg = (configs or {}).get(it.key, {})
                v = cfg.get("model", {}).get(col)
                cells[col] = "–" if v is None else _fmt(v)
        if h is not None:
            rss = h.get("peak_rss_mb", float("nan"))
            cuda = h.get("peak_cuda_mb", float("nan"))
            mem = cuda if cuda is not None and not pd.isna(cuda) else rss
            cells["peak_memory"] = "–" if mem is None or pd.isna(mem) else f"{float(mem) / 1024:.2f}"
            sps = h.get("train_seconds_per_slide", float("nan"))
            cells["seconds_per_slide"] = "–" if sps is None or pd.isna(sps) else two_sig(float(sps))
        else:
            cells["peak_memory"] = cells["seconds_per_slide"] = "–"
        pub = _lookup(ablation.published, it.paper_value if it.variant else it.method) if ablation.published else None
        rows.append(Row(it, cells, float(h["mean"]) if h is not None else float("nan"),
                        float(h["std"]) if h is not None else float("nan"), int(h["n_folds"]) if h is not None else 0,
                        int(h.get("expected_folds", 5)) if h is not None else 5,
                        bool(h["random_weights"]) if h is not None else False,
                        pub if isinstance(pub, (int, float)) and not isinstance(pub, bool) else None))
    return rows


def _ranks(rows: list[Row]) -> dict[int, int]:
    vals = sorted({round(r.mean, 4) for r in rows if r.n and not math.isnan(r.mean)}, reverse=True)
    return {i: vals.index(round(r.mean, 4)) + 1 for i, r in enumerate(rows)
            if r.n and not math.isnan(r.mean) and vals.index(round(r.mean, 4)) < 2}


def _latex_escape(s: str) -> str:
    for a, b in (("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#")):
        s = s.replace(a, b)
    return s


def _columns(ablation: Ablation, compute: bool) -> list[str]:
    cols = list(ablation.table["columns"])
    if compute:
        cols = [c for c in cols if c != "metric"] + COMPUTE_COLUMNS + ["metric"]
    return cols


def _header(ablation: Ablation, col: str, task: str, latex: bool) -> str:
    from .engine.tasks import get_task

    if col == "metric":
        return METRIC_NAMES.get(get_task(task).metric, get_task(task).metric)
    h = ablation.table.get("headers", {}).get(col) or HEADERS.get(col, col.replace("_", " ").capitalize())
    if not latex:
        h = h.replace(r"$\alpha$", "α")
    return h


def caption(ablation: Ablation, dataset: str, task: str, rows: list[Row], notes: list[str], stats_note: str = "",
            compute: bool = False) -> str:
    from .engine.tasks import get_task

    metric = METRIC_NAMES.get(get_task(task).metric, get_task(task).metric)
    n = max((r.expected for r in rows), default=5)
    cap = (f"{ablation.caption or ablation.description} on {_latex_escape(dataset.upper())} "
           f"({task}, {metric}: mean $\\pm$ standard deviation (population) over the {n} patient-level test folds")
    cap += f"; layout of the paper's Table {ablation.paper_table})." if ablation.paper_table else ")."
    cap += r" Best in \textbf{bold}, second \underline{underlined}."
    for note in notes:
        cap += " " + _latex_escape(note[0].upper() + note[1:]) + "."
    if compute:
        cap += (" Peak mem.: the largest peak resident memory of a fold's unit (CUDA: max allocated); "
                "Train s/slide: training wall time per slide per epoch (forward, backward, optimizer).")
    if any(r.random_weights for r in rows):
        cap += r" $^\dagger$Random encoder weights: not comparable to published numbers."
    if stats_note:
        cap += " " + stats_note
    return cap


def to_latex(ablation: Ablation, rows: list[Row], dataset: str, task: str, notes: list[str] | None = None,
             similar: set[int] | None = None, stats_note: str = "", compute: bool = False) -> str:
    """The ablation's table in the paper's layout (booktabs). ``similar``: row indices marked as not
    significantly different from the best."""
    ranks = _ranks(rows)
    similar = similar or set()

    def metric(i: int, r: Row) -> str:
        txt = _metric_text(r, latex=True)
        if ranks.get(i) == 1:
            txt = rf"\textbf{{{txt}}}"
        elif ranks.get(i) == 2:
            txt = rf"\underline{{{txt}}}"
        if i in similar:
            txt += r"$^{\approx}$"
        if r.random_weights:
            txt += r"$^\dagger$"
        return txt

    cols = _columns(ablation, compute)
    lines = [r"\begin{table}[t]", r"\centering", r"\small"]
    if ablation.table.get("transpose"):
        # the paper's Table 9: the swept value as the header row, one row per measure
        key = [c for c in cols if c not in ("metric", *COMPUTE_COLUMNS)][0]
        lines += [r"\begin{tabular}{l" + "c" * len(rows) + "}", r"\toprule",
                  " & ".join([_header(ablation, key, task, True)] + [_latex_escape(r.cells[key]) for r in rows]) + r" \\",
                  r"\midrule"]
        for c in cols:
            if c == key:
                continue
            vals = [metric(i, r) if c == "metric" else _latex_escape(r.cells.get(c, "–")) for i, r in enumerate(rows)]
            lines.append(" & ".join([_header(ablation, c, task, True)] + vals) + r" \\")
    else:
        lines += [r"\begin{tabular}{" + "l" * (len(cols) - 1) + "c}", r"\toprule",
                  " & ".join(_header(ablation, c, task, True) for c in cols) + r" \\", r"\midrule"]
        for i, r in enumerate(rows):
            lines.append(" & ".join(metric(i, r) if c == "metric" else _latex_escape(r.cells.get(c, "–"))
                                    for c in cols) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}",
              rf"\caption{{{caption(ablation, dataset, task, rows, notes or [], stats_note, compute)}}}",
              rf"\label{{tab:ablation-{ablation.name}-{dataset}-{task}}}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def to_markdown(ablation: Ablation, rows: list[Row], task: str, notes: list[str] | None = None,
                similar: set[int] | None = None, compute: bool = False) -> str:
    """The same rows for the terminal, one row per grid item (never transposed), with the paper's
    published figure beside ours when the YAML records it."""
    ranks = _ranks(rows)
    similar = similar or set()
    cols = _columns(ablation, compute)
    pub = any(r.published is not None for r in rows)
    head = [_header(ablation, c, task, False) for c in cols] + (["paper (BLCA)"] if pub else [])
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, r in enumerate(rows):
        vals = []
        for c in cols:
            if c == "metric":
                t = _metric_text(r, latex=False)
                t = f"**{t}**" if ranks.get(i) == 1 else f"_{t}_" if ranks.get(i) == 2 else t
                vals.append(t + (" ≈" if i in similar else "") + (" †" if r.random_weights else ""))
            else:
                vals.append(r.cells.get(c, "–"))
        if pub:
            vals.append("–" if r.published is None else f"{r.published:.4f}")
        out.append("| " + " | ".join(vals) + " |")
    for note in notes or []:
        out.append(f"\nnote: {note}")
    if similar:
        out.append("\n≈ not significantly different from the best (paired patient-level bootstrap, see caption)")
    if any(r.random_weights for r in rows):
        out.append("\n† random encoder weights: not comparable to published numbers.")
    return "\n".join(out) + "\n"


def row_keys(rows: list[Row]) -> list[Hashable]:
    return [r.item.key for r in rows]
