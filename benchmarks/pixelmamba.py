"""Pixel-Mamba's numbers, side by side: memory per pixel, linearity, cost vs Vim-Ti.

1. Peak memory of one forward+backward of Pixel-Mamba-6M per input pixel at 512², 1024², 2048²
   (goal <= 80 B/px). Each size runs in a fresh subprocess. The resident size after building the
   model and one forward+backward of a tiny image of two regions (kernels compiled, every code
   path run once, Region Fusion included, parameter gradients allocated: costs of the model, not
   of the image) and returning the heap's free pages is the
   base; the peak resident size from then on (``VmHWM``, restarted there: the process's earlier
   peak, e.g. compiling kernels, is not the image's) minus the base is what training that image
   costs. The input image (raw uint8 RGB, 3 B/px, as ``bench`` feeds Pixel-Mamba; ``--input
   float32``: normalised float32, 12 B/px) is allocated after the baseline and counted. The marginal
   B/px between two sizes is printed too. The process's memory policy is ``bench run``'s: glibc's
   mmap threshold pinned and the heap's free pages handed back whenever a layer or a stage
   inside a streamed layer starts, and below ~1M tokens between a block's backward pieces
   (``bench.engine.memory``, ``bench.engine.models.release_pixelmamba_heap``;
   ``BENCH_MMAP_THRESHOLD`` and ``BENCH_TRIM_LAYERS=0`` change both alike).
2. Time ratio 2048² / 1024² of the same runs (goal <= 4.4: 4x the pixels, linear time).
3. Forward+backward time of Pixel-Mamba-6M vs Vim-Ti on the same batch of 224² images (goal
   ratio <= 1.5; the paper's FLOPs ratio is 1.27). Pixel-Mamba with its defaults
   (``checkpointing="auto"``, which runs a batch of at most four 224² images on the plain autograd
   path, and segment 1 here: such a batch needs no recomputation); Vim-Ti twice: with per-block
   checkpointing, as it trains on slides of more than ``UNCHECKPOINTED_TOKENS`` tokens, and
   without (``vim-ti-plain``: its ``auto`` default at this batch). Median of ``--reps`` runs
   after a warm-up. The memory runs (512² and up) take the streamed path under ``auto``.

    python benchmarks/pixelmamba.py                               # everything, defaults
    python benchmarks/pixelmamba.py --sizes 512 1024 --skip-vim   # memory only
    python benchmarks/pixelmamba.py --act-dtype float32 --segment 1 --skip-memory
    python benchmarks/pixelmamba.py --skip-memory --checkpointing on  # Vim comparison, streamed blocks
    python benchmarks/pixelmamba.py --skip-memory --breakdown  # ... and where its ratio comes from

    python benchmarks/pixelmamba.py --sizes 1024 --skip-vim --trace  # peak RSS per layer phase

Every time is printed twice: wall seconds and CPU seconds of the measuring process
(``time.process_time``; one torch thread by default, so CPU time is the work done, while wall
time also counts waiting for a core on a shared machine). The load average is printed at the
start and the end; memory numbers do not depend on it.

``--breakdown`` (with 3.): every Pixel-Mamba block is timed alone (fwd+bwd) on the sequence it
scans for the 224² batch, and one Vim-Ti block with and without its per-block checkpointing. The
blocks are the same module, so the ratio of the two networks is the ratio of their scanned work
(Σ tokens × inner channels: it sets the cost of the scan, the convolutions, gates and
projections alike) times the ratio of their cost per unit of that work, divided by Vim-Ti's
recomputation; the printout gives the three factors.

``--trace``: a thread samples the resident size every 5 ms and layer hooks name the phase (``fwd
L7``; ``recomp L7`` when a segment is recomputed in backward; ``bwd L7`` from the moment the
gradient of layer 7's output exists): the peak above base of every phase is printed, which
tells what sets the peak.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `import bench` sets it, before torch loads OpenMP


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak() -> None:
    """Restart the peak resident size (VmHWM) at the current one (Linux: ``/proc/self/clear_refs``)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _peak_bytes() -> int:
    """Peak resident size since ``_reset_peak`` (VmHWM; ``ru_maxrss`` is not reset by it)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _model_kwargs(args: argparse.Namespace) -> dict:
    import torch

    chunk = args.chunk_size if args.chunk_size in ("auto", "none") else int(args.chunk_size)
    return {"chunk_size": None if chunk == "none" else chunk, "act_dtype": getattr(torch, args.act_dtype),
            "segment": args.segment, "checkpointing": _checkpointing(args)}


def _checkpointing(args: argparse.Namespace) -> bool | str:
    """``--checkpointing auto|on|off`` (``--no-checkpointing`` = off) as ``create_model`` takes it."""
    if args.no_checkpointing:
        return False
    return {"auto": "auto", "on": True, "off": False}[args.checkpointing]


def _trace_phases(net) -> tuple[dict[str, int], list[str], object]:
    """Start sampling the resident size per phase (see ``--trace``); returns (peaks, order, stop)."""
    import threading

    phase, peaks, order, in_bwd, done = ["image"], {}, [], [False], threading.Event()

    def sample() -> None:
        while not done.is_set():
            r, p = _rss_bytes(), phase[0]
            if p not in peaks:
                peaks[p] = r
                order.append(p)
            elif r > peaks[p]:
                peaks[p] = r
            done.wait(0.005)

    for i, layer in enumerate(net.layers, 1):
        def pre(mod, args, i=i) -> None:
            phase[0] = f"{'recomp' if in_bwd[0] else 'fwd'} L{i}"

        def post(mod, args, out, i=i) -> None:
            if out[0].requires_grad:
                def hook(g, i=i) -> None:
                    in_bwd[0] = True
                    phase[0] = f"bwd L{i}"
                out[0].register_hook(hook)

        layer.register_forward_pre_hook(pre)
        layer.register_forward_hook(post)
    threading.Thread(target=sample, daemon=True).start()
    return peaks, order, (phase, done)


def child_memory(size: int, args: argparse.Namespace) -> dict:
    """One forward+backward of a (1, 3, size, size) image, in this (fresh) process."""
    import torch

    import pixelmamba
    from bench.engine.memory import bound_heap_growth, release_free_memory, trimming
    from bench.engine.models import release_pixelmamba_heap
    from bench.engine.options import Settings
    from pixelmamba.serialize import region_grid

    settings = Settings.from_env()  # BENCH_MMAP_THRESHOLD, BENCH_TRIM_LAYERS, as the CLI reads them
    bound_heap_growth(settings.mmap_threshold)  # as `bench run` does: resident size follows the live tensors
    # the trim policy `bench run` enters for each end-to-end unit; this child process is one measurement
    trimming(settings.trim_layers).__enter__()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    # Warm-up on a tiny image (two 224² regions after padding, far below the measured sizes):
    # kernels compiled, thread pools up, and the parameter gradients allocated — 4 bytes per
    # parameter, 26.6 MB for the 6M model, a cost of the model like its weights, not of the image.
    # Two regions, so that Region Fusion runs too (it merges them in layer 1): with one region it
    # would not run before the base is taken, and the ~1.2 MB of library code its first call pages
    # in (~5 B/px at 512²) would count against the image like a kernel compiled late.
    net = pixelmamba.create_model(args.model, num_classes=4, **_model_kwargs(args))
    release_pixelmamba_heap(net)  # as bench's adapter does (bench/engine/models.py); acts under trimming()
    mode = net.checkpointing  # the warm-up takes the path the measured image takes ("auto" would not)
    net.set_grad_checkpointing(net.streams(math.prod(region_grid(size, size, net.cfg.scan_window))))
    warm = torch.randn(1, 3, 32, net.cfg.scan_window + 32)
    assert math.prod(region_grid(*warm.shape[-2:], net.cfg.scan_window)) == 2
    net(warm).sum().backward()
    net.set_grad_checkpointing(mode)
    net.zero_grad(set_to_none=False)  # as between accumulation steps: the buffers stay
    tracer = _trace_phases(net) if args.trace else None
    release_free_memory()  # the warm-up's freed heap pages would otherwise hide in the base
    base = _rss_bytes()
    _reset_peak()  # the process's peak so far (imports, kernel compilation) is not the image's
    if args.input == "uint8":  # raw RGB, normalised inside the model (3 bytes/pixel, not 12)
        x = torch.randint(0, 256, (1, 3, size, size), dtype=torch.uint8)
    else:
        x = torch.randn(1, 3, size, size)
    start, cpu = time.perf_counter(), time.process_time()
    loss = net(x).logsumexp(-1).sum()
    if tracer:
        tracer[2][0][0] = "fwd end"
    loss.backward()
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    peak = _peak_bytes()
    out = {"size": size, "pixels": size * size, "base_bytes": base, "peak_bytes": peak, "seconds": seconds,
           "cpu_seconds": cpu}
    if tracer:
        peaks, order, (phase, done) = tracer
        phase[0] = "after"
        time.sleep(0.02)
        done.set()
        out["phases"] = [(p, peaks[p] - base) for p in order]
    return out


def child_vim(args: argparse.Namespace) -> dict:
    import torch

    import pixelmamba
    from baselines.vim import vim_ti

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, 224, 224)
    # segment 1: recomputing segments buys memory a 224² batch does not need (the library's
    # default; chunk_size "auto" runs inputs this small unpieced)
    models = {"pixelmamba-6m": pixelmamba.create_model(args.model, num_classes=1000,
                                                       **{**_model_kwargs(args), "segment": 1}),
              # Vim-Ti as it trains on slides: every block recomputed in backward
              "vim-ti": vim_ti(1000, checkpointing=True),
              # like for like: both "auto" defaults run a 224² batch without recomputation
              "vim-ti-plain": vim_ti(1000, checkpointing=False)}
    out = {}
    for name, net in models.items():
        net(x[:1]).sum().backward()  # warm-up (kernels, allocator)
        walls, cpus = [], []
        for _ in range(args.reps):
            net.zero_grad(set_to_none=True)
            t, c = time.perf_counter(), time.process_time()
            net(x).logsumexp(-1).sum().backward()
            walls.append(time.perf_counter() - t)
            cpus.append(time.process_time() - c)
        out[name] = {"seconds": statistics.median(walls), "cpu_seconds": statistics.median(cpus),
                     "gflops": _gflops(net)}
    return out


def _gflops(net) -> dict:
    """Forward FLOPs of one 224² image by ``torch.utils.flop_counter`` (matrix products and
    convolutions, 2 per multiply-add; the selective scans are custom kernels and not counted):
    ``all``, and ``in_out``, the multiply-adds of the Mamba blocks' input and output projections
    plus the patch embedding (the first layer outside a block), in G. The paper's numbers (1.4 G
    for Pixel-Mamba-6M, 3.4 G for 21M, 1.1 G for Vim-Ti) are what the second count gives (1.48,
    3.44, 1.07 G): a counter that traces ``nn.Linear``/``nn.Conv`` calls and cannot see inside
    mamba-ssm's fused ``mamba_inner_fn`` (x_proj, dt_proj, conv1d and the scan). Those unseen
    parts are most of the work of Pixel-Mamba's narrow early layers, so the paper's 1.27 is not
    the ratio of the work done."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:  # (under no_grad its module tracker fails)
        net(torch.randn(1, 3, 224, 224))
    counts = counter.get_flop_counts()
    in_out = sum(sum(v.values()) for k, v in counts.items()
                 if k.endswith((".in_proj", ".out_proj")) or k.endswith(".patch_embed"))
    return {"all": counter.get_total_flops() / 1e9, "in_out": in_out / 2e9}


