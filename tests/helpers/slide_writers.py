"""Writers of whole-slide files in the layouts real tools write (tifffile generic tiled TIFF, the
Aperio SVS and Hamamatsu NDPI layouts OpenSlide recognises, libvips pyramids, MIRAX, DICOM WSI), from
one source array whose pixels and resolution are the truth the reader tests compare against."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from mirax_writer import MiraxLayout, write_mirax

W, H = 1536, 1024  # level-0 size; not square, so a swapped axis shows
TILE = 256


def source_image() -> np.ndarray:
    """Smooth colour gradients plus blocks: JPEG keeps them within a few grey levels, and any
    offset or scale error in a read moves the blocks."""
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    img = np.stack([120 + 100 * np.sin(xx / 97.0), 120 + 100 * np.cos(yy / 71.0),
                    np.full_like(xx, 180)], -1)
    img[200:400, 300:700] = (200, 40, 60)
    img[600:900, 1000:1400] = (40, 60, 200)
    return np.clip(img, 0, 255).astype(np.uint8)


def pyramid_levels(img: np.ndarray, n: int = 3) -> list[np.ndarray]:
    from PIL import Image

    out = [img]
    for _ in range(n - 1):
        prev = out[-1]
        out.append(np.asarray(Image.fromarray(prev).reduce(2)))
    return out


def write_generic_tiff(path: Path, img: np.ndarray, mpp: float | None) -> Path:
    with tifffile.TiffWriter(path) as tw:
        for i, lvl in enumerate(pyramid_levels(img)):
            res = {} if mpp is None else {"resolution": (1e4 / (mpp * 2**i),) * 2,
                                          "resolutionunit": "CENTIMETER"}
            tw.write(lvl, tile=(TILE, TILE), photometric="rgb", planarconfig="contig",
                     compression="jpeg", compressionargs={"level": 92}, subfiletype=0 if i == 0 else 1,
                     metadata=None, **res)
    return path


def write_aperio_svs(path: Path, img: np.ndarray, app_mag: float, mpp: float | None) -> Path:
    """The SVS layout (REFERENCE.md): description 'Aperio Image Library ...|AppMag = ..|MPP = ..'
    on the tiled level 0, a stripped thumbnail page, then tiled levels."""
    h, w = img.shape[:2]
    fields = f"|AppMag = {app_mag:g}" + (f"|MPP = {mpp:g}" if mpp is not None else "")
    levels = pyramid_levels(img)
    with tifffile.TiffWriter(path) as tw:
        tw.write(levels[0], tile=(TILE, TILE), photometric="rgb", compression="jpeg",
                 description=f"Aperio Image Library v12.0.15 \r\n{w}x{h} [0,0 {w}x{h}] "
                             f"({TILE}x{TILE}) JPEG/RGB Q=92{fields}", metadata=None)
        thumb = levels[-1][::2, ::2]
        tw.write(thumb, photometric="rgb", compression="jpeg", rowsperstrip=16,
                 description=f"Aperio Image Library v12.0.15 \r\n{w}x{h} -> "
                             f"{thumb.shape[1]}x{thumb.shape[0]} - ", metadata=None)
        for lvl in levels[1:]:
            tw.write(lvl, tile=(TILE, TILE), photometric="rgb", compression="jpeg",
                     description=f"Aperio Image Library v12.0.15 \r\n{w}x{h} [0,0 {w}x{h}] "
                                 f"({TILE}x{TILE}) -> {lvl.shape[1]}x{lvl.shape[0]} JPEG/RGB Q=92",
                     metadata=None)
    return path


def write_ndpi(path: Path, img: np.ndarray, lens: float, mpp: float) -> Path:
    """The NDPI layout as OpenSlide's Hamamatsu reader requires it (openslide.org/formats/hamamatsu
    and its source): TIFF tag 65420 (format flag) in the first directory; every directory one
    strip (RowsPerStrip = ImageLength) holding a complete JPEG stream, tag 65421 (SourceLens,
    float, scaled per level) and, for pyramid levels, 65424 (focal plane, 0), levels from the
    largest down; resolution in pixels per centimetre. No restart markers, so OpenSlide decodes
    each level as one non-tiled JPEG (as it does for small real NDPI levels)."""
    with tifffile.TiffWriter(path) as tw:
        for i, lvl in enumerate(pyramid_levels(img)):
            tags = [(65421, "f", 1, lens / 2**i, True), (65422, "i", 1, 0, True),
                    (65423, "i", 1, 0, True), (65424, "i", 1, 0, True), (271, "s", 0, "Hamamatsu", True)]
            if i == 0:
                tags.insert(0, (65420, "I", 1, 1, True))
            tw.write(lvl, photometric="rgb", compression="jpeg", compressionargs={"level": 92},
                     rowsperstrip=lvl.shape[0], resolution=(1e4 / (mpp * 2**i),) * 2,
                     resolutionunit="CENTIMETER", software="NDP.scan", extratags=tags, metadata=None)
    return path


def write_vips_tiff(path: Path, img: np.ndarray, mpp: float) -> Path:
    pyvips = pytest.importorskip("pyvips")
    im = pyvips.Image.new_from_array(img, interpretation="srgb")
    # libvips takes resolution in pixels per millimetre and stores it with the unit given
    im.tiffsave(str(path), tile=True, tile_width=TILE, tile_height=TILE, pyramid=True,
                compression="jpeg", Q=92, xres=1e3 / mpp, yres=1e3 / mpp, resunit="cm")
    return path


# 4 x 2 camera photos of 2 x 2 images of 204 x 264 px overlapping by 32 px: level 0 is exactly W x H
MIRAX_LAYOUT = MiraxLayout(tile=(204, 264), images=(8, 4), divisions=2, overlap=(32, 32), levels=4)
# photos the stage placed off the nominal grid (level-0 px, multiples of 8 so every level stays whole)
MIRAX_JITTER = {(1, 0): (8, 0), (2, 1): (0, 8), (3, 1): (8, 8)}


def write_mrxs(path: Path, img: np.ndarray, mpp: float = 0.5, objective: int | None = 20) -> Path:
    """A MIRAX slide of ``img``: the source is padded at the right and bottom (edge pixels), as
    jittered photos reach past the nominal W x H."""
    assert MIRAX_LAYOUT.size == (img.shape[1], img.shape[0])
    padded = np.pad(img, ((0, 16), (0, 16), (0, 0)), mode="edge")
    return write_mirax(path, padded, MIRAX_LAYOUT, mpp=mpp, objective=objective, jitter=MIRAX_JITTER)


def write_pydicom(folder: Path, img: np.ndarray, mpp: float) -> Path:
    """A DICOM WSI series (one instance per level, TILED_FULL, JPEG) by tests/helpers/dicom_writer.py on
    pydicom: DICOM in the fast tests; returns the level-0 instance (OpenSlide finds the series)."""
    pytest.importorskip("pydicom")
    from dicom_writer import write_dicom_wsi

    return write_dicom_wsi(folder, pyramid_levels(img), mpp=mpp, objective=10 / mpp)[0]


def write_dicom(folder: Path, src_tiff: Path) -> Path:
    """A DICOM WSI series converted by wsidicomizer from a generic TIFF: another writer's
    encoder, tiling and metadata. Returns one instance file of the series (OpenSlide opens the
    series from any of its files)."""
    wsidicomizer = pytest.importorskip("wsidicomizer")
    folder.mkdir(parents=True, exist_ok=True)
    with wsidicomizer.WsiDicomizer.open(str(src_tiff)) as wsi:
        wsi.save(str(folder))
    files = sorted(folder.rglob("*.dcm"))
    assert files, f"wsidicomizer wrote no .dcm files under {folder}"
    return files[0]
