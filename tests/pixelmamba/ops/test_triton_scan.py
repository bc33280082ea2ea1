"""The Triton selective scan against the float64 reference, forward and every gradient.

On CPU the kernels run under Triton's interpreter, which `triton` only uses when
TRITON_INTERPRET=1 is set before `import triton`: its own `tl.sum` & co. are decorated at import
and are then either compiled or interpreted for the whole process. So the interpreted run is a
child process: `test_interpreted_on_cpu` runs this file again under `TRITON_INTERPRET=1`, where
the `cpu` cases run (the child checks that the kernels really are interpreted) and nothing else
in this pytest process sees the variable. With CUDA the same cases run in this process on the GPU with
the compiled kernels. Chunks are 8 tokens here (the GPU default is 64) so that lengths 1, 5
(< a chunk), 8 (one chunk) and 29 (three chunks and a remainder) cross every boundary case while
the interpreter stays fast; helpers and the tolerance table are test_selective_scan's.
"""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from test_selective_scan import CONFIGS, check, clone, make_inputs, run

from pixelmamba.ops import resolve_backend, selective_scan

pytest.importorskip("triton", reason="the triton backend needs the triton package")

MODULE = "pixelmamba.ops.triton_scan"
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
CHUNK = 8
LENGTHS = [1, 5, 8, 29]


# The kernel cases: on CPU in the interpreter child, on CUDA in this process.
@pytest.fixture(scope="module", params=["cpu"] if INTERPRET else [
    pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(
        not torch.cuda.is_available(), reason="needs CUDA (on CPU: test_interpreted_on_cpu)")]),
])
def triton_scan(request):
    """(device, backend module) with 8-token chunks."""
    mod = importlib.import_module(MODULE)
    assert mod.INTERPRETED == INTERPRET
    if INTERPRET:
        from triton.runtime.interpreter import InterpretedFunction

        assert isinstance(mod.fwd_kernel, InterpretedFunction)
        assert isinstance(mod.bwd_kernel, InterpretedFunction)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(mod, "CHUNK", CHUNK)
        yield request.param, mod


@pytest.mark.skipif(INTERPRET, reason="this is the interpreter child")
def test_interpreted_on_cpu():
    """Every kernel case of this file on CPU, in a child process under TRITON_INTERPRET=1."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", __file__, "-q", "-p", "no:cacheprovider", "-s"],
        cwd=Path(__file__).resolve().parents[3], env=env, capture_output=True, text=True,
        timeout=600,
    )
    print(proc.stdout[-20000:], proc.stderr[-5000:])
    assert proc.returncode == 0, "interpreted triton tests failed (output above)"
    summary = proc.stdout.strip().splitlines()[-1]
    passed = re.search(r"(\d+) passed", summary)
    assert passed and int(passed.group(1)) >= 20 and "failed" not in summary, summary


def to(x: dict, device: str) -> dict:
    return {k: (v.detach().to(device).requires_grad_() if v is not None else None)
            for k, v in x.items()}


def compare(device: str, cfg: dict, L: int, dtype: torch.dtype, last_grad: bool = True,
            **shape) -> None:
    """Output, last state and every gradient of the triton backend against float64 ref."""
    x = make_inputs(cfg, L, dtype, **shape)
    softplus = cfg.get("softplus", True)
    y, last, grads = run(to(x, device), softplus, "triton", last_grad=last_grad)
    y_ref, last_ref, grads_ref = run(clone(x, torch.float64), softplus, "ref", last_grad=last_grad)
    assert y.dtype == dtype and y.shape == x["u"].shape and y.device.type == device
    check("out", y.cpu(), y_ref, dtype)
    check("last_state", last.cpu(), last_ref, dtype)
    for k in grads_ref:
        assert grads[k] is not None, f"no gradient for {k}"
        check(f"d{k}", grads[k].cpu(), grads_ref[k], dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("L", LENGTHS)
def test_matches_ref(triton_scan, L, dtype):
    """Every input on, initial state in and a gradient on the last state out."""
    compare(triton_scan[0], CONFIGS["all"], L, dtype)


@pytest.mark.parametrize("config", ["none", "no_D", "no_z", "no_bias", "no_softplus", "no_h0",
                                    "groups2"])
def test_optional_inputs(triton_scan, config):
    """Each optional input off in turn, over one chunk boundary (8 + 5 tokens)."""
    compare(triton_scan[0], CONFIGS[config], 13, torch.float64)


def test_no_state_in_or_out(triton_scan):
    """No initial state and no gradient on the last state: the stateless call."""
    compare(triton_scan[0], CONFIGS["no_h0"], 13, torch.float32, last_grad=False)


def test_output_only(triton_scan):
    """return_last_state=False returns y alone, with gradients equal to ref's."""
    device = triton_scan[0]
    x = make_inputs({}, 13, torch.float64, seed=4)
    outs = []
    for xs, backend in ((to(x, device), "triton"), (clone(x), "ref")):
        y = selective_scan(xs["u"], xs["delta"], xs["A"], xs["B"], xs["C"], xs["D"], z=xs["z"],
                           delta_bias=xs["delta_bias"], delta_softplus=True,
                           initial_state=xs["initial_state"], backend=backend)
        assert isinstance(y, torch.Tensor)
        (y * y).sum().backward()
        outs.append((y.detach().cpu(), {k: v.grad.cpu() for k, v in xs.items() if v is not None}))
    check("out", outs[0][0], outs[1][0], torch.float64)
    for k in outs[1][1]:
        check(f"d{k}", outs[0][1][k], outs[1][1][k], torch.float64)


