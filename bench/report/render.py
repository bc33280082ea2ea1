"""One renderer for every table: a small table model rendered as booktabs LaTeX and as Markdown.

Table 2, the ablation tables and the classification table are built as a :class:`Table` (columns,
optional spanning column groups, rows in sections, cells, per-row footnote marks, caption pieces)
and printed by :func:`to_latex` / :func:`to_markdown`. What a table *means* (which rows, which
marks) is decided by its builder; how a mark, a best cell or a special character is printed is
decided here, once:

* cell text is plain Unicode; :func:`latex_escape` is the one escape (``\\ & % _ # $ { } ~ ^``,
  and ``±``, ``≈``, ``α`` as math);
* ranks: in a column with ``rank=True`` the best value is bold and the second underlined,
  compared on the value *as printed* (``Cell.value``), ties share a rank;
* marks (``†``, ``‡``, ``§``, ``¶``, ``≈``, numbers) print as superscripts, and each footnote
  follows the caption (LaTeX) or the table (Markdown).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence, Union

_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "_": r"\_", "#": r"\#", "$": r"\$",
            "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
            "±": r"$\pm$", "≈": r"$\approx$", "α": r"$\alpha$", "×": r"$\times$", "≥": r"$\geq$", "≤": r"$\leq$",
            "∘": r"$\circ$"}
_MARKS_TEX = {"†": r"\dagger", "‡": r"\ddagger", "§": r"\S", "¶": r"\P", "≈": r"\approx", "*": r"\ast",
              "∘": r"\circ"}
_SUPERSCRIPT = str.maketrans("0123456789", "⁰¹²³⁴⁵⁶⁷⁸⁹")
# Table 2's LaTeX layouts (``bench table --latex-layout``) and the packages each needs in the preamble
LAYOUTS = ("compact", "split", "landscape")
LATEX_PACKAGES = {"compact": ("booktabs", "xcolor"), "split": ("booktabs", "xcolor"),
                  "landscape": ("booktabs", "xcolor", "rotating")}


def latex_escape(s: object) -> str:
    """Plain text → LaTeX, one character at a time (so an escape is never escaped again); a run of
    hyphens stays hyphens (``--from-scratch``, not an en dash)."""
    out = "".join(_ESCAPES.get(ch, ch) for ch in str(s))
    return out.replace("--", "-{}-").replace("--", "-{}-")  # "--init" is not an en dash


@dataclass(frozen=True)
class Tex:
    """A piece that is already LaTeX (a YAML caption with ``$\\alpha$``, a statistics note), with
    its plain form for Markdown."""

    latex: str
    plain: str


Text = Union[str, Tex]


def _tex(t: Text) -> str:
    return t.latex if isinstance(t, Tex) else latex_escape(t)


def _plain(t: Text) -> str:
    return t.plain if isinstance(t, Tex) else t


@dataclass
class Cell:
    text: str = "–"
    value: float | None = None  # compared for best/second: the number as printed
    marks: tuple[str, ...] = ()  # superscripts after the cell (≈ for "not significantly different")
    partial: bool = False  # fewer folds than its split set: grey italics, never ranked
    lines: tuple[str, ...] = ()  # the text as (main, detail) for layouts that stack the detail below


@dataclass
class Column:
    header: Text
    align: str = "l"  # l | r | c
    rank: bool = False  # best bold, second underlined
    higher_is_better: bool = True
    md_header: str | None = None  # a shorter header for the terminal


@dataclass
class ColumnGroup:
    """A header spanning ``span`` consecutive columns (Table 2's task titles over their datasets)."""

    title: Text
    span: int
    rule: bool = True  # a \cmidrule under it
    align: str = "c"


@dataclass
class Row:
    cells: list[Cell | str]
    marks: tuple[str, ...] = ()  # footnote marks after the first cell
    section: str | None = None  # rows of one section follow a section heading


@dataclass
class Table:
    columns: list[Column]
    rows: list[Row]
    caption: list[Text] = field(default_factory=list)
    footnotes: list[tuple[str, Text]] = field(default_factory=list)  # (mark, text), in order
    notes: list[str] = field(default_factory=list)  # Markdown-only lines (counts, hints)
    column_groups: list[ColumnGroup] = field(default_factory=list)
    label: str = ""
    wide: bool = False  # table* (both columns of a two-column paper)
    tabcolsep: str | None = None
    transpose: bool = False  # LaTeX only: the columns become rows (the paper's Table 9)
    font: str = r"\small"  # LaTeX size command of the whole table
    stack: bool = False  # LaTeX only: a cell's detail (± std, fold count) on a second, smaller line
    env: str | None = None  # LaTeX float environment (default table / table*; sidewaystable for landscape)

    def __post_init__(self) -> None:
        n = len(self.columns)
        for r in self.rows:
            if len(r.cells) != n:
                raise ValueError(f"a row has {len(r.cells)} cells for {n} columns: {r.cells!r}")
        if self.column_groups and sum(g.span for g in self.column_groups) != n:
            raise ValueError("column groups must span every column exactly once")


class Footnotes:
    """Numbered per-row footnotes: rows with the same text share a number."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def mark(self, text: str) -> str:
        if text not in self.texts:
            self.texts.append(text)
        return str(self.texts.index(text) + 1)

    def items(self) -> list[tuple[str, Text]]:
        return [(str(i + 1), t) for i, t in enumerate(self.texts)]


def mean_std_cell(mean: float, std: float, n: int, expected: int, marks: tuple[str, ...] = ()) -> Cell:
    """``0.6507 ± 0.0485``; ``0.6000 ± 0.1000 (2/5 folds)`` for a row with fewer folds than its split
    set (partial: shown, never ranked); ``0.6000 (1/5 folds)`` for one fold (a single value has no
    spread); ``0.5000`` when every fold gave the same value (no ``± 0.0000``); a spread that rounds
    to zero prints ``± <0.0001``; ``–`` without folds."""
    if n <= 0 or mean is None or math.isnan(mean):
        return Cell("–", None, marks)
    main, detail = f"{mean:.4f}", []
    if n > 1 and std is not None and not math.isnan(std) and std > 1e-12 * max(1.0, abs(mean)):  # not float noise
        detail.append(f"± {std:.4f}" if round(std, 4) > 0 else "± <0.0001")
    partial = n < expected
    folds = f"{n}/{expected} folds" if partial else ""
    text = " ".join([main, *detail]) + (f" ({folds})" if folds else "")
    lines = (main, ", ".join(detail + [folds] if folds else detail))
    return Cell(text, round(float(mean), 4), marks, partial, lines if lines[1] else ())


def ranks(table: Table) -> dict[tuple[int, int], int]:
    """(row, column) → 1 (best) or 2 (second) over the printed values of each ranked column."""
    out: dict[tuple[int, int], int] = {}
    for j, col in enumerate(table.columns):
        if not col.rank:
            continue
        vals = [(i, c.value) for i, r in enumerate(table.rows) for c in [r.cells[j]]
                if isinstance(c, Cell) and not c.partial and c.value is not None and not math.isnan(c.value)]
        distinct = sorted({v for _, v in vals}, reverse=col.higher_is_better)
        for i, v in vals:
            r = distinct.index(v) + 1
            if r <= 2:
                out[(i, j)] = r
    return out


def _sup_tex(marks: Sequence[str]) -> str:
    if not marks:
        return ""
    parts = []
    for m in marks:
        if m in _MARKS_TEX:
            parts.append(_MARKS_TEX[m])
        else:
            parts.append(("," if parts else "") + latex_escape(m))
    return "$^{" + "".join(parts) + "}$"


def _sup_md(marks: Sequence[str]) -> str:
    return "".join(m.translate(_SUPERSCRIPT) if m.isdigit() else m for m in marks)


def _cell_tex(c: Cell | str, rank: int | None, stack: bool = False) -> str:
    c = c if isinstance(c, Cell) else Cell(c)
    stacked = stack and len(c.lines) == 2
    txt = latex_escape(c.lines[0] if stacked else c.text)
    if rank == 1:
        txt = rf"\textbf{{{txt}}}"
    elif rank == 2:
        txt = rf"\underline{{{txt}}}"
    txt += _sup_tex(c.marks)
    if stacked:
        txt = rf"\begin{{tabular}}[t]{{@{{}}c@{{}}}}{txt}\\[-1pt]{{\scriptsize {latex_escape(c.lines[1])}}}\end{{tabular}}"
    if c.partial:
        txt = rf"\textcolor{{gray}}{{\itshape {txt}}}"
    return txt


def _cell_md(c: Cell | str, rank: int | None) -> str:
    c = c if isinstance(c, Cell) else Cell(c)
    txt = c.text.replace("|", "\\|")
    if c.partial:
        txt = f"*{txt}*"
    if rank == 1:
        txt = f"**{txt}**"
    elif rank == 2:
        txt = f"_{txt}_"
    return txt + (" " + _sup_md(c.marks) if c.marks else "")


def _rank_phrase(table: Table, latex: bool) -> str:
    if not any(c.rank for c in table.columns):
        return ""
    out = (r"Best in \textbf{bold}, second \underline{underlined}." if latex
           else "Best in **bold**, second _underlined_.")
    if any(isinstance(c, Cell) and c.partial for r in table.rows for c in r.cells):
        out += (r" Cells in \textcolor{gray}{\itshape grey italics}" if latex else " Cells in *italics*") + \
            " have fewer finished folds than their split set (count shown) and are not ranked."
    return out


def _rows_tex(table: Table, rk: dict[tuple[int, int], int]) -> list[list[str]]:
    out = []
    for i, r in enumerate(table.rows):
        cells = [_cell_tex(c, rk.get((i, j)), table.stack) for j, c in enumerate(r.cells)]
        cells[0] += _sup_tex(r.marks)
        out.append(cells)
    return out


def to_latex(table: Table) -> str:
    rk = ranks(table)
    env = table.env or ("table*" if table.wide else "table")
    lines = [rf"\begin{{{env}}}" + ("" if env.startswith("sideways") else "[t]"), r"\centering", table.font]
    if table.tabcolsep:
        lines.append(rf"\setlength{{\tabcolsep}}{{{table.tabcolsep}}}")
    body = _rows_tex(table, rk)
    if table.transpose:
        # the first column is the header row; every other column one row
        lines += [r"\begin{tabular}{l" + "c" * len(table.rows) + "}", r"\toprule",
                  " & ".join([_tex(table.columns[0].header)] + [r[0] for r in body]) + r" \\", r"\midrule"]
        for j, col in enumerate(table.columns[1:], start=1):
            lines.append(" & ".join([_tex(col.header)] + [r[j] for r in body]) + r" \\")
    else:
        lines += [r"\begin{tabular}{" + "".join(c.align for c in table.columns) + "}", r"\toprule"]
        if table.column_groups:
            heads, rules, start = [], [], 1
            for g in table.column_groups:
                heads.append(rf"\multicolumn{{{g.span}}}{{{g.align}}}{{{_tex(g.title)}}}")
                if g.rule:
                    rules.append(rf"\cmidrule(lr){{{start}-{start + g.span - 1}}}")
                start += g.span
            lines.append(" & ".join(heads) + r" \\")
            if rules:
                lines.append(" ".join(rules))
        lines += [" & ".join(_tex(c.header) for c in table.columns) + r" \\", r"\midrule"]
        section: str | None = None
        for r, cells in zip(table.rows, body):
            if r.section is not None and r.section != section:
                if section is not None:
                    lines.append(r"\midrule")
                lines.append(rf"\multicolumn{{{len(table.columns)}}}{{l}}{{\textit{{{latex_escape(r.section)}}}}} \\")
                section = r.section
            lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    cap = [_tex(p) for p in table.caption]
    if _rank_phrase(table, True):
        cap.append(_rank_phrase(table, True))
    cap += [_sup_tex([m]) + _tex(t) for m, t in table.footnotes]
    lines.append(rf"\caption{{{' '.join(cap)}}}")
    if table.label:
        lines.append(rf"\label{{{table.label}}}")
    lines.append(rf"\end{{{env}}}")
    return "\n".join(lines) + "\n"


def to_markdown(table: Table) -> str:
    """The table for the terminal: never transposed; section headings as italic rows; the caption,
    then one line per footnote, after the table."""
    rk = ranks(table)
    head = [c.md_header or _plain(c.header) for c in table.columns]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    section: str | None = None
    for i, r in enumerate(table.rows):
        if r.section is not None and r.section != section:
            out.append(f"| *{r.section}* |" + " |" * (len(head) - 1))
            section = r.section
        cells = [_cell_md(c, rk.get((i, j))) for j, c in enumerate(r.cells)]
        if r.marks:
            cells[0] += " " + _sup_md(r.marks)
        out.append("| " + " | ".join(cells) + " |")
    tail = [" ".join(_plain(p) for p in table.caption + ([_rank_phrase(table, False)] if _rank_phrase(table, False) else []))]
    tail += [f"{_sup_md([m])} {_plain(t)}" for m, t in table.footnotes]
    tail += table.notes
    tail = [t for t in tail if t.strip()]
    return "\n".join(out) + ("\n\n" + "\n".join(tail) if tail else "") + "\n"
