"""The input of aggregators that need more than a bag of features (kept apart from
``baselines.mil`` so the harness can import it without building any model)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import torch


@dataclass(frozen=True)
class Bag:
    """A bag with the side information some aggregators need besides the features.

    ``features (N, D)`` with ``coords (N, 2)`` = integer (x, y) positions of the tiles on the slide's
    patch grid (Prov-GigaPath's slide encoder), or ``features (M, 256, D)`` with ``mask (M, 256)``
    = True where a 4096-px region has a real 256-px patch (HIPT; False on padding). Plain
    aggregators take a bare ``(N, D)`` tensor instead.
    """

    features: torch.Tensor
    coords: torch.Tensor | None = None
    mask: torch.Tensor | None = None

    def valid_features(self) -> torch.Tensor:
        """The real patches' features, ``(n, D)`` (padding left out): what statistics are taken on."""
        x = self.features
        if self.mask is not None:
            return x[self.mask.bool()]
        return x.reshape(-1, x.shape[-1])

    def map_features(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> "Bag":
        return replace(self, features=fn(self.features))

    def subsample(self, index: torch.Tensor) -> "Bag":
        """The bag restricted to ``index`` along its first axis (tiles, or regions)."""
        pick = (lambda t: None if t is None else t[index])
        return Bag(self.features[index], pick(self.coords), pick(self.mask))

    def to(self, device: torch.device | str) -> "Bag":
        move = (lambda t: None if t is None else t.to(device))
        return Bag(self.features.to(device), move(self.coords), move(self.mask))

    def __len__(self) -> int:
        return int(self.features.shape[0])
