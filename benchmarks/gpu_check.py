"""One-GPU check of everything this repository claims about CUDA, in one run.

Sections (each guarded: a failure is reported in the table and the JSON, the others still run;
each gets a share of a global time budget, and a step that would overrun its share is skipped
and says so):

1. ``scan``: fwd+bwd time of every selective-scan backend (triton, torch, cuda when mamba-ssm
   imports) at L = 16K, 256K, 4M tokens, D = 192 and 384, N = 16, batch 1, float32, with D
   skip, gate, Δ bias and softplus. triton and torch run the stateful call (initial state in,
   last state out with a gradient: Pixel-Mamba's streamed blocks); mamba-ssm's kernel the
   stateless one (it ignores a last-state gradient, and its h0 term would materialise
   (L, D, N)). Errors: ``err_ref`` = max over the output and every gradient of
   max|got − want| / max|want| against the float64 ``ref`` on the first 2,048 tokens (``ref``
   is one Python step per token: too slow for the full length); ``err_torch`` = the same
   measure against the torch backend at the full length (cuda: stateless torch). Bandwidth =
   the bytes fwd+bwd must move at least (read u, Δ, z, B, C, and gy; write y and every input's
   gradient, float32) / time, against the GPU's peak (a table of known GPUs, else the clock and
   bus width torch reports, else "unknown").
2. ``models``: Pixel-Mamba-6M vs Vim-Ti fwd+bwd on a batch of 224² images, as
   ``benchmarks/pixelmamba.py`` builds them (goal ratio <= 1.5; the paper's FLOPs
   ratio is 1.27): Vim-Ti with per-block checkpointing, as it trains on slides, and without
   (its ``auto`` default at a 224² batch; like for like).
3. ``memory``: Pixel-Mamba-6M fwd+bwd of one uint8 image: peak CUDA memory above the model's own
   (``torch.cuda.max_memory_allocated``) per pixel and time per megapixel at 2048², 8192², and
   the largest square that fits (doubling from 8192, then bisection to 1024 px, OOM caught).
4. ``cli``: one demo fold of pixelmamba-6m at 2.5× through ``python -m bench run`` in a temporary
   data/results/cache directory with ``--device cuda``; reports the unit's record (metrics.json:
   peak CUDA MB, time per slide, metrics).
5. ``extract``: ResNet-50 feature extraction of the demo cohort on CUDA under the encoder's
   autocast precision (bf16), patches/s, and the bf16 features' agreement with fp32 on one batch.

    python benchmarks/gpu_check.py --out gpu_check.json           # on a CUDA machine, < 8 min
    python benchmarks/gpu_check.py --tiny --out /tmp/tiny.json    # CPU, tiny sizes (CI)

``--tiny`` runs the same code on the CPU at tiny sizes (the triton backend under
``TRITON_INTERPRET=1``, which must be set before triton is imported: done here when no CUDA
is present; the CLI section only checks the options it uses exist).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout; before benchmarks/ (benchmarks/pixelmamba.py)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# Peak memory bandwidth (bytes/s) from the vendors' data sheets, matched on the device name.
PEAK_BANDWIDTH = [
    ("H200", 4.8e12), ("H100 NVL", 3.9e12), ("H100 PCIe", 2.0e12), ("H100", 3.35e12),
    ("GH200", 4.0e12), ("B200", 8.0e12), ("A100-SXM4-80GB", 2.039e12), ("A100 80GB PCIe", 1.935e12),
    ("A100", 1.555e12), ("L40S", 0.864e12), ("L40", 0.864e12), ("L4", 0.3e12), ("A10", 0.6e12),
    ("A40", 0.696e12), ("V100", 0.9e12), ("T4", 0.32e12), ("RTX 4090", 1.008e12),
    ("RTX 3090", 0.936e12), ("RTX A6000", 0.768e12),
]
SECTIONS = ("scan", "models", "memory", "cli", "extract")
SHARE = {"scan": 0.40, "models": 0.10, "memory": 0.25, "cli": 0.17, "extract": 0.08}


class OverBudget(Exception):
    """A step would not finish within its section's share of the budget."""


