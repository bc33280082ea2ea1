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
(TransMIL on a demo bag: thousands of minor faults and milliseconds of system time per step pinned,
none restored; ``benchmarks/first_run.py`` measures them).

No library does this for PyTorch's CPU tensors (PyTorch has no CPU caching allocator to
configure), hence the few lines of ``ctypes`` here. Elsewhere than glibc this does nothing.

Override with the environment variable ``BENCH_MMAP_THRESHOLD`` (bytes; ``0`` keeps glibc's
dynamic default), e.g. ``BENCH_MMAP_THRESHOLD=0 python -m bench run ...``: the CLI reads it once
(``bench.engine.settings.Settings``) and the unit executor enters :func:`unit_memory_policy` with it.

Below the threshold, freed tensors stay in glibc's heap, resident, and a small long-lived
allocation among them keeps the heap from shrinking: on Pixel-Mamba-6M at 1024² the resident size
was 20–30 MB above the live tensors at every phase. ``release_between_layers`` hands those pages
back (``malloc_trim(0)``) whenever a layer starts, forward or backward (measured: 8 MB less peak
at 1024², CPU time unchanged within noise); ``bench`` does it for Pixel-Mamba's streamed layers,
and also whenever a stage inside a streamed layer starts (each sweep of a block over its pieces,
each pass of Region Fusion/Token Expansion: ``pixelmamba.streaming.set_release_hook``), since a
layer's own stages leave several MB of freed pages behind each (measured at 512²: 98.7 vs 112.7
B/px, 7% more CPU time; ``bench/engine/models.py``), and for inputs below ~1M tokens between the pieces
of a block's backward too (``PixelMamba.releases_pieces``; 512²: 84–85 → 78–80 B/px).
``BENCH_TRIM_LAYERS=0`` turns all of it off. Nothing here is installed for the whole process: the
unit executor enters the policy for an end-to-end unit and leaves it afterwards
(:func:`unit_memory_policy`); outside it the layer hooks do nothing and pixelmamba's release hook is
the one that was there before.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import sys
from typing import Any, Iterator

log = logging.getLogger(__name__)

DEFAULT_MMAP_THRESHOLD = 1 << 20  # 1 MiB: below one chunk of a mixer's (d_inner, 1024) activations
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # <malloc.h>
GLIBC_TRIM_THRESHOLD = 128 * 1024  # glibc's initial M_TRIM_THRESHOLD
# glibc's dynamic mmap threshold rises to at most DEFAULT_MMAP_THRESHOLD_MAX (32 MiB on 64-bit), with
# the trim threshold at twice the mmap threshold: the state it settles in once large blocks are freed
GLIBC_MMAP_THRESHOLD_MAX = 32 << 20
_applied: int | None = None  # the threshold pinned now, None when the heap is not bounded


def bound_heap_growth(threshold: int = DEFAULT_MMAP_THRESHOLD) -> int | None:
    """Pin glibc's mmap threshold so large freed tensors go back to the system.

    ``threshold`` in bytes (0 leaves malloc alone). Returns the threshold now in force, or None when
    nothing was changed (not glibc, or 0). Idempotent; safe to call from any thread before training
    starts.
    """
    global _applied
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
    # the trim threshold glibc starts with, as a pin at process start keeps it: work before the pin
    # (feature extraction, say) may have raised it dynamically, and a raised trim threshold keeps
    # freed pages resident
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
def bounded_heap(active: bool = True, threshold: int = DEFAULT_MMAP_THRESHOLD) -> Iterator[int | None]:
    """Pin the mmap threshold (:func:`bound_heap_growth`) while the block runs when ``active``, and
    release it afterwards (:func:`unbound_heap_growth`): ``bench run`` bounds the heap for each
    end-to-end unit only. Yields the threshold in force (None: none)."""
    if not active:
        yield None
        return
    threshold = bound_heap_growth(threshold)
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
    module in ``layers`` (an iterable of ``torch.nn.Module``), while a :func:`trimming` policy is
    in force: when its forward starts (also when a checkpointed segment is recomputed in backward)
    and when the gradient of its first output arrives (its backward starts). ``when(args)``, if
    given, is called with the module's positional inputs and the trims happen only if it returns
    True (for the backward, as decided in the forward): each trim costs the page faults of reusing
    the returned pages, about 10% of the CPU time on Pixel-Mamba's unstreamed 224² batches, where
    there is nothing to gain. Returns the hook handles (``.remove()`` undoes it); ``[]`` where
    ``malloc_trim`` does not exist."""
    if _glibc() is None:
        return []

    def trim(*_args) -> None:
        if _trimming:
            release_free_memory()

    def on_input(_module, args) -> None:
        if _trimming and (when is None or when(args)):
            trim()

    def on_output(_module, args, out) -> None:
        if not _trimming or (when is not None and not when(args)):
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


_trimming = False  # whether a trimming() policy is in force


@contextlib.contextmanager
def trimming(enabled: bool = True) -> Iterator[bool]:
    """Hand free heap pages back while the block runs: at the layer starts hooked by
    :func:`release_between_layers`, and at every stage of pixelmamba's streamed path
    (``pixelmamba.streaming.set_release_hook``). Both are undone on leaving. Yields whether trimming
    is on (``enabled`` and glibc's ``malloc_trim`` exists)."""
    global _trimming
    on = bool(enabled) and _glibc() is not None
    before = _trimming
    previous_hook = None
    if on:
        from pixelmamba.streaming import set_release_hook

        previous_hook = set_release_hook(release_free_memory)
    _trimming = on
    try:
        yield on
    finally:
        _trimming = before
        if on:
            set_release_hook(previous_hook)


@contextlib.contextmanager
def unit_memory_policy(end_to_end: bool, settings: Any) -> Iterator[None]:
    """The memory policy one unit trains under, entered and left by the unit executor: for an
    end-to-end unit the heap is bounded (``settings.mmap_threshold``) and free pages are trimmed
    between layers and stages (``settings.trim_layers``); a MIL unit runs under glibc's defaults.
    ``settings``: a ``bench.engine.options.Settings``."""
    if not end_to_end:
        yield
        return
    with bounded_heap(True, settings.mmap_threshold), trimming(settings.trim_layers):
        yield


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
