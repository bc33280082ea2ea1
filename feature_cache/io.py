"""Atomic writes, shared by the feature cache and the harness (``bench.io`` re-exports them).

A file that exists is complete: every write goes to a temporary file in the same directory, is
flushed to disk and renamed over the target (``os.replace`` is atomic on POSIX), so a killed process
leaves at most a stray ``.<name>.*.tmp`` that nothing reads as done. The finished file has the mode a
plain ``open()`` would give it under the process's umask (``-rw-r--r--`` under 022). A full disk is reported as a
:class:`DiskFullError` naming the target file.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


class DiskFullError(OSError):
    """A write failed for lack of space (or a file-size limit); ``filename`` is the target."""


def disk_full(exc: BaseException | None) -> bool:
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


def umask() -> int:
    """The process's umask, read without changing it where the kernel reports it (Linux ≥ 4.7);
    elsewhere set and restored at once."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def plain_file_mode() -> int:
    """The mode ``open(path, "w")`` gives a new file: 0o666 less the umask. ``mkstemp`` creates
    0o600 files, which a rename would otherwise carry into results collaborators cannot read."""
    return 0o666 & ~umask()


@contextlib.contextmanager
def atomic_path(path: Path | str, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary path beside ``path`` to write to (with any library: h5py, tifffile, torch.save,
    PIL); when the block ends without error it is fsynced and renamed over ``path``, else removed.
    ``suffix`` lets format-sniffing writers see the right extension (``.tmp.png``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, plain_file_mode())  # the writer may have replaced the file: set the mode last
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if disk_full(exc):
            full = getattr(exc, "errno", None) == errno.EFBIG
            raise DiskFullError(errno.EFBIG if full else errno.ENOSPC,
                                "File too large" if full else "No space left on device", str(path)) from exc
        raise


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


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
