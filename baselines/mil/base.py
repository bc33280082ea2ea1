"""The face every MIL aggregator shares (after timm's models and MIL-Lab's template).

A bag is the patch features of one case: ``(N, D)`` or ``(1, N, D)``. ``forward_features`` pools it
to ``(1, num_features)``, ``forward_head`` maps that to logits, ``forward`` chains the two. One
parametrized test (tests/baselines/test_model_face.py) covers them with the end-to-end models.
"""

from __future__ import annotations

import torch
from torch import nn

from ..bag import Bag

__all__ = ["Bag", "MILModel"]


class MILModel(nn.Module):
    num_features: int
    head: nn.Module

    @staticmethod
    def as_bag(x: torch.Tensor) -> torch.Tensor:
        """Accept ``(N, D)`` or ``(1, N, D)``; return ``(N, D)``."""
        if x.dim() == 3:
            if x.shape[0] != 1:
                raise ValueError(f"one bag per call: got a batch of {x.shape[0]}")
            x = x[0]
        if x.dim() != 2 or x.shape[0] == 0:
            raise ValueError(f"a bag must be (N, D) with N >= 1, got {tuple(x.shape)}")
        return x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:  # (1, num_features)
        raise NotImplementedError

    def forward_head(self, feats: torch.Tensor) -> torch.Tensor:
        return self.head(feats)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, n_out: int) -> None:
        """Replace the head (``0``: identity, ``forward`` returns the pooled features, as timm's)."""
        self.head = nn.Linear(self.num_features, n_out) if n_out > 0 else nn.Identity()
