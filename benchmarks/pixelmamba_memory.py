"""Peak memory of Pixel-Mamba forward+backward per input pixel (issue 5's goal: <= 80 B/pixel).

Each image size runs in a fresh subprocess so that its peak resident set size (``ru_maxrss``) is
its own. The fixed cost (Python, torch, the model, numba's compiled kernels) is the same in every
run; the *slope* between the sizes is the memory that grows with the image, which is what decides
whether a slide fits:

    python benchmarks/pixelmamba_memory.py                       # 224², 448², 896²
    python benchmarks/pixelmamba_memory.py --chunk-size 8192 --act-dtype bfloat16
    python benchmarks/pixelmamba_memory.py --sizes 512 1024 --no-checkpointing
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def measure(size: int, model: str, chunk_size: int | None, act_dtype: str, checkpointing: bool,
            threads: int) -> dict[str, float]:
    """Runs in the child: one forward+backward of a (1, 3, size, size) image."""
    import torch

    import pixelmamba

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    net = pixelmamba.create_model(
        model, num_classes=4, chunk_size=chunk_size, checkpointing=checkpointing,
        act_dtype=getattr(torch, act_dtype),
    )
    warm = torch.randn(1, 3, 32, 32)  # compile/load the scan kernels before the baseline
    net(warm).sum().backward()
    net.zero_grad(set_to_none=True)
    x = torch.randn(1, 3, size, size)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    start = time.perf_counter()
    loss = net(x).logsumexp(-1).sum()
    loss.backward()
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"size": size, "pixels": size * size, "base_bytes": base, "peak_bytes": peak,
            "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 448, 896])
    parser.add_argument("--model", default="pixelmamba-6m")
    parser.add_argument("--chunk-size", type=int, default=16384)
    parser.add_argument("--act-dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--no-checkpointing", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    chunk = args.chunk_size if args.chunk_size > 0 else None
    if args.child is not None:
        print(json.dumps(measure(args.child, args.model, chunk, args.act_dtype,
                                 not args.no_checkpointing, args.threads)))
        return
    print(f"{args.model}  chunk_size={chunk}  act_dtype={args.act_dtype}  "
          f"checkpointing={not args.no_checkpointing}  threads={args.threads}")
    print(f"{'size':>6} {'pixels':>10} {'peak MB':>9} {'above base MB':>14} {'B/px (peak)':>12} "
          f"{'B/px (above base)':>18} {'s':>7}")
    rows = []
    for size in args.sizes:
        cmd = [sys.executable, __file__, "--child", str(size), "--model", args.model,
               "--chunk-size", str(args.chunk_size), "--act-dtype", args.act_dtype,
               "--threads", str(args.threads)] + (["--no-checkpointing"] if args.no_checkpointing else [])
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        rows.append(r)
        above = r["peak_bytes"] - r["base_bytes"]
        print(f"{size:>6} {r['pixels']:>10} {r['peak_bytes'] / 2**20:>9.1f} {above / 2**20:>14.1f} "
              f"{r['peak_bytes'] / r['pixels']:>12.1f} {above / r['pixels']:>18.1f} {r['seconds']:>7.1f}",
              flush=True)
    for a, b in zip(rows, rows[1:]):
        slope = (b["peak_bytes"] - a["peak_bytes"]) / (b["pixels"] - a["pixels"])
        print(f"slope {a['size']}² -> {b['size']}²: {slope:.1f} B/pixel"
              f"   time ratio {b['seconds'] / a['seconds']:.2f} for {b['pixels'] / a['pixels']:.1f}x pixels")


if __name__ == "__main__":
    main()