class Clock:
    def __init__(self, budget: float) -> None:
        self.start, self.budget = time.perf_counter(), budget

    def left(self) -> float:
        return self.budget - (time.perf_counter() - self.start)


def peak_bandwidth(torch) -> tuple[float | None, str]:
    if not torch.cuda.is_available():
        return None, "unknown (no CUDA)"
    props = torch.cuda.get_device_properties(0)
    for key, bw in PEAK_BANDWIDTH:
        if key.lower() in props.name.lower():
            return bw, f"data sheet ({key})"
    clock, bus = getattr(props, "memory_clock_rate", 0), getattr(props, "memory_bus_width", 0)
    if clock and bus:  # kHz, bits; double data rate
        return 2 * clock * 1e3 * bus / 8, "memory clock x bus width"
    return None, "unknown"


def sync(torch) -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


# ---------------------------------------------------------------------------------------- scan
def _scan_inputs(torch, L: int, D: int, N: int, device, stateful: bool, seed: int = 0) -> dict:
    g = torch.Generator(device="cpu").manual_seed(seed)

    def r(*shape, scale=1.0, rand=False):
        t = torch.rand(*shape, generator=g) if rand else torch.randn(*shape, generator=g)
        return (scale * t).to(device)

    x = {"u": r(1, D, L), "delta": r(1, D, L, scale=0.5, rand=True) - 2.0,
         "A": -torch.arange(1, N + 1, dtype=torch.float32).repeat(D, 1).to(device),
         "B": r(1, N, L), "C": r(1, N, L), "D": r(D), "z": r(1, D, L),
         "delta_bias": r(D, scale=0.5, rand=True),
         "initial_state": r(1, D, N) if stateful else None}
    return {k: (v.requires_grad_() if v is not None else None) for k, v in x.items()}


def _scan_call(torch, x: dict, backend: str, grads: bool = True, seed: int = 1):
    from pixelmamba.ops import selective_scan

    stateful = x["initial_state"] is not None
    res = selective_scan(x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], z=x["z"],
                         delta_bias=x["delta_bias"], delta_softplus=True,
                         return_last_state=stateful, initial_state=x["initial_state"],
                         backend=backend)
    y, last = res if stateful else (res, None)
    g = torch.Generator(device="cpu").manual_seed(seed)
    loss = (y.double() * torch.randn(y.shape, generator=g, dtype=torch.float64).to(y.device)).sum()
    if last is not None:
        loss = loss + (last.double() * torch.randn(last.shape, generator=g,
                                                   dtype=torch.float64).to(y.device)).sum()
    return y, last, loss


def _outputs(torch, x: dict, backend: str) -> dict:
    """Output, last state and every gradient of one fwd+bwd, detached."""
    for v in x.values():
        if v is not None:
            v.grad = None
    y, last, loss = _scan_call(torch, x, backend)
    loss.backward()
    out = {"out": y.detach(), **({"last": last.detach()} if last is not None else {})}
    out.update({f"d{k}": v.grad for k, v in x.items() if v is not None})
    return out


def _rel_err(got: dict, want: dict) -> float:
    return max(((got[k].double() - want[k].double().to(got[k].device)).abs().max()
                / want[k].double().abs().max().clamp_min(1e-30)).item() for k in want)


