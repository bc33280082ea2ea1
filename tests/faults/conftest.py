"""Shared fixtures of the fault tests: a tiny real cohort and the harness run on it, for real.

The cohort: 12 TCGA-style cases, one small pyramidal tiled TIFF each (640×320 px at 0.5 µm/px,
two tissue patches at 20×, so ResNet-50 extraction of the whole cohort takes seconds), plus a
normalized clinical table whose labels are chosen here (three cases per stage, seven observed
deaths), so every 5-fold training fold has enough events for the four survival bins. Slides and
features are made once per session; each test gets its own copy (slides, clinical table, feature
cache, results root) and injects its fault into that copy on disk.

``FaultCohort.run`` runs ``python -m bench`` in this process (fast: torch and the encoder are
loaded once) and returns its exit code and everything the user would see (stdout, stderr and log
lines); ``FaultCohort.spawn`` runs it as a real subprocess, for the faults that need one (SIGKILL,
a second worker, a size-limited file system).
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[2]
METHOD = "meanmil.resnet50"
N_FOLDS = 5
TASKS = ("staging", "survival")

# case index -> (stage, time in months, event); 3 cases per stage, 7 deaths
LABELS = [(0, 61.0, 0), (0, 25.8, 1), (0, 40.2, 0), (1, 33.1, 1), (1, 12.0, 0), (1, 20.5, 1),
          (2, 9.4, 1), (2, 30.0, 0), (2, 14.8, 1), (3, 3.3, 1), (3, 18.9, 0), (3, 6.1, 1)]


def case_id(i: int) -> str:
    return f"TCGA-FA-{i:04d}"


def slide_id(i: int, dx: int = 1) -> str:
    return f"{case_id(i)}-01Z-00-DX{dx}"


def tissue_rgb(seed: int, w: int = 640, h: int = 320) -> np.ndarray:
    """A pink ellipse of stained 'tissue' with purple 'nuclei' on white glass."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    inside = ((xx - w / 2) / (0.48 * w)) ** 2 + ((yy - h / 2) / (0.48 * h)) ** 2 < 1
    rgb = np.full((h, w, 3), 242, np.uint8)
    tis = np.clip(np.array([225, 140, 180]) + rng.normal(0, 8, 3) + rng.normal(0, 12, (h, w, 1)), 0, 255)
    rgb[inside] = tis[inside].astype(np.uint8)
    for y, x in zip(rng.integers(0, h, 300), rng.integers(0, w, 300)):
        if inside[y, x]:
            rgb[max(0, y - 3): y + 3, max(0, x - 3): x + 3] = (90, 40, 120)
    return rgb


