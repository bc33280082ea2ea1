"""Readers on files from several writers: tifffile generic tiled TIFF, an Aperio-SVS-layout file
(tifffile, the layout OpenSlide recognises as ``aperio``), a Hamamatsu-NDPI-layout file (tifffile,
recognised as ``hamamatsu``), libvips (pyvips) tiled pyramids, DICOM WSI series (pydicom, in
tests/helpers/dicom_writer.py; and wsidicomizer, slow) and a MIRAX slide (tests/helpers/mirax_writer.py: Slidedat.ini + Index.dat + JPEG data files, photos placed by
a camera-position buffer), each through every reader that supports it. Truth is the source array
the file was written from and the resolution written into it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import bench.registry  # noqa: F401 -- registers the declared encoders (configs/encoders)
import feature_cache as fc
from feature_cache.tissue import patch_size_level0
from slide_writers import (H, MIRAX_JITTER, MIRAX_LAYOUT, W, source_image, write_aperio_svs, write_dicom,  # noqa: F401
                           write_generic_tiff, write_mrxs, write_ndpi, write_pydicom, write_vips_tiff)

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
        "mirax": write_mrxs(d / "mirax.mrxs", img, mpp=0.5, objective=20),
        "pydicom": write_pydicom(d / "dicom", img, mpp=0.25),
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
    # tiffslide reads TIFF only; MIRAX is a directory of INI, index and JPEG data files
    "mirax": (0.5, 20.0, "mirax", ("openslide",)),
    "pydicom": (0.25, 40.0, "dicom", ("openslide",)),  # tiffslide: not a TIFF
}
CASES = [(w, b) for w, (_, _, _, backends) in EXPECT.items() for b in backends]
SINGLE_FILE = [(w, b) for w, b in CASES if w != "mirax"]  # MIRAX's .mrxs is a stub: see below


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
        assert s.objective_power == (None if power is None else pytest.approx(power))
        # tiffslide names no vendor for a generic TIFF
        assert s.vendor == ("unknown" if (backend, vendor) == ("tiffslide", "generic-tiff") else vendor)
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


def test_backend_argument_forces_the_reader(files: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    with fc.open_slide(files["tifffile-generic"]) as s:
        assert s.backend == "openslide"  # auto: OpenSlide knows a generic tiled TIFF
    with fc.open_slide(files["tifffile-generic"], backend="tiffslide") as s:
        assert s.backend == "tiffslide"
    monkeypatch.setenv("BENCH_SLIDE_BACKEND", "tiffslide")  # read by the CLI (bench.engine.settings), not here
    with fc.open_slide(files["tifffile-generic"]) as s:
        assert s.backend == "openslide"


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


@pytest.mark.parametrize("writer,backend", SINGLE_FILE)
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


# ------------------------------------------------------------------------------------------ MIRAX


def _block_mad(a: np.ndarray, b: np.ndarray, block: int = 16) -> float:
    """The worst mean error over block x block squares: a photo placed a few px off shows here
    even when the whole-image mean hides it."""
    h, w = (a.shape[0] // block) * block, (a.shape[1] // block) * block
    d = np.abs(a[:h, :w].astype(np.int16) - b[:h, :w].astype(np.int16)).mean(-1)
    return float(d.reshape(h // block, block, w // block, block).mean((1, 3)).max())


def test_mirax_every_level_is_the_source_image(files: dict[str, Path], img: np.ndarray) -> None:
    """All 32 level-0 images and the per-photo sub-tiles of the coarser levels land where the
    source says, overlaps included: no block of any level is off by more than JPEG error."""
    from PIL import Image

    with fc.open_slide(files["mirax"]) as s:
        assert s.level_downsamples == (1.0, 2.0, 4.0, 8.0)
        assert s.properties["mirax.GENERAL.CameraImageDivisionsPerSide"] == "2"
        for level in range(s.level_count):
            got = s.read_level(level)
            want = np.asarray(Image.fromarray(img).reduce(2**level)) if level else img
            assert got.shape == want.shape
            assert _mad(got, want) < 1.5, level
            assert _block_mad(got, want) < 6.0, level


def test_mirax_photos_are_placed_by_the_camera_positions(img: np.ndarray, tmp_path: Path) -> None:
    """Negative control for the test above: the jittered photos only line up because the reader
    takes their positions from the VIMSLIDE_POSITION_BUFFER record. Overwrite that record with the
    nominal grid and photo (3, 1), taken 8 px right and down of nominal, is drawn at nominal: its
    pixels are then the source's shifted by (8, 8)."""
    import struct

    path = write_mrxs(tmp_path / "moved.mrxs", img)
    data = path.with_suffix("") / "Data0001.dat"
    lay = MIRAX_LAYOUT
    photos = [(px, py) for py in range(lay.photos[1]) for px in range(lay.photos[0])]
    nominal = [lay.nominal_position(*p) for p in photos]
    real = [(x + MIRAX_JITTER.get(p, (0, 0))[0], y + MIRAX_JITTER.get(p, (0, 0))[1])
            for (x, y), p in zip(nominal, photos)]
    record = b"".join(struct.pack("<Bii", 1, x, y) for x, y in real)
    blob = data.read_bytes()
    assert blob.count(record) == 1
    data.write_bytes(blob.replace(record, b"".join(struct.pack("<Bii", 1, x, y) for x, y in nominal)))
    with fc.open_slide(path) as s:
        got = s.read_level(0)
    x0, y0 = lay.nominal_position(3, 1)
    inner = np.s_[y0 + 40:y0 + 400, x0 + 40:x0 + 360]
    shifted = img[y0 + 48:y0 + 408, x0 + 48:x0 + 368]
    assert _mad(got[inner], shifted) < 1.5
    assert _mad(got[inner], img[inner]) > 3.0
    assert _mad(got[40:400, 40:360], img[40:400, 40:360]) < 1.5  # photo (0, 0) did not move


