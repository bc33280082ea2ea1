"""Every selective-scan backend against the sequential reference, forward and every gradient.

In the style of mamba-ssm's tests/pixelmamba/ops/test_selective_scan.py: fixed seed, parametrized over
dtype, length and optional inputs, max diff printed before each assert. The reference runs in
float64 on the same values, so float32 backends are judged against the exact answer.
"""

from __future__ import annotations

import numba
import numpy as np
import pytest
import torch

from pixelmamba.ops import linear_scan, linear_scan_strategy, resolve_backend, selective_scan
from pixelmamba.ops.numba_scan import fast_exp, fast_expm1
from pixelmamba.ops.selective_scan import mamba_ssm_available

# (rtol, atol), applied as max|got − want| <= atol + rtol · max|want| per tensor
TOL = {torch.float64: (1e-10, 1e-12), torch.float32: (2e-4, 1e-5)}
CPU_BACKENDS = ["torch", "numba"]
NAMES = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state"]

# One optional input (or feature) switched off at a time, plus all on / all off.
CONFIGS = {
    "all": {},
    "none": dict(D=False, z=False, bias=False, softplus=False, h0=False),
    "no_D": dict(D=False),
    "no_z": dict(D=True, z=False),
    "no_bias": dict(bias=False),
    "no_softplus": dict(softplus=False),
    "no_h0": dict(h0=False),
    "groups2": dict(groups=2),
}


def make_inputs(cfg: dict, L: int, dtype: torch.dtype, seed: int = 0, batch: int = 2,
                dim: int = 4, dstate: int = 8) -> dict:
    g = torch.Generator().manual_seed(seed)
    groups = cfg.get("groups", 0)  # 0: (B, N, L); k: (B, k, N, L)
    bc_shape = (batch, dstate, L) if groups == 0 else (batch, groups, dstate, L)

    def r(*shape, scale=1.0, rand=False):
        t = torch.rand(*shape, generator=g, dtype=torch.float64) if rand else torch.randn(
            *shape, generator=g, dtype=torch.float64)
        return (scale * t).to(dtype)

    x = {
        "u": r(batch, dim, L),
        "delta": r(batch, dim, L, scale=0.5, rand=True),
        "A": -0.5 * r(dim, dstate, rand=True) - 0.1,
        "B": r(*bc_shape),
        "C": r(*bc_shape),
        "D": r(dim) if cfg.get("D", True) else None,
        "z": r(batch, dim, L) if cfg.get("z", True) else None,
        "delta_bias": r(dim, scale=0.5, rand=True) if cfg.get("bias", True) else None,
        "initial_state": r(batch, dim, dstate) if cfg.get("h0", True) else None,
    }
    return {k: (v.requires_grad_() if v is not None else None) for k, v in x.items()}


def clone(x: dict, dtype: torch.dtype | None = None) -> dict:
    return {k: (v.detach().to(dtype or v.dtype).requires_grad_() if v is not None else None)
            for k, v in x.items()}


def run(x: dict, softplus: bool, backend: str, seed: int = 1, last_grad: bool = True):
    y, last = selective_scan(
        x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], z=x["z"],
        delta_bias=x["delta_bias"], delta_softplus=softplus, return_last_state=True,
        initial_state=x["initial_state"], backend=backend,
    )
    g = torch.Generator().manual_seed(seed)
    gy = torch.randn(y.shape, generator=g, dtype=torch.float64)
    gl = torch.randn(last.shape, generator=g, dtype=torch.float64) * float(last_grad)
    ((y.double() * gy.to(y.device)).sum() + (last.double() * gl.to(y.device)).sum()).backward()
    grads = {k: v.grad for k, v in x.items() if v is not None}
    return y.detach(), last.detach(), grads


def check(name: str, got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype) -> None:
    rtol, atol = TOL[dtype]
    got, want = got.double(), want.double()
    diff = (got - want).abs().max().item()
    tol = atol + rtol * want.abs().max().item()
    print(f"{name}: max diff {diff:.3e} (tol {tol:.3e})")
    assert diff <= tol, f"{name}: max diff {diff:.3e} > tol {tol:.3e}"


