"""feature_cache: readers, tissue, grid, encoder, and the cache's atomicity/resume/locking rules.

Runs on a tiny demo cohort; extraction mostly at 5x (a few patches per slide) to stay fast.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import feature_cache as fc  # noqa: E402
from bench.data.demo import slide_specs, demo_specs, generate_demo, render_slide, write_pyramid_tiff  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_demo(tmp_path_factory.mktemp("fc") / "demo", seed=0, n_cases=6)


@pytest.fixture(scope="module")
def slides(demo: Path) -> dict[str, Path]:
    return {p.stem: p for p in sorted((demo / "slides").glob("*.tiff"))}


@pytest.fixture(scope="module")
def encoder() -> fc.Encoder:
    return fc.get_encoder("resnet50", allow_random=True)


@pytest.fixture(scope="module")
def white_slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("white") / "WHITE-00-0000-01Z-00-DX1.tiff"
    rgb = np.full((1100, 1300, 3), 243, np.uint8)
    rgb += np.random.default_rng(0).integers(0, 4, rgb.shape, dtype=np.uint8)  # scanner noise
    write_pyramid_tiff(p, rgb)
    return p


# ----------------------------------------------------------------------------- slides


@pytest.mark.parametrize("backend", ["auto", "openslide", "tiffslide"])
def test_open_slide_backends(slides: dict[str, Path], backend: str) -> None:
    path = next(iter(slides.values()))
    with fc.open_slide(path, backend=backend) as s:
        assert s.mpp == pytest.approx(0.5, rel=1e-3)
        assert s.magnification == pytest.approx(20.0, rel=1e-3)
        assert s.level_count >= 2 and len(s.level_dimensions) == s.level_count
        assert s.level_downsamples[1] == pytest.approx(4.0, rel=0.02)
        im = s.read_region((100, 100), 1, (64, 48))
        assert im.mode == "RGB" and im.size == (64, 48)
        assert s.get_thumbnail((200, 200)).mode == "RGB"
        # auto: OpenSlide recognises the demo's tiled TIFFs, and is tried first
        assert s.backend == ("openslide" if backend == "auto" else backend)


def test_read_at_mpp_keeps_aspect(slides: dict[str, Path]) -> None:
    with fc.open_slide(next(iter(slides.values()))) as s:
        w, h = s.dimensions
        arr = s.read_at_mpp(4.0)  # 2.5x: downsample 8 from 20x
        assert arr.dtype == np.uint8 and arr.shape == (round(h / 8), round(w / 8), 3)
        assert s.best_level_for_downsample(8.0) == 1  # level 1 (ds 4) is nearest above


def test_slide_errors_name_the_file(tmp_path: Path, slides: dict[str, Path]) -> None:
    garbage = tmp_path / "garbage.svs"
    garbage.write_bytes(b"not a slide" * 100)
    with pytest.raises(fc.SlideError, match="garbage.svs"):
        fc.open_slide(garbage)
    with pytest.raises(fc.SlideError, match="missing.tiff"):
        fc.open_slide(tmp_path / "missing.tiff")

    truncated = tmp_path / "truncated.tiff"
    data = next(iter(slides.values())).read_bytes()
    truncated.write_bytes(data[: len(data) // 3])
    with pytest.raises(fc.SlideError, match="truncated.tiff") as err:
        with fc.open_slide(truncated) as s:  # may open; reading all of level 0 must fail
            w, h = s.dimensions
            s.read_region((0, 0), 0, (w, h))
    assert "Fix" in str(err.value)


def test_missing_mpp_fails_with_override_hint(tmp_path: Path) -> None:
    p = tmp_path / "nompp.tiff"
    write_pyramid_tiff(p, np.full((600, 700, 3), 240, np.uint8), mpp=None)
    with fc.open_slide(p) as s:
        assert s.mpp is None
        mask, ds = fc.segment_tissue(s)  # segmentation needs no mpp
        with pytest.raises(fc.SlideError, match="nompp.tiff.*mpp"):
            fc.patch_grid(s, mask, ds)
    with fc.open_slide(p, mpp=0.25) as s:
        assert s.mpp == 0.25


# ----------------------------------------------------------------------------- tissue and grid


def test_tissue_mask_matches_generator(slides: dict[str, Path]) -> None:
    specs = {sp.slide_id: sp for sp in slide_specs(0, demo_specs(0, 6))}
    ious = []
    for sid in list(slides)[:3]:
        truth = render_slide(specs[sid]).tissue
        with fc.open_slide(slides[sid]) as s:
            mask, ds = fc.segment_tissue(s)
        assert mask.dtype == bool and ds > 1
        gt = np.asarray(Image.fromarray(truth).resize(mask.shape[::-1], Image.NEAREST))
        ious.append((mask & gt).sum() / (mask | gt).sum())
    print("tissue IoU vs generator:", ious)
    assert min(ious) > 0.9


def test_white_slide_has_no_tissue(white_slide: Path) -> None:
    with fc.open_slide(white_slide) as s:
        mask, ds = fc.segment_tissue(s)
        assert not mask.any()
        assert fc.patch_grid(s, mask, ds).shape == (0, 2)


def test_patch_grid_follows_mpp(slides: dict[str, Path], tmp_path: Path) -> None:
    with fc.open_slide(next(iter(slides.values()))) as s:
        mask, ds = fc.segment_tissue(s)
        g20 = fc.patch_grid(s, mask, ds, patch_size=256, magnification=20)
        g10 = fc.patch_grid(s, mask, ds, patch_size=256, magnification=10)
    assert g20.dtype == np.int64 and g20.shape[1] == 2
    assert 10 <= len(g20) <= 60
    assert (g20 % 256 == 0).all() and (g10 % 512 == 0).all()
    print("patches at 20x / 10x:", len(g20), len(g10))
    assert 0.1 * len(g20) <= len(g10) <= 0.4 * len(g20)

    # The same pixels declared 40x (mpp 0.25): a 20x patch spans 512 level-0 px, so the grid
    # depends on mpp, not on pyramid levels.
    with fc.open_slide(next(iter(slides.values())), mpp=0.25) as s:
        mask, ds = fc.segment_tissue(s)
        g = fc.patch_grid(s, mask, ds, patch_size=256, magnification=20)
    assert len(g) == len(g10) and (g % 512 == 0).all()


# ----------------------------------------------------------------------------- encoder


def test_encoder_random_weights(encoder: fc.Encoder) -> None:
    assert "resnet50" in fc.list_encoders()
    assert encoder.random_weights and encoder.dim == 1024
    assert (encoder.patch_size, encoder.magnification) == (256, 20.0)
    batch = np.random.default_rng(0).integers(0, 256, (3, 256, 256, 3), dtype=np.uint8)
    out = encoder(batch)
    assert tuple(out.shape) == (3, 1024) and str(out.dtype) == "torch.float32"
    assert np.isfinite(out.numpy()).all()
    x = encoder.transform(batch[0])
    assert tuple(x.shape) == (3, 224, 224)
    np.testing.assert_allclose(encoder(x[None]).numpy(), out[:1].numpy(), rtol=1e-4, atol=1e-5)
    # seeded random init: a second build (another worker) gives the same weights
    assert fc.get_encoder("resnet50", allow_random=True).fingerprint == encoder.fingerprint


def test_encoder_without_weights_fails_clearly(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import huggingface_hub.constants

    monkeypatch.delenv("BENCH_WEIGHTS_RESNET50", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # empty hub and torch-hub caches: weights this machine happens to hold must not decide the outcome
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(fc.EncoderWeightsError, match="BENCH_WEIGHTS_RESNET50"):
        fc.get_encoder("resnet50")
    with pytest.raises(KeyError, match="resnet50"):
        fc.get_encoder("resnet5")


def test_encoder_weights_from_env_and_bad_file(encoder: fc.Encoder, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    sd = {k.split("body.", 1)[1]: (v * 1.5 if v.is_floating_point() else v)
          for k, v in encoder.model.state_dict().items()}
    good = tmp_path / "r50.pth"
    torch.save(sd, good)
    monkeypatch.setenv("BENCH_WEIGHTS_RESNET50", str(good))
    enc = fc.get_encoder("resnet50")
    assert not enc.random_weights and enc.fingerprint != encoder.fingerprint
    bad = tmp_path / "bad.pth"
    torch.save({"conv1.weight": torch.zeros(3, 3)}, bad)
    with pytest.raises(fc.EncoderWeightsError, match="bad.pth"):
        fc.get_encoder("resnet50", weights=bad)


# ----------------------------------------------------------------------------- cache


class _FakeEncoder:
    """Stands in for another weight set: same network, different fingerprint."""

    def __init__(self, enc: fc.Encoder, fingerprint: str):
        self.__dict__.update(enc.__dict__)
        self.fingerprint = fingerprint


def test_cache_dir_is_keyed_by_what_changes_numbers(tmp_path: Path, encoder: fc.Encoder) -> None:
    cache = fc.FeatureCache(tmp_path)
    base = cache.dir_for(encoder, 256, 20.0)
    assert base == cache.dir_for(encoder, 256, 20.0) == cache.dir_for(encoder)
    assert base.parent.name == "resnet50"
    others = {cache.dir_for(encoder, 224, 20.0), cache.dir_for(encoder, 256, 10.0),
              cache.dir_for(_FakeEncoder(encoder, "0" * 16), 256, 20.0),
              cache.dir_for(encoder, 256, 20.0, min_tissue=0.25)}
    assert base not in others and len(others) == 4


def _five_x(cache: fc.FeatureCache, slides, enc, **kw) -> fc.ExtractReport:
    """A few 1024-px (level-0) patches per slide, read from pyramid level 1: fast, and exercises
    reading above level 0."""
    return cache.extract(slides, enc, magnification=5.0, min_tissue=0.25, progress=False, **kw)


def _mt(**kw):
    return {"magnification": 5.0, "min_tissue": 0.25, **kw}


def test_extract_load_resume(tmp_path: Path, slides: dict[str, Path], encoder: fc.Encoder) -> None:
    cache = fc.FeatureCache(tmp_path / "cache")
    slides = dict(list(slides.items())[:4])  # enough to show resume; keeps the test short
    some = dict(list(slides.items())[:2])
    rep = _five_x(cache, some, encoder)
    assert sorted(rep.done) == sorted(some) and rep.ok and not rep.skipped
    sid = rep.done[0]
    feats, coords = cache.load(sid, encoder, **_mt())
    assert feats.dtype == np.float32 and feats.shape == (rep.n_patches[sid], 1024)
    assert coords.dtype == np.int64 and coords.shape == (len(feats), 2)
    assert (coords % 1024 == 0).all()  # 256 px at 5x = 1024 level-0 px at 0.5 um/px
    path = cache.path_for(sid, encoder, **_mt())
    with h5py.File(path) as f:  # CLAM-compatible layout and provenance attributes
        a = dict(f.attrs)
        assert a["encoder"] == "resnet50" and bool(a["random_weights"])
        assert a["encoder_fingerprint"] == encoder.fingerprint
        assert a["patch_size"] == 256 and a["magnification"] == 5.0 and a["mpp"] == 0.5
        assert a["min_tissue"] == 0.25
        assert a["patch_level"] == 1 and "code_version" in a
        assert f["coords"].attrs["patch_size_level0"] == 1024
    # the same patch encoded directly matches the cache (patch read at level 1, 256 px)
    with fc.open_slide(slides[sid]) as s:
        x, y = coords[0]
        patch = np.asarray(s.read_region((int(x), int(y)), 1, (256, 256)))
    np.testing.assert_allclose(encoder(patch[None]).numpy()[0], feats[0], rtol=1e-3, atol=1e-4)

    rep2 = _five_x(cache, slides, encoder)  # resume: the 2 done are skipped, the rest done
    assert sorted(rep2.skipped) == sorted(some)
    assert sorted(rep2.done) == sorted(set(slides) - set(some))
    assert all(cache.has(s, encoder, **_mt()) for s in slides)
    rep3 = _five_x(cache, slides, encoder)
    assert not rep3.done and len(rep3.skipped) == len(slides)
    with pytest.raises(fc.CacheMissError, match="extract"):
        cache.load(sid, encoder, magnification=10.0)


def test_killed_write_never_counts_as_done(tmp_path: Path, slides: dict[str, Path],
                                           encoder: fc.Encoder) -> None:
    cache = fc.FeatureCache(tmp_path / "cache")
    sid, path = next(iter(slides.items()))
    out = cache.path_for(sid, encoder, **_mt())
    out.parent.mkdir(parents=True)
    # what a writer killed mid-write leaves: a partial temp file and its lock file
    out.with_name(f".{out.name}.12345.tmp").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    Path(str(out) + ".lock").touch()
    assert not cache.has(sid, encoder, **_mt())
    with pytest.raises(fc.CacheMissError):
        cache.load(sid, encoder, **_mt())
    rep = _five_x(cache, {sid: path}, encoder)
    assert rep.done == [sid]
    assert cache.load(sid, encoder, **_mt())[0].shape[1] == 1024
    # this writer's own temporary file is gone; only the killed writer's stray one is left
    assert [p.name for p in out.parent.glob(f".{out.name}.*.tmp")] == [f".{out.name}.12345.tmp"]
    # a corrupt final file (e.g. disk trouble) is detected and redone, not trusted
    out.write_bytes(b"garbage")
    assert _five_x(cache, {sid: path}, encoder).done == [sid]


def test_changed_slide_is_extracted_again(tmp_path: Path, slides: dict[str, Path],
                                          encoder: fc.Encoder) -> None:
    """Same id, different file (e.g. a regenerated cohort): stale features are not reused."""
    cache = fc.FeatureCache(tmp_path / "cache")
    (a_id, a), (_, b) = list(slides.items())[:2]
    copy = tmp_path / "slide.tiff"
    copy.write_bytes(a.read_bytes())
    assert _five_x(cache, {a_id: copy}, encoder).done == [a_id]
    os.utime(copy, ns=(0, 0))  # copied elsewhere: mtime differs, content the same
    assert _five_x(cache, {a_id: copy}, encoder).skipped == [a_id]
    copy.write_bytes(b.read_bytes())  # replaced by another slide under the same id
    assert _five_x(cache, {a_id: copy}, encoder).done == [a_id]


def test_no_tissue_and_bad_slides_are_reported(tmp_path: Path, slides: dict[str, Path],
                                               encoder: fc.Encoder, white_slide: Path) -> None:
    cache = fc.FeatureCache(tmp_path / "cache")
    garbage = tmp_path / "BAD-00-0000-01Z-00-DX1.tiff"
    garbage.write_bytes(b"\0" * 5000)
    good_id, good = next(iter(slides.items()))
    todo = {"WHITE": white_slide, "BAD": garbage, good_id: good}
    with pytest.raises(fc.SlideError, match=garbage.name):
        _five_x(cache, todo, encoder)
    rep = _five_x(cache, todo, encoder, skip_errors=True)
    assert rep.no_tissue == ["WHITE"] and list(rep.failed) == ["BAD"]
    assert garbage.name in rep.failed["BAD"] and rep.done + rep.skipped == [good_id]
    feats, coords = cache.load("WHITE", encoder, **_mt())
    assert feats.shape == (0, 1024) and coords.shape == (0, 2)
    assert cache.load_attrs("WHITE", encoder, **_mt())["no_tissue"]
    again = _five_x(cache, {"WHITE": white_slide}, encoder)
    assert again.no_tissue == ["WHITE"] and not again.done  # not segmented again
    with pytest.raises(ValueError, match="safe file name"):
        _five_x(cache, {"../escape": good}, encoder)


_WORKER = textwrap.dedent("""
    import dataclasses, json, sys, logging
    import bench.registry  # registers the shipped encoder declarations
    import feature_cache as fc
    import feature_cache.encoders as E
    root, slides = sys.argv[1], json.loads(sys.argv[2])

    def tiny():  # a 16x16 conv + pool: the cache's locking is what is under test, not the network
        import torch
        return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 16, 16), torch.nn.AdaptiveAvgPool2d(1),
                                   torch.nn.Flatten())

    E.REGISTRY["tiny"] = dataclasses.replace(E.REGISTRY["resnet50"], name="tiny", dim=8, build=tiny)
    enc = fc.get_encoder(sys.argv[4], allow_random=True)
    mag = float(sys.argv[3])
    rep = fc.FeatureCache(root).extract(slides, enc, magnification=mag, progress=False,
                                        min_tissue=0.25 if mag < 10 else 0.5, batch_size=4)
    print(json.dumps({"done": rep.done, "skipped": rep.skipped, "empty": rep.no_tissue}))
