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
    go back to the system whenever a layer or a stage inside a streamed layer starts, while the
    unit executor's memory policy is in force (``release_pixelmamba_heap``; ``BENCH_TRIM_LAYERS=0``
    turns it off)."""
    from pixelmamba import create_model

    model = create_model(variant, num_classes=n_out, **{"act_dtype": "bfloat16", "segment": 2, **overrides})
    release_pixelmamba_heap(model)
    return model


def release_pixelmamba_heap(model: torch.nn.Module) -> list:
    """``bench``'s heap policy for Pixel-Mamba's streamed path (``bench/engine/memory.py``): hooks on
    ``model``'s layers that hand free heap pages back to the system whenever a layer starts on the
    streamed path, forward, recomputed or backward (``release_between_layers``). They act only
    inside ``memory.trimming`` (entered by the unit executor, which also sets pixelmamba's stage
    hook for that time); building a model changes no process-wide state. Returns the hooks'
    handles."""
    from .memory import release_between_layers

    return release_between_layers(model.layers, when=streamed_layer_call)


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