def section_scan(torch, args, clock: Clock, share: float, report: dict) -> list[dict]:
    from pixelmamba.ops.selective_scan import mamba_ssm_available, triton_available

    device = "cuda" if torch.cuda.is_available() else "cpu"
    backends = ["torch"]  # first: the others' err_torch compare with its outputs, kept on device
    if triton_available() and (device == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"):
        backends.append("triton")
    else:
        report["notes"].append("triton: skipped (not importable, or CPU without TRITON_INTERPRET)")
    if device == "cuda" and mamba_ssm_available():
        backends.append("cuda")
    if args.tiny:
        from pixelmamba.ops import triton_scan

        triton_scan.CHUNK = 8  # the interpreter is slow: tiny chunks, tiny sizes
        lengths, dims, N, prefix = [40], [4], 4, 24
    else:
        lengths, dims, N, prefix = [16384, 262144, 4194304], [192, 384], 16, 2048
    peak, peak_src = peak_bandwidth(torch)
    report["peak_bandwidth"] = {"bytes_per_s": peak, "source": peak_src}
    end = time.perf_counter() + share
    rows, ref_cache = [], {}  # ("ref", D, stateful): float64 ref on the prefix
    for L in lengths:
        for D in dims:
            for key in [k for k in ref_cache if k[0] == "torch"]:
                del ref_cache[key]  # the torch backend's full-length outputs of the last (L, D)
            for backend in backends:
                row = {"L": L, "D": D, "N": N, "backend": backend,
                       "call": "stateless" if backend == "cuda" else "stateful"}
                rows.append(row)
                try:
                    if time.perf_counter() > end:
                        raise OverBudget("section time share spent")
                    row.update(_scan_case(torch, backend, L, D, N, prefix, device, ref_cache,
                                          end, peak))
                except Exception as exc:  # noqa: BLE001 - reported per row
                    row["error"] = f"{type(exc).__name__}: {exc}"[:300]
                finally:
                    gc.collect()
                    if device == "cuda":
                        torch.cuda.empty_cache()
    return rows


def _scan_case(torch, backend, L, D, N, prefix, device, ref_cache, end, peak) -> dict:
    stateful = backend != "cuda"
    # error on a prefix against float64 ref
    xp = _scan_inputs(torch, prefix, D, N, device, stateful, seed=2)
    x64 = {k: (v.detach().double().requires_grad_() if v is not None else None) for k, v in xp.items()}
    key = ("ref", D, stateful)
    if key not in ref_cache:
        ref_cache[key] = _outputs(torch, x64, "ref")
    err_ref = _rel_err(_outputs(torch, xp, backend), ref_cache[key])
    x = _scan_inputs(torch, L, D, N, device, stateful)
    _outputs(torch, x, backend)  # warm-up at the real size: compilation, allocator
    times = []
    for _ in range(2):
        for v in x.values():
            if v is not None:
                v.grad = None
        sync(torch)
        t0 = time.perf_counter()
        y, last, loss = _scan_call(torch, x, backend)
        sync(torch)
        t1 = time.perf_counter()
        loss.backward()
        sync(torch)
        times.append((t1 - t0, time.perf_counter() - t1))
        if time.perf_counter() > end:
            break
    fwd, bwd = min(times, key=sum)
    got = {"out": y.detach(), **({"last": last.detach()} if last is not None else {}),
           **{f"d{k}": v.grad.clone() for k, v in x.items() if v is not None}}
    del y, last, loss
    err_torch = None
    if backend == "torch":
        ref_cache[("torch", stateful)] = got
    elif time.perf_counter() < end:
        key = ("torch", stateful)
        if key not in ref_cache:  # the stateless call of mamba-ssm's kernel
            ref_cache[key] = _outputs(torch, x, "torch")
        err_torch = _rel_err(got, ref_cache[key])
    # least traffic of fwd+bwd, float32: per token D·(u, Δ, z, y | u, Δ, z, gy, gu, gΔ, gz) and
    # N·(B, C | B, C, gB, gC)
    bytes_moved = 4 * L * (11 * D + 6 * N)
    bw = bytes_moved / (fwd + bwd)
    return {"fwd_s": fwd, "bwd_s": bwd, "fwdbwd_s": fwd + bwd, "err_ref": err_ref,
            "err_ref_tokens": prefix, "err_torch": err_torch, "bytes": bytes_moved,
            "bandwidth_GBps": bw / 1e9, "bandwidth_pct_peak": 100 * bw / peak if peak else None}


# -------------------------------------------------------------------------------------- models
def _fwd_bwd_seconds(torch, net, x, reps: int) -> float:
    import statistics

    net(x[:1]).sum().backward()  # warm-up (kernels, allocator)
    ts = []
    for _ in range(reps):
        net.zero_grad(set_to_none=True)
        sync(torch)
        t = time.perf_counter()
        net(x).logsumexp(-1).sum().backward()
        sync(torch)
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def section_models(torch, args, clock: Clock, share: float, report: dict) -> list[dict]:
    import pixelmamba
    from baselines.vim import vim_ti

    device = "cuda" if torch.cuda.is_available() else "cpu"
    side, batch, reps = (64, 1, 1) if args.tiny else (224, args.batch, 3)
    extra = {"scan_window": 64} if args.tiny else {}
    torch.manual_seed(0)
    x = torch.randn(batch, 3, side, side, device=device)
    builders = {  # as benchmarks/pixelmamba.py builds them (segment 1: no recomputation needed)
        "pixelmamba-6m": lambda: pixelmamba.create_model("pixelmamba-6m", num_classes=1000,
                                                         segment=1, **extra),
        "vim-ti": lambda: vim_ti(1000, checkpointing=True),
        "vim-ti-plain": lambda: vim_ti(1000, checkpointing=False),
    }
    rows, end = [], time.perf_counter() + share
    for name, build in builders.items():
        row = {"model": name, "batch": batch, "side": side}
        rows.append(row)
        try:
            if time.perf_counter() > end:
                raise OverBudget("section time share spent")
            net = build().to(device)
            row["seconds"] = _fwd_bwd_seconds(torch, net, x, reps)
            del net
        except Exception as exc:  # noqa: BLE001
            row["error"] = f"{type(exc).__name__}: {exc}"[:300]
    t = {r["model"]: r.get("seconds") for r in rows}
    if t["pixelmamba-6m"] and t["vim-ti"]:
        report["models_ratio"] = {"pixelmamba_over_vim": t["pixelmamba-6m"] / t["vim-ti"],
                                  "pixelmamba_over_vim_plain": (t["pixelmamba-6m"] / t["vim-ti-plain"]
                                                                if t["vim-ti-plain"] else None),
                                  "goal": 1.5, "paper_flops_ratio": 1.27}
    return rows


# -------------------------------------------------------------------------------------- memory
def _peak_reset(torch) -> int:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:  # restart VmHWM at the current RSS
        f.write("5")
    return _rss()


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak(torch) -> int:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated()
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmHWM:"))


def _memory_case(torch, net, side: int, device) -> dict:
    x = None
    try:
        base = _peak_reset(torch)
        x = torch.randint(0, 256, (1, 3, side, side), dtype=torch.uint8, device=device)
        sync(torch)
        t = time.perf_counter()
        net(x).logsumexp(-1).sum().backward()
        sync(torch)
        secs = time.perf_counter() - t
        peak = _peak(torch) - base
        return {"side": side, "ok": True, "peak_bytes": peak, "bytes_per_px": peak / side**2,
                "seconds": secs, "s_per_mpx": secs / (side**2 / 1e6)}
    except torch.cuda.OutOfMemoryError:
        return {"side": side, "ok": False, "error": "out of memory"}
    finally:
        del x
        net.zero_grad(set_to_none=False)
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def section_memory(torch, args, clock: Clock, share: float, report: dict) -> list[dict]:
    import pixelmamba

    device = "cuda" if torch.cuda.is_available() else "cpu"
    extra = {"scan_window": 64} if args.tiny else {}
    sizes, start, cap = ([64, 128], 128, 256) if args.tiny else ([2048, 8192], 8192, 1 << 17)
    step = 64 if args.tiny else 1024
    net = pixelmamba.create_model("pixelmamba-6m", num_classes=4, **extra).to(device)
    net(torch.randint(0, 256, (1, 3, 32, net.cfg.scan_window + 32), dtype=torch.uint8,
                      device=device)).sum().backward()  # warm-up; parameter gradients allocated
    end = time.perf_counter() + share
    rows, ok = [], {}

    def affordable(side: int) -> bool:  # time per pixel of the largest done, with margin
        if not ok:
            return False
        last = ok[max(ok)]
        return time.perf_counter() + 1.5 * last["s_per_mpx"] * side**2 / 1e6 < end

    for i, side in enumerate(sizes):
        if i and not affordable(side):
            rows.append({"side": side, "ok": False, "error": "skipped: time share"})
            continue
        rows.append(_memory_case(torch, net, side, device))
        if rows[-1]["ok"]:
            ok[side] = rows[-1]

    # doubling from `start` until OOM (or the cap / the time share), then bisection
    lo, hi, why = (start if start in ok else None), None, "out of memory"
    side = start * 2
    while lo and side <= cap:
        if not affordable(side):
            why = "time share"
            break
        r = _memory_case(torch, net, side, device)
        rows.append(r)
        if not r["ok"]:
            hi = side
            break
        ok[side], lo = r, side
        side *= 2
    else:
        why = "size cap" if lo else why
    while lo and hi and hi - lo > step:
        mid = (lo + hi) // 2 // step * step
        if not affordable(mid):
            why = "time share"
            break
        r = _memory_case(torch, net, mid, device)
        rows.append(r)
        if r["ok"]:
            ok[mid], lo = r, mid
        else:
            hi = mid
    if ok:
        best = max(ok)
        report["largest_square"] = {"side": best, "limited_by": why if hi is None else
                                    f"out of memory at {hi}", "bytes_per_px": ok[best]["bytes_per_px"],
                                    "s_per_mpx": ok[best]["s_per_mpx"],
                                    "measure": "torch.cuda.max_memory_allocated above the model's"
                                    if device == "cuda" else "CPU: peak RSS growth (VmHWM)"}
    return rows


# ----------------------------------------------------------------------------------------- cli
def section_cli(torch, args, clock: Clock, share: float, report: dict) -> list[dict]:
    help_text = subprocess.run([sys.executable, "-m", "bench", "run", "--help"], cwd=ROOT,
                               capture_output=True, text=True, timeout=120).stdout
    missing = [o for o in ("--methods", "--dataset", "--folds", "--results", "--cache",
                           "--input", "--device") if o not in help_text]
    if missing:
        raise RuntimeError(f"`bench run` lacks {missing}")
    if args.tiny:
        raise OverBudget("tiny: a demo fold of pixelmamba-6m trains for minutes; options checked")
    tmp = Path(tempfile.mkdtemp(prefix="gpu-check-cli-"))
    cmd = [sys.executable, "-m", "bench", "run", "--methods", "pixelmamba-6m", "--dataset", "demo",
           "--folds", "0", "--results", str(tmp / "results"), "--cache", str(tmp / "cache"),
           "--input", "magnification=2.5", "--device", "cuda", "-q"]
    env = {**os.environ, "BENCH_DATA": str(tmp / "data"), "PYTHONPATH": str(ROOT)}
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=max(10.0, share))
    rows = [{"command": " ".join(cmd[1:]), "returncode": proc.returncode,
             "seconds": time.perf_counter() - t, "tail": (proc.stdout + proc.stderr)[-800:]}]
    for p in sorted((tmp / "results").rglob("metrics.json")):
        m = json.loads(p.read_text())
        rows.append({"unit": str(p.parent.relative_to(tmp / "results")),
                     **{k: m.get(k) for k in ("peak_cuda_mb", "peak_rss_mb",
                                               "train_seconds_per_slide")},
                     "metrics": {k: v for k, v in (m.get("metrics") or {}).items()
                                 if isinstance(v, (int, float))}})
    if proc.returncode != 0:
        raise RuntimeError(f"bench run exited {proc.returncode}: {proc.stderr[-300:]}")
    return rows


