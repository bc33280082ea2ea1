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

ROOT = Path(__file__).resolve().parents[1]


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
