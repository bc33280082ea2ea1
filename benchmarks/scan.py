"""Selective-scan benchmark: fwd+bwd time and peak memory per backend, and mixer throughput.

    HF_HUB_OFFLINE=1 python benchmarks/scan.py            # the full table (a few minutes)
    python benchmarks/scan.py --lengths 4096 --dims 192   # a quick look

Every case runs in its own subprocess with 2 torch threads (batch 1, N = 16, float32), so its
peak memory is that process's ru_maxrss (torch allocations are invisible to tracemalloc). The
table shows the peak and the growth over the process's footprint once libraries, kernels and
inputs are loaded, which is what the scan itself needed. Times exclude one-time costs: each
case first makes an untimed 64-token call (numba's JIT compilation or cache load) and one
untimed fwd+bwd call at its real size (thread-pool start; not for ref), then reports the best
of --repeat timed calls. Backends:
  numba    pixelmamba.ops.selective_scan(backend="numba")  (compiled CPU kernel)
  torch    pixelmamba.ops.selective_scan(backend="torch")  (chunked pure PyTorch)
  mambapy  mambapy.pscan (Blelloch scan, pure PyTorch) on the same recurrence, in its
           (B, L, D, N) layout; power-of-two lengths only; skipped when its estimated
           O(L·D·N) footprint does not fit in the memory available
  ref      the sequential reference (smallest size only)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

# run from a checkout without installing; the repository root also comes before this directory,
# whose pixelmamba.py (the Pixel-Mamba benchmark) would otherwise shadow the pixelmamba package
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# as `python -m bench` sets it, before torch loads OpenMP (children inherit it): spinning OpenMP
# threads on busy cores make the mixer's 2-thread rows many times slower than 1 thread
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

N_STATE = 16
THREADS = 2


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _mem_available_mb() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    return float("inf")


def _inputs(L: int, D: int):
    import torch

    g = torch.Generator().manual_seed(0)
    u = torch.randn(1, D, L, generator=g)
    delta = torch.randn(1, D, L, generator=g) * 0.5 - 4.0  # softplus(.) ~ 0.02, Mamba-like
    A = -torch.arange(1, N_STATE + 1.0).repeat(D, 1)  # S4D-real
    B = torch.randn(1, N_STATE, L, generator=g)
    C = torch.randn(1, N_STATE, L, generator=g)
    Dp = torch.ones(D)
    return [t.requires_grad_() for t in (u, delta, A, B, C, Dp)]


def _scan_fn(backend: str):
    import torch
    import torch.nn.functional as F

    if backend == "mambapy":
        from mambapy.pscan import pscan

        def fn(u, delta, A, B, C, Dp):
            # the same recurrence in mambapy's layout; transposes are part of the call
            x = u.transpose(1, 2)  # (B, L, D)
            dt = F.softplus(delta).transpose(1, 2)
            dA = torch.exp(dt.unsqueeze(-1) * A)  # (B, L, D, N)
            BX = dt.unsqueeze(-1) * B.transpose(1, 2).unsqueeze(2) * x.unsqueeze(-1)
            hs = pscan(dA, BX)
            y = (hs @ C.transpose(1, 2).unsqueeze(-1)).squeeze(3) + Dp * x
            return y.transpose(1, 2)

        return fn
    from pixelmamba.ops import selective_scan

    def fn(u, delta, A, B, C, Dp):
        return selective_scan(u, delta, A, B, C, Dp, delta_softplus=True, backend=backend)

    return fn


def run_scan_case(backend: str, L: int, D: int, repeat: int) -> dict:
    import torch

    torch.set_num_threads(THREADS)
    fn = _scan_fn(backend)
    # A tiny call loads (or compiles) numba's cached kernels and the libraries before the
    # memory baseline is taken; then one untimed call at the real size starts the thread pools
    # and lets the allocator reach its steady state (not for ref: a Python loop per token).
    # Timed: the best of `repeat` further calls, so no one-time JIT cost is in any number.
    fn(*_inputs(64, D)).sum().backward()
    ins = _inputs(L, D)
    base = _rss_mb()
    best = None
    for i in range(int(backend == "ref"), repeat + 1):
        for t in ins:
            t.grad = None
        c0 = _cpu_s()
        t0 = time.perf_counter()
        y = fn(*ins)
        t1 = time.perf_counter()
        y.backward(torch.ones_like(y))
        t2 = time.perf_counter()
        cpu = _cpu_s() - c0
        del y
        if i and (best is None or t2 - t0 < best[0] + best[1]):  # i = 0: warm-up
            best = (t1 - t0, t2 - t1, cpu)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"fwd": best[0], "bwd": best[1], "cpu": best[2], "peak_mb": peak,
            "delta_mb": peak - base}


def run_mixer_case(d_model: int, L: int, threads: int) -> dict:
    import torch

    from pixelmamba.mixer import BiMambaMixer

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    m = BiMambaMixer(d_model).eval()
    with torch.no_grad():
        m(torch.randn(1, 64, d_model))
        x = torch.randn(1, L, d_model)
        times = {None: [], 4096: []}
        for _ in range(2):  # best of two
            for cs in times:
                t0 = time.perf_counter()
                m(x, chunk_size=cs)
                times[cs].append(time.perf_counter() - t0)
    return {"tok_s": L / min(times[None]), "tok_s_stream": L / min(times[4096])}


def _child(kind: str, spec: dict, timeout: float) -> dict:
    cmd = [sys.executable, __file__, "--child", json.dumps({"kind": kind, **spec})]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(THREADS)}
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout > {timeout:.0f} s"}
    if out.returncode != 0:
        tail = (out.stderr.strip().splitlines() or ["?"])[-1]
        return {"error": f"exit {out.returncode}: {tail[:80]}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def _ratio(ref: float, this: float) -> str:
    return f"{ref / this:.{1 if ref >= this else 3}f}×"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--lengths", type=int, nargs="+", default=[16384, 65536])
    p.add_argument("--dims", type=int, nargs="+", default=[192, 384])
    p.add_argument("--backends", nargs="+", default=["numba", "torch", "mambapy", "ref"])
    p.add_argument("--mixer-dims", type=int, nargs="+", default=[3, 48, 192])
    p.add_argument("--mixer-len", type=int, default=16384)
    p.add_argument("--repeat", type=int, default=2,
                   help="timed calls per case after one untimed warm-up call; the best is shown")
    p.add_argument("--ref-len", type=int, default=1024,
                   help="length for the sequential reference (too slow at the table's sizes)")
    p.add_argument("--torch-max-len", type=int, default=16384,
                   help="longest L for the torch backend (slow on CPU; skipped above)")
    p.add_argument("--timeout", type=float, default=900, help="seconds per case")
    p.add_argument("--child", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        spec = json.loads(a.child)
        if spec["kind"] == "scan":
            res = run_scan_case(spec["backend"], spec["L"], spec["D"], spec["repeat"])
        else:
            res = run_mixer_case(spec["d_model"], spec["L"], spec["threads"])
        print(json.dumps(res))
        return

    with open("/proc/loadavg") as f:
        load = f.read().split()[0]
    print(f"selective scan fwd+bwd, batch 1, N={N_STATE}, float32, {THREADS} torch threads; "
          f"each case in its own process, one untimed warm-up call (JIT/cache load) then best "
          f"of {a.repeat}; load average at start {load} on {os.cpu_count()} cores\n")
    print("| L | D | backend | fwd s | bwd s | fwd+bwd s | CPU s | peak RSS MB | growth MB "
          "| mambapy / this (wall) | mambapy / this (CPU) |")
    print("|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    sizes = [(L, D) for L in a.lengths for D in a.dims]
    ref_size = (a.ref_len, min(a.dims))
    if "ref" in a.backends and ref_size not in sizes:
        sizes.insert(0, ref_size)
    for L, D in sizes:
        rows = {}
        for be in a.backends:
            if be == "ref" and (L, D) != ref_size:
                continue
            spec = {"backend": be, "L": L, "D": D, "repeat": 1 if be == "ref" else a.repeat}
            if be == "torch" and L > a.torch_max_len:
                rows[be] = {"error": f"skipped: L > --torch-max-len {a.torch_max_len}"}
                continue
            if be == "mambapy":
                if L & (L - 1):
                    rows[be] = {"error": "needs a power-of-two length"}
                    continue
                est = 12 * L * D * N_STATE * 4 / 2**20  # ~a dozen (B, L, D, N) fp32 tensors
                if est > 0.8 * _mem_available_mb():
                    rows[be] = {"error": f"skipped: needs ~{est / 1024:.0f} GB"}
                    continue
            rows[be] = _child("scan", spec, a.timeout)
        ref_t = rows.get("mambapy", {})
        for be, r in rows.items():
            if "error" in r:
                print(f"| {L} | {D} | {be} | – | – | – | – | – | – | {r['error']} | |")
                continue
            tot = r["fwd"] + r["bwd"]
            ratios = [_ratio(ref_t["fwd"] + ref_t["bwd"], tot) if "fwd" in ref_t else "–",
                      _ratio(ref_t["cpu"], r["cpu"]) if "cpu" in ref_t else "–"]
            print(f"| {L} | {D} | {be} | {r['fwd']:.2f} | {r['bwd']:.2f} | {tot:.2f} | "
                  f"{r['cpu']:.2f} | {r['peak_mb']:.0f} | {r['delta_mb']:.0f} | "
                  f"{ratios[0]} | {ratios[1]} |", flush=True)

    print(f"\nBiMambaMixer forward (no grad, backend auto), batch 1, L={a.mixer_len}\n")
    print("| d_model | torch threads | tokens/s one-shot | tokens/s streaming (chunk 4096) |")
    print("|---:|---:|---:|---:|")
    for d in a.mixer_dims:
        for threads in (1, THREADS):  # small ops: OpenMP barriers dominate on a busy machine
            r = _child("mixer", {"d_model": d, "L": a.mixer_len, "threads": threads}, a.timeout)
            if "error" in r:
                print(f"| {d} | {threads} | {r['error']} | |")
            else:
                print(f"| {d} | {threads} | {r['tok_s']:,.0f} | {r['tok_s_stream']:,.0f} |",
                      flush=True)
    with open("/proc/loadavg") as f:
        print(f"\nload average at the end: {f.read().split()[0]}")


if __name__ == "__main__":
    main()
