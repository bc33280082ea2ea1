"""Small I/O primitives of the harness: atomic writes (one implementation, ``feature_cache.io``,
re-exported here), safe names for ids that become paths, and a check that a root is writable."""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path


from feature_cache.io import (DISK_FULL_ERRNOS, DiskFullError, atomic_path, atomic_write_bytes,  # noqa: F401
                              atomic_write_json, atomic_write_text, disk_full)

_SAFE = re.compile(r"[^A-Za-z0-9._+\-]")


def safe_name(name: str) -> str:
    """A path component from an id: no separators, no '..', no leading dot.

    Ids come from file names and clinical tables; they must never become paths that escape the
    output directory.
    """
    s = _SAFE.sub("_", str(name)).strip("._")
    if not s:
        raise ValueError(f"id {name!r} cannot be made into a file name")
    return s


NAME_LIMIT = 100  # characters of a dataset, task, method or variant name


def name_component(name: str, what: str = "name", limit: int = NAME_LIMIT) -> str:
    """The directory of a dataset, task, method or variant name in the results store.

    A name that is already a safe file name keeps its form (an ablation variant's ``=`` is written
    ``_``: ``depth=1`` -> ``depth_1``); any other name gets its safe form plus a hash of the raw name
    (``a/b`` -> ``a_b-<hash>``, ``lu ad`` -> ``lu_ad-<hash>``, ``α1`` -> ``1-<hash>``), so two names
    never share a directory. The one overlap left (``a=b`` and ``a_b``) is refused by the results
    store, which compares the raw name every record keeps. Empty and over-long names are refused.
    """
    name = str(name)
    if not name.strip():
        raise ValueError(f"the {what} name is empty. Fix: give a name with at least one letter or digit "
                         "(an empty shell variable?)")
    if len(name) > limit:
        raise ValueError(f"the {what} name {name[:40]!r}... is {len(name)} characters long; the limit is {limit}. "
                         "Fix: choose a shorter name")
    s = _SAFE.sub("_", name).strip("._")
    if s and s == name.replace("=", "_"):
        return s
    tag = hashlib.sha256(name.encode("utf-8")).hexdigest()[:8]
    return f"{s}-{tag}" if s else tag


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
