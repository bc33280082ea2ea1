"""`bench run --jobs N`: N processes over one results store train every unit exactly once, and the
results are those of a one-process run. Fast: fake bags (tests/helpers/fake_inputs.py), MeanMIL/ABMIL."""

import json
import bench.engine.inputs as inputs_mod
import bench.engine.unit as unit_step
import os
import sys
from pathlib import Path

import pandas as pd
import pytest

from bench.engine import jobs, runner
from bench.registry import get_method
from fake_inputs import write_toy_cohort
from jobs_worker import SlowBags, record_training

HELPERS = Path(__file__).resolve().parents[1] / "helpers"
METHODS = ["meanmil.resnet50", "abmil.resnet50"]


def _predictions(results):
    out = {}
    for p in sorted((results / "runs").glob("*/*/*/fold*/predictions.csv")):
        out[str(p.relative_to(results))] = pd.read_csv(p)
    return out


def _run(spec, results, trained_log, monkeypatch, jobs_n):
    monkeypatch.setitem(inputs_mod.FEATURE_INPUTS, "features", SlowBags)
    kw = dict(results=str(results), tasks=["staging", "survival"], train_overrides={"epochs": 1})
    command = [sys.executable, str(HELPERS / "jobs_worker.py"),
               json.dumps({**kw, "methods": METHODS, "dataset": str(spec), "trained_log": str(trained_log)})]
    monkeypatch.setattr(unit_step, "fit_and_score", unit_step.fit_and_score)  # restored after the test
    record_training(trained_log, wait_for_another=jobs_n > 1)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(HELPERS.parents[1]), str(HELPERS), os.environ.get("PYTHONPATH", "")]))
    return runner.run([get_method(m) for m in METHODS], str(spec), progress=False, jobs=jobs_n,
                      worker_command=command, **kw)


def test_two_jobs_train_every_unit_once_with_the_results_of_one(tmp_path, monkeypatch, caplog):
    import logging

    spec, _ = write_toy_cohort(tmp_path, 20, slide_bytes=lambda i: b"II*\x00" + bytes([i]) * 100)
    one = _run(spec, tmp_path / "one", tmp_path / "one.log", monkeypatch, 1)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="bench"):
        two = _run(spec, tmp_path / "two", tmp_path / "two.log", monkeypatch, 2)
    # the parent says when a round of folds is done by either process (how many such lines depends on
    # which process finishes which unit): each says more leading folds than the last, never fold 4
    rows = [r.getMessage() for r in caplog.records if "shows every row now" in r.getMessage()]
    said = [len(m.split(" of every")[0].removeprefix("fold(s) ").split(", ")) for m in rows]
    assert said == sorted(set(said)) and all(n <= 4 for n in said), rows
    assert all(m.split(" of every")[0] == "fold(s) " + ", ".join(map(str, range(n))) for m, n in zip(rows, said))
    n_units = 2 * len(METHODS) * 5
    assert len(one.ran) == n_units and not one.failed
    assert not two.failed and not two.busy
    assert len(two.ran) + len(two.by_workers) == n_units, two.line()
    lines = (tmp_path / "two.log").read_text().splitlines()
    units = [line.split("\t")[1] for line in lines]
    assert len(units) == n_units and len(set(units)) == n_units  # each unit trained exactly once
    pids = {line.split("\t")[0] for line in lines}
    print(two.line(), "; processes that trained:", len(pids))
    assert len(pids) == 2 and len(two.by_workers) > 0  # the worker did train some units
    assert "by workers" in two.line()
    a, b = _predictions(tmp_path / "one"), _predictions(tmp_path / "two")
    assert a.keys() == b.keys() and len(a) == n_units
    worst = max(float((a[k].select_dtypes("number") - b[k].select_dtypes("number")).abs().max().max()) for k in a)
    print("largest difference between the --jobs 1 and --jobs 2 predictions:", worst)
    assert worst <= 1e-5
    s1 = pd.read_csv(tmp_path / "one" / "toy" / "summary.csv")
    s2 = pd.read_csv(tmp_path / "two" / "toy" / "summary.csv")
    assert len(s1) == len(s2) > 0
    pd.testing.assert_series_equal(s1["mean"], s2["mean"], atol=1e-5)
    assert not list((tmp_path / "two" / "runs").glob("*/*/*/fold*.superseded-*"))  # nothing trained twice


def test_threads_per_job_keep_jobs_times_threads_within_the_cores():
    assert jobs.threads_per_job(1, cores=2) == 2
    assert jobs.threads_per_job(2, cores=2) == 1
    assert jobs.threads_per_job(3, cores=2) == 1  # at least one
    assert jobs.threads_per_job(2, cores=16) == 8
    with pytest.raises(ValueError, match="--jobs"):
        jobs.validate_jobs(0)


def test_worker_marker_is_the_parent_start_time(monkeypatch):
    monkeypatch.delenv(jobs.WORKER_ENV, raising=False)
    assert jobs.worker_of() is None
    monkeypatch.setenv(jobs.WORKER_ENV, "1700000000.5")
    assert jobs.worker_of() == 1700000000.5
    monkeypatch.setenv(jobs.WORKER_ENV, "yes")
    with pytest.raises(ValueError, match=jobs.WORKER_ENV):
        jobs.worker_of()


