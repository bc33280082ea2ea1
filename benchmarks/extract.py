"""Feature-extraction throughput on the demo cohort: wall time of ``FeatureCache.extract`` divided
by the encoder's pure compute time on the same patches, pre-loaded in memory.

A ratio near 1 means slide I/O is hidden behind compute (the target: <= 1.15). On a shared
machine the load can change between the two phases, so the script also reports, from inside the
extraction run itself, the share of wall time spent in the encoder (insensitive to load drift).

    python benchmarks/extract.py                       # full demo (48 cases), resnet50
    python benchmarks/extract.py --n-cases 8 --batch-size 16
    python benchmarks/extract.py --workers 1,0         # DataLoader processes, then threads

Each value of ``--workers`` is one extraction into a fresh cache (0 = decoding threads in the main
process, N > 0 = N DataLoader worker processes); the compute-only phase runs once, after them.
CPU seconds (this process + its children) and the load average are printed next to each run.

Uses random weights when none are available (the numbers are timing, not features).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# as `bench` sets it before torch loads: spinning OpenMP threads otherwise take the cores that
# decoding (a worker process or thread) needs while the encoder waits for its next batch
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, not installed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--demo-root", type=Path, default=None, help="existing/target demo directory")
    ap.add_argument("--n-cases", type=int, default=48)
    ap.add_argument("--encoder", default="resnet50")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", default=None,
                    help="comma list of DataLoader worker-process counts to run, 0 = threads "
                         "(default: the library default only)")
    ap.add_argument("--threads", type=int, default=None, help="decoding threads when workers = 0")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import torch

    import bench.registry  # noqa: F401 -- registers the declared encoders
    import feature_cache as fc
    from bench.data.demo import generate_demo
    from feature_cache.cache import read_batches
    from feature_cache.tissue import patch_size_level0

    tmp = Path(tempfile.mkdtemp(prefix="bench-extract-"))
    root = args.demo_root or tmp / "demo"
    t0 = time.perf_counter()
    generate_demo(root, seed=0, n_cases=args.n_cases)
    t_gen = time.perf_counter() - t0
    manifest = json.loads((root / "MANIFEST.json").read_text())
    slides = {sid: root / "slides" / f"{sid}.tiff" for sid in manifest["slides"]}
    enc = fc.get_encoder(args.encoder, allow_random=True)
    enc.model  # built (random init, fingerprint check) before any timing, not inside the first run

    class Timed:
        """The encoder, with the time spent in its forward passes counted."""

        def __init__(self, inner: fc.Encoder):
            self.inner, self.seconds = inner, 0.0

        def __getattr__(self, name: str):
            return getattr(self.inner, name)

        def __call__(self, batch):
            t = time.perf_counter()
            out = self.inner(batch)
            self.seconds += time.perf_counter() - t
            return out

    def cpu_seconds() -> float:
        t = os.times()  # children: DataLoader workers, once joined
        return t.user + t.system + t.children_user + t.children_system

    from feature_cache.loader import default_workers

    runs = [default_workers()] if args.workers is None else [int(w) for w in args.workers.split(",")]
    results = []
    for workers in runs:
        timed = Timed(enc)
        cache = fc.FeatureCache(tmp / f"cache-w{workers}")
        load0, cpu0, t0 = os.getloadavg()[0], cpu_seconds(), time.perf_counter()
        rep = cache.extract(slides, timed, batch_size=args.batch_size, progress=False,
                            num_workers=workers, threads=args.threads)
        t_wall = time.perf_counter() - t0
        results.append((workers, t_wall, timed.seconds, cpu_seconds() - cpu0, load0, os.getloadavg()[0]))
    n = sum(rep.n_patches.values())

    # the same patches, read and transformed once into memory, then encoded alone
    batches = []
    for sid, path in slides.items():
        _, coords = cache.load(sid, enc)
        with fc.open_slide(path) as s:
            side0 = patch_size_level0(s, enc.patch_size, enc.magnification)
            level = s.best_level_for_downsample(side0 / enc.patch_size)
            read = round(side0 / s.level_downsamples[level])
        batches += [b for _, b in read_batches(path, {}, coords, level, read, enc.patch_size,
                                                args.batch_size, enc, 0, 2)]
    load_c, t0 = os.getloadavg()[0], time.perf_counter()
    for b in batches:
        enc(b)
    t_compute = time.perf_counter() - t0
    load_c = (load_c, os.getloadavg()[0])
    size = sum(p.stat().st_size for p in rep.cache_dir.glob("*.h5"))
    counts = np.array(list(rep.n_patches.values()))
    print(f"demo generation      {t_gen:8.1f} s ({len(slides)} slides)")
    print(f"patches              {n} total, per slide mean {counts.mean():.1f} "
          f"min {counts.min()} max {counts.max()}")
    print(f"pure encoder compute {t_compute:8.1f} s ({n / t_compute:.1f} patches/s, "
          f"torch threads {torch.get_num_threads()}, load average {load_c[0]:.1f} -> {load_c[1]:.1f})")
    for workers, t_wall, t_enc, cpu, la0, la1 in results:
        how = f"{workers} worker process{'es' if workers > 1 else ''}" if workers else \
            f"threads ({args.threads or 'default'})"
        print(f"extract, {how}:")
        print(f"  wall time            {t_wall:8.1f} s ({n / t_wall:.1f} patches/s), CPU {cpu:.1f} s, "
              f"load average {la0:.1f} -> {la1:.1f}")
        print(f"  wall / compute       {t_wall / t_compute:8.2f}   (goal <= 1.15; separate phases)")
        print(f"  in-run wall / encoder {t_wall / t_enc:7.2f}   (same run, robust to load drift)")
    print(f"cache size           {size / 1e6:8.1f} MB")


if __name__ == "__main__":
    main()