def test_mirax_damaged_parts_raise_slide_error_naming_the_slide(img: np.ndarray,
                                                                tmp_path: Path) -> None:
    """A MIRAX slide is a directory: a truncated data file fails on read, a missing or truncated
    Index.dat on open -- each a SlideError naming the .mrxs."""
    path = write_mrxs(tmp_path / "cut.mrxs", img)
    data = path.with_suffix("") / "Data0000.dat"  # level 0
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 3])
    with fc.open_slide(path) as s:  # opens: the index and the other data file are whole
        assert s.vendor == "mirax"
        s.read_level(1)
        with pytest.raises(fc.SlideError, match=r"cut\.mrxs"):
            s.read_level(0)
    index = path.with_suffix("") / "Index.dat"
    index.write_bytes(index.read_bytes()[:60])
    with pytest.raises(fc.SlideError, match=r"cut\.mrxs.*(?i:index)"):
        fc.open_slide(path)
    index.unlink()
    with pytest.raises(fc.SlideError, match=r"cut\.mrxs"):
        fc.open_slide(path)


def _mean_colour() -> "torch.nn.Module":
    import torch

    return torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())


@pytest.fixture
def mean_colour_encoder(monkeypatch: pytest.MonkeyPatch) -> fc.Encoder:
    """An encoder whose feature is the patch's mean normalised colour: its truth is computable
    from the source pixels. Module-level builder, so DataLoader workers can use it too."""
    import dataclasses

    import feature_cache.encoders as E

    spec = dataclasses.replace(E.REGISTRY["resnet50"], name="meancolour", dim=3, build=_mean_colour)
    monkeypatch.setitem(E.REGISTRY, "meancolour", spec)
    return fc.get_encoder("meancolour", allow_random=True)


