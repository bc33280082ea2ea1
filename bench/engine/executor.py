"""The one unit executor: samples -> seed -> build -> (init) -> train -> predict -> score, with the
compute accounting. ``bench run`` calls it for an outer fold, ``bench tune`` for each inner fold of a
trial, ``bench ablate`` through ``run`` — so the model a study tunes is exactly the model a run
evaluates (the same builder arguments, second-stage weights and ``--init``)."""

from __future__ import annotations

import logging
import resource
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
import torch

from ..registry import MethodSpec, build_model, count_parameters, count_trainable_parameters
from feature_cache.weights import WeightsProvenance
from .. import tasks as T
from .pretrain import InitReport, load_init
from .steps import resolve_device  # noqa: F401 (where the CLI and the runner find it)
from .train import Sample, TrainConfig, train_and_predict

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelRecipe:
    """Everything that decides which network a unit trains, resolved once per unit."""

    spec: MethodSpec
    n_out: int
    options: dict[str, Any]  # network options (input options already separated out)
    input_kwargs: dict[str, Any] = field(default_factory=dict)  # builder arguments the inputs decide
    init: Path | None = None  # --init checkpoint
    init_sha256: str | None = None

    def build(self) -> torch.nn.Module:
        return self.build_with_init()[0]

    def build_with_init(self) -> tuple[torch.nn.Module, InitReport | None]:
        """The network, and what ``--init`` loaded into it (None without ``--init``)."""
        model = build_model(self.spec.name, self.n_out, **self.options, **self.input_kwargs)
        report = None
        if self.init is not None:
            report = load_init(model, self.init)
            log.info("%s: %s", self.spec.name, report.summary())
        return model, report

    def provenance(self) -> list[WeightsProvenance]:
        """Where the end-to-end network's own weights come from (two-stage rows: their inputs say)."""
        if self.spec.family != "end-to-end":
            return []
        if self.init is not None:
            return [WeightsProvenance("model", "init", f"--init {self.init.name} (sha256 {self.init_sha256})",
                                      str(self.init), self.init_sha256)]
        return [WeightsProvenance("model", "random", "random initialisation (no pretrained weights)")]


@dataclass
class Outcome:
    predictions: pd.DataFrame
    train_log: pd.DataFrame
    scores: dict[str, Any]
    info: dict[str, Any]
    params: int
    trainable_params: int
    train_seconds_per_slide: float | None
    peak_rss_mb: float | None
    peak_cuda_mb: float | None
    loaded: list[dict[str, Any]] = field(default_factory=list)  # what the network's build loaded (file, sha256, key map)
    state_dict: dict[str, torch.Tensor] | None = field(default=None, repr=False)  # the trained (final) weights


def fit_and_score(recipe: ModelRecipe, task: str, train: Sequence[Sample], test: Sequence[Sample],
                  cfg: TrainConfig, *, progress: bool = True, desc: str = "",
                  device: torch.device | str | None = "auto", val: Sequence[Sample] | None = None,
                  tracker: Any = None) -> Outcome:
    """Train ``recipe``'s model on ``train`` from seed ``cfg.seed`` on ``device``, predict and score
    ``test`` (``val``: an imported split set's early-stopping set, see ``train_and_predict``)."""
    torch.manual_seed(cfg.seed)
    model = recipe.build().to(resolve_device(device) if not isinstance(device, torch.device) else device)
    _reset_peak_memory()
    if getattr(model, "closed_form", False):  # pooled-embedding baselines: fitted by scikit-learn/-survival
        from .closed_form import fit_and_predict

        pred, train_log, info = fit_and_predict(model, task, train, test, cfg)
    else:
        pred, train_log, info = train_and_predict(model, task, train, test, cfg, progress=progress, desc=desc,
                                                  val=val, tracker=tracker)
    steps = cfg.epochs * info["train_cases"]  # one slide (or one case's bag) per forward pass
    loaded = [w.to_dict() for w in getattr(model, "weights_provenance", [])]  # feature_cache.weights.record
    return Outcome(pred, train_log, T.score(task, pred), info, count_parameters(model),
                   count_trainable_parameters(model),
                   info["train_seconds"] / steps if steps else None, **_peak_memory(), loaded=loaded,
                   state_dict=model.state_dict())


def _reset_peak_memory() -> None:
    """Start a unit's peak-memory window: Linux resets the process's peak RSS (VmHWM) on writing 5 to
    /proc/self/clear_refs; CUDA's allocator resets its own peak."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass  # not Linux (or not permitted): ru_maxrss below is then the process's lifetime peak
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def _peak_memory() -> dict[str, float | None]:
    """Peak RSS (MB) since :func:`_reset_peak_memory` where the OS can tell, else since process start,
    and CUDA's max allocated memory (MB) when a GPU is used."""
    rss = None
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    rss = int(line.split()[1]) / 1024  # kB -> MB
    except OSError:
        pass
    if rss is None:
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports kB
    cuda = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    return {"peak_rss_mb": rss, "peak_cuda_mb": cuda}