# ------------------------------------------------------------------------------------- extract
def section_extract(torch, args, clock: Clock, share: float, report: dict) -> list[dict]:
    import bench.registry  # noqa: F401 -- registers the declared encoders
    import feature_cache as fc
    from bench.data.demo import generate_demo

    device = "cuda" if torch.cuda.is_available() else "cpu"
    tmp = Path(tempfile.mkdtemp(prefix="gpu-check-extract-"))
    root = generate_demo(tmp / "demo", seed=0, n_cases=4 if args.tiny else 48)
    slides = {s: root / "slides" / f"{s}.tiff"
              for s in json.loads((root / "MANIFEST.json").read_text())["slides"]}
    if args.tiny:
        slides = dict(list(slides.items())[:1])
    enc = fc.get_encoder("resnet50", allow_random=True, device=device)
    enc.model  # built before timing
    t = time.perf_counter()
    rep = fc.FeatureCache(tmp / "cache").extract(slides, enc, batch_size=8 if args.tiny else 128,
                                                 progress=False)
    secs = time.perf_counter() - t
    n = sum(rep.n_patches.values())
    row = {"encoder": "resnet50", "device": device, "precision": enc.precision, "slides": len(slides),
           "patches": n, "seconds": secs, "patches_per_s": n / secs}
    # the same batch at the encoder's precision and in fp32
    import numpy as np

    batch = np.random.default_rng(0).integers(0, 256, (4, enc.patch_size, enc.patch_size, 3),
                                              dtype=np.uint8)  # uint8 patches, as read
    low, precision = enc(batch), enc.precision
    enc.precision = "fp32"
    full = enc(batch)
    enc.precision = precision
    cos = torch.nn.functional.cosine_similarity(low, full, dim=-1)
    row["min_cosine_vs_fp32"] = cos.min().item()
    return [row]


