"""End to end through the CLI on a tiny generated cohort: run, rerun (no work), SIGKILL + resume,
table and KM figures. Real subprocesses, real files."""

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from fake_inputs import run_bench as bench, write_demo_spec

REPO = Path(__file__).resolve().parents[2]
N_UNITS = 2 * 5  # tasks × folds per method



@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A 20-case demo cohort with its ResNet-50 (random weights) features extracted once."""
    root = tmp_path_factory.mktemp("tiny")
    spec = write_demo_spec(root, n_cases=20)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "BENCH_CACHE": str(root / "cache")}
    bench("extract", "--dataset", spec, "--encoders", "resnet50", "-q", env=env)
    return spec, env, root


def metrics_files(results: Path, method: str) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in (results / "runs" / "tiny").glob(f"*/{method}/fold*/metrics.json")}


@pytest.fixture
def umask022():
    old = os.umask(0o022)
    yield
    os.umask(old)


@pytest.mark.slow  # the CLI end to end on a generated cohort with real ResNet-50 extraction (~150 s); in-process: test_provenance, test_camelyon16
def test_run_rerun_table(tiny, umask022):
    spec, env, root = tiny
    res = root / "results-a"
    p = bench("run", "--methods", "meanmil.resnet50,abmil.resnet50", "--dataset", spec, "--results", res,
              "--set", "epochs=2", "-q", env=env)
    done = {**metrics_files(res, "meanmil.resnet50"), **metrics_files(res, "abmil.resnet50")}
    assert len(done) == 2 * N_UNITS, p.stdout
    m = json.loads(next(iter(done)).read_text())
    assert m["weights"][0]["source"] == "random" and m["split"]["hash"] and m["config_hash"]
    assert m["schema_version"] == 3 and m["predictions_sha256"]
    assert m["trainable_params"] == m["params"] > 0  # MIL aggregators have no frozen part
    summary = pd.read_csv(res / "tiny" / "summary.csv")
    prim = summary[summary["primary"]]
    assert set(prim["task"]) == {"staging", "survival"} and (prim["n_folds"] == 5).all()

    # identical rerun: no work, says so, touches nothing
    t0 = time.perf_counter()
    p = bench("run", "--methods", "meanmil.resnet50,abmil.resnet50", "--dataset", spec, "--results", res,
              "--set", "epochs=2", env=env)
    assert "nothing to do" in p.stdout and f"all {2 * N_UNITS} unit(s) already done" in p.stdout
    assert {**metrics_files(res, "meanmil.resnet50"), **metrics_files(res, "abmil.resnet50")} == done
    rerun_seconds = time.perf_counter() - t0

    # another config on one fold would mix the row: refused, nothing touched; as a variant it runs
    p = bench("run", "--methods", "meanmil.resnet50", "--dataset", spec, "--results", res, "--set", "epochs=1",
              "--folds", "0", "--tasks", "staging", "-q", env=env, check=False)
    assert p.returncode == 2 and "would mix configurations" in p.stderr and "--variant NAME" in p.stderr
    assert {**metrics_files(res, "meanmil.resnet50"), **metrics_files(res, "abmil.resnet50")} == done
    p = bench("run", "--methods", "meanmil.resnet50", "--dataset", spec, "--results", res, "--set", "epochs=1",
              "--folds", "0", "--tasks", "staging", "--variant", "e1", "-q", env=env)
    assert "1 unit(s) run" in p.stdout
    assert (res / "runs/tiny/staging/meanmil.resnet50/e1/fold0/metrics.json").is_file()
    # a changed config on every fold redoes them and keeps the old results aside
    p = bench("run", "--methods", "meanmil.resnet50", "--dataset", spec, "--results", res, "--set", "epochs=1",
              "--tasks", "staging", "-q", env=env)
    assert "5 unit(s) run" in p.stdout
    assert list((res / "runs/tiny/staging/meanmil.resnet50").glob("fold0.superseded-*/metrics.json"))

    p = bench("table", "--dataset", "tiny", "--results", res, env=env)
    tex = (res / "tables" / "table2_tiny.tex").read_text()
    assert r"\toprule" in tex and "MeanMIL" in tex and "ABMIL" in tex
    assert (res / "figures" / "tiny" / "km_abmil.resnet50.png").stat().st_size > 1000
    assert "log-rank p" in p.stdout
    # what collaborators on a shared server read: -rw-r--r-- under umask 022, like a plain open()
    written = [res / "tiny" / "summary.csv", next(iter(done)), res / "tables" / "table2_tiny.tex"]
    assert {stat.filemode(f.stat().st_mode) for f in written} == {"-rw-r--r--"}
    print(f"rerun took {rerun_seconds:.1f} s")


@pytest.mark.slow  # ~26 s; SIGKILL + resume in the fast suite: faults/test_process_faults.py::test_f15
def test_sigkill_resumes_only_unfinished_units(tiny):
    spec, env, root = tiny
    res = root / "results-b"
    args = ["run", "--methods", "abmil.resnet50", "--dataset", spec, "--results", res, "--set", "epochs=6", "-q"]
    proc = subprocess.Popen([sys.executable, "-m", "bench", *map(str, args)], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and len(metrics_files(res, "abmil.resnet50")) < 2:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = metrics_files(res, "abmil.resnet50")
    assert 2 <= len(before) < N_UNITS, "the run finished before it could be killed; make it slower"
    contents = {p: p.read_text() for p in before}
    p = bench("run", *args[1:], env=env)
    after = metrics_files(res, "abmil.resnet50")
    assert len(after) == N_UNITS
    for f, mtime in before.items():  # finished units were reused, not redone
        assert after[f] == mtime and f.read_text() == contents[f]
    assert f"{N_UNITS - len(before)} unit(s) run, {len(before)} already done" in p.stdout
