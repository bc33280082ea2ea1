"""Tables from results only: LaTeX in the style of the Pixel-Mamba paper's Table 2 (booktabs, rows
grouped by family and encoder, mean ± std over folds, best bold, second underlined) and the same
table as Markdown for the terminal."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable

import pandas as pd

from ..engine.tasks import get_task
from ..registry import ENCODERS, SOURCE_PARAMS

GROUP_ORDER = [ENCODERS["resnet50"]["group"], ENCODERS["gigapath"]["group"], ENCODERS["conch"]["group"],
               "Two-stage hierarchical representation", "End-to-end"]
RANDOM_MARK = "\u2020"  # dagger
TUNED_NOTE = (" (tuned): hyper-parameters chosen for each outer fold by nested cross-validation (Optuna, "
              "inner folds made from that fold's training cases only).")
STANDIN_MARK = "\u2021"  # double dagger: a small stand-in architecture replaced the encoder


def human_count(n: float | int | None) -> str:
    """4100 → 4.1K, 921221 → 0.9M, 1134953984 → 1.1G (the paper's Params column)."""
    if n is None or (isinstance(n, float) and math.isnan(n)):
        return "–"
    n = float(n)
    for unit, div, floor in (("G", 1e9, 1e9), ("M", 1e6, 1e5), ("K", 1e3, 1e3)):
        if n >= floor:
            return f"{n / div:.1f}{unit}"
    return str(int(n))


@dataclass
class Cell:
    mean: float
    std: float
    n: int

    expected: int = 5

    def text(self) -> str:
        if math.isnan(self.mean):
            return "–"
        partial = f" ({self.n}/{self.expected} folds)" if self.n < self.expected else ""
        return f"{self.mean:.4f} ± {self.std:.4f}{partial}"


def build_table(summary: pd.DataFrame, tasks: Iterable[str] = ("staging", "survival", "classification")
                ) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """Rows (method, variant) × columns (task, dataset) of primary-metric cells.

    ``summary`` is the concatenation of ``results/<dataset>/summary.csv`` with a ``dataset`` column.
    Returns the wide frame (object cells) and the column keys in order.
    """
    prim = summary[summary["primary"].astype(bool)].copy()
    tasks = [t for t in tasks if t in set(prim["task"])]
    datasets = list(dict.fromkeys(prim["dataset"]))
    cols = [(t, d) for t in tasks for d in datasets if ((prim["task"] == t) & (prim["dataset"] == d)).any()]
    prim["variant"] = prim["variant"].fillna("")
    rows = []
    for (method, variant), g in prim.groupby(["method", "variant"], sort=False):
        first = g.iloc[0]
        row = {"method": method, "variant": variant, "label": first["label"], "family": first["family"],
               "encoder": first.get("encoder") or "", "source": _source(first), "group": _group(first),
               "params": first["params"], "trainable_params": _number(first.get("trainable_params")),
               "random_weights": bool(g["random_weights"].astype(bool).any()),
               "tuned": bool(g["tuned"].astype(bool).any()) if "tuned" in g else False,
               "standin": _standin(g),
               "input": str(first["input"]) if "input" in g and isinstance(first["input"], str) else "",
               # compute accounting over every task/dataset of the row: the largest peak, the mean time
               **_compute_cells(g)}
        for t, d in cols:
            hit = g[(g["task"] == t) & (g["dataset"] == d)]
            expected = int(hit["expected_folds"].iloc[0]) if len(hit) and "expected_folds" in hit else 5
            # folds counted: those with a defined metric (a fold without events has no C-index)
            n = int(hit["n_folds"].iloc[0]) if len(hit) else 0
            if len(hit) and "n_defined" in hit and pd.notna(hit["n_defined"].iloc[0]):
                n = min(n, int(hit["n_defined"].iloc[0]))
            row[(t, d)] = Cell(float(hit["mean"].iloc[0]), float(hit["std"].iloc[0]), n,
                               expected) if len(hit) else None
        rows.append(row)
    wide = pd.DataFrame(rows)
    if not wide.empty:
        from ..registry import list_methods

        order = {s.name: i for i, s in enumerate(list_methods())}  # registration order = Table 2's
        wide["_g"] = wide["group"].map(lambda g: GROUP_ORDER.index(g) if g in GROUP_ORDER else len(GROUP_ORDER))
        wide["_m"] = wide["method"].map(lambda m: order.get(m, len(order)))
        wide = wide.sort_values(["_g", "_m", "variant"], kind="stable").drop(columns=["_g", "_m"]).reset_index(drop=True)
    return wide, cols


def _compute_cells(g: pd.DataFrame) -> dict[str, float]:
    def col(name: str) -> pd.Series:
        return pd.to_numeric(g[name], errors="coerce") if name in g else pd.Series([float("nan")])

    cuda, rss = col("peak_cuda_mb").max(), col("peak_rss_mb").max()
    return {"peak_mb": cuda if not math.isnan(cuda) else rss,
            "seconds_per_slide": col("train_seconds_per_slide").mean()}


def _standin(g: pd.DataFrame) -> str:
    """The stand-in architecture behind a row's features ("" for the real encoder)."""
    if "encoder_standin" not in g:
        return ""
    vals = [str(v) for v in g["encoder_standin"] if isinstance(v, str) and v]
    return vals[0] if vals else ""


def _number(v: object) -> float:
    """A count from a summary cell; NaN when absent (summaries written before the column existed)."""
    try:
        return float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return float("nan")


def _source(row: pd.Series) -> str:
    """The feature_cache encoder whose outputs the row reads: the MIL encoder, or a hierarchical
    row's first stage (``hipt-vit256``, ``gigapath``); "" for end-to-end rows."""
    enc = row.get("encoder") or ""
    if isinstance(enc, str) and enc:
        return enc
    from ..registry import _METHODS

    spec = _METHODS.get(row["method"])
    return (spec.cache_encoder or "") if spec else ""


def _marks(row: pd.Series, dagger: str, ddagger: str) -> str:
    return (dagger if row["random_weights"] else "") + (ddagger if row.get("standin") else "")


def _group(row: pd.Series) -> str:
    enc = row.get("encoder") or ""
    if row["family"] == "two-stage" and enc in ENCODERS:
        return ENCODERS[enc]["group"]
    group = row.get("group")
    if not isinstance(group, str) or not group:  # summaries do not carry it: the registry does
        from ..registry import _METHODS

        spec = _METHODS.get(row["method"])
        group = spec.group if spec else ""
    return str(group or ("End-to-end" if row["family"] == "end-to-end" else "Two-stage"))


def _ranks(wide: pd.DataFrame, col: tuple[str, str]) -> dict[int, int]:
    """Row index → 1 (best) or 2 (second), on means rounded as printed; ties share a rank."""
    vals = sorted({round(c.mean, 4) for c in wide[col] if c is not None and not math.isnan(c.mean)}, reverse=True)
    out = {}
    for i, c in wide[col].items():
        if c is None or math.isnan(c.mean):
            continue
        r = vals.index(round(c.mean, 4)) + 1
        if r <= 2:
            out[i] = r
    return out


def _params_text(row: pd.Series) -> str:
    """Table 2's "frozen + trained": a MIL row's patch encoder + its aggregator ("25M + 0.9M"); a
    hierarchical row's first-stage encoder together with its frozen second stage + what trains
    (HIPT: ViT-256 + ViT-4K = "24.4M + 0.6M"; Prov-GigaPath: tile + slide encoder = "1.2G + 6.1K").
    A stand-in encoder is named, not counted ("stand-in + 2.8M + 0.6M": the frozen stage, then
    what trains). Rows without a first stage or a frozen part show their total."""
    if row["family"] == "two-stage" and row["encoder"] in ENCODERS:
        enc = "stand-in" if row.get("standin") else ENCODERS[row["encoder"]]["params"]
        return f"{enc} + {human_count(row['params'])}"
    total, trainable = row["params"], row.get("trainable_params")
    source = row.get("source") or ""
    if trainable is None or math.isnan(trainable) or total is None or math.isnan(float(total)):
        return human_count(total)
    frozen = float(total) - trainable
    if source in SOURCE_PARAMS:
        if row.get("standin"):
            return f"stand-in + {human_count(frozen)} + {human_count(trainable)}" if frozen else \
                f"stand-in + {human_count(trainable)}"
        frozen += SOURCE_PARAMS[source]
    return f"{human_count(frozen)} + {human_count(trainable)}" if frozen else human_count(total)


def _backbone(row: pd.Series) -> str:
    if row["encoder"] in ENCODERS:
        return ENCODERS[row["encoder"]]["backbone"]
    from ..registry import _METHODS

    spec = _METHODS.get(row["method"])
    return spec.backbone if spec else ""


def _latex_escape(s: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#")):
        s = s.replace(a, b)
    return s


# the supplement's CAMELYON16 protocol: "100 regions of size 2048 x 2048 at 20x" per slide
PAPER_REGIONS = "100 regions 2048px@20x"


def _magnification_note(row: pd.Series) -> str:
    """``0.625x`` when an end-to-end row read the slide at another magnification than the paper's
    (the registry's default, 2.5x) — e.g. the demo's — and ``2 regions 64px@5x`` when it voted over
    other regions than the supplement's 100 of 2048 px at 20x; else empty: rows at the paper's
    setting read as in the paper."""
    inp = str(row.get("input") or "")
    if row.get("family") == "end-to-end" and " regions " in inp:
        return "" if inp == PAPER_REGIONS else inp
    if row.get("family") != "end-to-end" or not inp.startswith("slide@"):
        return ""
    from ..registry import _METHODS

    try:
        mag = float(inp[len("slide@"):].rstrip("x"))
    except ValueError:
        return ""
    spec = _METHODS.get(row["method"])
    default = spec.magnification if spec else None
    return "" if default is not None and math.isclose(mag, default) else (f"{mag:.1f}x" if mag.is_integer() else f"{mag:g}x")


def _name(row: pd.Series) -> str:
    extra = [x for x in (row["variant"], _magnification_note(row)) if x]
    return str(row["label"]) + (f" ({', '.join(extra)})" if extra else "")


def two_sig(v: float) -> str:
    """Two significant digits for a table cell, never in exponent notation: 0.0042, 0.99, 2.0,
    23, 120 (``f"{v:.2g}"`` would print 2, 1.2e+02)."""
    if v == 0 or not math.isfinite(v):
        return f"{v:g}"
    if abs(v) >= 10:
        return f"{round(v, 1 - int(math.floor(math.log10(abs(v))))):.0f}"
    return f"{v:#.2g}".rstrip(".")


def _compute_text(row: pd.Series) -> list[str]:
    mb, sps = row.get("peak_mb"), row.get("seconds_per_slide")
    return ["–" if mb is None or math.isnan(mb) else f"{mb / 1024:.2f}",
            "–" if sps is None or math.isnan(sps) else two_sig(sps)]


def to_latex(wide: pd.DataFrame, cols: list[tuple[str, str]], caption: str = "", label: str = "tab:main",
             similar: dict[tuple[str, str], set[int]] | None = None, stats_note: str = "",
             compute: bool = False) -> str:
    """``similar``: per column, the row indices not significantly different from the best (marked
    ``≈``; ``stats_note`` states the test in the caption). ``compute``: peak memory and training time
    per slide columns after Params."""
    tasks = list(dict.fromkeys(t for t, _ in cols))
    nfix = 5 if compute else 3
    ncol = nfix + len(cols)
    ranks = {c: _ranks(wide, c) for c in cols}
    similar = similar or {}
    lines = [r"\begin{table*}[t]", r"\centering", r"\small", r"\setlength{\tabcolsep}{4pt}",
             r"\begin{tabular}{ll r" + (" r r" if compute else "") + " c" * len(cols) + "}", r"\toprule"]
    head = [rf"\multicolumn{{{nfix}}}{{l}}{{Tasks}}"]
    cmid = []
    start = nfix + 1
    for t in tasks:
        n = sum(1 for tt, _ in cols if tt == t)
        head.append(rf"\multicolumn{{{n}}}{{c}}{{{get_task(t).title}}}")
        cmid.append(rf"\cmidrule(lr){{{start}-{start + n - 1}}}")
        start += n
    lines.append(" & ".join(head) + r" \\")
    lines.append(" ".join(cmid))
    fixed = ["Methods", "Backbone", "Params."] + (["Peak mem. (GB)", "Train s/slide"] if compute else [])
    lines.append(" & ".join(fixed + [_latex_escape(d.upper()) for _, d in cols]) + r" \\")
    lines.append(r"\midrule")
    last_group = None
    for i, row in wide.iterrows():
        if row["group"] != last_group:
            if last_group is not None:
                lines.append(r"\midrule")
            lines.append(rf"\multicolumn{{{ncol}}}{{l}}{{\textit{{{_latex_escape(row['group'])}}}}} \\")
            last_group = row["group"]
        name = _latex_escape(_name(row)) + _marks(row, r"$^\dagger$", r"$^\ddagger$")
        cells = []
        for c in cols:
            cell = row[c]
            txt = cell.text().replace("±", r"$\pm$") if cell is not None else "–"
            r = ranks[c].get(i)
            if r == 1:
                txt = rf"\textbf{{{txt}}}"
            elif r == 2:
                txt = rf"\underline{{{txt}}}"
            if i in similar.get(c, ()):
                txt += r"$^{\approx}$"
            cells.append(txt)
        fixed = [name, _latex_escape(_backbone(row)), _latex_escape(_params_text(row))]
        lines.append(" & ".join(fixed + (_compute_text(row) if compute else []) + cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    cap = caption or default_caption(wide)
    if compute:
        cap += (" Peak mem.: largest peak resident memory of the row's units (CUDA: max allocated); "
                "Train s/slide: mean training wall time per slide per epoch.")
    if stats_note:
        cap += " " + stats_note
    lines += [rf"\caption{{{cap}}}", rf"\label{{{label}}}", r"\end{table*}"]
    return "\n".join(lines) + "\n"


def default_caption(wide: pd.DataFrame) -> str:
    cap = (r"Tumor staging (macro-F1) and survival analysis (C-index): mean $\pm$ standard deviation "
           r"(population, ddof=0) over the 5 patient-level test folds. Best in \textbf{bold}, second "
           r"\underline{underlined}.")
    if not wide.empty and "tuned" in wide and wide["tuned"].any():
        cap += TUNED_NOTE
    if not wide.empty and wide["random_weights"].any():
        cap += (r" $^\dagger$Patch encoder with random weights (pretrained weights unavailable): not "
                r"comparable to published numbers.")
    if not wide.empty and "standin" in wide and wide["standin"].astype(bool).any():
        cap += (r" $^\ddagger$Small stand-in architecture of the encoder's family (same input and "
                r"output dimension), not the published network.")
    return cap


def to_markdown(wide: pd.DataFrame, cols: list[tuple[str, str]],
                similar: dict[tuple[str, str], set[int]] | None = None, compute: bool = False) -> str:
    ranks = {c: _ranks(wide, c) for c in cols}
    similar = similar or {}
    header = (["Method", "Backbone", "Params"] + (["Peak mem. (GB)", "Train s/slide"] if compute else [])
              + [f"{t} {d}" for t, d in cols])
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    last_group = None
    for i, row in wide.iterrows():
        if row["group"] != last_group:
            out.append(f"| *{row['group']}* |" + " |" * (len(header) - 1))
            last_group = row["group"]
        cells = []
        for c in cols:
            txt = row[c].text() if row[c] is not None else "–"
            r = ranks[c].get(i)
            txt = f"**{txt}**" if r == 1 else f"_{txt}_" if r == 2 else txt
            cells.append(txt + (" ≈" if i in similar.get(c, ()) else ""))
        marks = _marks(row, RANDOM_MARK, STANDIN_MARK)
        name = _name(row) + (f" {marks}" if marks else "")
        fixed = [name, _backbone(row), _params_text(row)] + (_compute_text(row) if compute else [])
        out.append("| " + " | ".join(fixed + cells) + " |")
    if not wide.empty and "tuned" in wide and wide["tuned"].any():
        out.append("\n" + TUNED_NOTE.strip())
    if any(similar.values()):
        out.append("\n≈ not significantly different from the best of its column (paired patient-level bootstrap)")
    if not wide.empty and wide["random_weights"].any():
        out.append(f"\n{RANDOM_MARK} random encoder weights: not comparable to published numbers.")
    if not wide.empty and "standin" in wide and wide["standin"].astype(bool).any():
        archs = "; ".join(sorted({f"{r['source']}: {r['standin']}" for _, r in wide.iterrows() if r["standin"]}))
        out.append(f"{STANDIN_MARK} small stand-in architecture of the encoder's family, not the "
                   f"published network ({archs}).")
    return "\n".join(out) + "\n"


# --- the supplement's Table 4 layout: one classification dataset, AUC and accuracy -------------------
CLASSIFICATION_METRICS = (("auc", "AUC"), ("accuracy", "ACC"))


def classification_table(summary: pd.DataFrame, dataset: str) -> tuple[str, str]:
    """(LaTeX, Markdown) of the classification results of ``dataset`` in the layout of the Pixel-Mamba
    supplement's Table 4: Method | AUC | ACC, mean ± std over folds, best of each column in bold."""
    sub = summary[(summary["task"] == "classification") & (summary["dataset"] == dataset)].copy()
    sub["variant"] = sub["variant"].fillna("")
    rows = []
    for (method, variant), g in sub.groupby(["method", "variant"], sort=False):
        first = g.iloc[0]
        extra = [x for x in (variant, _magnification_note(first)) if x]
        name = str(first["label"]) + (f" ({', '.join(extra)})" if extra else "")
        if first["family"] == "two-stage" and (first.get("encoder") or "") in ENCODERS:
            name = f"{ENCODERS[first['encoder']]['label']}+{first['label']}" + (f" ({variant})" if variant else "")
        row = {"name": name, "random": bool(g["random_weights"].astype(bool).any()), "standin": _standin(g),
               "tuned": bool(g["tuned"].astype(bool).any()) if "tuned" in g else False}
        for metric, _ in CLASSIFICATION_METRICS:
            hit = g[g["metric"] == metric]
            row[metric] = (Cell(float(hit["mean"].iloc[0]), float(hit["std"].iloc[0]), int(hit["n_folds"].iloc[0]),
                                int(hit["expected_folds"].iloc[0]) if "expected_folds" in hit else 5)
                           if len(hit) else None)
        rows.append(row)
    best = {m: max((r[m].mean for r in rows if r[m] is not None and not math.isnan(r[m].mean)), default=None)
            for m, _ in CLASSIFICATION_METRICS}

    def cell(r: dict, m: str, bold: Callable[[str], str]) -> str:
        c = r[m]
        if c is None:
            return "–"
        txt = c.text()
        return bold(txt) if best[m] is not None and round(c.mean, 4) == round(best[m], 4) else txt

    heads = [h for _, h in CLASSIFICATION_METRICS]
    tex = [r"\begin{table}[t]", r"\centering", r"\begin{tabular}{l" + "c" * len(heads) + "}", r"\toprule",
           " & ".join(["Method"] + heads) + r" \\", r"\midrule"]
    md = ["| " + " | ".join(["Method"] + heads) + " |", "|" + "---|" * (len(heads) + 1)]
    for r in rows:
        mark = (r"$^\dagger$" if r["random"] else "") + (r"$^\ddagger$" if r["standin"] else "")
        tex.append(" & ".join([_latex_escape(r["name"]) + mark]
                              + [cell(r, m, lambda t: rf"\textbf{{{t}}}").replace("±", r"$\pm$")
                                 for m, _ in CLASSIFICATION_METRICS]) + r" \\")
        md_mark = (RANDOM_MARK if r["random"] else "") + (STANDIN_MARK if r["standin"] else "")
        md.append("| " + " | ".join([r["name"] + (f" {md_mark}" if md_mark else "")]
                                   + [cell(r, m, lambda t: f"**{t}**") for m, _ in CLASSIFICATION_METRICS]) + " |")
    cap = (rf"Classification on {_latex_escape(dataset.upper())}: AUC and accuracy, mean $\pm$ standard deviation "
           r"(population) over the patient-level test folds. Best in \textbf{bold}.")
    if any(r["tuned"] for r in rows):
        cap += TUNED_NOTE
    if any(r["random"] for r in rows):
        cap += r" $^\dagger$Random encoder weights: not comparable to published numbers."
    if any(r["standin"] for r in rows):
        cap += r" $^\ddagger$Small stand-in architecture of the encoder's family, not the published network."
    tex += [r"\bottomrule", r"\end{tabular}", rf"\caption{{{cap}}}", rf"\label{{tab:classification_{dataset}}}",
            r"\end{table}"]
    return "\n".join(tex) + "\n", "\n".join(md) + "\n"
