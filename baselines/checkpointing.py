"""The ``checkpointing`` option the end-to-end baselines (Vim, LongViT) share: ``True``/``False``
force per-block recomputation in backward, ``"auto"`` recomputes only inputs of more than a
model's ``UNCHECKPOINTED_TOKENS`` tokens (below it, keeping the blocks' internals costs less memory
than the recomputation costs time)."""

from __future__ import annotations


def checkpointing_option(enable: bool | str) -> bool | str:
    """``enable`` if it is a valid ``checkpointing`` value, else a ValueError naming it."""
    if not (isinstance(enable, bool) or enable == "auto"):
        raise ValueError(f"checkpointing must be True, False or 'auto', got {enable!r}")
    return enable


def recomputes(setting: bool | str, tokens: int, threshold: int) -> bool:
    """Whether a training pass over ``tokens`` tokens (batch included) recomputes its blocks under
    ``setting``; ``threshold``: the model's ``UNCHECKPOINTED_TOKENS``."""
    return tokens > threshold if setting == "auto" else bool(setting)
