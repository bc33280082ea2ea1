"""Small I/O primitives the results store and split manager share: atomic writes and locks.

A file that exists is complete: every write goes to a temporary file in the same directory and is
renamed over the target (``os.replace`` is atomic on POSIX), so a killed process leaves at most a
stray ``*.tmp`` that nothing reads as done.
"""

from __future__ import annotations

import errno
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

_SAFE = re.compile(r"[^A-Za-z0-9._+\-]")
DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


class DiskFullError(OSError):
    """A write failed for lack of space (or a file-size limit); ``filename`` is the target."""


def disk_full(exc: BaseException) -> bool:
    """Is ``exc`` (or what caused it) a full disk? h5py and numpy sometimes lose the errno in
    their own exception types, so the message is checked too."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
            return True
        if "No space left on device" in str(exc) or "File too large" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


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
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if disk_full(exc):
            raise DiskFullError(getattr(exc, "errno", errno.ENOSPC) or errno.ENOSPC,
                                "No space left on device" if getattr(exc, "errno", None) != errno.EFBIG
                                else "File too large", str(path)) from exc
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


class UnwritableError(ValueError):
    """An output directory cannot be written; the message names it and the fix."""


def check_writable(path: Path | str, what: str, fix: str = "", create: bool = True) -> Path:
    """``path`` exists (created if needed) and a file can be created in it, else an
    :class:`UnwritableError` naming the directory (instead of a PermissionError traceback from
    deep inside a run). ``create=False`` writes nothing: the directory, or its nearest existing
    parent, must be a writable directory."""
    path = Path(path)
    if not create:
        p = path.absolute()
        while not p.exists() and p != p.parent:
            p = p.parent
        if not p.is_dir() or not os.access(p, os.W_OK | os.X_OK):
            raise UnwritableError(f"{what} {path} is not writable ({p} is {'not a directory' if not p.is_dir() else 'read-only for this user'}). "
                                  f"Fix: {fix or 'fix its permissions, or point the option at a directory you can write'}")
        return path
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".write-check.", dir=path)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise UnwritableError(f"{what} {path} is not writable ({exc.strerror or exc}). Fix: "
                              f"{fix or 'fix its permissions, or point the option at a directory you can write'}"
                              ) from exc
    return path
