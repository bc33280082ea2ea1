"""A small MIRAX (3DHISTECH ``.mrxs``) writer, so the readers can be tested on the format.

No library writes MIRAX (3DHISTECH's SDK is Windows-only and closed), and no sample slide can be
downloaded here, so this module writes one from an RGB array, following the layout that
OpenSlide documents (openslide.org/formats/mirax) and that its reader
(``src/openslide-vendor-mirax.c``, v4.0.1) checks. The code is ours; only the layout is theirs.

What a MIRAX slide is, and what this writer produces:

- ``<name>.mrxs``: a stub; the reader only needs it to exist next to the directory ``<name>/``.
- ``<name>/Slidedat.ini`` (UTF-8 BOM, CRLF, as the scanner writes it):
  ``[GENERAL]`` (``SLIDE_ID``, ``IMAGENUMBER_X/Y`` = images across/down at level 0,
  ``OBJECTIVE_MAGNIFICATION``, ``CameraImageDivisionsPerSide``);
  ``[HIERARCHICAL]`` with one hierarchy, ``HIER_0_NAME=Slide zoom level``, whose values name one
  section per zoom level (``DIGITIZER_WIDTH/HEIGHT`` = image size, ``IMAGE_CONCAT_FACTOR`` =
  0 for level 0 and 1 above it, ``OVERLAP_X/Y``, ``MICROMETER_PER_PIXEL_X/Y``, ``IMAGE_FORMAT``,
  ``IMAGE_FILL_COLOR_BGR``), and two non-hierarchical layers: ``VIMSLIDE_POSITION_BUFFER``
  (camera positions) and ``Scan data layer`` / ``ScanDataLayer_SlidePreview`` (a JPEG
  thumbnail); ``[DATAFILE]`` listing the data files.
- ``<name>/Index.dat``: ``"01.02"`` + the slide id, then two little-endian int32 pointers (the
  hierarchical and non-hierarchical roots). The hierarchical root points at one pointer per zoom
  level; each leads to a list head ``(0, first page)`` and a data page
  ``(count, next = 0, count × (image index, offset, length, file number))``. The
  non-hierarchical root points at one pointer per record; each leads to ``(0, page)`` and a page
  ``(1, next = 0, 0, 0, offset, length, file number)``.
- ``<name>/Data0000.dat`` (level 0) and ``Data0001.dat`` (the other levels, the position
  buffer, the thumbnail): concatenated JPEGs, so records in two files test the file numbers.

The scanner model: the camera takes *photos* of ``divisions × divisions`` images at stage
positions that overlap their neighbours by about ``overlap`` px; each photo is cut into
level-0 images of ``tile`` px. The position buffer stores each photo's real level-0 position
(9 bytes: flag, int32 x, int32 y), which may deviate from the nominal grid (``jitter``); OpenSlide
places images by those positions. Level *k* images hold ``2^k × 2^k`` level-0 images reduced by
``2^k`` and stay ``tile`` px; once an image spans several photos it is made of per-photo
sub-tiles (each photo reduced and placed by its own position), which is what the reader expects.

Every image is cut from the same source array at the photo's real position, so the overlaps agree
and the slide OpenSlide assembles is the source array (up to JPEG error) -- the truth the tests
compare against. The level-0 size is what the reader computes:
``images × tile - (photos - 1) × overlap`` along each axis.
"""

from __future__ import annotations

import io
import struct
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

INDEX_VERSION = b"01.02"


@dataclass(frozen=True)
class MiraxLayout:
    tile: tuple[int, int]  # (width, height) of one stored image, every level
    images: tuple[int, int]  # level-0 images across, down (IMAGENUMBER_X/Y)
    divisions: int  # CameraImageDivisionsPerSide: a photo is divisions x divisions images
    overlap: tuple[int, int]  # nominal overlap of neighbouring photos, level-0 px
    levels: int

    @property
    def photos(self) -> tuple[int, int]:
        return self.images[0] // self.divisions, self.images[1] // self.divisions

    @property
    def size(self) -> tuple[int, int]:
        """Level-0 (width, height) as OpenSlide computes it."""
        (tw, th), (px, py) = self.tile, self.photos
        return (self.images[0] * tw - (px - 1) * self.overlap[0],
                self.images[1] * th - (py - 1) * self.overlap[1])

    def nominal_position(self, px: int, py: int) -> tuple[int, int]:
        d, (tw, th) = self.divisions, self.tile
        return px * (d * tw - self.overlap[0]), py * (d * th - self.overlap[1])


def _jpeg(arr: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr)).save(buf, "JPEG", quality=quality, subsampling=0)
    return buf.getvalue()


def _reduce(arr: np.ndarray, factor: int) -> np.ndarray:
    return arr if factor == 1 else np.asarray(Image.fromarray(arr).reduce(factor))


