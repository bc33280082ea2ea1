"""Time and peak memory of one forward+backward of the end-to-end baselines (Vim-Ti, LongViT-S).

Each (model, size) runs in a fresh subprocess so that its peak resident set size (``ru_maxrss``)
is its own; the model is warmed up on a small input first (the numba scan compiles then), and
the RSS before the measured step is reported as the base. Bytes per pixel are given both for the
whole peak and for what lies above the base, the part that grows with the slide:

    python benchmarks/end_to_end_memory.py                                # vim-ti, longvit-s; 512², 1024²
    python benchmarks/end_to_end_memory.py --models vim-ti-32 --sizes 2048
    python benchmarks/end_to_end_memory.py --models vim-ti --chunk-size 1024
    python benchmarks/end_to_end_memory.py --malloc dynamic    # glibc's default (see bench/engine/memory.py)
    python benchmarks/end_to_end_memory.py --checkpointing auto  # the models' default on small inputs

Per-block checkpointing is on (``--checkpointing on``, the default here), as the models train on
slides; their own default, ``auto``, turns it off for inputs of at most ``UNCHECKPOINTED_TOKENS``
tokens (Vim: 2,048, LongViT: 1,024), where keeping every block's internals costs more memory and
saves the recomputation.

Like `bench run`, the child pins glibc's mmap threshold (bench.engine.memory.bound_heap_growth) unless
`--malloc dynamic` is given; with glibc's dynamic threshold the peak grows with depth through heap
fragmentation, not through anything the model keeps.
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

BUILDERS = {
    "vim-ti": ("baselines.vim", "vim_ti", {}),
    "vim-ti-32": ("baselines.vim", "vim_ti", {"patch_size": 32}),
    "vim-ti-16+32": ("baselines.vim", "vim_ti_multiscale", {}),
    "longvit-s": ("baselines.longvit", "longvit_s", {}),
}


CHECKPOINTING = {"on": True, "off": False, "auto": "auto"}


def measure(model: str, size: int, chunk_size: int | None, threads: int, malloc: str,
            checkpointing: str = "on") -> dict[str, float]:
    """Runs in the child: one forward+backward of a (1, 3, size, size) image."""
    import importlib

    import torch

    from bench.engine.memory import bound_heap_growth

    if malloc == "pinned":
        bound_heap_growth()

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    module, attr, kwargs = BUILDERS[model]
    if chunk_size is not None and model.startswith("vim"):
        kwargs = {**kwargs, "chunk_size": chunk_size}
    kwargs = {**kwargs, "checkpointing": CHECKPOINTING[checkpointing]}
    net = getattr(importlib.import_module(module), attr)(n_out=4, **kwargs)
    net(torch.randn(1, 3, 64, 64)).sum().backward()  # warm-up: kernels compiled, grads allocated
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    x = torch.randn(1, 3, size, size)
    cpu0 = _cpu_seconds()
    start = time.perf_counter()
    net(x).logsumexp(-1).sum().backward()
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"model": model, "size": size, "pixels": size * size, "base_bytes": base,
            "peak_bytes": peak, "seconds": seconds, "cpu_seconds": _cpu_seconds() - cpu0}


def _cpu_seconds() -> float:
    """User + system CPU time of this process: on a shared machine wall time mostly measures the
    neighbours, CPU time measures the model."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["vim-ti", "longvit-s"], choices=list(BUILDERS))
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    parser.add_argument("--chunk-size", type=int, default=0, help="Vim mixer chunk (0: the model's default)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--malloc", choices=["pinned", "dynamic"], default="pinned",
                        help="glibc mmap threshold: pinned as bench run does (default) or glibc's dynamic one")
    parser.add_argument("--checkpointing", choices=list(CHECKPOINTING), default="on",
                        help="per-block checkpointing: on (default, as on slides), off, or the models' auto")
    parser.add_argument("--child", nargs=2, metavar=("MODEL", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    chunk = args.chunk_size or None
    if args.child is not None:
        print(json.dumps(measure(args.child[0], int(args.child[1]), chunk, args.threads, args.malloc,
                                 args.checkpointing)))
        return
    print(f"threads={args.threads}  chunk_size={chunk or 'default'}  malloc={args.malloc}  "
          f"checkpointing={args.checkpointing}")
    print(f"{'model':>13} {'size':>6} {'pixels':>9} {'peak MB':>9} {'above base MB':>14} "
          f"{'B/px (peak)':>12} {'B/px (above base)':>18} {'wall s':>7} {'CPU s':>7}")
    for model in args.models:
        for size in args.sizes:
            cmd = [sys.executable, __file__, "--child", model, str(size),
                   "--chunk-size", str(args.chunk_size), "--threads", str(args.threads),
                   "--malloc", args.malloc, "--checkpointing", args.checkpointing]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
            above = r["peak_bytes"] - r["base_bytes"]
            print(f"{model:>13} {size:>6} {r['pixels']:>9} {r['peak_bytes'] / 2**20:>9.1f} "
                  f"{above / 2**20:>14.1f} {r['peak_bytes'] / r['pixels']:>12.1f} "
                  f"{above / r['pixels']:>18.1f} {r['seconds']:>7.1f} {r['cpu_seconds']:>7.1f}",
                  flush=True)


if __name__ == "__main__":
    main()
