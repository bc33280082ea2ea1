"""Process memory settings for training whole-slide models on the CPU.

Why this exists (measured, docs/end_to_end_baselines.md): glibc's malloc serves an allocation
above its *mmap threshold* with a fresh ``mmap`` and returns it to the system on ``free``. But the
threshold is dynamic: each time a large block is freed, glibc raises the threshold to that block's
size (up to 32 MB), so from then on tensors of that size come from the heap arenas, which
fragment and never shrink. A chunked, checkpointed model allocates and frees many
megabyte-sized activations of slightly different shapes per layer, and the resident set then
grows with the number of layers instead of staying at one layer's working set: Vim-Ti (depth 8,
4,097 tokens, mixer chunk 1,024) peaked 525 MB above its base with the default allocator and
100 MB with the threshold pinned at 1 MB, for about a third more CPU time (page faults on fresh
mappings). For a model whose point is to fit a slide in memory that is the right trade, so the
harness pins the threshold while it trains end-to-end models on the CPU (``bounded_heap``), and only
then: the MIL aggregators' many small steps pay the page faults of fresh mappings for nothing
(TransMIL on a demo bag, measured on the shared 2-core machine: ~3,000 minor faults and ~11 ms of
system time per step pinned, none restored; ``benchmarks/first_run.py``).

No library does this for PyTorch's CPU tensors (PyTorch has no CPU caching allocator to
configure), hence the few lines of ``ctypes`` here. Elsewhere than glibc this does nothing.

Override with the environment variable ``BENCH_MMAP_THRESHOLD`` (bytes; ``0`` keeps glibc's
dynamic default), e.g. ``BENCH_MMAP_THRESHOLD=0 python -m bench run ...``.

Below the threshold, freed tensors stay in glibc's heap, resident, and a small long-lived
allocation among them keeps the heap from shrinking: on Pixel-Mamba-6M at 1024² the resident size
was 20–30 MB above the live tensors at every phase. ``release_between_layers`` hands those pages
back (``malloc_trim(0)``) whenever a layer starts, forward or backward (measured: 8 MB less peak
at 1024², CPU time unchanged within noise); ``bench`` does it for Pixel-Mamba's streamed layers,
and also whenever a stage inside a streamed layer starts (each sweep of a block over its pieces,
each pass of Region Fusion/Token Expansion: ``pixelmamba.streaming.set_release_hook``), since a
layer's own stages leave several MB of freed pages behind each (measured at 512²: 98.7 vs 112.7
B/px, 7% more CPU time; ``bench/engine/models.py``), and for inputs below ~1M tokens between the pieces
of a block's backward too (``PixelMamba._release_pieces``; 512²: 84–85 → 78–80 B/px).
``BENCH_TRIM_LAYERS=0`` turns all of it off.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import sys
from typing import Iterator

log = logging.getLogger(__name__)

DEFAULT_MMAP_THRESHOLD = 1 << 20  # 1 MiB: below one chunk of a mixer's (d_inner, 1024) activations
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # <malloc.h>
GLIBC_TRIM_THRESHOLD = 128 * 1024  # glibc's initial M_TRIM_THRESHOLD
# glibc's dynamic mmap threshold rises to at most DEFAULT_MMAP_THRESHOLD_MAX (32 MiB on 64-bit), with
# the trim threshold at twice the mmap threshold: the state it settles in once large blocks are freed
GLIBC_MMAP_THRESHOLD_MAX = 32 << 20
_applied: int | None = None  # the threshold pinned now, None when the heap is not bounded


def bound_heap_growth(threshold: int | None = None) -> int | None:
    """Pin glibc's mmap threshold so large freed tensors go back to the system.

    ``threshold`` in bytes (default: ``$BENCH_MMAP_THRESHOLD`` or 1 MiB; 0 leaves malloc alone).
    Returns the threshold now in force, or None when nothing was changed (not glibc, or 0).
    Idempotent; safe to call from any thread before training starts.
    """
    global _applied
    if threshold is None:
        env = os.environ.get("BENCH_MMAP_THRESHOLD", "").strip()
        try:
            threshold = int(env) if env else DEFAULT_MMAP_THRESHOLD
        except ValueError:
            raise ValueError(f"BENCH_MMAP_THRESHOLD must be a number of bytes (or 0 to disable), "
                             f"got {env!r}") from None
    if threshold <= 0 or not sys.platform.startswith("linux"):
        return None
    if _applied == threshold:
        return threshold
    libc = _glibc()
    if libc is None:
        return None
    if libc.mallopt(_M_MMAP_THRESHOLD, int(threshold)) != 1:
        log.debug("mallopt(M_MMAP_THRESHOLD, %d) refused", threshold)
        return None
    # the trim threshold glibc starts with, as a pin at process start keeps it (work before the pin,
    # e.g. feature extraction, may have raised it dynamically; an earlier release did)
    libc.mallopt(_M_TRIM_THRESHOLD, GLIBC_TRIM_THRESHOLD)
    _applied = threshold
    log.debug("malloc mmap threshold pinned at %d bytes", threshold)
    return threshold


def unbound_heap_growth() -> bool:
    """Undo :func:`bound_heap_growth` for work that gains nothing from it (the MIL aggregators' small
    steps). True if a pin was undone.

    glibc offers no way back to its *dynamic* threshold once ``mallopt`` has set one, so this sets
    the state the dynamic threshold settles in after a large block is freed: mmap threshold at its
    maximum (32 MiB), trim threshold twice that. Without a pin in force it does nothing, so a process
    that never trained an end-to-end model keeps glibc's own default untouched.
    """
    global _applied
    if _applied is None:
        return False
    libc = _glibc()
    if libc is None:
        return False
    libc.mallopt(_M_MMAP_THRESHOLD, GLIBC_MMAP_THRESHOLD_MAX)
    libc.mallopt(_M_TRIM_THRESHOLD, 2 * GLIBC_MMAP_THRESHOLD_MAX)
    _applied = None
    log.debug("malloc mmap threshold released (%d bytes, trim at twice that)", GLIBC_MMAP_THRESHOLD_MAX)
    return True


@contextlib.contextmanager
def bounded_heap(active: bool = True) -> Iterator[int | None]:
    """Pin the mmap threshold (:func:`bound_heap_growth`) while the block runs when ``active``, and
    release it afterwards (:func:`unbound_heap_growth`): ``bench run`` bounds the heap for each
    end-to-end unit only. Yields the threshold in force (None: none)."""
    if not active:
        yield None
        return
    threshold = bound_heap_growth()
    # glibc maps a block afresh only when its heap has no free room for it (sysmalloc): hand the free
    # top of the heap back first, or the unit's first large tensors would still come from the heap
    release_free_memory()
    try:
        yield threshold
    finally:
        unbound_heap_growth()


def release_free_memory() -> bool:
    """Hand the heap's free pages back to the system (glibc's ``malloc_trim(0)``), e.g. before
    taking a baseline of the resident size. True if it ran (glibc only)."""
    libc = _glibc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True


def release_between_layers(layers, when=None) -> list:
    """Return the heap's free pages to the system (``release_free_memory``) at the start of every
    module in ``layers`` (an iterable of ``torch.nn.Module``): when its forward starts (also when a
    checkpointed segment is recomputed in backward) and when the gradient of its first output
    arrives (its backward starts). ``when(args)``, if given, is called with the module's
    positional inputs and the trims happen only if it returns True (for the backward, as decided
    in the forward): each trim costs the page faults of reusing the returned pages, about 10% of
    the CPU time on Pixel-Mamba's unstreamed 224² batches, where there is nothing to gain.
    Returns the hook handles (``.remove()`` undoes it). Does nothing (returns ``[]``) where
    ``malloc_trim`` does not exist or ``$BENCH_TRIM_LAYERS`` is ``0``."""
    if not trimming_enabled():
        return []

    def trim(*_args) -> None:
        release_free_memory()

    def on_input(_module, args) -> None:
        if when is None or when(args):
            trim()

    def on_output(_module, args, out) -> None:
        if when is not None and not when(args):
            return
        first = next((t for t in (out if isinstance(out, (tuple, list)) else (out,))
                      if getattr(t, "requires_grad", False)), None)
        if first is not None:
            first.register_hook(trim)

    handles = []
    for layer in layers:
        handles.append(layer.register_forward_pre_hook(on_input))
        handles.append(layer.register_forward_hook(on_output))
    return handles


def trimming_enabled() -> bool:
    """Whether to hand free heap pages back during training: glibc's ``malloc_trim`` exists and
    ``$BENCH_TRIM_LAYERS`` is not ``0``."""
    env = os.environ.get("BENCH_TRIM_LAYERS", "1").strip()
    if env not in ("0", "1"):
        raise ValueError(f"BENCH_TRIM_LAYERS must be 0 or 1, got {env!r}")
    return env == "1" and _glibc() is not None


_LIBC: ctypes.CDLL | None | bool = False  # False: not looked up yet


def _glibc() -> ctypes.CDLL | None:
    global _LIBC
    if _LIBC is False:
        _LIBC = _load_glibc()
    return _LIBC  # type: ignore[return-value]


def _load_glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 — raises AttributeError on musl and others
    except (OSError, AttributeError):
        return None
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.mallopt.restype = ctypes.c_int
    libc.malloc_trim.argtypes = [ctypes.c_size_t]
    libc.malloc_trim.restype = ctypes.c_int
    return libc
