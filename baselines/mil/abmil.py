"""ABMIL — Ilse et al., "Attention-based Deep Multiple Instance Learning", ICML 2018.

Dimensions as in CLAM's single-branch "big" gated variant (mahmoodlab/CLAM ``CLAM_SB``), which is
what the Pixel-Mamba paper's parameter counts reproduce: Linear(in, 512) + ReLU + Dropout, gated
attention 512 → 384 (tanh ⊙ sigmoid) → 1, softmax over patches, attention-weighted sum,
Linear(512, n_out). 921,221 parameters over 1024-d features with 4 outputs.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import MILModel


class GatedAttention(nn.Module):
    """Attention score per instance: w · (tanh(V h) ⊙ sigmoid(U h))."""

    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Dropout(dropout))
        self.b = nn.Sequential(nn.Linear(dim, hidden), nn.Sigmoid(), nn.Dropout(dropout))
        self.c = nn.Linear(hidden, 1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # (N, dim) -> (N, 1)
        return self.c(self.a(h) * self.b(h))


class ABMIL(MILModel):
    def __init__(self, in_dim: int, n_out: int, hidden: int = 512, attn_dim: int = 384,
                 dropout: float = 0.25) -> None:
        super().__init__()
        self.num_features = hidden
        self.fc = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.attention = GatedAttention(hidden, attn_dim, dropout)
        self.head = nn.Linear(hidden, n_out)

    def attention_weights(self, x: torch.Tensor) -> torch.Tensor:
        """Softmax attention over the bag's patches, ``(N,)``: what heat-maps are drawn from."""
        return torch.softmax(self.attention(self.fc(self.as_bag(x))).squeeze(-1), dim=0)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(self.as_bag(x))  # (N, hidden)
        a = torch.softmax(self.attention(h).squeeze(-1), dim=0)  # (N,)
        return (a @ h).unsqueeze(0)  # (1, hidden)
