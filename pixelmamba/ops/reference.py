"""Sequential reference scan: the plain recurrence, one step per token, autograd for gradients.

Used by the tests as ground truth only; it stores every state, so memory is O(L·D·N).
"""

from __future__ import annotations

import torch
from torch import Tensor


def scan_ref(
    u: Tensor,  # (B, D, L) compute dtype
    dt: Tensor,  # (B, D, L) already biased and softplus-ed
    A: Tensor,  # (D, N)
    Bm: Tensor,  # (B, D, N, L) expanded over groups
    Cm: Tensor,  # (B, D, N, L)
    h0: Tensor,  # (B, D, N)
) -> tuple[Tensor, Tensor]:
    """Return (y without D-skip and gate, last state)."""
    h = h0
    ys = []
    for t in range(u.shape[-1]):
        dA = torch.exp(dt[:, :, t, None] * A)  # (B, D, N)
        h = dA * h + (dt[:, :, t] * u[:, :, t])[..., None] * Bm[..., t]
        ys.append((h * Cm[..., t]).sum(-1))  # (B, D)
    if not ys:
        return u.new_zeros(u.shape), h
    return torch.stack(ys, dim=-1), h
