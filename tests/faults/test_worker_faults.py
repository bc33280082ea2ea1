"""`bench run --jobs 2` and its worker process: the worker dies with its parent (SIGTERM or SIGKILL
to the parent), a SIGTERM ends the run with a line saying what is kept, and a worker stopped while
it holds a unit is named (pid, unit, how long)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time

import pytest


def _alive(pid: int) -> bool:
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _start(cohort, *extra: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen, int, list[str]]:
    proc = cohort.spawn("--jobs", "2", *extra, quiet=False, env=env or cohort.env())
    lines: list[str] = []
    deadline = time.time() + 120
    while time.time() < deadline:
        line = proc.stdout.readline()
        lines.append(line)
        m = re.search(r"worker process\(es\) started \(pid (\d+)", line)
        if m:
            return proc, int(m.group(1)), lines
        assert line or proc.poll() is None, "".join(lines)
    raise AssertionError("no worker started:\n" + "".join(lines))


@pytest.mark.slow  # ~40 s: two real runs of two processes
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_worker_dies_with_its_parent(cohort, sig: int) -> None:
    proc, worker, lines = _start(cohort, "--set", "epochs=40")
    time.sleep(3)  # both processes training
    assert _alive(worker)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=60)
    deadline = time.time() + 10
    while _alive(worker) and time.time() < deadline:
        time.sleep(0.2)
    assert not _alive(worker) and not _alive(proc.pid), "".join(lines) + out
    if sig == signal.SIGTERM:
        assert proc.returncode == 143 and "terminated (SIGTERM); finished units are kept" in out, out
        assert re.search(r"stopped: \d+ of 10 unit\(s\) of this run are finished and kept", out), out
        assert "Traceback" not in out


@pytest.mark.slow  # ~90 s
def test_stopped_worker_is_named(cohort) -> None:
    env = {**cohort.env(), "BENCH_STALL_REPORT_S": "2"}
    from bench.engine.jobs import units_held_by

    proc, worker, lines = _start(cohort, "--set", "epochs=60", env=env)
    deadline = time.time() + 120
    while not units_held_by(worker, cohort.results) and time.time() < deadline:
        time.sleep(0.05)
    os.kill(worker, signal.SIGSTOP)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            if f"worker pid {worker} has been stopped for" in line:
                break
        text = "".join(lines)
        assert f"worker pid {worker} has been stopped for" in text, text
        assert re.search(r"holding faults/staging/meanmil.resnet50/fold\d", text), text
        assert f"`kill -CONT {worker}`" in text
    finally:
        os.kill(worker, signal.SIGCONT)
    proc.communicate(timeout=120)
    assert proc.returncode == 0


@pytest.mark.slow  # ~60 s
def test_stopped_worker_is_taken_over(cohort) -> None:
    """After $BENCH_STALL_TAKEOVER_S the parent ends the stopped worker's process group (its unit
    lock dies with it) and a fresh worker trains the unit: the run completes by itself."""
    env = {**cohort.env(), "BENCH_STALL_REPORT_S": "1", "BENCH_STALL_TAKEOVER_S": "4"}
    from bench.engine.jobs import units_held_by

    proc, worker, lines = _start(cohort, "--set", "epochs=100", env=env)  # units long enough for the worker to claim one
    deadline = time.time() + 120
    while not (held := units_held_by(worker, cohort.results)) and time.time() < deadline and _alive(worker):
        time.sleep(0.05)
    assert held, "the worker claimed no unit"
    os.kill(worker, signal.SIGSTOP)
    try:
        out, _ = proc.communicate(timeout=240)
    finally:
        if _alive(worker):
            os.kill(worker, signal.SIGCONT)
    text = "".join(lines) + out
    assert proc.returncode == 0, text
    assert not _alive(worker), text
    m = re.search(rf"worker pid {worker} was stopped for \d+ s holding (\S+): ended it \(its process group\) and "
                  r"started worker pid (\d+) to train that unit", text)
    assert m and m.group(1) == held[0], text
    assert re.search(r"10 unit\(s\) run \(\d+ by workers\), 0 already done \(", text), text
    cohort.assert_complete()
    # the unit the stopped worker held was trained by the fresh worker, not left to the next run
    assert "nothing to do" in cohort.run("--set", "epochs=100").text


def test_stall_settings() -> None:
    from bench.engine.settings import Settings

    s = Settings.from_env({"BENCH_STALL_REPORT_S": "2", "BENCH_STALL_TAKEOVER_S": "0"})
    assert (s.stall_report_s, s.stall_takeover_s) == (2.0, 0.0)
    assert (Settings.from_env({}).stall_report_s, Settings.from_env({}).stall_takeover_s) == (300.0, 1800.0)
    with pytest.raises(ValueError, match=r"BENCH_STALL_TAKEOVER_S must be a number of seconds \(0: never\), got 'x'"):
        Settings.from_env({"BENCH_STALL_TAKEOVER_S": "x"})
    with pytest.raises(ValueError, match="BENCH_STALL_REPORT_S must be a number of seconds > 0, got '0'"):
        Settings.from_env({"BENCH_STALL_REPORT_S": "0"})
