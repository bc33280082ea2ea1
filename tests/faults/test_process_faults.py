"""Faults 14-18 and 21: processes that die, run twice, run out of disk, or fail on one DDP rank --
real subprocesses, real signals, a real full file system (21 is emulated in-process)."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import pytest

import bench.engine.unit as U

from conftest import METHOD, N_FOLDS, REPO, TASKS, slide_id

N_UNITS = len(TASKS) * N_FOLDS


def _wait_for(predicate, proc, timeout=300.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        if proc.poll() is not None:
            return predicate()
        time.sleep(0.02)
    return False


def _features(cache: Path) -> dict[Path, tuple[int, int]]:
    return {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in cache.glob("resnet50/*/*.h5")}


def test_f14_sigkill_during_feature_extraction(cohort):
    shutil.rmtree(cohort.cache)
    proc = cohort.spawn(command="extract")
    assert _wait_for(lambda: len(_features(cohort.cache)) >= 2, proc), proc.communicate()[0]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = _features(cohort.cache)
    assert 2 <= len(before) < 12, "extraction finished before it could be killed"
    for p in before:  # every file under its final name is complete
        with h5py.File(p, "r") as f:
            assert f["features"].shape == (f["coords"].shape[0], 1024)
    r = cohort.run(command="extract")
    assert r.code == 0, r.text
    assert f"{12 - len(before)} extracted; {len(before)} already cached" in r.out
    after = _features(cohort.cache)
    assert len(after) == 12 and all(after[p] == v for p, v in before.items())  # reused, not redone
    assert cohort.run("--folds", "0").code == 0


def test_f15_sigkill_during_training(cohort):
    args = ("--set", "epochs=15")
    proc = cohort.spawn(*args)
    assert _wait_for(lambda: len(cohort.done()) >= 2, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = cohort.done()
    assert 2 <= len(before) < N_UNITS, "the run finished before it could be killed"
    started = [p.parent for p in cohort.results.glob("runs/faults/*/*/fold*/config.json")
               if not (p.parent / "metrics.json").exists()]
    r = cohort.run(*args)
    assert r.code == 0, r.text
    assert f"{N_UNITS - len(before)} unit(s) run, {len(before)} already done" in r.out
    cohort.assert_kept(before)
    cohort.assert_complete()
    for d in started:  # a unit killed mid-way (in its fold<k>.next/) was redone from its start, not taken as done
        assert (d.with_name(d.name.removesuffix(".next")) / "metrics.json").is_file()
        assert not d.name.endswith(".next") or not d.exists()  # the finished replacement took its place


@pytest.mark.slow  # ~35 s; processes sharing one store in the fast suite: test_jobs.py, test_feature_cache.py::test_two_workers_share_one_cache
def test_f16_two_workers_share_results_and_cache(cohort):
    for i in range(6):  # half the slides still need features: the two workers share that work too
        cohort.feature_file(slide_id(i)).unlink()
    args = ("--set", "epochs=6")
    a = cohort.spawn(*args, quiet=False)
    b = cohort.spawn(*args, quiet=False)
    out_a, out_b = a.communicate(timeout=600)[0], b.communicate(timeout=600)[0]
    print(out_a, out_b, sep="\n----\n")
    assert a.returncode == 0 and b.returncode == 0
    ran = [int(re.search(r"(\d+) unit\(s\) run", o).group(1)) for o in (out_a, out_b)]
    assert sum(ran) == N_UNITS  # every unit trained exactly once across the two workers
    assert ran[0] and ran[1] or "running in another process" in out_a + out_b
    extracted = [sum(int(n) for n in re.findall(r"feature extraction: (\d+) extracted", o)) for o in (out_a, out_b)]
    assert sum(extracted) == 6  # every missing slide encoded exactly once
    cohort.assert_complete()
    r = cohort.run(*args)
    assert "nothing to do" in r.out


_HOLDER = textwrap.dedent("""
    import sys, time
    from filelock import FileLock
    locks = [FileLock(p) for p in sys.argv[1:]]
    for lk in locks:
        lk.acquire(timeout=0)
    print("locked", flush=True)
    time.sleep(600)
