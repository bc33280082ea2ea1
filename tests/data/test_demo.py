"""The demo cohort: real pyramidal TIFFs both readers open, a sane clinical table, determinism,
idempotence and planted signals. A tiny cohort (a few cases) keeps these fast."""

from __future__ import annotations

import csv
import hashlib
import json
import re
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from bench.data.demo import (
    DEMO_VERSION,
    slide_specs,
    demo_specs,
    generate_demo,
    is_demo_complete,
    render_slide,
)

BARCODE = re.compile(r"^DEMO-[0-9A-Z]{2}-\d{4}-01Z-00-DX\d$")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_demo(tmp_path_factory.mktemp("demo") / "demo", seed=0, n_cases=6)


def _read_clinical(root: Path) -> list[dict[str, str]]:
    with open(root / "clinical.csv", newline="") as f:
        return list(csv.DictReader(f))


def _pixel_hashes(root: Path) -> dict[str, str]:
    out = {}
    for p in sorted((root / "slides").glob("*.tiff")):
        with tifffile.TiffFile(p) as tf:
            out[p.name] = hashlib.sha256(tf.pages[0].asarray().tobytes()).hexdigest()
    return out


def test_layout_and_clinical_table(tiny: Path) -> None:
    manifest = json.loads((tiny / "MANIFEST.json").read_text())
    assert manifest["version"] == DEMO_VERSION and manifest["seed"] == 0
    rows = _read_clinical(tiny)
    assert list(rows[0]) == ["case_id", "stage", "time", "event"]
    slides = sorted(p.stem for p in (tiny / "slides").glob("*.tiff"))
    assert not list((tiny / "slides").glob("*.tmp"))
    assert all(BARCODE.match(s) for s in slides), slides
    cases = {r["case_id"] for r in rows}
    assert {s[:12] for s in slides} == cases  # TCGA rule: case id = first 12 characters
    per_case = {c: sum(s.startswith(c) for s in slides) for c in cases}
    assert max(per_case.values()) == 2  # some case has two slides
    assert {int(r["stage"]) for r in rows} == {0, 1, 2, 3}
    assert all(float(r["time"]) > 0 and r["event"] in ("0", "1") for r in rows)
    assert set(manifest["files"]) == {f"slides/{s}.tiff" for s in slides} | {"clinical.csv"}


def test_full_cohort_label_design() -> None:
    cases = demo_specs(seed=0, n_cases=48)
    stages = np.array([c.stage for c in cases])
    assert all((stages == s).sum() >= 8 for s in range(4))
    events = np.array([c.event for c in cases])
    assert 0.40 <= events.mean() <= 0.50
    assert sum(len(c.slide_ids) == 2 for c in cases) >= 5
    assert len({c.case_id for c in cases}) == 48


def test_survival_depends_on_stage_and_arrangement() -> None:
    """The planted model: risk rises with stage and with dispersion (long-range signal)."""
    from sksurv.metrics import concordance_index_censored

    cases = demo_specs(seed=0, n_cases=48)
    time_ = np.array([c.time for c in cases])
    event = np.array([c.event for c in cases], dtype=bool)
    stage = np.array([c.stage for c in cases], dtype=float)
    disp = np.array([c.dispersion for c in cases])
    c_both = concordance_index_censored(event, time_, 0.7 * stage + 1.6 * disp)[0]
    c_stage = concordance_index_censored(event, time_, stage)[0]
    assert c_both > 0.65
    assert c_both > c_stage  # arrangement adds information beyond stage
    assert c_both < 0.95  # but nothing is perfectly separable


@pytest.mark.parametrize("backend", ["openslide", "tiffslide"])
def test_readers_see_pyramid_and_mpp(tiny: Path, backend: str) -> None:
    if backend == "openslide":
        import openslide as reader

        open_ = reader.OpenSlide
        key = "openslide.mpp-x"
    else:
        import tiffslide as reader

        open_ = reader.TiffSlide
        key = "tiffslide.mpp-x"
    for p in sorted((tiny / "slides").glob("*.tiff")):
        s = open_(str(p))
        try:
            w, h = s.dimensions
            assert 1024 <= w <= 2560 and 1024 <= h <= 2560 and w != h
            assert float(s.properties[key]) == pytest.approx(0.5, rel=1e-3)
            assert s.level_count >= 2
            for k, d in enumerate(s.level_downsamples):
                assert d == pytest.approx(4.0**k, rel=0.02)
        finally:
            s.close()


