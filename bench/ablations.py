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
ablation's YAML says which, and ``bench.report.ablation_tables`` renders it.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .resources import config_paths

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
    # the variant the results store holds it under (bench.engine.plan.unit_variant: the split set
    # when not the default one, e.g. depth=1+seed0-k2); None: ``variant`` itself
    stored: str | None = None

    @property
    def stored_variant(self) -> str | None:
        return self.stored if self.stored is not None else self.variant

    @property
    def key(self) -> tuple[str, str | None]:
        return (self.method, self.stored_variant)


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
    # what a value of the swept setting may be, checked before anything is built:
    # {type: number|integer, min: ..., max: ..., multiple_of: ...}
    valid: dict[str, Any] = field(default_factory=dict)
    caption: str = ""
    table: dict[str, Any] = field(default_factory=dict)

    def check_value(self, v: Any) -> None:
        """A value of the swept setting, against the ablation's ``valid:`` rule (if it has one)."""
        if self.valid:
            _check_value(self.name, str(self.override), v, self.valid)

    @classmethod
    def load(cls, path: Path) -> "Ablation":
        from .data.schema import ConfigError, load_yaml

        try:
            d = dict(load_yaml(Path(str(path)), "ablation").data)
        except ConfigError as exc:
            raise AblationError(str(exc)) from None
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
            used = lookup_value(mapping, v)
            self.check_value(used)
            if used != v:
                mapped.append(f"{format_value(v)} -> {format_value(used)}")
            items.append(GridItem(self.method, f"{self.override}={format_value(used)}", used, v,  # type: ignore[arg-type]
                                  {self.override: used}))
        if mapped:
            notes.append(f"{self.override} mapped for this dataset's size: " + ", ".join(mapped))
        if len({i.variant for i in items}) < len(items):
            raise AblationError(f"{self.name}: two grid values run the same setting ({[i.variant for i in items]})")
        return items, notes


_SAME = object()


def _check_value(name: str, setting: str, v: Any, rule: dict[str, Any]) -> None:
    kind = rule.get("type", "number")
    lo, hi, step = rule.get("min"), rule.get("max"), rule.get("multiple_of")
    what = ("an integer" if kind == "integer" else "a number") + (
        f" in [{format_value(lo)}, {format_value(hi)}]" if lo is not None and hi is not None else "") + (
        f", a multiple of {step}" if step else "")
    number = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    if (not number or (kind == "integer" and not float(v).is_integer()) or (lo is not None and v < lo)
            or (hi is not None and v > hi) or (step and int(v) % int(step))):
        raise AblationError(f"ablation {name}: {setting}={v!r} cannot run: {setting} must be {what}. "
                            f"Fix: give such values with --values (the paper's grid is the default)")


def lookup_value(mapping: dict[Any, Any], v: Any, default: Any = _SAME) -> Any:
    """``mapping[v]`` (numbers compared with isclose); absent: ``default``, else ``v`` itself (a value
    a dataset's mapping does not change). A published figure passes ``default=None``: a setting
    absent from the paper's grid has no paper figure."""
    for k, used in mapping.items():
        if k == v or (isinstance(k, (int, float)) and isinstance(v, (int, float)) and math.isclose(k, v)):
            return used
    return v if default is _SAME else default


def format_value(v: Any) -> str:
    """0.4 -> "0.4", 1.0 -> "1.0" (as the paper prints its grids), 0.3125 -> "0.3125", 32 -> "32"."""
    if isinstance(v, float):
        return f"{v:.1f}" if v.is_integer() else f"{v:g}"
    return str(v)


def _fmt_list(vs: list[Any]) -> str:
    return "[" + ", ".join(format_value(v) for v in vs) + "]"


def list_ablations() -> list[Ablation]:
    return [Ablation.load(p) for p in config_paths("ablations")]


def get_ablation(name: str) -> Ablation:
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return Ablation.load(path)
    for a in list_ablations():
        if a.name == name:
            return a
    known = [a.name for a in list_ablations()]
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise KeyError(f"unknown ablation {name!r}{hint}; known: {', '.join(known)}")


def _scalar(text: str) -> Any:
    """A YAML scalar, with the numbers YAML 1.1 reads as strings (``1e9``, ``nan``) as numbers."""
    v = yaml.safe_load(text)
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return v
    return v


def parse_values(text: str | None) -> list[Any] | None:
    """``--values 0.4,0.6`` → [0.4, 0.6]; ``--values vim-ti,pixelmamba-6m`` → names (YAML scalars)."""
    if text is None:
        return None
    out = [_scalar(x.strip()) for x in text.split(",") if x.strip()]
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


def ablation_grid(ablation: Ablation, dataset: str, task: str | None = None,
                  values: list[Any] | None = None) -> AblationGrid:
    """``ablation`` on ``dataset`` (a name or a YAML path): ``task`` defaults to the ablation's,
    ``values`` replace its grid; the dataset's mapping (``ablations:`` in its YAML) applies."""
    from .data.datasets import load_spec

    spec = load_spec(dataset)
    task = task or ablation.task
    if task not in spec.tasks:
        raise AblationError(f"dataset {spec.name!r} has no task {task!r} (it has {spec.tasks}); pick one with --task")
    items, notes = ablation.grid(values, spec.ablations.get(ablation.name))
    _dataset_model_options(ablation, items, notes, spec.ablations.get(ablation.name))
    return AblationGrid(spec.name, task, items, notes)


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
    notes.append("every row runs with " + ", ".join(f"{k}={format_value(v)}" for k, v in extra.items()) + " on this dataset")
