"""`selective_scan`: mamba-ssm's `selective_scan_fn` semantics, an initial state, several backends.

Semantics (state-spaces/mamba `selective_scan_ref`): Δ = softplus(delta + delta_bias) (each step
optional); h_t = exp(Δ_t A) ⊙ h_{t−1} + Δ_t B_t u_t; y_t = ⟨h_t, C_t⟩ + D u_t; out = y ⊙ SiLU(z).
Computed in float32 (float64 when `u` is float64); the output has `u`'s dtype, the last state
the compute dtype. Unlike mamba-ssm, gradients flow through `initial_state` *and* through the
returned last state, so a long sequence can be streamed through in pieces and trained.

The backend-independent parts (Δ transform, D-skip, gate) are plain PyTorch here; each backend
only implements the core recurrence (u, Δ, A, B, C, h0) -> (⟨h_t, C_t⟩, h_L).
"""

from __future__ import annotations

import functools
import importlib.util

import torch
import torch.nn.functional as F
from torch import Tensor

from .reference import scan_ref
from .torch_scan import scan_torch

BACKENDS = ("auto", "ref", "numba", "torch", "triton", "cuda")
# mamba-ssm's kernel has open reports of wrong results past ~61K tokens (state-spaces/mamba
# #1015, #686); `auto` sends longer sequences to the Triton kernel (the torch scan without Triton).
CUDA_MAX_LEN = 32768


@functools.cache
def numba_available() -> bool:
    try:
        importlib.import_module("pixelmamba.ops.numba_scan")
    except ImportError:
        return False
    return True


@functools.cache
def triton_available() -> bool:
    try:
        importlib.import_module("pixelmamba.ops.triton_scan")
    except ImportError:
        return False
    return True


@functools.cache
def mamba_ssm_available() -> bool:
    if importlib.util.find_spec("mamba_ssm") is None:
        return False
    try:  # its compiled extension is imported eagerly and fails without CUDA
        importlib.import_module("mamba_ssm.ops.selective_scan_interface")
    except Exception:  # noqa: BLE001 - any import failure means "not usable here"
        return False
    return True


