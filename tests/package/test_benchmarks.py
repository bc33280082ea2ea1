"""The benchmark scripts run from a checkout (``python benchmarks/X.py``): smallest sizes only.

``benchmarks/scan.py`` measured nothing for two sessions: its per-case subprocesses start with
``benchmarks/`` first on ``sys.path``, where ``benchmarks/pixelmamba.py`` shadowed the
``pixelmamba`` package, and every row read "exit 1: ModuleNotFoundError". These tests run the
script the way a user does and check that every row holds numbers.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # runs benchmarks/scan.py (~26 s); `pytest -m slow` before running the benchmarks
def test_scan_benchmark_rows_hold_numbers(tmp_path):
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "scan.py"), "--lengths", "64", "--dims", "8",
         "--backends", "numba", "--mixer-dims", "3", "--mixer-len", "64", "--repeat", "1"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, check=True,
    ).stdout
    assert "exit 1" not in out and "Error" not in out, out
    scan_row = re.search(r"^\| 64 \| 8 \| numba \|(.*)$", out, re.M)
    assert scan_row, out
    cells = [c.strip() for c in scan_row.group(1).split("|")]
    assert all(re.fullmatch(r"\d+\.\d+|\d+", c) for c in cells[:6]), scan_row.group(0)
    mixer_rows = re.findall(r"^\| 3 \| [12] \| ([\d,]+) \| ([\d,]+) \|$", out, re.M)
    assert len(mixer_rows) == 2, out
    assert all(int(v.replace(",", "")) > 0 for row in mixer_rows for v in row)


@pytest.mark.slow  # runs benchmarks/gpu_check.py --tiny on CPU (~60-90 s); `pytest -m slow` before taking it to a GPU
def test_gpu_check_tiny_writes_every_section(tmp_path):
    """``benchmarks/gpu_check.py --tiny``: the GPU check's code paths on the CPU at tiny sizes
    (the triton backend under its interpreter), so the script cannot rot between GPU runs."""
    import importlib.util
    import json

    out = tmp_path / "tiny.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--tiny", "--out", str(out)],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["tiny"] is True and report["device"] == "cpu"
    sections = report["sections"]
    assert list(sections) == ["scan", "models", "memory", "cli", "extract"]
    for name in ("scan", "models", "memory", "extract"):
        assert sections[name]["status"] == "ok", (name, sections[name])
    assert sections["cli"]["status"] == "skipped" and "options checked" in sections["cli"]["reason"]
    scan = {r["backend"]: r for r in sections["scan"]["rows"]}
    want = {"torch"} | ({"triton"} if importlib.util.find_spec("triton") else set())
    assert set(scan) == want, scan
    for r in scan.values():
        assert r["fwdbwd_s"] > 0 and r["err_ref"] < 1e-4 and r["bytes"] > 0, r
    if "triton" in scan:
        assert scan["triton"]["err_torch"] < 1e-4
    assert {r["model"] for r in sections["models"]["rows"]} == {"pixelmamba-6m", "vim-ti", "vim-ti-plain"}
    assert report["models_ratio"]["pixelmamba_over_vim"] > 0
    assert all(r["ok"] and r["bytes_per_px"] > 0 for r in sections["memory"]["rows"])
    assert report["largest_square"]["side"] >= 128
    (ext,) = sections["extract"]["rows"]
    assert ext["patches"] > 0 and ext["precision"] == "fp32" and ext["min_cosine_vs_fp32"] > 0.99
    assert "## scan: ok" in proc.stdout and "| torch | stateful |" in proc.stdout
