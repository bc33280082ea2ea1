"""bench.memory pins glibc's mmap threshold: a freed large tensor must leave the resident set."""

import os
import subprocess
import sys
import textwrap

import pytest

from bench.memory import bound_heap_growth

CHILD = textwrap.dedent("""
    import os, torch
    from bench.memory import bound_heap_growth
    def rss():
        return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    print(bound_heap_growth())
    base = rss()
    for _ in range(3):          # 16 MB: first freed by munmap, which (by default) raises the
        t = torch.ones(4 << 20)  # threshold so the next ones come from the heap and stay resident
        del t
    print((rss() - base) / 2**20)
""")


def _resident_after_free(threshold: str) -> tuple[str, float]:
    env = {**os.environ, "BENCH_MMAP_THRESHOLD": threshold}
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, check=True)
    applied, mb = out.stdout.split()
    return applied, float(mb)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc only")
def test_pinned_threshold_returns_freed_tensors_to_the_system():
    applied, pinned = _resident_after_free("")  # the default, 1 MiB
    assert applied == str(1 << 20)
    off, dynamic = _resident_after_free("0")
    assert off == "None"
    assert pinned < 4, pinned  # the 16 MB buffers went back
    assert dynamic > 12, dynamic  # glibc's dynamic threshold kept one in the heap


def test_bad_environment_value_names_the_variable(monkeypatch):
    monkeypatch.setenv("BENCH_MMAP_THRESHOLD", "1MB")
    with pytest.raises(ValueError, match="BENCH_MMAP_THRESHOLD"):
        bound_heap_growth()


def test_importing_bench_makes_openmp_threads_wait_passively_unless_the_user_chose():
    code = "import bench, os; print(os.environ['OMP_WAIT_POLICY'])"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "PASSIVE"
    out = subprocess.run([sys.executable, "-c", code], env={**env, "OMP_WAIT_POLICY": "ACTIVE"},
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ACTIVE"
