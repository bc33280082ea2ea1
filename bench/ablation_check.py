"""Before an ablation trains: do its values change what the model sees at this dataset's inputs?

An ablation value can be a no-op at small inputs: Region Fusion merges ``k = ceil(alpha * n0 / L)``
regions per layer, so with the few regions a small slide has every α in the paper's grid gives the
same schedule, and the rows of the table are one number trained several times. This module works that out from the
slides' headers and the models' own arithmetic, without reading pixels or training:

* the **input size** a magnification gives (``Slide.read_at_mpp``'s rounding, from the level-0 size
  and mpp),
* the **regions** a scan window cuts that input into (``pixelmamba.serialize.region_grid``),
* Region Fusion's **schedule**, the regions left after each layer, asked of the network the row
  builds (its own ``PixelMamba.plan``, so every option that changes it — ``fusion_k_from`` under
  ``--protocol paper`` — counts),

and compares, slide by slide, what every grid row sees. Two rows that see the same thing on every
slide do not ask the ablation's question there (for ``alpha``: the same network, the same numbers;
for scan windows larger than the slide: the same single region, only more padding), so ``bench
ablate`` says so, and which setting to raise, instead of training (``--force`` trains anyway).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

# options whose effect is computed here (and compared as that effect, not as the number itself)
EFFECT_OPTIONS = ("magnification", "scan_window", "alpha")
_MAX_N0 = 100_000


@dataclass
class PairCheck:
    a: str  # row labels, e.g. "alpha=0.4"
    b: str
    same_on: int  # slides on which the two rows see the same thing
    n_slides: int

    @property
    def identical(self) -> bool:
        return self.same_on == self.n_slides


@dataclass
class AblationCheck:
    """What each row of an ablation sees on each slide, and the pairs of rows that see the same."""

    ablation: str
    dataset: str
    override: str | None
    rows: list[str]
    views: dict[str, list[dict[str, Any]]]  # row -> per slide: input size, regions, schedule
    pairs: list[PairCheck]
    values: dict[str, Any] = field(default_factory=dict)  # row -> the setting it runs with
    advice: list[str] = field(default_factory=list)

    @property
    def identical(self) -> list[PairCheck]:
        return [p for p in self.pairs if p.identical]

    @property
    def ok(self) -> bool:
        return not self.identical

    def summary(self) -> list[str]:
        """One line per row (the range of what it sees), then one per identical / partly identical pair."""
        out = []
        for r in self.rows:
            out.append(f"  {r}: {_describe(self.views[r])}")
        if self.identical:
            out.append(f"  SAME on all {self.pairs[0].n_slides} slides: {_pairs(self.identical)}")
        for p in self.pairs:
            if not p.identical and p.same_on:
                out.append(f"  partly: {p.a} and {p.b} see the same on {p.same_on} of {p.n_slides} slides")
        return out


def _range(vals: list[int]) -> str:
    lo, hi = min(vals), max(vals)
    return f"{lo}" if lo == hi else f"{lo}-{hi}"


def _describe(views: list[dict[str, Any]]) -> str:
    parts = [f"input {_range([v['size'][0] for v in views])} x {_range([v['size'][1] for v in views])} px"]
    if "regions" in views[0]:
        parts.append(f"{_range([v['regions'][0] * v['regions'][1] for v in views])} regions")
    if "schedule" in views[0]:
        depth = len(views[0]["schedule"])
        to_one = [t for t in (_layers_to_one(v["schedule"]) for v in views) if t <= depth]
        n_sched = len({v["schedule"] for v in views})
        parts.append(f"Region Fusion leaves {_range([v['schedule'][-1] for v in views])} region(s) after layer {depth}"
                     + (f", one from layer {_range(to_one)}" if to_one else "")
                     + f" ({n_sched} distinct schedule{'s' if n_sched > 1 else ''})")
    return ", ".join(parts)


def _layers_to_one(schedule: tuple[int, ...]) -> int:
    """The layer after which one region is left (0: one from the start; depth + 1: never)."""
    if not schedule or schedule[0] == 1 and all(n == 1 for n in schedule):
        return 0 if schedule and schedule[0] == 1 else len(schedule) + 1
    for i, n in enumerate(schedule):
        if n == 1:
            return i + 1
    return len(schedule) + 1


def input_size(dimensions: tuple[int, int], mpp: float, magnification: float) -> tuple[int, int]:
    """(H, W) of a slide read at ``magnification`` (20x = 0.5 µm/px), as ``Slide.read_at_mpp`` rounds it."""
    from feature_cache.slide import mag_to_mpp

    ds = mag_to_mpp(magnification) / mpp
    w0, h0 = dimensions
    return max(1, round(h0 / ds)), max(1, round(w0 / ds))


def schedule(n0: int, alpha: float, depth: int, k_from: str = "initial") -> tuple[int, ...]:
    """Regions left after each layer of ``n0`` regions (what ``PixelMamba.plan`` gives as
    ``n_regions``), for the advice's search over region counts without building a network."""
    from pixelmamba.layers import merge_count

    n, out = n0, []
    for _ in range(depth):
        n -= merge_count(n0, alpha, depth, n, k_from)
        out.append(n)
    return tuple(out)


