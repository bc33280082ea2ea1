"""Readers on files from several writers: tifffile generic tiled TIFF, an Aperio-SVS-layout file
(tifffile, the layout OpenSlide recognises as ``aperio``), a Hamamatsu-NDPI-layout file (tifffile,
recognised as ``hamamatsu``), libvips (pyvips) tiled pyramids and a DICOM WSI (wsidicomizer), each
through every reader that supports it. Truth is the source array
the file was written from and the resolution written into it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

import feature_cache as fc
from feature_cache.tissue import patch_size_level0

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


def _levels(img: np.ndarray, n: int = 3) -> list[np.ndarray]:
    from PIL import Image

    out = [img]
    for _ in range(n - 1):
        prev = out[-1]
        out.append(np.asarray(Image.fromarray(prev).reduce(2)))
    return out


def write_generic_tiff(path: Path, img: np.ndarray, mpp: float | None) -> Path:
    with tifffile.TiffWriter(path) as tw:
        for i, lvl in enumerate(_levels(img)):
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
    levels = _levels(img)
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
        for i, lvl in enumerate(_levels(img)):
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


def write_dicom(folder: Path, src_tiff: Path) -> Path:
    """A DICOM WSI series converted by wsidicomizer from a generic TIFF: another writer's
    encoder, tiling and metadata. Returns one instance file of the series (OpenSlide opens the
    series from any of its files)."""
    wsidicomizer = pytest.importorskip("wsidicomizer")
    folder.mkdir(parents=True, exist_ok=True)
    with wsidicomizer.WsiDicomizer.open(str(src_tiff)) as wsi:
        wsi.save(str(folder))
    files = sorted(folder.rglob("*.dcm"))
    if not files:
        pytest.skip("wsidicomizer wrote no .dcm files")
    return files[0]


@pytest.fixture(scope="module")
def img() -> np.ndarray:
    return source_image()


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, img: np.ndarray) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("writers")
    return {
        "tifffile-generic": write_generic_tiff(d / "generic.tif", img, mpp=0.5),
        "tifffile-aperio": write_aperio_svs(d / "aperio.svs", img, app_mag=40, mpp=0.25),
        "tifffile-aperio-no-mpp": write_aperio_svs(d / "aperio_nompp.svs", img, app_mag=20, mpp=None),
        "libvips": write_vips_tiff(d / "vips.tif", img, mpp=0.25),
        "tifffile-ndpi": write_ndpi(d / "hamamatsu.ndpi", img, lens=20, mpp=0.5),
    }


# writer -> (level-0 mpp the file says, objective power, OpenSlide vendor, readers that support it)
EXPECT = {
    "tifffile-generic": (0.5, None, "generic-tiff", ("openslide", "tiffslide")),
    "tifffile-aperio": (0.25, 40.0, "aperio", ("openslide", "tiffslide")),
    "tifffile-aperio-no-mpp": (0.5, 20.0, "aperio", ("openslide", "tiffslide")),
    "libvips": (0.25, None, "generic-tiff", ("openslide", "tiffslide")),
    # tiffslide (tifffile) refuses this file: for a file with tag 65420 tifffile reads NDPI's 8-byte
    # next-directory offsets, which tifffile's own writer does not produce
    "tifffile-ndpi": (0.5, 20.0, "hamamatsu", ("openslide",)),
}
CASES = [(w, b) for w, (_, _, _, backends) in EXPECT.items() for b in backends]


def _mad(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


@pytest.mark.parametrize("writer,backend", CASES)
def test_reader_reads_each_writer(files: dict[str, Path], img: np.ndarray, writer: str,
                                  backend: str) -> None:
    mpp, power, vendor, _ = EXPECT[writer]
    with fc.open_slide(files[writer], backend=backend) as s:
        assert s.backend == backend
        assert s.dimensions == (W, H)
        assert s.level_count >= 3
        assert s.level_downsamples[1] == pytest.approx(2.0, rel=0.01)
        assert s.mpp == pytest.approx(mpp, rel=1e-3)
        if power is not None:
            assert s.objective_power == pytest.approx(power)
        if backend == "openslide":
            assert s.vendor == vendor
        # a level-0 region lands where it was written (JPEG: a few grey levels of error)
        region = np.asarray(s.read_region((280, 180), 0, (460, 240)))
        assert region.shape == (240, 460, 3)
        assert _mad(region, img[180:420, 280:740]) < 4.0
        # level 1 region: location is level-0 px, size is level-1 px
        reg1 = np.asarray(s.read_region((1000, 600), 1, (200, 150)))
        assert _mad(reg1, img[600:900:2, 1000:1400:2]) < 6.0


@pytest.mark.parametrize("writer", list(EXPECT))
def test_auto_picks_a_reader_and_magnification_from_metadata(files: dict[str, Path],
                                                             img: np.ndarray, writer: str) -> None:
    mpp, *_ = EXPECT[writer]
    with fc.open_slide(files[writer]) as s:
        assert s.backend == "openslide"  # OpenSlide recognises all of these
        # 5x = 2 um/px: the whole slide at that resolution, read from the level nearest above
        out = s.read_at_mpp(2.0)
        ds = 2.0 / mpp
        assert out.shape == (round(H / ds), round(W / ds), 3)
        from PIL import Image

        want = np.asarray(Image.fromarray(img).resize((out.shape[1], out.shape[0]), Image.BOX))
        assert _mad(out, want) < 5.0
        # a 256-px patch at 20x spans 256 px of a 20x slide and 512 px of a 40x slide
        assert patch_size_level0(s, 256, 20.0) == round(256 * 0.5 / mpp)
        # the level nearest above the target: not coarser than it, and the next one would be
        lvl = s.best_level_for_downsample(ds)
        assert s.level_downsamples[lvl] <= ds * 1.01
        assert lvl == s.level_count - 1 or s.level_downsamples[lvl + 1] > ds * 1.01


def test_backend_override_by_env(files: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BENCH_SLIDE_BACKEND", "tiffslide")
    with fc.open_slide(files["tifffile-generic"]) as s:
        assert s.backend == "tiffslide"
    with fc.open_slide(files["tifffile-generic"], backend="openslide") as s:
        assert s.backend == "openslide"  # an explicit argument beats the environment


def test_no_mpp_no_power_names_slide_and_override(tmp_path: Path, img: np.ndarray) -> None:
    path = write_generic_tiff(tmp_path / "nores.tif", img, mpp=None)
    with fc.open_slide(path) as s:
        assert s.mpp is None
        with pytest.raises(fc.SlideError, match=r"nores\.tif.*--mpp"):
            patch_size_level0(s, 256, 20.0)
    with fc.open_slide(path, mpp=0.5) as s:
        assert patch_size_level0(s, 256, 20.0) == 256


@pytest.mark.slow
def test_dicom_wsi_from_wsidicomizer(files: dict[str, Path], img: np.ndarray,
                                     tmp_path: Path) -> None:
    dcm = write_dicom(tmp_path / "dicom", files["tifffile-generic"])
    with fc.open_slide(dcm) as s:
        assert s.backend == "openslide" and s.vendor == "dicom"
        assert s.dimensions == (W, H)
        assert s.mpp == pytest.approx(0.5, rel=1e-2)
        region = np.asarray(s.read_region((280, 180), 0, (460, 240)))
        assert _mad(region, img[180:420, 280:740]) < 6.0


@pytest.mark.parametrize("writer,backend", CASES)
def test_truncated_files_raise_slide_error_naming_the_file(files: dict[str, Path], tmp_path: Path,
                                                          writer: str, backend: str) -> None:
    """A copy cut at 40 % either fails to open or fails on reading level 0 -- always as a
    SlideError that names the file, never a reader's own exception or silent garbage."""
    cut = tmp_path / f"cut-{files[writer].name}"
    data = files[writer].read_bytes()
    cut.write_bytes(data[: int(len(data) * 0.4)])
    with pytest.raises(fc.SlideError, match=cut.name):
        with fc.open_slide(cut, backend=backend) as s:
            s.read_level(0)
