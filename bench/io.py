"""Small I/O primitives the results store and split manager share: atomic writes and locks.

A file that exists is complete: every write goes to a temporary file in the same directory and is
renamed over the target (``os.replace`` is atomic on POSIX), so a killed process leaves at most a
stray ``*.tmp`` that nothing reads as done.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

_SAFE = re.compile(r"[^A-Za-z0-9._+\-]")


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_text(path: Path | str, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path | str, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def safe_name(name: str) -> str:
    """A path component from an id: no separators, no '..', no leading dot.

    Ids come from file names and clinical tables; they must never become paths that escape the
    output directory.
    """
    s = _SAFE.sub("_", str(name)).strip("._")
    if not s:
        raise ValueError(f"id {name!r} cannot be made into a file name")
    return s
