"""`bench extract` end to end in a subprocess: --visualize writes one overview per slide, and
--import files a CLAM directory under the encoder's key (invalid files reported, exit status 1)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import bench.registry  # noqa: F401 -- registers the declared encoders (configs/encoders)
import feature_cache as fc

REPO = Path(__file__).resolve().parents[2]


def bench(*args, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_extract_visualize_then_import(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    spec = tmp_path / "mini.yaml"
    spec.write_text(f"""description: mini demo for tests
generator: demo
generator_args: {{n_cases: 4, seed: 2}}
root: {tmp_path / 'data'}
slides: slides
slide_glob: "*.tiff"
clinical: clinical.csv
clinical_format: normalized
tasks: [staging]
allow_random_weights: true
""")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "BENCH_CACHE": str(tmp_path / "cache"),
           "BENCH_STATE_DIR": str(tmp_path / "state")}
    p = bench("extract", "--dataset", spec, "--encoders", "resnet50", "--visualize", "-q", env=env)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "(random weights)" in p.stdout
    enc = fc.get_encoder("resnet50", allow_random=True)
    cache = fc.FeatureCache(tmp_path / "cache")
    h5s = sorted(cache.dir_for(enc).glob("*.h5"))
    pngs = sorted((cache.dir_for(enc) / "overview").glob("*.png"))
    assert len(h5s) >= 3 and [p.stem for p in pngs] == [p.stem for p in h5s]

    # a "CLAM" directory made elsewhere with real weights (here: the seeded init, saved to a file)
    weights = tmp_path / "r50.pth"
    torch.save({k.split("body.", 1)[-1]: v for k, v in enc.model.state_dict().items()}, weights)
    clam = tmp_path / "clam" / "h5_files"
    clam.mkdir(parents=True)
    for h in h5s:
        shutil.copy(h, clam / h.name)
    bad = clam / h5s[0].name
    bad.write_bytes(bad.read_bytes()[:200])  # one truncated file
    env["BENCH_WEIGHTS_RESNET50"] = str(weights)
    p = bench("extract", "--dataset", spec, "--encoders", "resnet50", "--import",
              tmp_path / "clam", "-q", env=env)
    assert p.returncode == 1, p.stdout + p.stderr
    assert f"{len(h5s) - 1} imported" in p.stdout and h5s[0].stem in p.stdout and "truncated" in p.stdout
    real = fc.get_encoder("resnet50", weights=weights)
    assert not real.random_weights and cache.dir_for(real) != cache.dir_for(enc)
    for h in h5s[1:]:
        got, coords = cache.load(h.stem, real)
        want, want_c = cache.load(h.stem, enc)
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(coords, want_c)
    assert not cache.has(h5s[0].stem, real)


@pytest.mark.parametrize("argv,yaml_workers,env,want", [
    ([], None, {}, None),  # none: the library default (cores - 1, 1 to 4)
    ([], None, {"BENCH_EXTRACT_WORKERS": "2"}, 2),  # the environment
    ([], 0, {"BENCH_EXTRACT_WORKERS": "2"}, 0),  # the dataset YAML's extract_workers beats it
    (["--workers", "3"], 0, {"BENCH_EXTRACT_WORKERS": "2"}, 3),  # the command line wins
    (["--workers", "0", "--threads", "2"], None, {}, 0),
])
def test_extract_workers_reach_the_cache(monkeypatch: pytest.MonkeyPatch, argv: list[str],
                                         yaml_workers: int | None, env: dict, want: int | None) -> None:
    """`bench extract --workers/--threads`, `extract_workers:` and $BENCH_EXTRACT_WORKERS reach
    FeatureCache.extract."""
    import types

    import feature_cache
    from bench.data import datasets
    from bench.cli import build_parser

    seen: dict = {}

    class Cache:
        def __init__(self, root, mpp=None):
            pass

        def extract(self, paths, enc, **kw):
            seen.update(kw)
            return types.SimpleNamespace(summary=lambda: "ok", failed={})

    spec = datasets.DatasetSpec(name="x", extract_workers=yaml_workers, allow_random_weights=True)
    cohort = types.SimpleNamespace(spec=spec, table={"slide_id": ["S"], "slide_path": ["/s.tiff"]})
    monkeypatch.setattr(datasets, "load_cohort", lambda name: cohort)
    monkeypatch.setattr(feature_cache, "FeatureCache", Cache, raising=False)
    monkeypatch.setattr(feature_cache, "get_encoder", lambda *a, **k: types.SimpleNamespace(
        weights_label="random"), raising=False)
    monkeypatch.delenv("BENCH_EXTRACT_WORKERS", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    args = build_parser().parse_args(["extract", "--dataset", "x", *argv])
    assert args.func(args) == 0
    assert seen["num_workers"] == want
    assert seen["threads"] == (2 if "--threads" in argv else None)


@pytest.mark.parametrize("argv,env,reader,lock_s", [
    ([], {}, "auto", 60.0),
    ([], {"BENCH_SLIDE_BACKEND": "tiffslide", "BENCH_LOCK_REPORT_S": "2.5"}, "tiffslide", 2.5),
    (["--reader", "openslide"], {"BENCH_SLIDE_BACKEND": "tiffslide"}, "openslide", 60.0),  # the command line wins
    (["--reader", "auto"], {"BENCH_SLIDE_BACKEND": "tiffslide"}, "auto", 60.0),
])
def test_extract_reader_and_lock_report_reach_the_cache(monkeypatch: pytest.MonkeyPatch, argv: list[str], env: dict,
                                                        reader: str, lock_s: float) -> None:
    """$BENCH_SLIDE_BACKEND (or --reader) and $BENCH_LOCK_REPORT_S reach FeatureCache.extract and
    import_features as parameters."""
    import types

    import feature_cache
    from bench.data import datasets
    from bench.cli import build_parser

    seen: dict = {}

    class Cache:
        def __init__(self, root, mpp=None):
            pass

        def extract(self, paths, enc, **kw):
            seen.update(kw)
            return types.SimpleNamespace(summary=lambda: "ok", failed={})

    def import_features(cache, src, enc, **kw):
        seen["import_reader"] = kw["reader"]
        return types.SimpleNamespace(summary=lambda: "ok", failed={})

    spec = datasets.DatasetSpec(name="x", allow_random_weights=True)
    cohort = types.SimpleNamespace(spec=spec, table={"slide_id": ["S"], "slide_path": ["/s.tiff"]})
    monkeypatch.setattr(datasets, "load_cohort", lambda name: cohort)
    monkeypatch.setattr(feature_cache, "FeatureCache", Cache, raising=False)
    monkeypatch.setattr(feature_cache, "import_features", import_features, raising=False)
    monkeypatch.setattr(feature_cache, "get_encoder", lambda *a, **k: types.SimpleNamespace(
        weights_label="random"), raising=False)
    for k in ("BENCH_SLIDE_BACKEND", "BENCH_LOCK_REPORT_S"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    args = build_parser().parse_args(["extract", "--dataset", "x", *argv])
    assert args.func(args) == 0
    assert (seen["reader"], seen["lock_report_s"]) == (reader, lock_s)
    args = build_parser().parse_args(["extract", "--dataset", "x", "--import", "/nowhere", *argv])
    assert args.func(args) == 0
    assert seen["import_reader"] == reader
