"""Golden files for the table tests: committed under tests/golden/; a missing or different one is a
failure. Regenerate them deliberately, then review the diff before committing:

    BENCH_UPDATE_GOLDEN=1 python -m pytest tests/report/test_tables.py tests/core/test_ablations.py
    git diff tests/golden/
"""

import difflib
import os
from pathlib import Path

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
UPDATE = os.environ.get("BENCH_UPDATE_GOLDEN") == "1"


def assert_golden(name: str, got: str) -> None:
    path = GOLDEN / name
    if UPDATE:
        path.write_text(got)
    assert path.is_file(), (f"golden file {path} is missing: write it with BENCH_UPDATE_GOLDEN=1 python -m pytest "
                            f"{os.environ.get('PYTEST_CURRENT_TEST', '').split('::')[0]} and review it before committing")
    want = path.read_text()
    assert got == want, f"{path} differs:\n" + "".join(
        difflib.unified_diff(want.splitlines(True), got.splitlines(True), "golden", "got"))