def resolve_backend(
    backend: str, u: Tensor, initial_state: Tensor | None, return_last_state: bool
) -> str:
    """The concrete backend `auto` stands for, for these inputs.

    CUDA: mamba-ssm's kernel for stateless calls up to CUDA_MAX_LEN tokens (where it is known
    to be right); otherwise (a state goes in or out: Pixel-Mamba's streamed blocks; or longer
    sequences) the Triton kernel, or the torch scan without Triton.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown selective_scan backend {backend!r}; choose one of {BACKENDS}")
    if backend != "auto":
        return backend
    if u.is_cuda:
        if (
            mamba_ssm_available()
            and initial_state is None
            and not return_last_state
            and u.shape[-1] <= CUDA_MAX_LEN
        ):
            return "cuda"
        return "triton" if triton_available() else "torch"
    if u.device.type == "cpu" and numba_available():
        return "numba"
    return "torch"


def _check_shapes(u, delta, A, B, C, D, z, delta_bias, initial_state) -> None:
    if u.dim() != 3:
        raise ValueError(f"u must be (batch, dim, seqlen), got {tuple(u.shape)}")
    Bsz, Dm, L = u.shape
    if A.dim() != 2 or A.shape[0] != Dm:
        raise ValueError(f"A must be (dim={Dm}, dstate), got {tuple(A.shape)}")
    if A.is_complex():
        raise NotImplementedError("complex A is not supported")
    N = A.shape[1]
    if delta.shape != u.shape:
        raise ValueError(f"delta must match u {tuple(u.shape)}, got {tuple(delta.shape)}")
    if z is not None and z.shape != u.shape:
        raise ValueError(f"z must match u {tuple(u.shape)}, got {tuple(z.shape)}")
    for name, M in (("B", B), ("C", C)):
        if M.dim() == 3:
            ok = tuple(M.shape) == (Bsz, N, L)
        elif M.dim() == 4:
            ok = M.shape[0] == Bsz and M.shape[2:] == (N, L) and Dm % M.shape[1] == 0
        else:
            ok = False
        if not ok:
            raise ValueError(
                f"{name} must be (batch, dstate, seqlen) = {(Bsz, N, L)} or (batch, groups, "
                f"dstate, seqlen) with groups dividing dim={Dm}, got {tuple(M.shape)}"
            )
    if B.dim() == 4 and C.dim() == 4 and B.shape[1] != C.shape[1]:
        raise ValueError("B and C must have the same number of groups")
    for name, v in (("D", D), ("delta_bias", delta_bias)):
        if v is not None and tuple(v.shape) != (Dm,):
            raise ValueError(f"{name} must be (dim={Dm},), got {tuple(v.shape)}")
    if initial_state is not None and tuple(initial_state.shape) != (Bsz, Dm, N):
        raise ValueError(
            f"initial_state must be (batch, dim, dstate) = {(Bsz, Dm, N)}, "
            f"got {tuple(initial_state.shape)}"
        )


def _grouped(M: Tensor, groups: int) -> Tensor:
    """(B, N, L) or (B, G, N, L) -> (B, groups, N, L) (repeating a single group if needed)."""
    if M.dim() == 3:
        M = M[:, None]
    if M.shape[1] != groups:
        M = M.repeat_interleave(groups // M.shape[1], dim=1)
    return M


def selective_scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    initial_state: Tensor | None = None,
    backend: str = "auto",
) -> Tensor | tuple[Tensor, Tensor]:
    """Selective scan over (B, D, L) inputs; returns y (B, D, L) or (y, last_state (B, D, N)).

    `backend`: "ref" (sequential, tests only), "numba" (compiled CPU kernel, the CPU default),
    "torch" (chunked pure PyTorch, any device), "triton" (Triton kernel, CUDA; the CUDA
    default when a state goes in or out), "cuda" (mamba-ssm's kernel), "auto".
    """
    _check_shapes(u, delta, A, B, C, D, z, delta_bias, initial_state)
    name = resolve_backend(backend, u, initial_state, return_last_state)
    if name == "cuda":
        from .cuda_scan import selective_scan_cuda

        return selective_scan_cuda(
            u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, initial_state
        )
    cdtype = torch.float64 if u.dtype == torch.float64 else torch.float32
    Bsz, Dm, L = u.shape
    N = A.shape[1]
    groups = max(M.shape[1] if M.dim() == 4 else 1 for M in (B, C))
    uc = u.to(cdtype)
    Ac = A.to(cdtype)
    Bg, Cg = _grouped(B.to(cdtype), groups), _grouped(C.to(cdtype), groups)
    h0 = (
        initial_state.to(cdtype)
        if initial_state is not None
        else uc.new_zeros(Bsz, Dm, N)
    )
    if name == "numba":
        if u.device.type != "cpu":
            raise ValueError("the numba backend runs on CPU tensors only; use backend='torch'")
        from .numba_scan import scan_numba

        # D skip, gate, bias and softplus are fused into the kernels (and their backward)
        out, last = scan_numba(
            uc, delta.to(cdtype), Ac, Bg, Cg, None if D is None else D.to(cdtype),
            None if z is None else z.to(cdtype),
            None if delta_bias is None else delta_bias.to(cdtype), h0, delta_softplus,
        )
        out = out.to(u.dtype)
        return (out, last) if return_last_state else out
    dt = delta.to(cdtype)
    if delta_bias is not None:
        dt = dt + delta_bias.to(cdtype)[:, None]
    if delta_softplus:
        dt = F.softplus(dt)
    if name == "ref":
        H = Dm // groups
        y, last = scan_ref(
            uc, dt, Ac, Bg.repeat_interleave(H, dim=1), Cg.repeat_interleave(H, dim=1), h0
        )
    elif name == "torch":
        y, last = scan_torch(uc, dt, Ac, Bg, Cg, h0)
    elif name == "triton":
        from .triton_scan import scan_triton

        y, last = scan_triton(uc, dt, Ac, Bg, Cg, h0)
    else:  # pragma: no cover - resolve_backend only returns known names
        raise AssertionError(name)
    if D is not None:
        y = y + uc * D.to(cdtype)[:, None]
    if z is not None:
        y = y * F.silu(z.to(cdtype))
    out = y.to(u.dtype)
    return (out, last) if return_last_state else out
