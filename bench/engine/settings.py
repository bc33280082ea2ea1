"""Process settings that come from the environment, read once by the CLI and handed down.

Every ``BENCH_*`` variable that tunes how the harness runs (not where it finds data, configs or
weights) is parsed here, by :meth:`Settings.from_env`, and nowhere else: the CLI builds one
:class:`Settings` per command and passes its fields down as plain parameters (``feature_cache``
takes them as arguments with defaults and never imports ``bench``). A bad value stops the command
with one line naming the variable and what it accepts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping

from feature_cache.slide import BACKENDS

SLIDE_BACKENDS = ("auto", *BACKENDS)  # feature_cache.slide.open_slide's backend


@dataclass(frozen=True)
class Settings:
    """``mmap_threshold``: glibc's mmap threshold while an end-to-end unit trains (bytes; 0 leaves
    malloc alone; ``$BENCH_MMAP_THRESHOLD``, default 1 MiB; ``bench.engine.memory``).
    ``trim_layers``: hand free heap pages back between Pixel-Mamba's streamed layers and stages
    (``$BENCH_TRIM_LAYERS``, 0 or 1, default 1).
    ``slide_backend``: the slide reader for every slide a command opens (``$BENCH_SLIDE_BACKEND``:
    auto, openslide or tiffslide; ``bench extract --reader`` wins).
    ``extract_workers``: DataLoader processes that decode tiles during feature extraction when
    neither ``--workers`` nor the dataset's ``extract_workers`` says (``$BENCH_EXTRACT_WORKERS``;
    None: cores - 1, 1 to 4).
    ``lock_report_s``: how often a worker waiting on another process's slide lock says who holds
    it (``$BENCH_LOCK_REPORT_S``, default 60).
    ``stall_report_s``: how often ``bench run --jobs N`` names a stopped worker
    (``$BENCH_STALL_REPORT_S``, default 300).
    ``stall_takeover_s``: after a worker has been stopped this long, the run ends it (its process
    group) and trains its unit on a fresh worker (``$BENCH_STALL_TAKEOVER_S``, default 1800; 0:
    never, the run waits for it).
    """

    mmap_threshold: int = 1 << 20
    trim_layers: bool = True
    slide_backend: str = "auto"
    extract_workers: int | None = None
    lock_report_s: float = 60.0
    stall_report_s: float = 300.0
    stall_takeover_s: float = 1800.0

    def __post_init__(self) -> None:
        if self.slide_backend not in SLIDE_BACKENDS:
            raise ValueError(f"unknown slide backend {self.slide_backend!r}; choose one of {', '.join(SLIDE_BACKENDS)}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Settings":
        env = os.environ if environ is None else environ
        trim = env.get("BENCH_TRIM_LAYERS", "1").strip()
        if trim not in ("0", "1"):
            raise ValueError(f"BENCH_TRIM_LAYERS must be 0 or 1, got {trim!r}")
        backend = env.get("BENCH_SLIDE_BACKEND", "").strip().lower() or "auto"
        if backend not in SLIDE_BACKENDS:
            raise ValueError(f"BENCH_SLIDE_BACKEND must be one of {', '.join(SLIDE_BACKENDS)}, got {backend!r}; "
                             "unset it to let each slide pick its reader")
        return cls(mmap_threshold=_number(env, "BENCH_MMAP_THRESHOLD", int, cls.mmap_threshold, 0,
                                          "a number of bytes (or 0 to disable)"),
                   trim_layers=trim == "1", slide_backend=backend,
                   extract_workers=_number(env, "BENCH_EXTRACT_WORKERS", int, None, 0,
                                           "a number of worker processes (0: decode in threads)"),
                   lock_report_s=_number(env, "BENCH_LOCK_REPORT_S", float, cls.lock_report_s, None,
                                         "a number of seconds > 0"),
                   stall_report_s=_number(env, "BENCH_STALL_REPORT_S", float, cls.stall_report_s, None,
                                          "a number of seconds > 0"),
                   stall_takeover_s=_number(env, "BENCH_STALL_TAKEOVER_S", float, cls.stall_takeover_s, 0,
                                            "a number of seconds (0: never)"))


def _number(env: Mapping[str, str], name: str, kind: type, default: float | None, least: float | None,
            what: str) -> float | None:
    """``$name`` as ``kind``; unset or empty gives ``default``. ``least``: the smallest allowed value
    (None: the value must be > 0)."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        value = None
    if value is None or value != value or (value < least if least is not None else value <= 0):
        raise ValueError(f"{name} must be {what}, got {raw!r}")
    return value