@pytest.mark.parametrize("workers", [1, 0], ids=["dataloader-process", "threads"])
def test_mirax_extract_path_matches_the_source_pixels(files: dict[str, Path], img: np.ndarray,
                                                      tmp_path: Path, mean_colour_encoder: fc.Encoder,
                                                      workers: int) -> None:
    """`FeatureCache.extract` on the MIRAX slide, tiles decoded by a DataLoader worker process or
    by threads: same patch grid as on a TIFF of the same array, and each feature (the patch's mean
    normalised colour) equals the mean of the source pixels under that patch."""
    import feature_cache.encoders as E

    enc, spec = mean_colour_encoder, E.REGISTRY["meancolour"]
    cache = fc.FeatureCache(tmp_path / "cache")
    kw = dict(magnification=10.0, min_tissue=0.0, progress=False, batch_size=4, num_workers=workers)
    rep = cache.extract({"MRXS": files["mirax"], "TIFF": files["tifffile-generic"]}, enc, **kw)
    assert sorted(rep.done) == ["MRXS", "TIFF"]
    feats, coords = cache.load("MRXS", enc, magnification=10.0, min_tissue=0.0)
    tfeats, tcoords = cache.load("TIFF", enc, magnification=10.0, min_tissue=0.0)
    np.testing.assert_array_equal(coords, tcoords)
    assert len(coords) == (W // 512) * (H // 512)  # 256 px at 10x = 512 level-0 px at 0.5 um/px
    mean, std = np.asarray(spec.mean), np.asarray(spec.std)
    want = np.stack([(img[y:y + 512, x:x + 512].reshape(-1, 3).mean(0) / 255 - mean) / std
                     for x, y in coords])
    np.testing.assert_allclose(feats, want, atol=0.03)
    np.testing.assert_allclose(feats, tfeats, atol=0.03)
    assert cache.load_attrs("MRXS", enc, magnification=10.0, min_tissue=0.0)["patch_level"] == 1


def test_worker_process_read_error_is_the_slides_error(img: np.ndarray, tmp_path: Path,
                                                       mean_colour_encoder: fc.Encoder) -> None:
    """A slide that opens but fails while a DataLoader worker decodes its tiles (MIRAX with a
    truncated level-0 data file): `extract` raises the SlideError naming the slide -- not
    DataLoader's wrapper -- and with skip_errors reports it and finishes the others; nothing is
    written under the failed slide's name."""
    good = write_mrxs(tmp_path / "good.mrxs", img)
    bad = write_mrxs(tmp_path / "bad.mrxs", img)
    data = bad.with_suffix("") / "Data0000.dat"
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 3])
    cache = fc.FeatureCache(tmp_path / "cache")
    kw = dict(magnification=20.0, min_tissue=0.0, progress=False, batch_size=8, num_workers=1)
    with pytest.raises(fc.SlideError, match=r"^\S*bad\.mrxs: cannot read region"):
        cache.extract({"BAD": bad}, mean_colour_encoder, **kw)
    rep = cache.extract({"BAD": bad, "GOOD": good}, mean_colour_encoder, skip_errors=True, **kw)
    assert list(rep.failed) == ["BAD"] and rep.done == ["GOOD"]
    assert rep.failed["BAD"].startswith(str(bad))
    out = cache.dir_for(mean_colour_encoder, 256, 20.0, 0.0)
    assert sorted(p.name for p in out.iterdir() if not p.name.endswith(".lock")) == ["GOOD.h5", "key.json"]


def test_mirax_rescan_is_a_changed_slide(img: np.ndarray, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The .mrxs stub of a re-scanned slide is byte-identical; the cache must still see the new
    scan (new SLIDE_ID in Slidedat.ini, new Index.dat) and not serve the old features."""
    import os

    from feature_cache.cache import same_slide, slide_identity_attrs

    path = write_mrxs(tmp_path / "scan.mrxs", img)
    out = tmp_path / "feat.h5"
    import h5py

    with h5py.File(out, "w") as f:
        f.attrs.update(slide_identity_attrs(path))
    assert same_slide(out, path)
    stub = path.read_bytes()
    write_mrxs(path, img)  # the scanner run again: same stub, new slide id and index
    assert path.read_bytes() == stub
    for f in fc.slide_files(path):
        os.utime(f, ns=(0, 0))  # and the copy kept no usable mtime
    assert not same_slide(out, path)
    assert [f.name for f in fc.slide_files(path)] == ["scan.mrxs", "Slidedat.ini", "Index.dat"]


def test_a_crashed_decoding_worker_is_the_slides_error(img: np.ndarray, tmp_path: Path,
                                                       mean_colour_encoder: fc.Encoder,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker process killed while decoding (what a codec segfault or the OOM killer does):
    the slide fails with a SlideError naming it, skip_errors moves on to the next slide, and the
    main process is unharmed. Only the worker dies: the kill is gated on being in a worker."""
    import os
    import signal

    import torch.utils.data

    import feature_cache.loader as L

    real = L.read_patches

    def read_or_die(slide, *args):
        if torch.utils.data.get_worker_info() is not None and slide.path.name == "crash.tif":
            os.kill(os.getpid(), signal.SIGKILL)
        return real(slide, *args)

    monkeypatch.setattr(L, "read_patches", read_or_die)
    crash = write_generic_tiff(tmp_path / "crash.tif", img, mpp=0.5)
    fine = write_generic_tiff(tmp_path / "fine.tif", img, mpp=0.5)
    cache = fc.FeatureCache(tmp_path / "cache")
    kw = dict(magnification=5.0, min_tissue=0.0, progress=False, batch_size=8, num_workers=1)
    with pytest.raises(fc.SlideError, match=r"crash\.tif: a tile-decoding worker process died"):
        cache.extract({"CRASH": crash}, mean_colour_encoder, **kw)
    rep = cache.extract({"CRASH": crash, "FINE": fine}, mean_colour_encoder, skip_errors=True, **kw)
    assert list(rep.failed) == ["CRASH"] and rep.done == ["FINE"]