def write_mirax(path: Path, img: np.ndarray, layout: MiraxLayout, *, mpp: float,
                objective: int | None = 20, jitter: dict[tuple[int, int], tuple[int, int]] | None = None,
                quality: int = 95, fill_bgr: int = 0xFFFFFF) -> Path:
    """Write ``img`` as the MIRAX slide ``path`` (``.mrxs``) and return ``path``.

    ``img`` must cover every photo: at least ``layout.size`` plus the largest ``jitter`` (a dict
    photo (px, py) -> (dx, dy) level-0 px added to that photo's nominal position; keep it a
    multiple of ``2**(levels-1)`` so every level's positions stay whole pixels).
    ``objective=None`` leaves ``OBJECTIVE_MAGNIFICATION`` out.
    """
    path = Path(path)
    if path.suffix != ".mrxs":
        raise ValueError(f"{path}: a MIRAX slide's file name ends in .mrxs")
    lay, jitter = layout, dict(jitter or {})
    (tw, th), d = lay.tile, lay.divisions
    if lay.images[0] % d or lay.images[1] % d:
        raise ValueError(f"images {lay.images} must be multiples of divisions {d}")
    top = 2 ** (lay.levels - 1)
    sub = max(1, top // d)  # sub-tiles per image side at the coarsest level
    if tw % sub or th % sub:
        raise ValueError(f"tile {lay.tile} must divide into {sub} sub-tiles at level {lay.levels - 1}")

    positions = {}
    for py in range(lay.photos[1]):
        for px in range(lay.photos[0]):
            nx, ny = lay.nominal_position(px, py)
            dx, dy = jitter.get((px, py), (0, 0))
            positions[px, py] = (nx + dx, ny + dy)
    need_w = max(x for x, _ in positions.values()) + d * tw
    need_h = max(y for _, y in positions.values()) + d * th
    if img.shape[1] < need_w or img.shape[0] < need_h or min(min(p) for p in positions.values()) < 0:
        raise ValueError(f"source {img.shape[1]}x{img.shape[0]} does not cover the photos "
                         f"(needs {need_w}x{need_h}, positions >= 0)")

    folder = path.with_suffix("")
    folder.mkdir(parents=True, exist_ok=True)
    data = [bytearray(b"\0" * 16), bytearray(b"\0" * 16)]  # real data files start with a header

    def put(fileno: int, blob: bytes) -> tuple[int, int, int]:
        off = len(data[fileno])
        data[fileno] += blob
        return off, len(blob), fileno

    # hierarchical records: per level, (image index, offset, length, file number)
    hier: list[list[tuple[int, int, int, int]]] = []
    for k in range(lay.levels):
        concat = 2**k
        per_side = max(1, concat // d)  # sub-tiles (one per photo) per image side
        sw, sh = tw // per_side, th // per_side
        records = []
        for y in range(0, lay.images[1], concat):
            for x in range(0, lay.images[0], concat):
                canvas = np.zeros((th, tw, 3), np.uint8)
                canvas[:] = (fill_bgr & 0xFF, (fill_bgr >> 8) & 0xFF, fill_bgr >> 16)
                for yi in range(per_side):
                    yy = y + yi * d
                    for xi in range(per_side):
                        xx = x + xi * d
                        if xx >= lay.images[0] or yy >= lay.images[1]:
                            continue  # beyond the scan: the reader skips these sub-tiles too
                        # level-0 image (xx, yy) lies in photo (xx // d, yy // d) at this offset
                        pos_x, pos_y = positions[xx // d, yy // d]
                        ox, oy = pos_x + (xx % d) * tw, pos_y + (yy % d) * th
                        crop = img[oy:oy + sh * concat, ox:ox + sw * concat]
                        canvas[yi * sh:(yi + 1) * sh, xi * sw:(xi + 1) * sw] = _reduce(crop, concat)
                fileno = 0 if k == 0 else 1
                off, length, fileno = put(fileno, _jpeg(canvas, quality))
                records.append((y * lay.images[0] + x, off, length, fileno))
        hier.append(records)

    # non-hierarchical records: camera positions (9 bytes each, row-major), then a thumbnail
    posbuf = b"".join(struct.pack("<Bii", 1, *positions[px, py])
                      for py in range(lay.photos[1]) for px in range(lay.photos[0]))
    w, h = lay.size
    thumb = _reduce(img[:h, :w], 8)
    nonhier = [put(1, posbuf), put(1, _jpeg(thumb, 90))]

    slide_id = uuid.uuid4().hex
    _write_index(folder / "Index.dat", slide_id, hier, nonhier)
    for i, blob in enumerate(data):
        (folder / f"Data{i:04d}.dat").write_bytes(bytes(blob))
    _write_slidedat(folder / "Slidedat.ini", slide_id, lay, mpp=mpp, objective=objective,
                    fill_bgr=fill_bgr, n_datafiles=len(data))
    path.write_bytes(b"MIRAX slide; image data in the directory of the same name\r\n")
    return path


def _write_index(path: Path, slide_id: str, hier: list[list[tuple[int, int, int, int]]],
                 nonhier: list[tuple[int, int, int]]) -> None:
    head = INDEX_VERSION + slide_id.encode("ascii")
    out = bytearray(head + b"\0" * 8)  # hierarchical root, non-hierarchical root (filled below)

    def i32(*vals: int) -> bytes:
        return struct.pack(f"<{len(vals)}i", *vals)

    def here() -> int:
        return len(out)

    # hierarchical: table of one pointer per zoom level -> list head -> one data page
    hier_table = here()
    out += b"\0" * (4 * len(hier))
    for k, records in enumerate(hier):
        page = here()
        out += i32(len(records), 0)
        for rec in records:
            out += i32(*rec)
        listhead = here()
        out += i32(0, page)
        out[hier_table + 4 * k:hier_table + 4 * k + 4] = i32(listhead)
    # non-hierarchical: table of one pointer per record -> list head -> a one-item page
    nonhier_table = here()
    out += b"\0" * (4 * len(nonhier))
    for r, (off, length, fileno) in enumerate(nonhier):
        page = here()
        out += i32(1, 0, 0, 0, off, length, fileno)
        listhead = here()
        out += i32(0, page)
        out[nonhier_table + 4 * r:nonhier_table + 4 * r + 4] = i32(listhead)
    out[len(head):len(head) + 8] = i32(hier_table, nonhier_table)
    path.write_bytes(bytes(out))


def _write_slidedat(path: Path, slide_id: str, lay: MiraxLayout, *, mpp: float,
                    objective: int | None, fill_bgr: int, n_datafiles: int) -> None:
    general = {"SLIDE_VERSION": "01.02", "SLIDE_ID": slide_id, "SLIDE_NAME": path.parent.name,
               "IMAGENUMBER_X": lay.images[0], "IMAGENUMBER_Y": lay.images[1],
               "CameraImageDivisionsPerSide": lay.divisions}
    if objective is not None:
        general["OBJECTIVE_MAGNIFICATION"] = objective
    hierarchical: dict[str, object] = {
        "HIER_COUNT": 1, "NONHIER_COUNT": 2, "INDEXFILE": "Index.dat",
        "HIER_0_NAME": "Slide zoom level", "HIER_0_COUNT": lay.levels,
    }
    sections: dict[str, dict[str, object]] = {}
    for k in range(lay.levels):
        name = f"LAYER_0_LEVEL_{k}_SECTION"
        hierarchical[f"HIER_0_VAL_{k}"] = f"ZoomLevel_{k}"
        hierarchical[f"HIER_0_VAL_{k}_SECTION"] = name
        sections[name] = {
            # overlaps and resolution in this level's pixels
            "OVERLAP_X": f"{lay.overlap[0] / 2**k:g}", "OVERLAP_Y": f"{lay.overlap[1] / 2**k:g}",
            "MICROMETER_PER_PIXEL_X": f"{mpp * 2**k:.6f}", "MICROMETER_PER_PIXEL_Y": f"{mpp * 2**k:.6f}",
            "IMAGE_FORMAT": "JPEG", "IMAGE_FILL_COLOR_BGR": fill_bgr,
            "DIGITIZER_WIDTH": lay.tile[0], "DIGITIZER_HEIGHT": lay.tile[1],
            "IMAGE_CONCAT_FACTOR": 0 if k == 0 else 1,
        }
    hierarchical.update({
        "NONHIER_0_NAME": "VIMSLIDE_POSITION_BUFFER", "NONHIER_0_COUNT": 1,
        "NONHIER_0_VAL_0": "default", "NONHIER_0_VAL_0_SECTION": "NONHIER_0_VAL_0_SECTION",
        "NONHIER_1_NAME": "Scan data layer", "NONHIER_1_COUNT": 1,
        "NONHIER_1_VAL_0": "ScanDataLayer_SlidePreview",
        "NONHIER_1_VAL_0_SECTION": "NONHIER_1_VAL_0_SECTION",
    })
    sections["NONHIER_0_VAL_0_SECTION"] = {}
    sections["NONHIER_1_VAL_0_SECTION"] = {"PREVIEW_IMAGE_TYPE": "JPEG"}
    datafile = {"FILE_COUNT": n_datafiles, **{f"FILE_{i}": f"Data{i:04d}.dat" for i in range(n_datafiles)}}
    groups = {"GENERAL": general, "HIERARCHICAL": hierarchical, "DATAFILE": datafile, **sections}
    lines = []
    for group, keys in groups.items():
        lines.append(f"[{group}]")
        lines += [f"{k} = {v}" for k, v in keys.items()]
        lines.append("")
    path.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines).encode("utf-8"))