""")


def _worker(root: Path, slides: dict[str, Path], mag: float,
            encoder: str = "resnet50") -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen(
        [sys.executable, "-c", _WORKER, str(root), json.dumps({k: str(v) for k, v in slides.items()}),
         str(mag), encoder], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


@pytest.mark.slow
def test_sigkill_mid_extract_then_resume(tmp_path: Path, slides: dict[str, Path],
                                         encoder: fc.Encoder) -> None:
    cache = fc.FeatureCache(tmp_path / "cache")
    out_dir = cache.dir_for(encoder, 256, 20.0)
    proc = _worker(cache.root, slides, 20.0)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:  # kill while a slide is being written
        if len(list(out_dir.glob("*.h5"))) >= 1:
            break
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = [p.stem for p in out_dir.glob("*.h5")]
    assert len(finished) < len(slides), "worker finished before it could be killed"
    for p in out_dir.glob("*.h5"):  # whatever exists under a final name is complete
        with h5py.File(p) as f:
            assert f["features"].shape[0] == f["coords"].shape[0] > 0
    rep = cache.extract(slides, encoder, progress=False)
    assert sorted(rep.skipped) == sorted(finished)
    assert sorted(rep.done + rep.skipped) == sorted(slides)


def test_two_workers_share_one_cache(tmp_path: Path, slides: dict[str, Path]) -> None:
    """Two processes started together on one cache: each slide is extracted by exactly one of
    them (per-slide locks), the other skips it. A tiny encoder keeps this in CI."""
    root = tmp_path / "cache"
    procs = [_worker(root, slides, 5.0, encoder="tiny") for _ in range(2)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    done = results[0]["done"] + results[1]["done"]
    assert sorted(done) == sorted(slides)  # every slide extracted exactly once
    skipped = results[0]["skipped"] + results[1]["skipped"]
    assert sorted(skipped) == sorted(slides)  # ... and found finished by the other
    files = list(root.glob("tiny/*/*.h5"))
    assert len(files) == len(slides)
    assert not list(root.glob("tiny/*/*.tmp"))
