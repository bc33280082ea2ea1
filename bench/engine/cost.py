"""What the end-to-end units of a run will cost, said before the first one trains.

An end-to-end unit's time is nearly all forward + backward passes over whole slides, and that per-pass
cost varies by large factors between settings of one ablation (a scan window, a magnification,
another network), so an ETA from the first finished unit can be off by as much, and comes only after
that unit. Instead, each distinct (network, input size) configuration of the run is measured before
training: a warm-up pass (JIT compilation, allocator), then a few timed forward + backward passes, one
optimizer step and one prediction pass, on a synthetic input of the median planned slide size (from
the slides' headers, no pixels read) on the planned device with the planned threads. The cost of a
unit is then its planned passes (``epochs x training slides``), optimizer steps (``epochs x
ceil(training slides / grad_accum)``) and prediction passes (one per test slide or region) times
the measured costs, plus the network's build: :func:`unit_seconds`.

Measured costs are cached under ``<cache>/step_costs/<key>.json``, keyed by the network's options,
the input size, the device, the thread count and the torch version, so a rerun does not measure
again. Two-stage units are not probed (their steps are small and the run's rate predicts them).
"""

from __future__ import annotations

import json
import logging
import math
import os
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..results.identity import digest
from .eta import clock
from .executor import ModelRecipe

log = logging.getLogger(__name__)

__all__ = ["StepCost", "Probe", "UnitCost", "Estimate", "StepCostCache", "unit_seconds", "measure", "estimate"]


@dataclass(frozen=True)
class StepCost:
    """Measured seconds of one configuration's pieces of work."""

    train_pass: float  # one forward + backward of one slide (train mode)
    predict_pass: float  # one forward without gradient (eval mode)
    update: float  # one optimizer step (AdamW)
    build: float = 0.0  # building the network (once per unit)


@dataclass(frozen=True)
class Probe:
    """One distinct configuration to measure: the network ``recipe`` builds, on an input of ``shape``
    (uint8 pixels when ``raw_rgb``, else normalised floats), on ``device`` with ``threads`` threads."""

    recipe: ModelRecipe
    shape: tuple[int, int, int, int]
    raw_rgb: bool
    device: str
    threads: int

    def key(self) -> str:
        r = self.recipe
        return digest({"method": r.spec.name, "n_out": r.n_out, "options": r.options, "input_kwargs": r.input_kwargs,
                       "shape": self.shape, "raw_rgb": self.raw_rgb, "device": self.device, "threads": self.threads,
                       "torch": torch.__version__})

    def about(self) -> str:
        return f"{self.shape[2]}x{self.shape[3]} px on {self.device}, {self.threads} thread(s)"


def unit_seconds(cost: StepCost, *, epochs: int, n_train: int, grad_accum: int, n_predict: int) -> float:
    """Predicted seconds of one unit: building the network, ``epochs x n_train`` training passes,
    ``epochs x ceil(n_train / grad_accum)`` optimizer steps and ``n_predict`` prediction passes
    (test slides)."""
    updates = epochs * math.ceil(n_train / max(1, grad_accum))
    return cost.build + epochs * n_train * cost.train_pass + updates * cost.update + n_predict * cost.predict_pass


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(probe: Probe, budget_s: float = 2.0, min_passes: int = 2, max_passes: int = 10) -> StepCost:
    """Time ``probe``: one warm-up forward + backward, then timed ones (their median: a pass on a
    shared CPU can take several times another) until ``max_passes`` or ``budget_s`` seconds, at
    least ``min_passes``; then one optimizer step and one prediction pass."""
    device = torch.device(probe.device)
    torch.manual_seed(0)
    t = time.perf_counter()
    model = probe.recipe.build().to(device)
    build = time.perf_counter() - t
    if probe.raw_rgb:
        x = torch.randint(0, 256, probe.shape, dtype=torch.uint8, device=device)
    else:
        x = torch.randn(probe.shape, device=device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-8)
    model.train()

    def train_pass() -> float:
        t = time.perf_counter()
        out = model(x)
        out.float().square().mean().backward()
        _sync(device)
        return time.perf_counter() - t

    train_pass()  # warm-up: kernel compilation, first allocations
    times: list[float] = []
    while len(times) < min_passes or (len(times) < max_passes and sum(times) < budget_s):
        times.append(train_pass())
    t = time.perf_counter()
    opt.step()
    opt.zero_grad(set_to_none=True)
    _sync(device)
    update = time.perf_counter() - t
    model.eval()
    with torch.no_grad():
        t = time.perf_counter()
        model(x)
        _sync(device)
        predict = time.perf_counter() - t
    return StepCost(statistics.median(times), predict, update, build)


