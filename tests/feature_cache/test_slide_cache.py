"""Whole slides at a magnification for the end-to-end models: size from mpp, cached once, never stale."""

import os

import numpy as np

from bench.data.demo import write_pyramid_tiff
from feature_cache.slide_cache import SlideImageCache


def slide(path, w=1024, h=768, value=None):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (h, w, 3), dtype=np.uint8) if value is None else np.full((h, w, 3), value, np.uint8)
    write_pyramid_tiff(path, rgb, mpp=0.5)  # 20x at level 0
    return path


def test_size_follows_mpp_and_aspect(tmp_path):
    p = slide(tmp_path / "s.tiff")
    c = SlideImageCache(tmp_path / "cache")
    a = c.get("s", p, 2.5)  # 20x -> 2.5x: /8
    assert a.shape == (96, 128, 3) and a.dtype == np.uint8
    assert c.get("s", p, 5.0).shape == (192, 256, 3)


def test_cached_once_and_refreshed_when_the_file_changes(tmp_path):
    p = slide(tmp_path / "s.tiff", value=200)
    c = SlideImageCache(tmp_path / "cache")
    first = c.path("s", 2.5, p)
    c.get("s", p, 2.5)
    mtime = first.stat().st_mtime_ns
    c.get("s", p, 2.5)
    assert first.stat().st_mtime_ns == mtime  # not rewritten
    slide(p, value=30)  # replaced under the same id
    os.utime(p, ns=(mtime + 10**9, mtime + 10**9))
    assert c.path("s", 2.5, p) != first
    assert abs(int(c.get("s", p, 2.5).mean()) - 30) <= 2


def test_unreadable_slide_is_reported_not_raised(tmp_path):
    bad = tmp_path / "bad.tiff"
    bad.write_bytes(b"II*\x00garbage")
    failed = SlideImageCache(tmp_path / "cache").ensure({"bad": bad}, 2.5, progress=False)
    assert "bad" in failed and "bad.tiff" in failed["bad"]


def test_tissue_mask_aligned_with_the_cached_image(tmp_path):
    """The mask at a magnification has the image's shape and marks the drawn tissue block."""
    rgb = np.full((1536, 2048, 3), 236, np.uint8)
    rgb[384:1152, 512:1536] = (205, 120, 170)  # tissue: rows 384-1152, cols 512-1536 at 20x
    p = tmp_path / "t.tiff"
    write_pyramid_tiff(p, rgb, mpp=0.5)
    c = SlideImageCache(tmp_path / "cache")
    img, mask = c.get("t", p, 2.5), c.mask("t", p, 2.5)  # /8: block at rows 48-144, cols 64-192
    assert mask.shape == img.shape[:2] == (192, 256) and mask.dtype == bool
    truth = np.zeros_like(mask)
    truth[48:144, 64:192] = True
    assert (mask & truth).sum() / (mask | truth).sum() > 0.95
    assert c.mask("t", p, 2.5) is not None and any(c.dir_for(2.5).glob("t.*.mask.npy"))


def _expected_fingerprint(path):
    """Independent of the code: size, first and last 64 KiB of the one file, as documented."""
    import hashlib

    data = path.read_bytes()
    per_file = hashlib.sha256(str(len(data)).encode() + data[:65536] + data[-65536:]).hexdigest()[:16]
    return f"{len(data)}:{hashlib.sha256(per_file.encode()).hexdigest()[:16]}"


def test_one_slide_identity_for_units_feature_cache_and_slide_caches(tmp_path):
    """The unit identity, the feature file's attributes and the slide/region cache names all carry
    the same fingerprint, and it is the documented bytes."""
    import hashlib

    import pandas as pd

    from bench.engine.identity import slide_identities
    from feature_cache import slide_fingerprint
    from feature_cache.cache import slide_identity_attrs
    from feature_cache.regions import RegionCache

    rng = np.random.default_rng(1)
    rgb = (np.array([205, 120, 170]) + rng.integers(-25, 25, (768, 1024, 3))).astype(np.uint8)  # noisy tissue
    p = tmp_path / "s.tiff"
    write_pyramid_tiff(p, rgb, mpp=0.5)
    assert p.stat().st_size > 2 * 65536  # head and tail are distinct regions
    fp = _expected_fingerprint(p)
    assert slide_fingerprint(p) == fp
    assert slide_identities(pd.DataFrame({"case_id": ["c"], "slide_path": [str(p)]}), ["c"]) == {"c": [fp]}
    assert slide_identity_attrs(p)["slide_fingerprint"] == fp
    tag = hashlib.sha256(fp.encode()).hexdigest()[:10]
    assert SlideImageCache(tmp_path / "cache").path("s", 2.5, p).name == f"s.{tag}.npy"
    RegionCache(tmp_path / "cache", n=2, size=64, magnification=5.0).coords("s", p)
    assert [q.name for q in (tmp_path / "cache" / "regions").glob("*/*.json")] == [f"s.{tag}.json"]


def test_a_copied_slide_keeps_its_cache(tmp_path):
    """A copy to another disk (new mtime, same bytes) is the same slide: not read again."""
    p = slide(tmp_path / "s.tiff", value=200)
    c = SlideImageCache(tmp_path / "cache")
    first = c.path("s", 2.5, p)
    c.get("s", p, 2.5)
    q = tmp_path / "copy" / "s.tiff"
    q.parent.mkdir()
    q.write_bytes(p.read_bytes())
    os.utime(q, ns=(10**18, 10**18))
    assert c.path("s", 2.5, q) == first


def test_regions_of_a_replaced_slide_are_sampled_again(tmp_path):
    """A slide replaced under the same id (a rescan copied with its mtime kept) gets new regions,
    not the old slide's pixels."""
    from feature_cache.regions import RegionCache

    def write(colour):
        rgb = np.full((768, 1024, 3), 236, np.uint8)
        rgb[:, 256:768] = colour  # tissue band
        write_pyramid_tiff(p, rgb, mpp=0.5)

    p = tmp_path / "s.tiff"
    write((205, 120, 170))
    st = p.stat()
    rc = RegionCache(tmp_path / "cache", n=2, size=64, magnification=5.0)
    assert abs(float(np.asarray(rc.regions("s", p))[..., 1].mean()) - 120) <= 2
    write((190, 90, 160))
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert abs(float(np.asarray(rc.regions("s", p))[..., 1].mean()) - 90) <= 2


def test_feature_files_from_before_fingerprints_are_trusted_while_the_slide_is_unchanged(tmp_path):
    """A feature file that carries only the older ``slide_hash`` attribute is not extracted again
    while its slide keeps its size and mtime; it is once the slide changed."""
    import h5py

    from feature_cache.cache import same_slide

    p = slide(tmp_path / "s.tiff", value=200)
    out = tmp_path / "s.h5"
    st = p.stat()
    with h5py.File(out, "w") as f:
        f.attrs.update({"slide_size": st.st_size, "slide_mtime_ns": st.st_mtime_ns, "slide_hash": "0" * 16})
    assert same_slide(out, p)
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert not same_slide(out, p)