def _slides(cohort: Any, reader: str) -> list[tuple[str, tuple[int, int], float]]:
    from feature_cache import open_slide

    out = []
    for sid, path in zip(cohort.table["slide_id"], cohort.table["slide_path"]):
        with open_slide(path, backend=reader, mpp=cohort.spec.mpp_override) as s:
            out.append((sid, tuple(s.dimensions), float(s.require_mpp())))
    return out


def _view(recipe: Any, dims: tuple[int, int], mpp: float, networks: dict) -> dict[str, Any]:
    """What the network of ``recipe`` (a ``bench.engine.recipe.UnitRecipe``) sees of one slide."""
    spec, opts = recipe.spec, {**recipe.model, **recipe.inputs}
    view: dict[str, Any] = {"method": spec.name,
                            "options": tuple(sorted((k, repr(v)) for k, v in opts.items() if k not in EFFECT_OPTIONS))}
    if spec.input != "slide" or opts.get("regions"):
        view["size"] = (0, 0)
        view["options"] += tuple(sorted((k, repr(v)) for k, v in opts.items() if k in EFFECT_OPTIONS))
        return view
    h, w = input_size(dims, mpp, float(opts.get("magnification", spec.magnification or 2.5)))
    view["size"] = (h, w)
    if spec.builder.endswith(":pixelmamba"):
        key = (spec.name, tuple(sorted((k, repr(v)) for k, v in recipe.model.items())))
        if key not in networks:  # the row's own network, built as the run builds it
            networks[key] = recipe.model_recipe().build()
        net = networks[key]
        from pixelmamba.serialize import region_grid

        view["regions"] = region_grid(h, w, net.cfg.scan_window)
        view["schedule"] = tuple(r.n_regions for r in net.plan(h, w))
    else:  # other end-to-end models: the method and the input size are what they see
        view["options"] += tuple(sorted((k, repr(v)) for k, v in opts.items() if k in ("scan_window", "alpha")))
    return view


def check_ablation(ablation: Any, grid: Any, cohort: Any, overrides: Any = None, protocol: str | None = None,
                   slide_backend: str = "auto") -> AblationCheck:
    """Compare what the rows of ``grid`` (``ablations.ablation_grid``) see on every slide of ``cohort``.
    Each row's network is resolved as ``bench run`` resolves it (``bench.engine.recipe``: the dataset,
    the row's settings, ``overrides`` — the run's ``Overrides``, or a dict of model options, input
    options among them — and the ``protocol`` preset) and asked for its own plan. ``slide_backend``:
    the slide reader of the headers (``feature_cache.open_slide``'s ``backend``)."""
    from .engine.config import INPUT_OPTIONS, Variant, grid_variants
    from .engine.recipe import Overrides, resolve_recipe

    if not isinstance(overrides, Overrides):
        over = dict(overrides or {})
        overrides = Overrides(model={k: v for k, v in over.items() if k not in INPUT_OPTIONS},
                              inputs={k: v for k, v in over.items() if k in INPUT_OPTIONS})
    # slide headers only matter to what slide-reading rows see; feature rows see their method and options
    slides = _slides(cohort, slide_backend) if any(getattr(getattr(v, "spec", v), "input", "") == "slide" for v in grid_variants(grid.items)) \
        else [(sid, (0, 0), 0.0) for sid in cohort.table["slide_id"]]
    rows, views, networks, values = [], {}, {}, {}
    for item, var in zip(grid.items, grid_variants(grid.items)):
        label = item.variant or item.method
        values[label] = item.value
        v = var if isinstance(var, Variant) else Variant(var)
        recipe = resolve_recipe(v.spec, cohort, grid.task, variant=v, overrides=overrides, protocol=protocol)
        rows.append(label)
        views[label] = [_view(recipe, dims, mpp, networks) for _, dims, mpp in slides]
    pairs = []
    for i, a in enumerate(rows):
        for b in rows[i + 1:]:
            same = sum(va == vb for va, vb in zip(views[a], views[b]))
            pairs.append(PairCheck(a, b, same, len(slides)))
    chk = AblationCheck(ablation.name, grid.dataset, ablation.override, rows, views, pairs, values)
    chk.advice = _advice(chk, slides, [n.cfg for n in networks.values()])
    return chk