class StepCostCache:
    """Measured :class:`StepCost` s, one JSON file per probe key under ``root``, written atomically."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def get(self, key: str) -> StepCost | None:
        path = self.root / f"{key}.json"
        try:
            d = json.loads(path.read_text())
            return StepCost(float(d["train_pass"]), float(d["predict_pass"]), float(d["update"]), float(d["build"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None  # not measured yet, or an unreadable file: measure again

    def put(self, key: str, cost: StepCost, about: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=f".{key}.", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump({**asdict(cost), **about}, f, indent=1, default=str)
        os.replace(tmp, self.root / f"{key}.json")


@dataclass(frozen=True)
class UnitCost:
    """One unit's predicted seconds, the setting it belongs to (its variant or method) and the
    measured per-pass cost it was computed from."""

    setting: str
    seconds: float
    cost: StepCost
    probe: Probe
    measured: bool  # False: the cost came from the cache


@dataclass
class Estimate:
    """The predicted cost of a run's units (``units``: aligned with the run's to-do list, None for a
    unit not probed) and the seconds the probe itself took."""

    units: list[UnitCost | None]
    probe_seconds: float = 0.0

    def per_unit(self) -> list[float] | None:
        """Every unit's predicted seconds, or None when some unit was not probed."""
        if not self.units or any(u is None for u in self.units):
            return None
        return [u.seconds for u in self.units if u is not None]

    def lines(self, processes: int) -> list[str]:
        """One line per setting and a total, as the run prints them before training."""
        known = [u for u in self.units if u is not None]
        if not known:
            return []
        settings: dict[str, list[UnitCost]] = {}
        for u in known:
            settings.setdefault(u.setting, []).append(u)
        out = []
        for name, us in settings.items():
            c, how = us[0].cost, "measured" if any(u.measured for u in us) else "cached"
            out.append(f"predicted cost: {name} ~ {clock(sum(u.seconds for u in us))} for {len(us)} unit(s) "
                       f"({c.train_pass:.2f} s per training pass at {us[0].probe.about()}, {how})")
        total = sum(u.seconds for u in known)
        rest = len(self.units) - len(known)
        out.append(f"predicted cost: total ~ {clock(total / max(1, processes))} for {len(known)} end-to-end unit(s) "
                   f"on {processes} {known[0].probe.device} process(es)"
                   + (f", plus {rest} unit(s) without a prediction (two-stage units are not probed)" if rest else "")
                   + f" (probe: {self.probe_seconds:.1f} s; --no-estimate skips it)")
        return out


Timer = Callable[[Probe], StepCost]


def estimate(todo: Sequence[Any], planner: Any, device: str, cache: Path | str, timer: Timer = measure) -> Estimate:
    """Predict every end-to-end unit of ``todo`` (``UnitPlan`` s of ``planner``) on ``device``:
    each distinct configuration is measured once by ``timer`` (or read from ``cache``)."""
    t0 = time.perf_counter()
    store = StepCostCache(Path(cache) / "step_costs")
    sizes: dict[str, tuple[int, int] | None] = {}
    costs: dict[str, tuple[StepCost, bool] | None] = {}
    slides_of = planner.cohort.slides_of()
    out: list[UnitCost | None] = []
    for p in todo:
        fi = planner.inputs[p.inputs_key]
        if p.spec.family != "end-to-end":
            out.append(None)
            continue
        if p.inputs_key not in sizes:
            sizes[p.inputs_key] = planned_size(fi, planner.cohort)
        hw = sizes[p.inputs_key]
        if hw is None:
            out.append(None)
            continue
        probe = Probe(p.recipe, (1, 3, *hw), bool(p.spec.raw_rgb), device, torch.get_num_threads())
        key = probe.key()
        if key not in costs:
            costs[key] = _cost(probe, key, store, timer)
        if costs[key] is None:
            out.append(None)
            continue
        cost, fresh = costs[key]
        split = planner.splits[p.unit.task]
        views = getattr(fi, "opts", {}).get("n", 1)  # regions predicted per slide (1: the whole slide)
        n_predict = sum(len(slides_of.get(c, [])) * views for c in split.test_cases(p.unit.fold))
        seconds = unit_seconds(cost, epochs=int(p.train["epochs"]), n_train=len(split.train_cases(p.unit.fold)),
                               grad_accum=int(p.train["grad_accum"]), n_predict=n_predict)
        out.append(UnitCost(p.variant.name or p.spec.name, seconds, cost, probe, fresh))
    return Estimate(out, time.perf_counter() - t0)


def _cost(probe: Probe, key: str, store: StepCostCache, timer: Timer) -> tuple[StepCost, bool] | None:
    """(cost, measured now) of ``probe``: from the cache, else measured and cached; None when the
    measurement fails (the unit then fails, or not, by itself when it trains)."""
    cached = store.get(key)
    if cached is not None:
        return cached, False
    try:
        cost = timer(probe)
    except Exception as exc:  # noqa: BLE001 — a failed probe must not stop the run before its units
        log.warning("cost probe of %s at %s failed (%s: %s); its units train without a prediction",
                    probe.recipe.spec.name, probe.about(), type(exc).__name__, exc)
        return None
    store.put(key, cost, {"method": probe.recipe.spec.name, "input": probe.about(), "measured": time.time()})
    return cost, True


def planned_size(fi: Any, cohort: Any) -> tuple[int, int] | None:
    """The median (H, W) an end-to-end input gives the network: a region's size, or the slides read
    at the input's magnification (from their headers, opened with the inputs' own slide reader). None
    when no slide header can be read."""
    if getattr(fi, "opts", None) and "size" in fi.opts:  # random tissue regions
        return int(fi.opts["size"]), int(fi.opts["size"])
    mag = getattr(fi, "magnification", None)
    if mag is None:
        return None
    from feature_cache import SlideError, open_slide
    from feature_cache.slide import mag_to_mpp

    reader = getattr(getattr(fi, "cache", None), "reader", "auto")  # SlideImageCache: Settings.slide_backend
    hs, ws = [], []
    for path in cohort.table["slide_path"]:
        try:
            with open_slide(path, backend=reader, mpp=cohort.spec.mpp_override) as s:
                h, w = s.size_at_mpp(mag_to_mpp(mag))
        except (SlideError, OSError, ValueError) as exc:
            log.debug("cost probe: %s: %s", path, exc)
            continue
        hs.append(h)
        ws.append(w)
    if not hs:
        return None
    return int(statistics.median_low(hs)), int(statistics.median_low(ws))