def write_slide(path: Path, seed: int, mpp: float | None = 0.5, white: bool = False) -> Path:
    from bench.data.demo import write_pyramid_tiff

    rgb = tissue_rgb(seed)
    if white:  # glass only, with scanner noise
        rgb = np.full_like(rgb, 243) + np.random.default_rng(seed).integers(0, 4, rgb.shape, dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_pyramid_tiff(path, rgb, mpp=mpp)
    return path


def clinical_table(n: int = len(LABELS)) -> pd.DataFrame:
    return pd.DataFrame([{"case_id": case_id(i), "stage": s, "time": t, "event": e}
                         for i, (s, t, e) in enumerate(LABELS[:n])])


@functools.lru_cache(maxsize=None)
def _encoder(name: str, allow_random: bool = False):
    """One encoder object per process: building ResNet-50 and hashing its weights costs seconds,
    and every in-process `bench run` would otherwise pay it again."""
    return _real_get_encoder(name, allow_random=allow_random)


def _real_get_encoder(*a, **k):
    from feature_cache.encoders import get_encoder

    return get_encoder(*a, **k)


@pytest.fixture(autouse=True)
def _shared_encoder(monkeypatch: pytest.MonkeyPatch) -> None:
    import feature_cache

    def get(name, weights=None, allow_random=False, device="cpu", standin=False):
        if weights is not None or standin or os.environ.get(f"BENCH_WEIGHTS_{name.upper()}"):
            return _real_get_encoder(name, weights=weights, allow_random=allow_random, device=device,
                                     standin=standin)
        return _encoder(name, allow_random)

    monkeypatch.setattr(feature_cache, "get_encoder", get)


@pytest.fixture(scope="session")
def master(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Slides, clinical table and extracted features, made once; tests copy them."""
    import feature_cache

    root = tmp_path_factory.mktemp("faults-master")
    for i in range(len(LABELS)):
        write_slide(root / "data" / "slides" / f"{slide_id(i)}.tiff", seed=i)
    clinical_table().to_csv(root / "data" / "clinical.csv", index=False)
    enc = _encoder("resnet50", True)
    slides = {p.stem: p for p in sorted((root / "data" / "slides").glob("*.tiff"))}
    rep = feature_cache.FeatureCache(root / "cache").extract(slides, enc, progress=False)
    assert rep.ok and len(rep.done) == len(LABELS), rep.summary()
    return root


@dataclass
class Result:
    code: int
    out: str  # stdout
    err: str  # stderr + log lines: what the user sees on the terminal

    @property
    def text(self) -> str:
        return self.out + "\n" + self.err


class FaultCohort:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.slides = self.data / "slides"
        self.clinical = self.data / "clinical.csv"
        self.cache = root / "cache"
        self.results = root / "results"
        self.yaml = root / "faults.yaml"
        self.write_yaml()

    # ---- the dataset ---------------------------------------------------------------------
    def write_yaml(self, **extra: object) -> None:
        import yaml

        spec = {"description": "fault-test cohort", "root": str(self.data), "slides": "slides",
                "slide_glob": "*.tiff", "clinical": "clinical.csv", "clinical_format": "normalized",
                "tasks": list(TASKS), "allow_random_weights": True,
                "train": {"two-stage": {"feature_norm": "zscore", "epochs": 2}}, **extra}
        self.yaml.write_text(yaml.safe_dump(spec, allow_unicode=True), encoding="utf-8")

    def slide(self, i: int, dx: int = 1) -> Path:
        return self.slides / f"{slide_id(i, dx)}.tiff"

    def feature_file(self, sid: str) -> Path:
        return next(self.cache.glob(f"resnet50/*/{sid}.h5"))

    def table(self) -> pd.DataFrame:
        return pd.read_csv(self.clinical, dtype=str, keep_default_na=False)

    # ---- running the harness -------------------------------------------------------------
    def args(self, *extra: str, command: str = "run", methods: str = METHOD) -> list[str]:
        if command == "table":
            return ["table", "--dataset", "faults", "--results", str(self.results), "--no-figures", *extra]
        a = [command, "--dataset", str(self.yaml)]
        if command in ("run", "extract", "splits"):
            a += ["--results", str(self.results), "--cache", str(self.cache)] if command != "extract" \
                else ["--cache", str(self.cache)]
        if command == "run":
            a += ["--methods", methods]
        return a + list(extra)

    def run(self, *extra: str, command: str = "run", methods: str = METHOD) -> Result:
        """``python -m bench <command> ...`` in this process."""
        from bench.cli import main

        out, err = io.StringIO(), io.StringIO()
        handler = logging.StreamHandler(err)
        handler.setFormatter(logging.Formatter("%(message)s"))
        root = logging.getLogger()
        old = root.level
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = main([*self.args(*extra, command=command, methods=methods), "-q"])
        finally:
            root.removeHandler(handler)
            root.setLevel(old)
        res = Result(code, out.getvalue(), err.getvalue())
        print(f"$ bench {command} {' '.join(extra)} -> {code}\n{res.text}")
        return res

    def env(self) -> dict[str, str]:
        return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO),
                "PYTHONUNBUFFERED": "1"}

    def argv(self, *extra: str, command: str = "run", methods: str = METHOD, quiet: bool = True) -> list[str]:
        return [sys.executable, "-m", "bench", *self.args(*extra, command=command, methods=methods),
                *(["-q"] if quiet else [])]

    def spawn(self, *extra: str, command: str = "run", methods: str = METHOD, quiet: bool = True,
              **kw) -> subprocess.Popen:
        """``python -m bench <command> ...`` as a real subprocess (stdout+stderr to a pipe)."""
        return subprocess.Popen(self.argv(*extra, command=command, methods=methods, quiet=quiet), cwd=REPO,
                                env=kw.pop("env", self.env()), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, **kw)

    # ---- results -------------------------------------------------------------------------
    def unit_dir(self, task: str, fold: int, method: str = METHOD) -> Path:
        return self.results / "runs" / "faults" / task / method / f"fold{fold}"

    def done(self, method: str = METHOD) -> dict[Path, tuple[int, str]]:
        """Finished units: metrics.json -> (mtime, content)."""
        return {p: (p.stat().st_mtime_ns, p.read_text())
                for p in sorted((self.results / "runs" / "faults").glob(f"*/{method}/fold*/metrics.json"))
                if ".superseded-" not in str(p)}

    def assert_kept(self, before: dict[Path, tuple[int, str]], method: str = METHOD) -> None:
        """(b): every unit finished before the fault is still there, byte for byte, not redone."""
        after = self.done(method)
        for p, v in before.items():
            assert p in after, f"{p} was lost"
            assert after[p] == v, f"{p} was rewritten"

    def assert_complete(self, tasks=TASKS, method: str = METHOD) -> None:
        """(c): every unit of the grid is done."""
        for t in tasks:
            for k in range(N_FOLDS):
                assert (self.unit_dir(t, k, method) / "metrics.json").is_file(), (t, k)


@pytest.fixture
def cohort(master: Path, tmp_path: Path) -> FaultCohort:
    shutil.copytree(master / "data", tmp_path / "data")
    shutil.copytree(master / "cache", tmp_path / "cache")
    return FaultCohort(tmp_path)