def test_level1_matches_downsampled_level0(tiny: Path) -> None:
    import openslide

    p = sorted((tiny / "slides").glob("*.tiff"))[0]
    s = openslide.OpenSlide(str(p))
    w, h = s.dimensions
    thumb = np.asarray(s.get_thumbnail((w // 16, h // 16)).convert("RGB")).min(axis=2)
    ty, tx = np.argwhere(thumb < 200)[len(np.argwhere(thumb < 200)) // 2]  # a tissue point
    x = int(np.clip(tx * 16 - 256, 0, w - 512)) // 4 * 4
    y = int(np.clip(ty * 16 - 256, 0, h - 512)) // 4 * 4
    full = s.read_region((x, y), 0, (512, 512)).convert("RGB").resize((128, 128), Image.BOX)
    low = s.read_region((x, y), 1, (128, 128)).convert("RGB")
    s.close()
    diff = np.abs(np.asarray(full, float) - np.asarray(low, float))
    print("mean abs diff level1 vs downsampled level0:", diff.mean())
    assert diff.mean() < 6.0


def test_deterministic_and_idempotent(tmp_path: Path, tiny: Path) -> None:
    again = generate_demo(tmp_path / "again", seed=0, n_cases=6)
    assert (again / "clinical.csv").read_bytes() == (tiny / "clinical.csv").read_bytes()
    assert _pixel_hashes(again) == _pixel_hashes(tiny)

    mtimes = {p: p.stat().st_mtime_ns for p in (again / "slides").iterdir()}
    t0 = time.perf_counter()
    generate_demo(again, seed=0, n_cases=6)  # matching manifest: nothing to do
    assert time.perf_counter() - t0 < 0.5
    assert {p: p.stat().st_mtime_ns for p in (again / "slides").iterdir()} == mtimes


def test_other_seed_differs_and_replaces_stale_files(tmp_path: Path) -> None:
    root = generate_demo(tmp_path / "d", seed=0, n_cases=4)
    first = _read_clinical(root)
    generate_demo(root, seed=1, n_cases=4)
    assert is_demo_complete(root, seed=1, n_cases=4)
    assert not is_demo_complete(root, seed=0, n_cases=4)
    assert _read_clinical(root) != first
    manifest = json.loads((root / "MANIFEST.json").read_text())
    on_disk = {f"slides/{p.name}" for p in (root / "slides").glob("*.tiff")}
    assert on_disk == {f for f in manifest["files"] if f.startswith("slides/")}


def test_interrupted_generation_is_redone(tmp_path: Path) -> None:
    """No manifest (the last file written) means unfinished, whatever else is there."""
    root = generate_demo(tmp_path / "d", seed=0, n_cases=4)
    (root / "MANIFEST.json").unlink()
    victim = sorted((root / "slides").glob("*.tiff"))[0]
    victim.write_bytes(victim.read_bytes()[:1000])  # a half-written slide
    assert not is_demo_complete(root, 0, 4)
    generate_demo(root, seed=0, n_cases=4)
    assert is_demo_complete(root, 0, 4)
    with tifffile.TiffFile(victim) as tf:
        assert tf.pages[0].asarray().shape[2] == 3


def test_local_signal_nuclei_grow_with_stage() -> None:
    """Inside tumour tissue, dark nucleus pixels are more frequent at stage 3 than at stage 0."""
    cases = demo_specs(seed=0, n_cases=8)
    dark = {0: [], 3: []}
    for spec in slide_specs(0, cases):
        if spec.case.stage in dark:
            r = render_slide(spec)
            tissue = r.tissue.repeat(2, 0).repeat(2, 1)[: r.rgb.shape[0], : r.rgb.shape[1]]
            lum = r.rgb.mean(axis=2)[tissue]
            dark[spec.case.stage].append(float((lum < 130).mean()))
    print("dark-pixel fraction by stage:", dark)
    assert np.mean(dark[3]) > 2 * np.mean(dark[0])


@pytest.mark.slow
def test_full_demo_generates_fast(tmp_path: Path) -> None:
    t0 = time.perf_counter()
    generate_demo(tmp_path / "full", seed=0, n_cases=48)
    dt = time.perf_counter() - t0
    print(f"full demo generated in {dt:.1f} s")
    assert dt < 30
