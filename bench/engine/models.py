"""Adapters from the registry's builder signature ``builder(n_out=..., **kwargs)`` to the libraries'
own constructors, so ``pixelmamba`` and ``baselines`` keep their natural APIs."""

from __future__ import annotations

import functools
import inspect
from typing import Any

import torch


def pixelmamba(n_out: int, variant: str = "pixelmamba-6m", **overrides: Any) -> torch.nn.Module:
    """Pixel-Mamba for slides: activations kept for backward in bfloat16 and only every second
    layer's input kept (``segment=2``: the layers are recomputed in backward, 18% more CPU time
    measured at 512², for half the kept activations) unless overridden (``--model
    act_dtype=float32``, ``--model segment=1``); every layer still computes in float32
    (docs/pixelmamba.md, "Memory"). The library's ``checkpointing="auto"`` streams slides of more
    than four 224² regions and runs smaller ones (where none of this memory matters, and segments
    do not apply) on the faster plain autograd path. On the streamed path the heap's free pages
    go back to the system whenever a layer or a stage inside a streamed layer starts
    (``release_pixelmamba_heap``; ``BENCH_TRIM_LAYERS=0`` turns it off)."""
    from pixelmamba import create_model

    model = create_model(variant, num_classes=n_out, **{"act_dtype": "bfloat16", "segment": 2, **overrides})
    release_pixelmamba_heap(model)
    return model


def release_pixelmamba_heap(model: torch.nn.Module) -> list:
    """``bench``'s heap policy for Pixel-Mamba's streamed path (``bench/engine/memory.py``): free heap
    pages go back to the system whenever one of ``model``'s layers starts, forward, recomputed
    or backward (``release_between_layers``), and whenever a stage inside a streamed layer starts
    (``pixelmamba.streaming.set_release_hook``: process-wide; the plain path of 224² batches has
    no such stages; inputs below ~1M tokens also between the pieces of a block's backward,
    ``PixelMamba._release_pieces``). Nothing where ``release_between_layers`` does nothing (not glibc, or
    ``BENCH_TRIM_LAYERS=0``). Returns the layer hooks' handles."""
    from pixelmamba.streaming import set_release_hook

    from .memory import release_between_layers, release_free_memory, trimming_enabled

    handles = release_between_layers(model.layers, when=streamed_layer_call)
    if trimming_enabled():
        set_release_hook(release_free_memory)
    return handles


def streamed_layer_call(args: tuple) -> bool:
    """Whether a Pixel-Mamba layer was called on the streamed path, from the positional arguments
    a forward hook sees: they are bound to ``PixelMambaLayer.forward``'s parameters by name (its
    ``streaming`` default when not passed), so this follows the signature if it changes."""
    from pixelmamba.model import PixelMambaLayer

    sig = _layer_signature(PixelMambaLayer)
    bound = sig.bind_partial(None, *args)  # None: self
    return bool(bound.arguments.get("streaming", sig.parameters["streaming"].default))


@functools.cache
def _layer_signature(layer_cls: type) -> inspect.Signature:
    return inspect.signature(layer_cls.forward)
