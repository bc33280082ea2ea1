"""Settings read once: every ``BENCH_*`` variable that tunes how the harness runs is parsed by
``Settings.from_env`` (the CLI) and reaches the place it acts as a parameter; the libraries below
(feature_cache, the engine's inputs and workers) take that parameter and read no environment."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from bench.engine.settings import Settings

VARS = ("BENCH_MMAP_THRESHOLD", "BENCH_TRIM_LAYERS", "BENCH_SLIDE_BACKEND", "BENCH_EXTRACT_WORKERS",
        "BENCH_LOCK_REPORT_S", "BENCH_STALL_REPORT_S")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in VARS:
        monkeypatch.delenv(var, raising=False)


def strip_tiff(path: Path) -> Path:
    """A stripped (untiled) RGB TIFF at 0.5 um/px: tiffslide reads it, OpenSlide refuses it, so which
    reader opened a slide shows in whether it could be read."""
    import tifffile

    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.random.default_rng(0).integers(0, 255, (300, 400, 3), dtype=np.uint8)
    tifffile.imwrite(path, img, photometric="rgb", resolution=(2e4, 2e4), resolutionunit="CENTIMETER")
    return path


def strip_cohort(root: Path) -> Path:
    """A dataset YAML of two cases, each one stripped-TIFF slide; returns its path."""
    import pandas as pd

    data = root / "data"
    for i in range(2):
        strip_tiff(data / "slides" / f"CASE-{i:03d}.tiff")
    pd.DataFrame([{"case_id": f"CASE-{i:03d}", "stage": i, "time": 10.0 + i, "event": i} for i in range(2)]
                 ).to_csv(data / "clinical.csv", index=False)
    spec = root / "strip.yaml"
    spec.write_text(f"root: {data}\nslides: slides\nslide_glob: '*.tiff'\nclinical: clinical.csv\n"
                    "clinical_format: normalized\ncase_id: stem\ntasks: [staging]\nallow_random_weights: true\n")
    return spec


def test_from_env_reads_every_variable() -> None:
    assert Settings.from_env({}) == Settings()
    assert Settings() == Settings(1 << 20, True, "auto", None, 60.0, 300.0)
    got = Settings.from_env({"BENCH_MMAP_THRESHOLD": "0", "BENCH_TRIM_LAYERS": "0", "BENCH_SLIDE_BACKEND": "TiffSlide",
                             "BENCH_EXTRACT_WORKERS": "0", "BENCH_LOCK_REPORT_S": "0.5",
                             "BENCH_STALL_REPORT_S": "2"})
    assert got == Settings(mmap_threshold=0, trim_layers=False, slide_backend="tiffslide", extract_workers=0,
                           lock_report_s=0.5, stall_report_s=2.0)


@pytest.mark.parametrize("var,value", [("BENCH_SLIDE_BACKEND", "pil"), ("BENCH_EXTRACT_WORKERS", "-1"),
                                       ("BENCH_EXTRACT_WORKERS", "two"), ("BENCH_LOCK_REPORT_S", "0"),
                                       ("BENCH_STALL_REPORT_S", "nan"), ("BENCH_MMAP_THRESHOLD", "1.5"),
                                       ("BENCH_TRIM_LAYERS", "yes")])
def test_bad_value_is_one_line_naming_the_variable(var: str, value: str, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(ValueError, match=f"^{var} must be .*got '{value}'"):
        Settings.from_env({var: value})
    from bench.cli import main

    monkeypatch.setenv(var, value)
    assert main(["extract", "--dataset", "demo"]) == 2  # read before the dataset is touched
    err = capsys.readouterr().err
    assert err.startswith(f"error: {var} must be ") and "Traceback" not in err and err.count("\n") == 1


def test_run_options_carry_the_settings_to_workers_and_jobs(monkeypatch: pytest.MonkeyPatch) -> None:
    """`bench run` reads the environment once into RunOptions.settings, which travel serialised."""
    from bench.cli import build_parser
    from bench.cli.run import run_options
    from bench.engine.options import RunOptions

    for var, value in {"BENCH_SLIDE_BACKEND": "tiffslide", "BENCH_EXTRACT_WORKERS": "3", "BENCH_LOCK_REPORT_S": "7",
                       "BENCH_STALL_REPORT_S": "9", "BENCH_TRIM_LAYERS": "0"}.items():
        monkeypatch.setenv(var, value)
    args = build_parser().parse_args(["run", "--methods", "meanmil.resnet50", "--dataset", "demo"])
    opts = run_options(args)
    want = Settings(trim_layers=False, slide_backend="tiffslide", extract_workers=3, lock_report_s=7.0,
                    stall_report_s=9.0)
    assert opts.settings == want
    assert RunOptions.from_json(opts.for_job("staging", 0).to_json()).settings == want
    old = opts.to_dict()
    old["settings"] = {"mmap_threshold": 0, "trim_layers": True}  # a spec written before the other fields
    assert RunOptions.from_dict(old).settings == Settings(mmap_threshold=0)


@pytest.mark.parametrize("backend,readable", [("openslide", False), ("tiffslide", True), ("auto", True)])
def test_slide_backend_reaches_the_end_to_end_reads(tmp_path: Path, backend: str, readable: bool) -> None:
    """$BENCH_SLIDE_BACKEND -> Settings -> Planner -> the whole-slide inputs' reads (and the regions')."""
    from bench.data.datasets import load_cohort
    from bench.engine.plan import Planner
    from bench.registry import list_methods

    cohort = load_cohort(str(strip_cohort(tmp_path)))
    settings = Settings.from_env({"BENCH_SLIDE_BACKEND": backend})
    planner = Planner(cohort, {}, tmp_path / "cache", False, 0, None, False, None, settings)
    spec = list_methods("pixelmamba-6m")[0]
    _, inputs = planner.get_inputs(spec, {"magnification": 5.0})
    from bench.engine.cost import planned_size

    # the cost probe reads the slide headers with the same reader: 400 x 300 px at 20x is 75 x 100 at 5x
    assert planned_size(inputs, cohort) == ((75, 100) if readable else None)
    inputs.ensure()
    assert inputs.missing == (set() if readable else {"CASE-000", "CASE-001"})
    if readable:
        assert inputs.has("CASE-000")
    _, regions = planner.get_inputs(spec, {"regions": {"n": 1, "size": 32}})
    assert regions.regions.reader == backend


def test_doctor_opens_slides_with_the_backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture) -> None:
    from bench.cli.doctor import check_dataset

    yaml = strip_cohort(tmp_path)
    kw = {"results": str(tmp_path / "results"), "cache": str(tmp_path / "cache")}
    check_dataset(str(yaml), slide_backend="openslide", **kw)
    assert "slides: 0 of 2 open" in capsys.readouterr().out
    check_dataset(str(yaml), slide_backend="tiffslide", **kw)
    assert "slides: 2 of 2 open" in capsys.readouterr().out


def _fake_encoder() -> SimpleNamespace:
    return SimpleNamespace(name="resnet50", fingerprint="f" * 16, random_weights=False, patch_size=256,
                           magnification=20.0, weights_source="test", weights_label="test")


@pytest.mark.parametrize("yaml_workers,want", [(None, 3), (1, 1)])
def test_feature_inputs_pass_the_settings_to_the_extraction(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             yaml_workers: int | None, want: int) -> None:
    """`bench run`'s two-stage inputs hand the reader, the extraction workers (the dataset's
    extract_workers first) and the lock report interval to FeatureCache.extract."""
    import feature_cache
    from bench.data.datasets import load_cohort
    from bench.engine.inputs import make_inputs
    from bench.registry import list_methods

    yaml = strip_cohort(tmp_path)
    if yaml_workers is not None:
        yaml.write_text(yaml.read_text() + f"extract_workers: {yaml_workers}\n")
    monkeypatch.setattr(feature_cache, "get_encoder", lambda *a, **k: _fake_encoder())
    settings = Settings.from_env({"BENCH_SLIDE_BACKEND": "tiffslide", "BENCH_EXTRACT_WORKERS": "3",
                                  "BENCH_LOCK_REPORT_S": "4"})
    fi = make_inputs(list_methods("meanmil.resnet50")[0], load_cohort(str(yaml)), tmp_path / "cache", {},
                     progress=False, settings=settings)
    seen = {}

    def extract(paths, encoder, **kw):
        seen.update(kw)
        return SimpleNamespace(failed={}, no_tissue=[])

    fi.cache = SimpleNamespace(extract=extract)
    fi.ensure()
    assert (seen["reader"], seen["num_workers"], seen["lock_report_s"]) == ("tiffslide", want, 4.0)


def test_extract_waits_saying_who_holds_the_lock_every_lock_report_s(tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    """FeatureCache.extract(lock_report_s=, reader=): the wait on a held slide lock is reported at
    that interval, and the slide is then opened with that reader (OpenSlide refuses a strip TIFF)."""
    from filelock import FileLock

    from feature_cache import FeatureCache
    from feature_cache.locks import acquire_talking, release_talking

    slide = strip_tiff(tmp_path / "S.tiff")
    cache, enc = FeatureCache(tmp_path / "cache"), _fake_encoder()
    out_dir = cache.dir_for(enc)
    out_dir.mkdir(parents=True)
    held, done = threading.Event(), threading.Event()

    def hold() -> None:
        lock = FileLock(str(out_dir / "S.h5.lock"))
        acquire_talking(lock, "slide S", blocking=False)
        held.set()
        done.wait(1.0)
        release_talking(lock)

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait(10)
    with caplog.at_level(logging.WARNING, logger="feature_cache"):
        rep = cache.extract({"S": slide}, enc, progress=False, skip_errors=True, reader="openslide",
                            lock_report_s=0.2)
    holder.join(10)
    waits = [r for r in caplog.records if "waiting" in r.getMessage() and "S.h5.lock" in r.getMessage()]
    assert len(waits) >= 2, caplog.text
    assert "openslide:" in rep.failed["S"] and "tiffslide:" not in rep.failed["S"]


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states from /proc")
def test_workers_name_a_stopped_worker_every_stall_report_s(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from bench.engine.jobs import Workers

    log_dir = tmp_path / "results" / "logs" / "jobs-x"
    workers = Workers([sys.executable, "-c", "import time; time.sleep(30)"], 1, 1, time.time(), log_dir)
    workers.start()
    pid = workers.procs[0].pid
    os.kill(pid, signal.SIGSTOP)
    t0 = time.time()

    def poll() -> None:
        named = [r for r in caplog.records if f"worker pid {pid} has been stopped" in r.getMessage()]
        if len(named) >= 2 or time.time() - t0 > 20:
            os.kill(pid, signal.SIGKILL)  # a stopped process takes a SIGTERM only once resumed

    try:
        with caplog.at_level(logging.WARNING, logger="bench.engine.jobs"):
            workers.wait(poll=poll, every=0.05, stall_report_s=0.3)
    finally:
        if workers.running():
            os.kill(pid, signal.SIGKILL)
        workers.stop()
    named = [r for r in caplog.records if f"worker pid {pid} has been stopped" in r.getMessage()]
    assert len(named) >= 2 and time.time() - t0 < 20, caplog.text
    assert "kill -CONT" in named[0].getMessage()