def _advice(chk: AblationCheck, slides: list, configs: list) -> list[str]:
    """How to make identical rows differ: which setting to raise, and to what."""
    same = chk.identical
    if not same:
        return []
    out = []
    min_dim = min(min(d) * mpp for _, d, mpp in slides)  # shortest slide side, in µm
    if chk.override == "alpha":
        v0 = chk.views[chk.rows[0]]
        n_now = sorted({r * c for v in v0 for (r, c) in [v["regions"]]})
        cfg = configs[0]
        need = _regions_needed([(float(chk.values[p.a]), float(chk.values[p.b])) for p in same], cfg.depth,
                               cfg.fusion_k_from)
        window = cfg.scan_window
        side = math.ceil(math.sqrt(need))  # regions per side for a square slide

        def mag(w: int) -> str:  # input side > (side - 1) windows on the shortest slide (20x = 0.5 µm/px)
            return f"{(side - 1) * w * 10 / min_dim:.2g}x"

        alt = f", {mag(32)} at scan_window=32" if window > 32 else ""
        out.append(f"Region Fusion merges k = ceil(alpha * n0 / {cfg.depth}) regions per layer; these slides have "
                   f"n0 = {_range(n_now)} regions (scan window {window}), where {_pairs(same)} give the same "
                   f"k and the same schedule. They differ from n0 >= {need} regions ({side} x {side}): raise the "
                   f"magnification above {mag(window)}{alt} (--input magnification=... --model scan_window=..., or "
                   f"`model:` under `ablations: {chk.ablation}:` in the dataset's YAML)")
    elif chk.override == "scan_window":
        sizes = [max(v["size"]) for v in chk.views[chk.rows[0]]]
        out.append(f"{_pairs(same)} cut these inputs (longest side {_range(sizes)} px) into the same regions: a "
                   f"window at least as large as the input holds the whole slide as one region, and a larger one "
                   f"only adds padding. Raise the magnification until the inputs are larger than the larger window "
                   f"(--input magnification=..., or `model:` under `ablations: {chk.ablation}:` in the dataset's "
                   f"YAML), or pick smaller windows (multiples of 32)")
    elif chk.override == "magnification":
        out.append(f"{_pairs(same)} read these slides at the same size: pick magnifications further apart")
    else:
        out.append(f"{_pairs(same)} do not change what the model sees on this dataset")
    return out


def _pairs(pairs: list[PairCheck]) -> str:
    """Rows that see the same, as groups: "alpha=0.4 = alpha=0.6 = alpha=0.8; ..."."""
    groups: list[list[str]] = []
    for p in pairs:
        hit = [g for g in groups if p.a in g or p.b in g]
        merged = [r for g in hit for r in g] + [r for r in (p.a, p.b) if not any(r in g for g in hit)]
        groups = [g for g in groups if g not in hit] + [merged]
    return "; ".join(" = ".join(g) for g in groups)


def _regions_needed(alphas: list[tuple[float, float]], depth: int, k_from: str = "initial") -> int:
    """The fewest initial regions at which every identical alpha pair gets different schedules."""
    for n0 in range(1, _MAX_N0):
        if all(schedule(n0, a, depth, k_from) != schedule(n0, b, depth, k_from) for a, b in alphas):
            return n0
    return _MAX_N0
