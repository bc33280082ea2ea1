"""Finding and reading the released weights of the hierarchical rows' second stages (HIPT's ViT-4K,
Prov-GigaPath's slide encoder), in the order ``feature_cache.encoders`` uses for patch encoders:

1. an explicit path; 2. an environment variable; 3. the local Hugging Face hub cache (read
offline); otherwise ``None`` -- the caller decides whether random weights are allowed (the bench
runner allows them only on datasets that say so, and marks the results).

Checkpoints load with ``weights_only=True``. Nothing here downloads.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

__all__ = ["WeightsError", "find_weights", "read_checkpoint", "load_matching"]


class WeightsError(RuntimeError):
    """Weights that were asked for cannot be used; the message names the file and the fix."""


def find_weights(explicit: str | os.PathLike | None, env: str,
                 hub: tuple[str, str] | None = None) -> tuple[Path | None, str]:
    """(path, how it was found) or (None, "") when no weights are available."""
    if explicit is not None:
        path = Path(explicit)
        if not path.is_file():
            raise WeightsError(f"weights file {path} does not exist")
        return path, "explicit path"
    value = os.environ.get(env)
    if value:
        path = Path(value)
        if not path.is_file():
            raise WeightsError(f"${env}={path} is not a file. Fix: point it at the weights, or unset it.")
        return path, f"${env}"
    if hub is not None:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:
            return None, ""
        hit = try_to_load_from_cache(repo_id=hub[0], filename=hub[1])
        if isinstance(hit, str) and os.path.isfile(hit):
            return Path(hit), "local hub cache"
    return None, ""


def read_checkpoint(path: Path, wrappers: tuple[str, ...] = ("teacher", "model", "state_dict"),
                    strip: tuple[str, ...] = ("module.", "backbone.")) -> dict[str, torch.Tensor]:
    """A state dict from a released checkpoint: unwrap ``{"teacher": …}`` (DINO) / ``{"model": …}``
    and drop the ``module.`` / ``backbone.`` prefixes their training wrappers added."""
    try:
        sd: Any = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 — any unreadable file gets the same actionable message
        raise WeightsError(f"cannot read {path}: {type(err).__name__}: {err}") from err
    for key in wrappers:
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
            break
    if not isinstance(sd, dict):
        raise WeightsError(f"{path}: not a state dict (got {type(sd).__name__})")
    out = {}
    for k, v in sd.items():
        for p in strip:
            if k.startswith(p):
                k = k[len(p):]
        out[k] = v
    return out


def load_matching(module: torch.nn.Module, state: dict[str, torch.Tensor], path: Path, what: str) -> None:
    """Load every tensor of ``module`` from ``state`` (extra checkpoint keys, e.g. DINO's projection
    head, are ignored); a missing key or a shape mismatch is an error naming both."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    bad = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
           if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or bad:
        raise WeightsError(f"{path} does not fit {what}: {len(missing)} missing keys (e.g. {missing[:3]}), "
                           f"{len(bad)} shape mismatches ({bad[:3]}). Fix: use the released {what} weights.")
    module.load_state_dict({k: state[k] for k in own}, strict=True)
