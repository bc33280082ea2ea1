"""The unit record: what one finished (task, method[, variant], fold[, repeat]) unit is, as a typed, versioned
document. ``metrics.json`` is its serialisation, written last and atomically (its presence means
"done"). Tables, statistics, Kaplan–Meier figures and ablation tables read records only — never
the live registry, never a string they parse back.

Besides the scores it holds the unit's *identity* — everything that changes its numbers — so a
rerun can tell exactly which units are stale and why (``bench.results.identity``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from feature_cache.weights import WeightsProvenance

__all__ = ["SCHEMA_VERSION", "READABLE_VERSIONS", "RecordError", "InputSpec", "SplitIdentity", "UnitRecord", "WeightsProvenance"]

SCHEMA_VERSION = 3
# Schema 2 had no ``repeat`` (every unit was repeat 0); its records read as repeat 0 and stay valid.
READABLE_VERSIONS = (2, 3)


class RecordError(ValueError):
    """A metrics.json that is not a record of this schema; the message names the file and the fix."""


@dataclass(frozen=True)
class InputSpec:
    """What a unit's model consumed."""

    kind: str  # features | tiles | region_features | slide | regions
    encoder: str | None = None  # features of this encoder (two-stage rows)
    magnification: float | None = None  # the slide's (end-to-end) or the features' magnification
    regions: dict[str, Any] | None = None  # random tissue regions (n, size, magnification, voting, ...)
    source: str = "extracted"  # extracted here, or "pre-extracted:<path>"

    def label(self) -> str:
        """Short human form for tables: ``features:conch``, ``slide@2.5x``, ``100 regions 2048px@20x``."""
        if self.kind == "regions" and self.regions:
            r = self.regions
            return f"{r.get('n')} regions {r.get('size')}px@{float(r.get('magnification', 0)):g}x"
        if self.kind == "slide":
            return f"slide@{float(self.magnification or 0):g}x"
        return f"{self.kind}:{self.encoder}"


@dataclass(frozen=True)
class SplitIdentity:
    hash: str
    seed: int
    n_folds: int
    name: str = ""  # an imported split set (bench splits --import); "" for the seeded ones

    @property
    def default(self) -> bool:
        return not self.name and self.seed == 0 and self.n_folds == 5


@dataclass
class UnitRecord:
    """One finished unit. ``from_dict`` refuses documents of another schema version or with unknown
    keys, so a table never renders a record it does not understand."""

    dataset: str
    task: str
    method: str
    fold: int
    variant: str | None
    variant_settings: dict[str, Any]  # what the variant sets (model/input/train options), {} for the method
    tuned: dict[str, Any] | None  # the tuned parameters and their study, when --tuned
    family: str  # two-stage | end-to-end
    label: str  # the row's display name
    group: str  # the table section
    backbone: str  # the encoder's architecture (two-stage MIL rows) or the network's
    encoder: str | None  # the feature_cache encoder whose outputs the row reads (None: end-to-end)
    encoder_label: str  # its display name ("ResNet-50"), "" for end-to-end rows
    frozen_params_text: str  # Table 2's frozen part ("25M", "1.2G + 6.1K" ...), "" when none
    default_input: InputSpec  # the input the method reads at the paper's setting
    input: InputSpec
    model: dict[str, Any]  # resolved model options, defaults included
    train: dict[str, Any]  # resolved training options
    protocol: str  # wsi-bench | paper
    split: SplitIdentity
    identity: dict[str, str]  # hashes of what the unit read: its cases' labels, its slides, mpp
    weights: list[WeightsProvenance]
    config_hash: str  # digest of the identity (bench.results.identity.digest)
    code_version: str  # git commit of the checkout (or package version)
    numerics_version: int  # bumped when a numerical code path changes
    primary_metric: str
    higher_is_better: bool
    metrics: dict[str, Any]
    params: int
    trainable_params: int
    n_train: int
    n_test: int
    cases_without_input: list[str]
    predictions_sha256: str
    train_seconds: float
    train_seconds_per_slide: float | None
    peak_rss_mb: float | None
    peak_cuda_mb: float | None
    finished: float
    info: dict[str, Any] = field(default_factory=dict)  # training details (bin edges, world size, ...)
    repeat: int = 0  # the training-seed repeat (``bench run --repeats``); 0 is the unit without repeats
    schema_version: int = SCHEMA_VERSION

    # --- derived, for readers -------------------------------------------------------------------
    @property
    def random_weights(self) -> bool:
        """Some pretrained part of the model was randomly initialised."""
        return any(w.random for w in self.weights)

    @property
    def weights_label(self) -> str:
        return "; ".join(f"{w.part}: {w.label}" for w in self.weights)

    # --- (de)serialisation ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "weights": [w.to_dict() for w in self.weights]}

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "metrics.json") -> "UnitRecord":
        if not isinstance(d, dict):
            raise RecordError(f"{where} is not a unit record (a JSON object expected)")
        version = d.get("schema_version")
        if version not in READABLE_VERSIONS:
            raise RecordError(f"{where} was written with record schema {version!r}, this code reads "
                              f"{', '.join(map(str, READABLE_VERSIONS))}: rerun the same `bench run` command to "
                              "redo the unit")
        names = {f.name for f in fields(cls)} - ({"repeat"} if version == 2 else set())
        unknown = sorted(set(d) - names)
        missing = sorted(f.name for f in fields(cls) if f.name not in d and f.name not in ("info", "repeat"))
        if unknown or missing:
            raise RecordError(f"{where} is not a valid unit record (unknown keys {unknown}, missing {missing})")
        kw = {**d, "schema_version": SCHEMA_VERSION}
        if not isinstance(kw.get("repeat", 0), int) or kw.get("repeat", 0) < 0:
            raise RecordError(f"{where}: repeat must be a non-negative integer, got {kw['repeat']!r}")
        try:
            kw["input"] = InputSpec(**d["input"])
            kw["default_input"] = InputSpec(**d["default_input"])
            kw["split"] = SplitIdentity(**d["split"])
            kw["weights"] = [WeightsProvenance.from_dict(w) for w in d["weights"]]
        except TypeError as exc:
            raise RecordError(f"{where}: malformed nested entry ({exc})") from exc
        return cls(**kw)

    @classmethod
    def from_json(cls, text: str, where: str = "metrics.json") -> "UnitRecord":
        try:
            return cls.from_dict(json.loads(text), where)
        except json.JSONDecodeError as exc:
            raise RecordError(f"{where} is not valid JSON ({exc}): rerun the `bench run` command to redo it") from exc