def test_channel_blocks_and_padded_state(triton_scan, monkeypatch):
    """8 channels in 2 groups of 4 with blocks of at most 2 channels: two programs per group,
    whose B/C gradients are added atomically; d_state 5 pads the state axis to 8 (masked)."""
    monkeypatch.setattr(triton_scan[1], "BLOCK_D", 2)
    compare(triton_scan[0], CONFIGS["groups2"], 13, torch.float64, dim=8, dstate=5)


def test_streamed_pieces_equal_one_shot(triton_scan):
    """A sequence fed in pieces (cuts inside and at chunk boundaries) with the state carried
    equals one call: output, last state and every gradient."""
    device, dtype, cuts = triton_scan[0], torch.float64, [0, 3, 8, 16, 21]
    x = make_inputs({}, cuts[-1], dtype, seed=3)
    y, last, grads = run(to(x, device), True, "triton")
    xs = to(x, device)
    h, ys = xs["initial_state"], []
    for s, e in zip(cuts[:-1], cuts[1:]):
        y_k, h = selective_scan(
            xs["u"][..., s:e], xs["delta"][..., s:e], xs["A"], xs["B"][..., s:e],
            xs["C"][..., s:e], xs["D"], z=xs["z"][..., s:e], delta_bias=xs["delta_bias"],
            delta_softplus=True, return_last_state=True, initial_state=h, backend="triton",
        )
        ys.append(y_k)
    y_p = torch.cat(ys, -1)
    g = torch.Generator().manual_seed(1)
    gy = torch.randn(y_p.shape, generator=g, dtype=dtype).to(device)
    gl = torch.randn(h.shape, generator=g, dtype=dtype).to(device)
    ((y_p * gy).sum() + (h * gl).sum()).backward()
    check("out", y_p.detach().cpu(), y.cpu(), dtype)
    check("last_state", h.detach().cpu(), last.cpu(), dtype)
    for k in grads:
        check(f"d{k}", xs[k].grad.cpu(), grads[k].cpu(), dtype)


def test_chunk_sizes(triton_scan):
    """The chunk is a parameter: 1, 4 and 32 tokens give the same answer; others refuse."""
    device, mod = triton_scan
    x = make_inputs({"groups": 2}, 13, torch.float64, seed=6)
    dt = torch.nn.functional.softplus(x["delta"] + x["delta_bias"][:, None]).detach()
    args = [v.detach().to(device) for v in (x["u"], dt, x["A"], x["B"], x["C"],
                                            x["initial_state"])]
    want = selective_scan(*(a.cpu() for a in args[:5]), return_last_state=True,
                          initial_state=args[5].cpu(), backend="ref")
    for chunk in (1, 4, 32):
        y, last = mod.scan_triton(*args, chunk=chunk)
        check(f"out (chunk {chunk})", y.cpu(), want[0], torch.float64)
        check(f"last (chunk {chunk})", last.cpu(), want[1], torch.float64)
    with pytest.raises(ValueError, match="power of two"):
        mod.scan_triton(*args, chunk=6)


@pytest.mark.skipif(INTERPRET, reason="the kernels are interpreted in this process")
def test_cpu_tensors_need_the_interpreter():
    """Compiled (not interpreted) kernels refuse CPU tensors with the way out in the message."""
    assert not importlib.import_module(MODULE).INTERPRETED
    u = torch.zeros(1, 4, 3)
    with pytest.raises(ValueError, match="TRITON_INTERPRET"):
        selective_scan(u, u, -torch.ones(4, 8), torch.zeros(1, 8, 3), torch.zeros(1, 8, 3),
                       backend="triton")


def test_auto_picks_triton_for_states_on_cuda(monkeypatch):
    """CUDA: triton whenever a state goes in or comes out (Pixel-Mamba's streamed blocks) and
    for sequences too long for mamba-ssm's kernel; mamba-ssm's kernel for the stateless short
    call as before; torch when triton does not import. CPU never picks triton."""
    ss = importlib.import_module("pixelmamba.ops.selective_scan")  # the module, not the function

    def cuda(L):
        return SimpleNamespace(is_cuda=True, device=torch.device("cuda"), shape=(1, 4, L))

    h0 = torch.zeros(1)
    monkeypatch.setattr(ss, "triton_available", lambda: True)
    for mamba in (True, False):
        monkeypatch.setattr(ss, "mamba_ssm_available", lambda mamba=mamba: mamba)
        assert resolve_backend("auto", cuda(100), h0, False) == "triton"
        assert resolve_backend("auto", cuda(100), None, True) == "triton"
        assert resolve_backend("auto", cuda(100), h0, True) == "triton"
        assert resolve_backend("auto", cuda(ss.CUDA_MAX_LEN + 1), None, False) == "triton"
    assert resolve_backend("auto", cuda(100), None, False) == "triton"  # no mamba-ssm
    monkeypatch.setattr(ss, "mamba_ssm_available", lambda: True)
    assert resolve_backend("auto", cuda(100), None, False) == "cuda"
    assert resolve_backend("auto", torch.zeros(1, 4, 10), h0, True) == "numba"
    monkeypatch.setattr(ss, "triton_available", lambda: False)
    assert resolve_backend("auto", cuda(100), h0, True) == "torch"
    assert resolve_backend("triton", torch.zeros(1, 4, 10), None, False) == "triton"