def compare(backend: str, cfg: dict, L: int, dtype: torch.dtype) -> None:
    x = make_inputs(cfg, L, dtype)
    softplus = cfg.get("softplus", True)
    x_ref = clone(x, torch.float64)
    y, last, grads = run(x, softplus, backend)
    y_ref, last_ref, grads_ref = run(x_ref, softplus, "ref")
    assert y.dtype == dtype and y.shape == x["u"].shape
    check("out", y, y_ref, dtype)
    check("last_state", last, last_ref, dtype)
    for k in grads_ref:
        assert grads[k] is not None, f"no gradient for {k}"
        check(f"d{k}", grads[k], grads_ref[k], dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("L", [37, 300])
@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_backend_matches_ref(backend, config, L, dtype):
    compare(backend, CONFIGS[config], L, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_long_sequence_crosses_spans(backend, dtype):
    """1100 tokens: several numba checkpoint segments (256) and torch spans (256)."""
    compare(backend, {}, 1100, dtype)


@pytest.mark.parametrize("strategy", ["loop", "blocked", "auto"])
@pytest.mark.parametrize("T", [1, 2, 3, 64, 65, 200])
def test_linear_scan_strategies(strategy, T):
    """Both in-span scans of the torch backend (token loop, blocked associative scan) give the
    states of h_t = a_t * h_{t-1} + x_t, checked against the recurrence written out step by step,
    across block boundaries (blocks of 64)."""
    g = torch.Generator().manual_seed(T)
    # decays in (0.95, 1], as exp(delta * A): a block's start state still counts 64 steps later
    a = 1 - 0.05 * torch.rand(T, 2, 3, dtype=torch.float64, generator=g)
    x = torch.randn(T, 2, 3, dtype=torch.float64, generator=g)
    h0 = torch.randn(2, 3, dtype=torch.float64, generator=g)
    want, h = [], h0
    for t in range(T):
        h = a[t] * h + x[t]
        want.append(h)
    check("states", linear_scan(a, x, h0, strategy=strategy), torch.stack(want), torch.float64)
    with pytest.raises(ValueError, match="unknown linear scan strategy"):
        linear_scan(a, x, h0, strategy="tree")


@pytest.mark.parametrize("config", ["all", "groups2"])
@pytest.mark.parametrize("strategy,dim,dstate", [("loop", 20, 16), ("blocked", 4, 8)])
def test_torch_scan_strategies(strategy, dim, dstate, config):
    """The torch backend matches ref, forward and every gradient, on either in-span scan (the
    state size picks it: ``linear_scan_strategy``), across span and block boundaries (600 tokens:
    spans of 256, blocks of 64)."""
    assert linear_scan_strategy(torch.zeros(2, dim, dstate)) == strategy  # (B, D, N) of one step
    x = make_inputs(CONFIGS[config], 600, torch.float64, dim=dim, dstate=dstate)
    y, last, grads = run(clone(x), True, "torch")
    y_ref, last_ref, grads_ref = run(clone(x), True, "ref")
    check("out", y, y_ref, torch.float64)
    check("last_state", last, last_ref, torch.float64)
    for k in grads_ref:
        check(f"d{k}", grads[k], grads_ref[k], torch.float64)


@pytest.mark.parametrize("backend", ["ref", *CPU_BACKENDS])
@pytest.mark.parametrize("cuts", [[0, 1, 300], [0, 100, 257, 300], [0, 64, 128, 192, 256, 300]])
def test_streamed_pieces_equal_one_shot(backend, cuts):
    """Feeding a sequence piece by piece with the state carried equals one call, gradients too."""
    dtype = torch.float64
    x = make_inputs({}, cuts[-1], dtype, seed=3)
    y, last, grads = run(clone(x), True, backend)
    xs = clone(x)
    h, ys = xs["initial_state"], []
    for s, e in zip(cuts[:-1], cuts[1:]):
        y_k, h = selective_scan(
            xs["u"][..., s:e], xs["delta"][..., s:e], xs["A"], xs["B"][..., s:e],
            xs["C"][..., s:e], xs["D"], z=xs["z"][..., s:e], delta_bias=xs["delta_bias"],
            delta_softplus=True, return_last_state=True, initial_state=h, backend=backend,
        )
        ys.append(y_k)
    y_p = torch.cat(ys, -1)
    g = torch.Generator().manual_seed(1)
    gy = torch.randn(y_p.shape, generator=g, dtype=dtype)
    gl = torch.randn(h.shape, generator=g, dtype=dtype)
    ((y_p * gy).sum() + (h * gl).sum()).backward()
    check("out", y_p.detach(), y, dtype)
    check("last_state", h.detach(), last, dtype)
    for k in grads:
        check(f"d{k}", xs[k].grad, grads[k], dtype)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_half_precision_inputs(backend):
    """bf16 inputs are computed in fp32 and returned in bf16, as mamba-ssm does."""
    x = make_inputs({}, 50, torch.float32, seed=5)
    xb = {k: (v.detach().to(torch.bfloat16) if k in ("u", "delta", "z", "B", "C") and v is not None
              else (v.detach() if v is not None else None)) for k, v in x.items()}
    y, last = selective_scan(xb["u"], xb["delta"], xb["A"], xb["B"], xb["C"], xb["D"], z=xb["z"],
                             delta_bias=xb["delta_bias"], delta_softplus=True,
                             return_last_state=True, initial_state=xb["initial_state"],
                             backend=backend)
    y_ref = selective_scan(xb["u"], xb["delta"], xb["A"], xb["B"], xb["C"], xb["D"], z=xb["z"],
                           delta_bias=xb["delta_bias"], delta_softplus=True,
                           initial_state=xb["initial_state"], backend="ref")
    assert y.dtype == torch.bfloat16 and last.dtype == torch.float32
    print(f"bf16 out max diff {(y.float() - y_ref.float()).abs().max().item():.3e}")
    assert torch.allclose(y.float(), y_ref.float(), rtol=2e-2, atol=2e-2)


def test_auto_backend_and_errors():
    u = torch.zeros(1, 4, 10)
    assert resolve_backend("auto", u, None, False) == "numba"
    with pytest.raises(ValueError, match="unknown selective_scan backend"):
        resolve_backend("fast", u, None, False)
    A, Bm = -torch.ones(4, 8), torch.zeros(1, 8, 10)
    with pytest.raises(ValueError, match="B must be"):
        selective_scan(u, u, A, torch.zeros(1, 8, 9), Bm)
    with pytest.raises(ValueError, match="initial_state must be"):
        selective_scan(u, u, A, Bm, Bm, initial_state=torch.zeros(1, 4, 7))
    with pytest.raises(ValueError, match="groups dividing"):
        selective_scan(u, u, A, torch.zeros(1, 3, 8, 10), Bm)


def test_empty_sequence():
    u = torch.zeros(1, 4, 0)
    h0 = torch.randn(1, 4, 8)
    for backend in ["ref", *CPU_BACKENDS]:
        y, last = selective_scan(u, u, -torch.ones(4, 8), torch.zeros(1, 8, 0),
                                 torch.zeros(1, 8, 0), return_last_state=True, initial_state=h0,
                                 backend=backend)
        assert y.shape == (1, 4, 0) and torch.equal(last, h0)


needs_cuda = pytest.mark.skipif(
    not (torch.cuda.is_available() and mamba_ssm_available()), reason="needs CUDA and mamba-ssm"
)


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("config", ["all", "no_h0", "groups2"])
def test_cuda_matches_ref(config):
    cfg = CONFIGS[config]
    x = make_inputs(cfg, 300, torch.float32)
    xc = {k: (v.detach().cuda().requires_grad_() if v is not None else None) for k, v in x.items()}
    # the kernel ignores a gradient arriving at its last state (mamba-ssm documents this)
    y, last, grads = run(xc, True, "cuda", last_grad=False)
    y_ref, last_ref, grads_ref = run(clone(x, torch.float64), True, "ref", last_grad=False)
    check("out", y.cpu(), y_ref, torch.float32)
    check("last_state", last.cpu(), last_ref, torch.float32)
    for k in grads_ref:
        check(f"d{k}", grads[k].cpu(), grads_ref[k], torch.float32)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_torch_backend_on_cuda():
    x = make_inputs({}, 300, torch.float32)
    xc = {k: (v.detach().cuda().requires_grad_() if v is not None else None) for k, v in x.items()}
    y, last, grads = run(xc, True, "torch")
    y_ref, last_ref, grads_ref = run(clone(x, torch.float64), True, "ref")
    check("out", y.cpu(), y_ref, torch.float32)
    for k in grads_ref:
        check(f"d{k}", grads[k].cpu(), grads_ref[k], torch.float32)


def test_numba_several_threads_and_partial_blocks():
    """Two worker threads (per-thread B/C gradient buffers summed), 20 channels in groups of
    10: backward work units of 8 + 2 channels per group."""
    torch.set_num_threads(2)  # the autouse fixture restores the setting afterwards
    x = make_inputs({"groups": 2}, 300, torch.float64, dim=20)
    y, last, grads = run(clone(x), True, "numba")
    y_ref, last_ref, grads_ref = run(clone(x), True, "ref")
    check("out", y, y_ref, torch.float64)
    check("last_state", last, last_ref, torch.float64)
    for k in grads_ref:
        check(f"d{k}", grads[k], grads_ref[k], torch.float64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_numba_state_size_16_kernel(dtype, monkeypatch):
    """d_state 16 (Mamba's default, Vim's and Pixel-Mamba's) runs a backward kernel compiled for
    it (``bwd_kernel_n16``); it must match the reference as the generic one does (the other
    tests use d_state 8), with partial channel blocks (20 channels in groups of 10)."""
    import pixelmamba.ops.numba_scan as nb

    used = []
    real = nb.run_parallel
    monkeypatch.setattr(nb, "run_parallel", lambda kernel, *args: used.append(kernel) or real(kernel, *args))
    x = make_inputs({"groups": 2}, 300, dtype, dim=20, dstate=16)
    y, last, grads = run(clone(x), True, "numba")
    assert nb.bwd_kernel_n16 in used and nb.bwd_kernel not in used
    y_ref, last_ref, grads_ref = run(clone(x), True, "ref")
    check("out", y, y_ref, dtype)
    check("last_state", last, last_ref, dtype)
    for k in grads_ref:
        check(f"d{k}", grads[k], grads_ref[k], dtype)


def test_auto_picks_per_device(monkeypatch):
    """CPU: numba, or torch without numba. CUDA: mamba-ssm's kernel for stateless calls up to
    CUDA_MAX_LEN tokens (open reports of wrong results beyond ~61K), otherwise torch when triton
    does not import (with triton: test_triton_scan.py)."""
    import importlib
    from types import SimpleNamespace

    ss = importlib.import_module("pixelmamba.ops.selective_scan")  # the module, not the function

    cpu = torch.zeros(1, 4, 10)
    assert resolve_backend("auto", cpu, None, False) == "numba"
    monkeypatch.setattr(ss, "numba_available", lambda: False)
    assert resolve_backend("auto", cpu, None, False) == "torch"

    def cuda(L):
        return SimpleNamespace(is_cuda=True, device=torch.device("cuda"), shape=(1, 4, L))

    monkeypatch.setattr(ss, "triton_available", lambda: False)
    monkeypatch.setattr(ss, "mamba_ssm_available", lambda: True)
    assert resolve_backend("auto", cuda(ss.CUDA_MAX_LEN), None, False) == "cuda"
    assert resolve_backend("auto", cuda(ss.CUDA_MAX_LEN + 1), None, False) == "torch"
    assert resolve_backend("auto", cuda(100), torch.zeros(1), False) == "torch"
    assert resolve_backend("auto", cuda(100), None, True) == "torch"
    monkeypatch.setattr(ss, "mamba_ssm_available", lambda: False)
    assert resolve_backend("auto", cuda(100), None, False) == "torch"


@numba.njit(fastmath={"reassoc", "nsz", "contract"}, cache=True)  # the kernels' flags
def _vexp(x, out):  # pragma: no cover - compiled
    for i in range(x.shape[0]):
        out[i] = fast_exp(x[i])


@numba.njit(fastmath={"reassoc", "nsz", "contract"}, cache=True)  # the kernels' flags
def _vexpm1(x, out):  # pragma: no cover - compiled
    for i in range(x.shape[0]):
        out[i] = fast_expm1(x[i])


def _max_relative_error(compiled, x: np.ndarray, reference) -> float:
    """Largest |compiled(x) − reference(x)| / |reference(x)|, the reference in float64."""
    out = np.empty_like(x)
    compiled(x, out)
    want = reference(x.astype(np.float64))
    err = (np.abs(out.astype(np.float64) - want) / np.abs(want)).max()
    print(f"{x.dtype}: max relative error {err:.3e}")
    return err


@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-13), (np.float32, 3e-7)])
def test_numba_exp_matches_numpy(dtype, rtol):
    """The kernels' own vectorisable exp against numpy's, over the whole range a decay or a
    gate can take (values below exp(-87) / exp(-708) are flushed: they are 0 for any use)."""
    lo = -87.0 if dtype == np.float32 else -708.0
    x = np.concatenate([np.linspace(lo, 80.0, 200_001), np.linspace(-1, 1, 20_001)]).astype(dtype)
    assert _max_relative_error(_vexp, x, np.exp) <= rtol


@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-15), (np.float32, 3e-7)])
def test_numba_expm1_matches_numpy(dtype, rtol):
    """The backward's vectorisable expm1 (the softplus derivative is −expm1(−Δ)) against numpy's,
    relative to the result: near 0, where exp(x) − 1 would lose every digit (Δ down to 1e-30),
    across the switch at |x| = 1/2, and over the whole range of −Δ."""
    lo = -87.0 if dtype == np.float32 else -700.0
    x = np.concatenate([
        -np.logspace(-30, 1, 50_001), np.logspace(-30, 1, 50_001),
        np.linspace(-0.6, 0.6, 20_001), np.linspace(lo, 20.0, 100_001),
    ]).astype(dtype)
    x = x[x != 0]
    assert _max_relative_error(_vexpm1, x, np.expm1) <= rtol
    out = np.empty_like(x)
    _vexpm1(x, out)
    assert np.all(np.sign(out) == np.sign(x))
