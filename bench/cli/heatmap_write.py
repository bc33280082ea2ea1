"""Writing one case's heatmaps (``bench heatmap``): HDF5, GeoJSON, overlays, gallery; resumable per slide."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger("bench")


def _key(ld: Any, args: argparse.Namespace) -> str:
    """What a slide's finished .h5 must match to be reused: the weights, the class asked for, the scores."""
    return json.dumps({"weights": ld.rec.info.get("weights_file", {}).get("sha256"), "class": args.klass,
                       "occlusion": not args.no_occlusion, "tile_um": args.tile_um})


def _done(path: Path, key: str) -> bool:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return f.attrs.get("key") == key
    except OSError:
        return False


def write_case(ld: Any, case: str, out: Path, args: argparse.Namespace, target_of: Callable[[Any], Any],
               on_batch: Callable[[int], None], score_case: Callable[..., Any]) -> int:
    """Score (with ``score_case``, the command's scorer) and write every slide of ``case``; slides
    already written with the same key are skipped."""
    from ..report import heatmap_files as F

    key = _key(ld, args)
    if all(_done(out / f"{sid}.h5", key) for sid in ld.fi.slides_of[case] if sid not in ld.fi.missing):
        log.info("%s: heatmaps already written in %s (same weights and options)", case, out)
        return 0
    slides, target, value = score_case(ld, case, target_of, not args.no_occlusion, args.tile_um, args.batch,
                                       on_batch)
    paths = dict(zip(ld.fi.cohort.table["slide_id"], ld.fi.cohort.table["slide_path"]))
    pred = f"{target.label} = {value:.3g}"
    for sc in slides:
        thumb, down = _thumbnail(paths[sc.slide_id], ld.fi.cohort.spec.mpp_override, ld.slide_backend)
        for name, v in sc.scores.items():
            shown, what = F.shown(v, args.raw)
            title = (f"{case} / {sc.slide_id}\n{ld.rec.method} fold {ld.rec.fold} ({ld.rec.task}), {pred}\n"
                     f"{name}: {sc.notes.get(name, '')}")
            F.draw_overlay(out / f"{sc.slide_id}.{name}.png", thumb, down, sc, shown, what, title)
        main = "occlusion" if "occlusion" in sc.scores else next(iter(sc.scores))
        _gallery(out / f"{sc.slide_id}.gallery.png", paths[sc.slide_id], sc, main, args.top_k,
                 f"{case} / {sc.slide_id}: {ld.rec.method} fold {ld.rec.fold}, {main} ({pred})",
                 ld.fi.cohort.spec.mpp_override, ld.slide_backend)
        F.write_geojson(out / f"{sc.slide_id}.geojson", sc)
        F.write_h5(out / f"{sc.slide_id}.h5", sc, {"key": _key(ld, args), "case_id": case, "method": ld.rec.method,
                                                   "fold": ld.rec.fold, "task": ld.rec.task, "target": target.label,
                                                   "target_value": value})
    return len(slides)


def _thumbnail(path: str, mpp: float | None, backend: str, size: int = 1024) -> tuple[Any, float]:
    import numpy as np
    from feature_cache import open_slide

    with open_slide(path, backend=backend, mpp=mpp) as sl:
        im = np.asarray(sl.get_thumbnail((size, size)))
        return im, sl.dimensions[0] / im.shape[1]


def _gallery(path: Path, slide_path: str, sc: Any, name: str, k: int, title: str, mpp: float | None,
             backend: str) -> None:
    import numpy as np
    from feature_cache import open_slide

    from ..report.heatmap_files import draw_gallery

    v = np.asarray(sc.scores[name])
    order = np.argsort(-v, kind="stable")
    k = min(k, len(v) // 2) or min(k, len(v))
    pick = list(order[:k]) + list(order[::-1][:k])
    with open_slide(slide_path, backend=backend, mpp=mpp) as sl:
        side = min(sc.tile_size, 512)
        tiles = [np.asarray(sl.read_region(tuple(int(c) for c in sc.coords[i]), 0, (sc.tile_size, sc.tile_size))
                            .resize((side, side))) for i in pick]
    draw_gallery(path, tiles, [float(v[i]) for i in pick], k, title)