# ---------------------------------------------------------------------------------------- main
def _table(name: str, rows: list[dict]) -> str:
    keys = [k for k in dict.fromkeys(k for r in rows for k in r) if k not in ("tail", "metrics")]
    fmt = lambda v: (f"{v:.3g}" if isinstance(v, float) else "" if v is None else str(v))  # noqa: E731
    if not keys:
        return f"\n## {name}\n(no rows)"
    lines = [f"\n## {name}", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(fmt(r.get(k)) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("gpu_check.json"))
    ap.add_argument("--tiny", action="store_true", help="CPU, tiny sizes: the code paths only (CI)")
    ap.add_argument("--budget", type=float, default=None,
                    help="global time budget in seconds (default 450; --tiny: 600, so that "
                         "a loaded CI machine still runs every section)")
    ap.add_argument("--batch", type=int, default=8, help="224² images per batch in `models`")
    ap.add_argument("--sections", default=",".join(SECTIONS), help=f"comma list of {SECTIONS}")
    args = ap.parse_args()
    budget = args.budget or (600.0 if args.tiny else 450.0)
    clock = Clock(budget)

    import torch  # after argparse; triton is imported later, by the scan backend

    if not torch.cuda.is_available():
        if not args.tiny:
            print("no CUDA device: run with --tiny for the CPU code-path check", file=sys.stderr)
            return 2
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before anything imports triton
    torch.set_num_threads(min(4, os.cpu_count() or 1))
    report = {"tiny": args.tiny, "budget_s": budget, "notes": [],
              "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
              "torch": torch.__version__, "python": platform.python_version(),
              "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "sections": {}}
    funcs = {"scan": section_scan, "models": section_models, "memory": section_memory,
             "cli": section_cli, "extract": section_extract}
    chosen = [s for s in args.sections.split(",") if s]
    if set(chosen) - set(SECTIONS):
        ap.error(f"unknown sections {sorted(set(chosen) - set(SECTIONS))}; choose from {SECTIONS}")
    for name in chosen:
        share = min(SHARE[name] * budget, clock.left())
        entry = report["sections"][name] = {"status": "ok", "rows": []}
        t = time.perf_counter()
        try:
            if share <= 1:
                raise OverBudget("global time budget spent")
            entry["rows"] = funcs[name](torch, args, clock, share, report)
            if any("error" in r for r in entry["rows"]):
                entry["status"] = "partial"
        except OverBudget as exc:
            entry.update(status="skipped", reason=str(exc))
        except Exception as exc:  # noqa: BLE001 - one failing section must not stop the others
            entry.update(status="failed", error=f"{type(exc).__name__}: {exc}"[:500],
                         traceback=traceback.format_exc()[-2000:])
        entry["seconds"] = time.perf_counter() - t
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        print(_table(f"{name}: {entry['status']} ({entry['seconds']:.1f} s)"
                     + (f" - {entry.get('reason') or entry.get('error')}"
                        if entry["status"] in ("skipped", "failed") else ""), entry["rows"]),
              flush=True)
        args.out.write_text(json.dumps(report, indent=1, default=str))  # a partial file survives
    report["seconds"] = time.perf_counter() - clock.start
    for key in ("peak_bandwidth", "models_ratio", "largest_square"):
        if key in report:
            print(f"\n{key}: {json.dumps(report[key], default=str)}")
    for note in report["notes"]:
        print(f"note: {note}")
    args.out.write_text(json.dumps(report, indent=1, default=str))
    print(f"\nwrote {args.out} ({report['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
