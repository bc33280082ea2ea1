"""ILRA-MIL — Xiang et al., "Exploring Low-Rank Property in Multiple Instance Learning for Whole
Slide Image Classification", ICLR 2023.

Dimensions as in jinxixiang/low_rank_wsi ``mil/models/ilra.py``: two gated attention blocks (GAB,
the paper's Eq. 16) and a non-local pooling, hidden 256, 8 heads, LayerNorm on. A GAB attends from
a learnable latent of ``topk`` tokens to the bag (a low-rank proxy, H = MHA(L, X)) and back from
the bag to that proxy (X̂ = MHA(X, H)), so self-attention over the bag costs O(N·topk) instead of
O(N²); each of its two attentions is gated by SiLU(Linear(query input)). Pooling is an ungated
attention from one learnable query to the bag, then Linear. 3,688,196 parameters over 1024-d
features with 4 outputs.

Initialisation follows the original: Xavier-normal weights for every ``nn.Linear`` (biases kept at
PyTorch's default), Xavier-uniform latents and query.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import MILModel


class MultiHeadBlock(nn.Module):
    """ILRA's attention block (a Set-Transformer MAB with an optional gate).

    O = LN(fc_q(Q) + MHA(fc_q(Q), fc_k(K), fc_v(K))); O = LN(O + ReLU(fc_o(O))); then, if gated,
    O ⊙ SiLU(gate(Q)) — the gate reads the *unprojected* query, as in the original.
    """

    def __init__(self, dim_q: int, dim_k: int, dim: int, heads: int, ln: bool,
                 gated: bool) -> None:
        super().__init__()
        self.fc_q = nn.Linear(dim_q, dim)
        self.fc_k = nn.Linear(dim_k, dim)
        self.fc_v = nn.Linear(dim_k, dim)
        self.multihead_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ln0 = nn.LayerNorm(dim) if ln else nn.Identity()
        self.ln1 = nn.LayerNorm(dim) if ln else nn.Identity()
        self.fc_o = nn.Linear(dim, dim)
        self.gate = nn.Sequential(nn.Linear(dim_q, dim), nn.SiLU()) if gated else None

    def forward(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        # q: (B, Lq, dim_q), k: (B, Lk, dim_k) -> (B, Lq, dim)
        qp = self.fc_q(q)  # (B, Lq, dim)
        attn, _ = self.multihead_attn(qp, self.fc_k(k), self.fc_v(k), need_weights=False)
        o = self.ln0(qp + attn)
        o = self.ln1(o + F.relu(self.fc_o(o)))
        return o if self.gate is None else o * self.gate(q)


class GAB(nn.Module):
    """Gated attention block: bag → ``num_latents`` learnable tokens → bag."""

    def __init__(self, dim_in: int, dim: int, heads: int, num_latents: int, ln: bool) -> None:
        super().__init__()
        self.latent = nn.Parameter(torch.empty(1, num_latents, dim))  # the low-rank proxy L
        nn.init.xavier_uniform_(self.latent)
        self.project_forward = MultiHeadBlock(dim, dim_in, dim, heads, ln, gated=True)
        self.project_backward = MultiHeadBlock(dim_in, dim, dim, heads, ln, gated=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, N, dim_in) -> (B, N, dim)
        h = self.project_forward(self.latent.expand(x.shape[0], -1, -1), x)  # (B, topk, dim)
        return self.project_backward(x, h)


class ILRA(MILModel):
    def __init__(self, in_dim: int, n_out: int, hidden: int = 256, heads: int = 8,
                 topk: int = 1, num_layers: int = 2, ln: bool = True) -> None:
        super().__init__()
        self.num_features = hidden
        self.gab_blocks = nn.ModuleList(
            GAB(in_dim if i == 0 else hidden, hidden, heads, topk, ln) for i in range(num_layers))
        # One pooling query (the original ties it to topk, which only yields one slide vector
        # — what its classifier needs — when topk = 1, the published setting).
        self.query = nn.Parameter(torch.empty(1, 1, hidden))
        nn.init.xavier_uniform_(self.query)
        self.pooling = MultiHeadBlock(hidden, hidden, hidden, heads, ln, gated=False)
        self.head = nn.Linear(hidden, n_out)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_normal_(m.weight)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        h = self.as_bag(x).unsqueeze(0)  # (1, N, in_dim)
        for block in self.gab_blocks:
            h = block(h)  # (1, N, hidden)
        return self.pooling(self.query, h)[:, 0]  # (1, hidden)
