"""Per-slide extraction locks that talk: the holder writes who it is (pid, host, since when) beside
the lock, a waiting worker keeps saying who holds it, and the lock of a holder that died on this
host is broken. (filelock's locks are per thread and silent; this is the little on top.)"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from feature_cache.io import atomic_write_text

log = logging.getLogger(__name__)


def _atomic_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=True))


def _lock_info(lock: FileLock) -> Path:
    return Path(str(lock.lock_file) + ".info")


def _read_lock_info(lock: FileLock) -> dict[str, Any] | None:
    try:
        return json.loads(_lock_info(lock).read_text())
    except (OSError, ValueError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def acquire_talking(lock: FileLock, what: str, blocking: bool, report_every: float = 60.0) -> bool:
    """Take ``lock`` and write who holds it beside it. Not ``blocking``: False if held. Blocking:
    wait, logging the holder (pid, host, since) every ``report_every`` seconds, and break the lock
    when its holder is on this host and no longer running (checked as often)."""
    import socket

    host = socket.gethostname()
    if not blocking:
        try:
            lock.acquire(timeout=0)
        except Timeout:
            return False
    else:
        every = float(report_every)
        if not every > 0:
            raise ValueError(f"the lock report interval must be > 0 seconds, got {report_every!r}")
        t0 = time.time()
        while True:
            try:
                lock.acquire(timeout=every)
                break
            except Timeout:
                info = _read_lock_info(lock) or {}
                pid, where = info.get("pid"), info.get("host", "?")
                if pid and where == host and not _pid_alive(int(pid)):
                    log.warning("%s: breaking the lock %s: its holder, pid %s on %s, is no longer running",
                                what, lock.lock_file, pid, where)
                    for p in (Path(lock.lock_file), _lock_info(lock)):
                        try:
                            p.unlink()
                        except FileNotFoundError:
                            pass
                    continue
                since = info.get("since", "an unknown time")
                held = f"pid {pid} on {where} since {since}" if pid else "another process (no holder info)"
                log.warning("%s: waiting %.0f s for the lock %s, held by %s. A suspended worker (Ctrl-Z, "
                            "scontrol suspend) keeps its locks until resumed: resume it (fg / scontrol "
                            "resume) or stop it, and this worker goes on.", what, time.time() - t0,
                            lock.lock_file, held)
    try:
        _atomic_json(_lock_info(lock), {"pid": os.getpid(), "host": host,
                                        "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    except OSError:
        pass  # the info is for humans; a lock without it still locks
    return True


def release_talking(lock: FileLock) -> None:
    info = _read_lock_info(lock)
    if info and info.get("pid") == os.getpid():
        try:
            _lock_info(lock).unlink()
        except FileNotFoundError:
            pass
    lock.release()
