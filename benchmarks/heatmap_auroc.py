"""Heatmaps against the demo's known tumour region: per method, the AUROC of tumour tiles (>= 50 %
tumour) over non-tumour tissue tiles (<= 10 % tumour) on each fold's test cases -- of the signed
occlusion, of its size and of the family's own scores -- beside the unit's macro-F1 (a map of a
model that learned nothing means nothing). Mean ± std over folds. docs/heatmaps.md reports it.

    python -m bench run --methods '*.resnet50' --dataset demo --tasks staging     # weights kept
    python benchmarks/heatmap_auroc.py --dataset demo --methods '*.resnet50'

Reads finished units of ``--results``; the masks come from ``bench.data.demo.demo_truth`` (the
demo's manifest reproduces them).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a checkout first; before benchmarks/ (pixelmamba.py)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="demo")
    ap.add_argument("--methods", default="*.resnet50")
    ap.add_argument("--task", default="staging")
    ap.add_argument("--folds", default="0,1,2,3,4")
    ap.add_argument("--results", type=Path, default=Path("results"))
    ap.add_argument("--cache", type=Path, default=Path("cache"))
    a = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    from bench.cli.heatmap import load_unit, truth_auroc
    from bench.data.datasets import load_cohort
    from bench.data.demo import demo_truth
    from bench.registry import resolve_methods

    root = load_cohort(a.dataset).spec.data_root
    print(f"{'method':24s} {'folds':>5s} {'macro-F1':>9s} {'occlusion':>13s} {'|occlusion|':>13s} "
          f"{'tumour/other tiles':>19s} {'s':>6s}  own score(s)", flush=True)
    for spec in resolve_methods(a.methods):
        f1, au, ab, nt, no, t0, own = [], [], [], 0, 0, time.perf_counter(), {}
        for k in (int(x) for x in a.folds.split(",")):
            try:
                ld = load_unit(a.dataset, spec.name, a.task, k, a.results, a.cache, progress=False)
            except SystemExit as exc:
                print(f"{spec.name} fold {k}: {exc}")
                continue
            r = truth_auroc(ld, ld.test_cases, lambda s: demo_truth(root, s))
            f1.append(ld.rec.metrics["macro_f1"])
            au.append(r["auroc"])
            ab.append(r["auroc_abs"])
            for name in (n for n in r if n.startswith("auroc_") and n != "auroc_abs"):
                own.setdefault(name[6:], []).append(r[name])
            nt, no = nt + r["tumour_tiles"], no + r["other_tissue_tiles"]
        if not au:
            continue
        def ms(v: list[float]) -> str:  # mean ± std over the folds with both kinds of tile
            return f"{np.nanmean(v):6.3f}±{np.nanstd(v):5.3f}"

        print(f"{spec.name:24s} {len(au):5d} {np.mean(f1):9.3f} {ms(au)} {ms(ab)} {nt:>9d}/{no:<9d} "
              f"{time.perf_counter() - t0:6.1f}  " + " ".join(f"{n} {ms(v)}" for n, v in own.items()), flush=True)


if __name__ == "__main__":
    main()
