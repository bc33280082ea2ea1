"""Heatmap outputs in the field's formats: overlay figures (PNG + PDF), an HDF5 file of tile
coordinates and scores (the feature cache's coordinate system: level-0 top-left x, y), a GeoJSON
``FeatureCollection`` of tile polygons in level-0 pixels that QuPath imports (scores as
measurements), and a gallery of the top- and bottom-scored tiles."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ..io import atomic_path
from .heatmaps import SlideScores, percentile_rank

__all__ = ["write_h5", "write_geojson", "read_geojson_tiles", "draw_overlay", "draw_gallery", "shown"]


def shown(values: np.ndarray, raw: bool) -> tuple[np.ndarray, str]:
    """What a figure colours: the per-slide percentile rank (default) or the raw score."""
    return (np.asarray(values, float), "raw score") if raw else (percentile_rank(values), "percentile rank in slide")


def write_h5(path: Path, s: SlideScores, attrs: dict[str, Any]) -> Path:
    import h5py

    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("coords", data=np.asarray(s.coords, np.int64))
            for name, v in s.scores.items():
                d = f.create_dataset(f"scores/{name}", data=np.asarray(v, np.float64))
                d.attrs["how"] = s.notes.get(name, "")
            f.attrs.update({"slide_id": s.slide_id, "patch_size_level0": int(s.tile_size),
                            "coords": "level-0 pixel (x, y) of each tile's top-left corner, as the feature cache",
                            **{k: v for k, v in attrs.items() if v is not None}})
    return path


def write_geojson(path: Path, s: SlideScores, classification: str | None = None) -> Path:
    """One QuPath ``tile`` per scored tile: a level-0 square polygon, scores as measurements."""
    from shapely.geometry import box, mapping

    feats = []
    for i, (x, y) in enumerate(np.asarray(s.coords)):
        props: dict[str, Any] = {"objectType": "tile", "name": f"{s.slide_id} tile {i}",
                                 "measurements": {k: float(v[i]) for k, v in s.scores.items()}}
        if classification:
            props["classification"] = {"name": classification}
        feats.append({"type": "Feature", "id": i,
                      "geometry": mapping(box(int(x), int(y), int(x) + s.tile_size, int(y) + s.tile_size)),
                      "properties": props})
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    return path


def read_geojson_tiles(path: Path) -> tuple[list[Any], list[dict[str, float]]]:
    """The polygons (shapely) and measurements of a FeatureCollection written by ``write_geojson``."""
    from shapely.geometry import shape

    doc = json.loads(Path(path).read_text())
    if doc.get("type") != "FeatureCollection":
        raise ValueError(f"{path}: not a GeoJSON FeatureCollection")
    return ([shape(f["geometry"]) for f in doc["features"]],
            [f["properties"].get("measurements", {}) for f in doc["features"]])


def draw_overlay(path_png: Path, thumb: np.ndarray, downsample: float, s: SlideScores, values: np.ndarray,
                 what: str, title: str) -> list[Path]:
    """Tiles coloured by ``values`` over the slide thumbnail (``downsample``: level-0 px per thumbnail
    px), with a colour bar; written as PNG and PDF."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    h, w = thumb.shape[:2]
    fig, ax = plt.subplots(figsize=(6.0, 6.0 * h / max(w, 1) + 0.6), dpi=110)
    ax.imshow(thumb)
    cmap = plt.get_cmap("inferno")
    lo, hi = (0.0, 1.0) if "rank" in what else (float(np.min(values)), float(np.max(values)) or 1.0)
    norm = matplotlib.colors.Normalize(lo, hi if hi > lo else lo + 1e-12)
    side = s.tile_size / downsample
    for (x, y), v in zip(np.asarray(s.coords), values):
        ax.add_patch(Rectangle((x / downsample, y / downsample), side, side, color=cmap(norm(v)), alpha=0.55,
                               linewidth=0))
    ax.set_axis_off()
    ax.set_title(title, fontsize=8)
    fig.colorbar(matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, fraction=0.04, pad=0.02, label=what)
    out = [path_png, path_png.with_suffix(".pdf")]
    for p in out:
        fig.savefig(p, bbox_inches="tight")
    plt.close(fig)
    return out


def draw_gallery(path: Path, tiles: list[np.ndarray], values: list[float], k: int, title: str) -> Path:
    """``tiles``/``values``: the top-k then the bottom-k tiles (RGB) and their scores."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = max(k, 1)
    fig, axes = plt.subplots(2, cols, figsize=(1.6 * cols, 3.6), dpi=100, squeeze=False)
    for j, ax in enumerate(axes.ravel()):
        ax.set_axis_off()
        if j < len(tiles):
            ax.imshow(tiles[j])
            ax.set_title(f"{'top' if j < k else 'bottom'} {values[j]:.3g}", fontsize=7)
    fig.suptitle(title, fontsize=8)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path
