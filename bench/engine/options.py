"""What one ``bench run`` was asked to do, as one frozen value.

The CLI builds a :class:`RunOptions` once (from the command line and the environment, through
:class:`Settings`) and it travels whole: through ``runner.run``, to the ``--jobs`` workers and to
the submitit/SLURM jobs — serialised as JSON (:meth:`RunOptions.to_json`), never rebuilt from argv,
so an option given to the submitter (``--device``) is the option the job sees.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping

from .recipe import Overrides
from .settings import Settings
from .tracking import TrackerSettings

ORDERS = ("task", "method", "fold")


@dataclass(frozen=True)
class RunOptions:
    """Every option of a run but the methods. Paths are kept as given; :meth:`for_job` makes them
    absolute for a job that may start in another directory."""

    dataset: str
    tasks: tuple[str, ...] | None = None
    folds: tuple[int, ...] | None = None
    results: str = "results"
    cache: str = "cache"
    n_folds: int = 5
    seed: int = 0
    overrides: Overrides = field(default_factory=Overrides)
    progress: bool = True
    tuned: bool = False
    dry_run: bool = False
    init: str | None = None
    from_scratch: bool = False
    init_partial: bool = False  # accept an --init checkpoint that fills only part of the backbone (rows marked)
    order: str = "fold"
    variant: str | None = None
    protocol: str | None = None
    row_check: bool = True  # a launcher's one-unit jobs skip it: their submitter checked the whole grid
    device: str = "auto"
    jobs: int = 1
    splits_name: str | None = None  # an imported split set (`bench splits --import`) instead of the seeded folds
    keep_weights: bool | None = None  # each finished unit's trained weights to model.pt (None: the store's default)
    settings: Settings = field(default_factory=Settings)
    tracker: TrackerSettings | None = None  # one tracked run per unit (bench.engine.tracking); None: untracked
    repeats: int = 1  # training seeds per fold (--repeats): each (fold, repeat) is a unit of its own
    repeat: int | None = None  # only this repeat index (a launcher's one-unit job); None: 0..repeats-1
    estimate: bool = True  # measure the end-to-end units' cost per pass and print the predicted cost first

    def __post_init__(self) -> None:
        for name in ("tasks", "folds"):
            v = getattr(self, name)
            if v is not None and not isinstance(v, tuple):
                object.__setattr__(self, name, tuple(v))
        for name in ("results", "cache", "dataset"):
            object.__setattr__(self, name, str(getattr(self, name)))
        if self.init is not None:
            object.__setattr__(self, "init", str(self.init))
        if self.order not in ORDERS:
            raise ValueError(f"unknown order {self.order!r}; choose one of {', '.join(ORDERS)}")
        if isinstance(self.repeats, bool) or not isinstance(self.repeats, int) or self.repeats < 1:
            raise ValueError(f"--repeats must be a whole number of training seeds per fold, 1 or more; got "
                             f"{self.repeats!r}")
        if self.repeat is not None and not 0 <= self.repeat < self.repeats:
            raise ValueError(f"repeat {self.repeat} is outside --repeats {self.repeats} (0..{self.repeats - 1})")

    @classmethod
    def create(cls, dataset: str | Path, *, train_overrides: Mapping[str, Any] | None = None,
               model_overrides: Mapping[str, Any] | None = None, input_overrides: Mapping[str, Any] | None = None,
               **kw: Any) -> "RunOptions":
        """From keyword arguments named as ``runner.run``'s documented ones (``train_overrides``...)."""
        unknown = set(kw) - {f.name for f in fields(cls)}
        if unknown:
            raise TypeError(f"unknown run option(s) {sorted(unknown)}")
        ov = Overrides(train_overrides or {}, model_overrides or {}, input_overrides or {})
        return cls(str(dataset), overrides=ov, **kw)

    @property
    def init_path(self) -> Path | None:
        return Path(self.init) if self.init is not None else None

    def for_job(self, task: str, fold: int, repeat: int = 0) -> "RunOptions":
        """The options of one submitted unit: paths absolute (a job may start elsewhere), no progress
        bars, no grid-wide row check, and no ``--variant`` (the job's variant already carries its name)."""
        dataset = str(Path(self.dataset).resolve()) if self.dataset.endswith((".yaml", ".yml")) else self.dataset
        return replace(self, dataset=dataset, tasks=(task,), folds=(fold,), repeat=repeat,
                       results=str(Path(self.results).resolve()),
                       cache=str(Path(self.cache).resolve()),
                       init=str(Path(self.init).resolve()) if self.init is not None else None,
                       progress=False, dry_run=False, row_check=False, jobs=1, variant=None,
                       estimate=False)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["overrides"] = self.overrides.as_dict()
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "RunOptions":
        d = dict(d)
        d["overrides"] = Overrides(**d.get("overrides", {}))
        d["settings"] = Settings(**d.get("settings", {}))
        if d.get("tracker") is not None:
            d["tracker"] = TrackerSettings(**d["tracker"])
        return cls(**d)

    @classmethod
    def from_json(cls, text: str) -> "RunOptions":
        return cls.from_dict(json.loads(text))
