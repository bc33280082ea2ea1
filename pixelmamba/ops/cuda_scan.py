"""mamba-ssm's CUDA kernel behind `selective_scan`'s signature (optional extra `cuda`).

mamba-ssm imports its compiled extension at import time, so it is imported here, lazily, and
only when asked for. Its kernel has no initial state: the contribution of h0 is added on top,
out = kernel(u, …) + SiLU(z) ⊙ ⟨C_t, exp(A·cumsum Δ)_t ⊙ h0⟩, and likewise for the last state,
so gradients reach h0 through PyTorch. The kernel ignores the gradient of its last state (as
mamba-ssm documents): to stream a long sequence *with training*, use the torch/numba backends,
which `auto` does whenever a state goes in or out.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

INSTALL_HINT = "pip install 'wsi-bench[cuda]'  (mamba-ssm and causal-conv1d, built for your CUDA)"


def _kernel():
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception as exc:  # noqa: BLE001 - ImportError or the extension failing to load
        raise ImportError(f"backend='cuda' needs mamba-ssm with CUDA: {INSTALL_HINT}") from exc
    return selective_scan_fn


def selective_scan_cuda(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    z: Tensor | None,
    delta_bias: Tensor | None,
    delta_softplus: bool,
    return_last_state: bool,
    initial_state: Tensor | None,
) -> Tensor | tuple[Tensor, Tensor]:
    if not u.is_cuda:
        raise ValueError("backend='cuda' needs CUDA tensors")
    fn = _kernel()
    res = fn(u, delta, A, B, C, D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus,
             return_last_state=return_last_state or initial_state is not None)
    if initial_state is None:
        return res
    out, last = res
    dt = delta.float()
    if delta_bias is not None:
        dt = dt + delta_bias.float()[:, None]
    if delta_softplus:
        dt = F.softplus(dt)
    Dm, N = A.shape
    Cg = C if C.dim() == 4 else C[:, None]
    Cg = Cg.float().repeat_interleave(Dm // Cg.shape[1], dim=1)  # (B, D, N, L)
    # exp of a cumulative sum of Δ·A (all <= 0 for a stable A): decays in (0, 1], no overflow
    decay = torch.exp(torch.cumsum(dt, dim=-1)[:, :, None, :] * A.float()[None, :, :, None])
    h0 = initial_state.float()[..., None]  # (B, D, N, 1)
    extra = (Cg * decay * h0).sum(2)  # (B, D, L)
    if z is not None:
        extra = extra * F.silu(z.float())
    out = out + extra.to(out.dtype)
    last = last + decay[..., -1] * initial_state.float()
    return (out, last) if return_last_state else out
