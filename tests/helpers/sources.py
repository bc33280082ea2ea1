"""The project's own files, for tests that inspect source: never whatever else lies in the checkout
(a virtual environment in ``.venv``, data, build output: a venv's non-UTF-8 file would break a test
that walked the whole tree).

With git: the files git tracks or would track (``git ls-files --cached --others --exclude-standard``)
under the project's directories. Without git (an unpacked sdist): a walk of those directories.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

PACKAGES = ("bench", "feature_cache", "baselines", "pixelmamba")
PROJECT_DIRS = (*PACKAGES, "benchmarks", "tests")


def project_files(root: Path, suffix: str = ".py", dirs: tuple[str, ...] = PROJECT_DIRS) -> list[Path]:
    """Files ending in ``suffix`` under ``root``'s project directories ``dirs``, sorted."""
    root = Path(root)
    try:
        out = subprocess.run(["git", "-C", str(root), "ls-files", "-z", "--cached", "--others",
                              "--exclude-standard", "--", *dirs], capture_output=True, check=True).stdout
        inside = subprocess.run(["git", "-C", str(root), "rev-parse", "--show-toplevel"], capture_output=True,
                                text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        inside = ""
    if inside and Path(inside).resolve() == root.resolve():
        files = {root / f for f in out.decode().split("\0") if f}
    else:
        files = {p for d in dirs for p in (root / d).rglob("*") if p.is_file()}
    return sorted(p for p in files if p.name.endswith(suffix) and p.is_file()
                  and "__pycache__" not in p.relative_to(root).parts)
