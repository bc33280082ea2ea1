"""Importing CLAM (h5_files/, pt_files/) and TRIDENT (flat *.h5) feature directories: valid
files land in the cache exactly as written; every kind of invalid file is refused by name."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pytest

import feature_cache as fc
from bench.data.demo import write_pyramid_tiff
from feature_cache.importer import ImportError_

torch = pytest.importorskip("torch")


@dataclass
class FakeEncoder:
    """What the cache needs of an encoder (name, dim, key fields): the import never runs one."""

    name: str = "conch"
    dim: int = 8
    patch_size: int = 256
    magnification: float = 20.0
    fingerprint: str = "feedfacefeedface"
    weights_source: str = "explicit path: /w/conch.bin"
    random_weights: bool = False


def _h5(path: Path, feats: np.ndarray | None, coords: np.ndarray | None, **coord_attrs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        if feats is not None:
            f["features"] = feats
        if coords is not None:
            d = f.create_dataset("coords", data=coords)
            for k, v in coord_attrs.items():
                d.attrs[k] = v
    return path


@pytest.fixture(scope="module")
def slide(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("imp") / "S.tiff"
    write_pyramid_tiff(p, np.full((1024, 1536, 3), 230, np.uint8), mpp=0.5)  # 20x, 1536x1024
    return p


def _grid(n: int) -> np.ndarray:
    return np.array([[256 * (i % 5), 256 * (i // 5)] for i in range(n)], np.int64)


def test_clam_and_trident_layouts(tmp_path: Path, slide: Path) -> None:
    rng = np.random.default_rng(0)
    clam, trident = tmp_path / "clam", tmp_path / "trident" / "features_conch_v1"
    want = {}
    # CLAM: A has h5 (features + coords); B has a .pt with its coords in h5_files
    want["A"] = (rng.normal(size=(7, 8)).astype(np.float32), _grid(7))
    _h5(clam / "h5_files" / "A.h5", *want["A"], patch_size=256, patch_level=0)
    want["B"] = (rng.normal(size=(4, 8)).astype(np.float32), _grid(4))
    (clam / "pt_files").mkdir(parents=True)
    torch.save(torch.from_numpy(want["B"][0]), clam / "pt_files" / "B.pt")
    _h5(clam / "h5_files" / "B.h5", None, want["B"][1])
    # TRIDENT: flat, features with a batch axis of 1, level-0 patch size recorded
    want["C"] = (rng.normal(size=(5, 8)).astype(np.float32), _grid(5))
    _h5(trident / "C.h5", want["C"][0][None], want["C"][1], patch_size_level0=256,
        target_magnification=20)
    enc, cache = FakeEncoder(), fc.FeatureCache(tmp_path / "cache")
    slides = {k: slide for k in ("A", "B", "C", "D")}
    r1 = fc.import_features(cache, clam, enc, slides=slides)
    r2 = fc.import_features(cache, trident, enc, slides=slides)
    assert sorted(r1.imported) == ["A", "B"] and r2.imported == ["C"]
    assert "D" in r1.missing and not r1.failed and not r2.failed
    for sid, (f, c) in want.items():
        got_f, got_c = cache.load(sid, enc)  # what the runner reads
        np.testing.assert_array_equal(got_f, f)
        np.testing.assert_array_equal(got_c, c)
        attrs = cache.load_attrs(sid, enc)
        assert attrs["imported_from"].endswith((".h5", ".pt")) and attrs["mpp"] == 0.5
    assert fc.import_features(cache, clam, enc, slides=slides).skipped == ["A", "B"]


@pytest.mark.parametrize("case,feats,coords,attrs,match", [
    ("dim", np.zeros((3, 16), np.float32), _grid(3), {}, "16-d but encoder 'conch' is 8-d"),
    ("nan", np.full((3, 8), np.nan, np.float32), _grid(3), {}, "NaN"),
    ("count", np.zeros((3, 8), np.float32), _grid(2), {}, r"coords have shape \(2, 2\) for 3"),
    ("outside", np.zeros((3, 8), np.float32), _grid(3) + 2000, {}, "outside the 1536x1024 slide"),
    ("float-coords", np.zeros((3, 8), np.float32), _grid(3) + 0.5, {}, "non-negative integers"),
    ("patch", np.zeros((3, 8), np.float32), _grid(3), {"patch_size_level0": 512}, "512 level-0 px"),
    ("mag", np.zeros((3, 8), np.float32), _grid(3), {"target_magnification": 10}, "at 10x"),
    ("no-coords", np.zeros((3, 8), np.float32), None, {}, "no patch coordinates"),
])
def test_invalid_files_are_refused_by_name(tmp_path: Path, slide: Path, case, feats, coords,
                                           attrs, match) -> None:
    src = tmp_path / "src"
    _h5(src / "h5_files" / "X.h5", feats, coords, **attrs)
    cache, enc = fc.FeatureCache(tmp_path / "cache"), FakeEncoder()
    rep = fc.import_features(cache, src, enc, slides={"X": slide})
    assert rep.imported == [] and "X" in rep.failed
    assert "X.h5" in rep.failed["X"]
    assert re.search(match, rep.failed["X"]), rep.failed["X"]
    assert not cache.has("X", enc)  # nothing half-imported
    with pytest.raises(ImportError_, match=match):
        fc.import_features(cache, src, enc, slides={"X": slide}, skip_errors=False)


def test_truncated_file_random_encoder_and_empty_dir(tmp_path: Path, slide: Path) -> None:
    src = tmp_path / "src"
    good = _h5(src / "T.h5", np.zeros((3, 8), np.float32), _grid(3))
    data = good.read_bytes()
    good.write_bytes(data[: len(data) // 3])
    rep = fc.import_features(fc.FeatureCache(tmp_path / "c"), src, FakeEncoder(), slides={"T": slide})
    assert "truncated" in rep.failed["T"]
    with pytest.raises(ImportError_, match="random weights"):
        fc.import_features(fc.FeatureCache(tmp_path / "c"), src, FakeEncoder(random_weights=True))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImportError_, match="no .h5 or .pt feature files"):
        fc.import_features(fc.FeatureCache(tmp_path / "c"), tmp_path / "empty", FakeEncoder())