""")


def test_f17_stale_locks_of_a_dead_process(cohort):
    assert cohort.run("--folds", "0").code == 0
    before = cohort.done()
    # what a worker killed mid-way leaves: the unit lock and a slide lock it held, a half-written
    # feature file and a half-written metrics file
    h5 = cohort.feature_file(slide_id(3))
    h5.unlink()
    unit = cohort.unit_dir("staging", 1)
    unit.mkdir(parents=True)
    locks = [str(unit.parent / ".fold1.lock"), str(h5) + ".lock"]
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, *locks], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    (h5.parent / f"{h5.name}.tmp").write_bytes(b"\x89HDF\r\n" + bytes(100))
    (unit / ".metrics.json.abc123.tmp").write_text('{"config_hash": "x", "metr')
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert all(os.path.exists(p) for p in locks)  # the lock files stay; their flock died with the process
    t0 = time.perf_counter()
    r = cohort.run()
    assert r.code == 0, r.text
    assert "running in another process" not in r.out and "1 extracted; 11 already cached" in r.err
    cohort.assert_kept(before)
    cohort.assert_complete()
    with h5py.File(h5, "r") as f:
        assert f["features"].shape[0] == f["coords"].shape[0] > 0
    print(f"run after a dead lock holder: {time.perf_counter() - t0:.1f} s")


_TMPFS_RUN = """
mount -t tmpfs -o size=1m tmpfs "$MNT" || exit 90
cp -a "$SRC/." "$MNT/"
"$PY" -c 'import os,sys; st=os.statvfs(sys.argv[1]); open(os.path.join(sys.argv[1], "ballast"), "wb").write(bytes(st.f_bavail*st.f_frsize - 28*1024))' "$MNT"
"$@"
rc=$?
rm -f "$MNT/ballast"
cp -a "$MNT/." "$OUT/"
exit $rc
"""


def _full_disk_run(cohort, tmp_path, argv):
    """Run ``argv`` with the results root on a nearly full 1 MiB tmpfs (a private mount namespace);
    where that is not permitted, under RLIMIT_FSIZE (writes beyond 2 KB fail with EFBIG)."""
    mnt, out = tmp_path / "mnt", tmp_path / "after"
    mnt.mkdir()
    out.mkdir()
    if shutil.which("unshare") and subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode == 0:
        env = {**cohort.env(), "MNT": str(mnt), "SRC": str(cohort.results), "OUT": str(out), "PY": sys.executable}
        argv = [a if a != str(cohort.results) else str(mnt) for a in argv]
        p = subprocess.run(["unshare", "-m", "sh", "-c", _TMPFS_RUN, "sh", *argv], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=600)
        assert p.returncode != 90, p.stderr
        return p, mnt, out
    import resource

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of being killed
        resource.setrlimit(resource.RLIMIT_FSIZE, (2048, 2048))

    p = subprocess.run(argv, cwd=REPO, env=cohort.env(), capture_output=True, text=True, timeout=600,
                       preexec_fn=limit)
    return p, cohort.results, cohort.results


def test_f18_disk_full_while_writing(cohort, tmp_path):
    assert cohort.run("--folds", "0").code == 0
    before = cohort.done()
    p, written_root, after_root = _full_disk_run(cohort, tmp_path, cohort.argv())
    print(p.stdout, p.stderr)
    assert p.returncode == 3, p.stderr
    m = re.search(r"error: disk full while writing (\S+) \(", p.stderr)
    assert m and m.group(1).startswith(str(written_root)), p.stderr
    assert "Nothing finished is lost" in p.stderr and "rerun the same command to resume" in p.stderr
    assert "Traceback" not in p.stderr
    # no partial file is taken as done: every metrics.json on the full disk is complete JSON
    metrics = list(after_root.glob("runs/faults/*/*/fold*/metrics.json"))
    assert len(metrics) < N_UNITS
    for f in metrics:
        json.loads(f.read_text())
    assert not list(after_root.glob("runs/**/*.tmp"))
    if after_root != cohort.results:  # the user moves the results to a disk with space
        shutil.rmtree(cohort.results)
        shutil.copytree(after_root, cohort.results)
    cohort.assert_kept(before)
    r = cohort.run()
    assert r.code == 0, r.text
    cohort.assert_kept(before)
    cohort.assert_complete()


def test_f21_unit_failure_under_ddp_stops_the_rank(cohort, monkeypatch, caplog):
    """Under torchrun the ranks train each unit together: a rank whose unit fails (e.g. out of
    memory on its slide) must stop, not go on to the next unit while the other ranks wait in the
    failed unit's collectives until the group's 30-minute timeout. torchrun then tears the group
    down. Emulated in-process: a process group of one 'active' rank whose second unit raises."""
    import bench.engine.runner as R
    from bench.engine import distributed as D

    assert cohort.run("--tasks", "staging", "--folds", "0").code == 0
    before = cohort.done()
    monkeypatch.setattr(D, "active", lambda: True)
    monkeypatch.setattr(D, "broadcast", lambda obj: obj)
    monkeypatch.setattr(D, "barrier", lambda: None)
    monkeypatch.setattr(D, "rank", lambda: 0)
    real, calls = U.run_unit, []

    def failing(plan, *a, **k):
        calls.append(plan.unit)
        if plan.unit.fold == 1:
            raise MemoryError("one rank's slide did not fit")
        return real(plan, *a, **k)

    monkeypatch.setattr(U, "run_unit", failing)
    with pytest.raises(MemoryError):  # the process ends with the error (torchrun sees a failed worker)
        cohort.run("--tasks", "staging")
    msg = "\n".join(r.getMessage() for r in caplog.records)
    assert "rank 0: faults/staging/meanmil.resnet50/fold1 failed: MemoryError" in msg, msg
    assert "stopping every rank" in msg and "rerun the same command to resume" in msg
    assert [u.fold for u in calls] == [1]  # fold 0 was done; nothing after the failure was started
    d = cohort.unit_dir("staging", 1)
    assert "one rank's slide did not fit" in (d.with_name(d.name + ".next") / "error.json").read_text()
    cohort.assert_kept(before)
    monkeypatch.undo()
    r = cohort.run("--tasks", "staging")  # the rerun resumes at the failed unit
    assert r.code == 0 and f"{N_FOLDS - 1} unit(s) run, 1 already done" in r.out, r.out