def test_auto_is_one_process_per_core_within_memory_and_one_on_a_gpu():
    assert jobs.auto_jobs(cuda=False, cores=2, memory_gb=24)[0] == 2
    assert jobs.auto_jobs(cuda=False, cores=16, memory_gb=24) == (6, "16 core(s), 24 GB (at most one process per 4 GB)")
    assert jobs.auto_jobs(cuda=False, cores=4, memory_gb=3)[0] == 1
    assert jobs.auto_jobs(cuda=False, cores=3, memory_gb=None)[0] == 3  # memory unknown: the cores decide
    assert jobs.auto_jobs(cuda=True, cores=16, memory_gb=128)[0] == 1
    assert jobs.parse_jobs("auto") == "auto" and jobs.parse_jobs(" 3 ") == 3 and jobs.parse_jobs(2) == 2
    for bad in ("0", "-1", "two", "1.5"):
        with pytest.raises(ValueError, match="positive number of processes or 'auto'"):
            jobs.parse_jobs(bad)


def _parsed(argv, monkeypatch, env=None):
    """`bench run ...` parsed, with --jobs resolved as main() does up to the auto choice."""
    from bench.cli import build_parser
    from bench.cli import run as cli

    if env is None:
        monkeypatch.delenv(jobs.JOBS_ENV, raising=False)
    else:
        monkeypatch.setenv(jobs.JOBS_ENV, env)
    monkeypatch.delenv(jobs.WORKER_ENV, raising=False)
    monkeypatch.setattr(jobs, "available_cores", lambda: 2)
    monkeypatch.setattr(jobs, "total_memory_gb", lambda: 24.0)
    return build_parser().parse_args(["run", "--methods", "meanmil.resnet50", "--dataset", "demo", *argv]), cli


def test_cli_jobs_default_is_auto_and_resolves_per_machine(monkeypatch):
    args, cli = _parsed(["--device", "cpu"], monkeypatch)
    assert args.jobs is None and cli.resolve_jobs(args) == 2  # unset: auto, one process per core
    args, cli = _parsed(["--device", "cpu", "--nproc", "2"], monkeypatch)
    assert cli.resolve_jobs(args) == 1  # DDP ranks train each unit together
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    args, cli = _parsed(["--device", "auto"], monkeypatch)
    assert cli.resolve_jobs(args) == 1  # one process on the GPU
    args, cli = _parsed(["--device", "cpu"], monkeypatch, env="1")
    assert cli.resolve_jobs(args) == 1  # $BENCH_JOBS sets the default
    args, cli = _parsed(["--device", "cpu", "--jobs", "3"], monkeypatch, env="1")
    assert cli.resolve_jobs(args) == 3  # the option wins over the environment


def test_workers_receive_the_run_serialised(tmp_path):
    """A --jobs worker (and a DDP rank) reads the run from JSON, not from a command line: the options
    and the methods, variants with their own settings, come back equal."""
    from bench.engine.config import Variant
    from bench.engine.options import RunOptions, Settings
    from bench.engine.jobs import read_worker_spec, write_worker_spec

    opts = RunOptions.create("demo", tasks=["staging"], folds=[0, 2], results=tmp_path, device="cpu", jobs=2,
                             train_overrides={"epochs": 1, "lr": 1e-4}, model_overrides={"alpha": 0.4},
                             input_overrides={"magnification": 1.25}, protocol="paper", tuned=True,
                             settings=Settings(0, False))
    variants = [Variant(get_method("meanmil.resnet50")),
                Variant(get_method("pixelmamba-6m"), "alpha=0.4", {"alpha": 0.4}, {"epochs": 2}, {"magnification": 1.25})]
    path = write_worker_spec(tmp_path / "logs", opts, variants, 1700000000.5)
    back, methods, started = read_worker_spec(path)
    assert back == opts and started == 1700000000.5
    assert [(v.spec.name, v.name, v.model, v.train, v.inputs) for v in methods] == \
        [(v.spec.name, v.name, v.model, v.train, v.inputs) for v in variants]
    job = opts.for_job("staging", 2)
    assert job.folds == (2,) and job.tasks == ("staging",) and job.device == "cpu" and not job.progress
    assert RunOptions.from_json(job.to_json()) == job


def test_bad_bench_jobs_is_refused_naming_the_variable(monkeypatch):
    from bench.cli import main

    monkeypatch.setenv(jobs.JOBS_ENV, "many")
    with pytest.raises(SystemExit, match=r"\$BENCH_JOBS: --jobs must be a positive number"):
        main(["run", "--methods", "meanmil.resnet50", "--dataset", "demo"])  # stops before any work


def test_cli_refuses_a_bad_jobs_value_naming_it(monkeypatch, capsys):
    with pytest.raises(SystemExit):
        _parsed(["--jobs", "0"], monkeypatch)
    assert "--jobs must be a positive number of processes or 'auto', got '0'" in capsys.readouterr().err