def child_breakdown(args: argparse.Namespace) -> dict:
    """``--breakdown``: fwd+bwd CPU time of every Pixel-Mamba block alone on the sequence it scans
    for the 224² batch (``plan``), and of one Vim-Ti block with and without its per-block
    checkpointing; the blocks are the same module (``BiMambaMixer`` after an RMSNorm)."""
    import torch
    from torch.utils.checkpoint import checkpoint

    import pixelmamba
    from baselines.vim import vim_ti

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    def cpu(block, x: "torch.Tensor", chunk, ckpt: bool) -> float:
        times = []
        for _ in range(args.reps + 1):  # the first is a warm-up
            x.grad = None
            c = time.process_time()
            y = checkpoint(block, x, chunk, use_reentrant=False) if ckpt else block(x, chunk)
            y.backward(torch.ones_like(y))
            times.append(time.process_time() - c)
        return statistics.median(times[1:])

    pm = pixelmamba.create_model(args.model, num_classes=1000)
    rows = []
    for layer, row in zip(pm.layers, pm.plan(224, 224)):
        x = torch.randn(args.batch, row.seq_len, row.channels, requires_grad=True)
        rows.append({"layer": row.layer, "channels": row.channels, "seq_len": row.seq_len,
                     "d_inner": layer.block.mixer.d_inner, "cpu_seconds": cpu(layer.block, x, None, False)})
    vim = vim_ti(1000)
    block, tokens = vim.layers[0], (224 // vim.patch_size) ** 2 + 1
    x = torch.randn(args.batch, tokens, vim.embed_dim, requires_grad=True)
    return {"pixelmamba": rows, "vim": {"depth": len(vim.layers), "seq_len": tokens, "d_inner": block.mixer.d_inner,
                                        "cpu_checkpointed": cpu(block, x, vim.chunk_size, True),
                                        "cpu_plain": cpu(block, x, vim.chunk_size, False)}}


def print_breakdown(b: dict, batch: int, model: str, pm_total: float | None) -> None:
    """Where the fwd+bwd ratio comes from: scanned work (tokens x inner channels, which sets the
    cost of the scan, the convolutions, the gates and the projections alike), cost per unit of
    it, and Vim-Ti's recomputation."""
    print(f"breakdown, one block at a time, fwd+bwd of {batch}x224² (CPU ms; ns per token x inner channel x image):")
    print(f"{'layer':>6} {'channels':>8} {'tokens':>7} {'d_inner':>7} {'CPU ms':>8} {'ns/el':>6}")
    work = 0
    for r in b["pixelmamba"]:
        el = r["seq_len"] * r["d_inner"]
        work += el
        print(f"{r['layer']:>6} {r['channels']:>8} {r['seq_len']:>7} {r['d_inner']:>7} {r['cpu_seconds'] * 1e3:>8.1f} "
              f"{r['cpu_seconds'] / (el * batch) * 1e9:>6.1f}")
    v = b["vim"]
    pm_blocks = sum(r["cpu_seconds"] for r in b["pixelmamba"])
    v_work = v["depth"] * v["seq_len"] * v["d_inner"]
    v_ck, v_plain = v["depth"] * v["cpu_checkpointed"], v["depth"] * v["cpu_plain"]
    pm_ns, v_ns = pm_blocks / (work * batch) * 1e9, v_plain / (v_work * batch) * 1e9
    print(f"{model} blocks: {work / 1e6:.2f}M tokens x inner channels per image, CPU {pm_blocks:.2f} s, {pm_ns:.1f} ns/el"
          + (f"; the rest of the network (serialization, Region Fusion, Token Expansion, head) "
             f"{pm_total - pm_blocks:.2f} s" if pm_total is not None else ""))
    print(f"vim-ti blocks: {v_work / 1e6:.2f}M per image, CPU {v_plain:.2f} s without checkpointing ({v_ns:.1f} ns/el), "
          f"{v_ck:.2f} s with its default per-block checkpointing (x{v_ck / v_plain:.2f}: the forward recomputed)")
    print(f"blocks ratio = work {work / v_work:.2f} x cost per element {pm_ns / v_ns:.2f} / vim-ti's recomputation "
          f"{v_ck / v_plain:.2f} = {pm_blocks / v_ck:.2f}")


def _child(args: argparse.Namespace, *extra: str) -> dict:
    cmd = [sys.executable, __file__, *extra, "--model", args.model, "--chunk-size", str(args.chunk_size),
           "--act-dtype", args.act_dtype, "--segment", str(args.segment), "--threads", str(args.threads),
           "--batch", str(args.batch), "--reps", str(args.reps)]
    cmd += ["--checkpointing", "off" if args.no_checkpointing else args.checkpointing]
    cmd += ["--trace"] if args.trace else []
    cmd += ["--input", args.input]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode:
        raise SystemExit(f"child {' '.join(extra)} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048])
    parser.add_argument("--model", default="pixelmamba-6m")
    parser.add_argument("--chunk-size", default="auto", help="tokens per piece, 'auto' or 'none'")
    parser.add_argument("--act-dtype", default="bfloat16", choices=["float32", "bfloat16"])
    parser.add_argument("--segment", type=int, default=2,
                        help="layers per recomputed segment (default 2, as bench trains Pixel-Mamba)")
    parser.add_argument("--checkpointing", default="auto", choices=["auto", "on", "off"],
                        help="streamed blocks: 'auto' (the library default: plain autograd path for inputs of "
                             "at most 4 x 224² pixels, e.g. the 224² batch, streamed above), 'on' (always) or 'off'")
    parser.add_argument("--no-checkpointing", action="store_true", help="same as --checkpointing off")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--batch", type=int, default=2, help="224² images per batch for the Vim comparison")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--trace", action="store_true", help="print the peak RSS of every layer phase")
    parser.add_argument("--input", default="uint8", choices=["float32", "uint8"],
                        help="memory runs: raw uint8 RGB normalised inside the model (3 B/px; default, as "
                             "bench's loader gives Pixel-Mamba slides) or a normalised float32 image (12 B/px)")
    parser.add_argument("--skip-vim", action="store_true")
    parser.add_argument("--breakdown", action="store_true",
                        help="with the Vim comparison: time every block alone and print where the ratio comes from")
    parser.add_argument("--child-memory", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--child-vim", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child-breakdown", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_memory is not None:
        print(json.dumps(child_memory(args.child_memory, args)))
        return
    if args.child_vim:
        print(json.dumps(child_vim(args)))
        return
    if args.child_breakdown:
        print(json.dumps(child_breakdown(args)))
        return

    print(f"{args.model}: chunk_size={args.chunk_size} act_dtype={args.act_dtype} segment={args.segment} "
          f"checkpointing={_checkpointing(args)} threads={args.threads} input={args.input}; load average "
          f"{' '.join(f'{v:.1f}' for v in os.getloadavg())}", flush=True)
    rows = []
    if not args.skip_memory:
        print(f"{'size':>6} {'pixels':>10} {'base MB':>8} {'peak MB':>8} {'above base MB':>14} "
              f"{'B/px':>7} {'goal':>6} {'wall s':>8} {'CPU s':>8}", flush=True)
        for size in args.sizes:
            r = _child(args, "--child-memory", str(size))
            rows.append(r)
            above = r["peak_bytes"] - r["base_bytes"]
            bpx = above / r["pixels"]
            print(f"{size:>6} {r['pixels']:>10} {r['base_bytes'] / 2**20:>8.0f} {r['peak_bytes'] / 2**20:>8.0f} "
                  f"{above / 2**20:>14.1f} {bpx:>7.1f} {'ok' if bpx <= 80 else 'over':>6} {r['seconds']:>8.1f} "
                  f"{r['cpu_seconds']:>8.1f}", flush=True)
            for phase, b in r.get("phases", []):
                print(f"    {phase:<10} {b / 2**20:8.1f} MB {b / r['pixels']:7.1f} B/px", flush=True)
        for a, b in zip(rows, rows[1:]):
            slope = ((b["peak_bytes"] - b["base_bytes"]) - (a["peak_bytes"] - a["base_bytes"])) / (b["pixels"] - a["pixels"])
            wall, cpu = b["seconds"] / a["seconds"], b["cpu_seconds"] / a["cpu_seconds"]
            goal = ""
            if b["pixels"] == 4 * a["pixels"]:
                goal = f"  (goal <= 4.4: wall {'ok' if wall <= 4.4 else 'over'}, CPU {'ok' if cpu <= 4.4 else 'over'})"
            print(f"{a['size']}² -> {b['size']}²: marginal {slope:.1f} B/px; time ratio wall {wall:.2f}, CPU {cpu:.2f} "
                  f"for {b['pixels'] / a['pixels']:.0f}x pixels{goal}", flush=True)
    if not args.skip_vim:
        t = _child(args, "--child-vim")
        pm, vim = t["pixelmamba-6m"], t["vim-ti"]
        print(f"fwd+bwd of {args.batch}x224² (median of {args.reps}; {args.model} at segment 1): {args.model} wall {pm['seconds']:.2f} s / "
              f"CPU {pm['cpu_seconds']:.2f} s, vim-ti wall {vim['seconds']:.2f} s / CPU {vim['cpu_seconds']:.2f} s; "
              f"ratio wall {pm['seconds'] / vim['seconds']:.2f}, CPU {pm['cpu_seconds'] / vim['cpu_seconds']:.2f} "
              f"(goal <= 1.5; paper FLOPs ratio 1.27)", flush=True)
        plain = t["vim-ti-plain"]
        print(f"  like for like (vim-ti without its per-block checkpointing, as Pixel-Mamba runs this batch): "
              f"vim-ti wall {plain['seconds']:.2f} s / CPU {plain['cpu_seconds']:.2f} s; ratio wall "
              f"{pm['seconds'] / plain['seconds']:.2f}, CPU {pm['cpu_seconds'] / plain['cpu_seconds']:.2f}", flush=True)
        pf, vf = pm["gflops"], vim["gflops"]
        print(f"forward FLOPs per 224² image (torch flop counter, scans not counted): {args.model} "
              f"{pf['all']:.2f} G, vim-ti {vf['all']:.2f} G, ratio {pf['all'] / vf['all']:.2f}", flush=True)
        print(f"  counted as the paper counts (multiply-adds of the in/out projections and the patch "
              f"embedding only): {args.model} {pf['in_out']:.2f} G, vim-ti {vf['in_out']:.2f} G, ratio "
              f"{pf['in_out'] / vf['in_out']:.2f} (paper: 1.4 vs 1.1 G, ratio 1.27)", flush=True)
        if args.breakdown:
            print_breakdown(_child(args, "--child-breakdown"), args.batch, args.model, pm["cpu_seconds"])
    print(f"load average at the end: {' '.join(f'{v:.1f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
