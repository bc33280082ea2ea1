"""Adapters from the registry's builder signature ``builder(n_out=..., **kwargs)`` to the libraries'
own constructors, so ``pixelmamba`` and ``baselines`` keep their natural APIs."""

from __future__ import annotations

from typing import Any

import torch


def pixelmamba(n_out: int, variant: str = "pixelmamba-6m", **overrides: Any) -> torch.nn.Module:
    from pixelmamba import create_model

    return create_model(variant, num_classes=n_out, **overrides)
