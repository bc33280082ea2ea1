"""MeanMIL and MaxMIL: the parameter-free pooling baselines of the Pixel-Mamba paper's Table 2.

Pool the bag, then one linear layer (4,100 parameters over 1024-d features, 4 outputs).
"""

from __future__ import annotations

import torch
from torch import nn

from .base import MILModel


class _PoolingMIL(MILModel):
    def __init__(self, in_dim: int, n_out: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.num_features = in_dim
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(in_dim, n_out)

    def pool(self, bag: torch.Tensor) -> torch.Tensor:  # (N, D) -> (1, D)
        raise NotImplementedError

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.pool(self.as_bag(x)))


class MeanMIL(_PoolingMIL):
    def pool(self, bag: torch.Tensor) -> torch.Tensor:
        return bag.mean(dim=0, keepdim=True)


class MaxMIL(_PoolingMIL):
    def pool(self, bag: torch.Tensor) -> torch.Tensor:
        return bag.max(dim=0, keepdim=True).values
