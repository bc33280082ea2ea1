"""Faults 1-4: slides that cannot give features. The case is left out with a message naming the
slide and the fix; every other case and every finished unit is kept; the run completes."""

import json

import numpy as np
from PIL import Image

from conftest import case_id, slide_id, write_slide


def _run_with_fault(cohort, inject, i):
    """fold 0 done -> fault on case i's slide -> full run. Returns the full run's result."""
    assert cohort.run("--folds", "0").code == 0
    before = cohort.done()
    inject(cohort.slide(i))
    r = cohort.run()
    assert r.code == 0, r.text
    cohort.assert_kept(before)
    cohort.assert_complete()
    for p in set(cohort.done()) - set(before):  # every new unit records the case it could not use
        assert json.loads(p.read_text())["cases_without_input"] == [case_id(i)], p
    assert f"1 case(s) have no input and are left out (e.g. {case_id(i)})" in r.err
    # the finished units were made from the slide's earlier, readable version: kept, and said so
    assert f"slide(s) {slide_id(i)} changed on disk and cannot be read now" in r.err
    return r


def test_f01_truncated_slide(cohort):
    def truncate(p):
        data = p.read_bytes()
        p.write_bytes(data[: len(data) // 3])

    r = _run_with_fault(cohort, truncate, 5)
    assert f"features of slide {slide_id(5)} unavailable" in r.err
    assert str(cohort.slide(5)) in r.err and "truncated or corrupt" in r.err and "re-download" in r.err
    assert not list(cohort.feature_file(slide_id(4)).parent.glob(f".{slide_id(5)}.h5.*.tmp"))
    # the slide is fixed: exactly the units that ran without its case are redone, with it
    without = {p: v for p, v in cohort.done().items() if json.loads(v[1])["cases_without_input"]}
    with_it = {p: v for p, v in cohort.done().items() if p not in without}
    assert len(without) == 8 and len(with_it) == 2  # folds 1-4 of both tasks ran without it
    write_slide(cohort.slide(5), seed=5)
    r = cohort.run()
    assert r.code == 0, r.text
    assert "8 unit(s) run, 2 already done" in r.out, r.out
    assert f"the slide files of 1 case(s) changed on disk (rescanned, replaced, added or removed: {case_id(5)})" \
        in r.err
    cohort.assert_kept(with_it)
    for p in without:
        assert json.loads(p.read_text())["cases_without_input"] == []
        aside = list(p.parent.parent.glob(f"{p.parent.name}.superseded-*/metrics.json"))
        assert len(aside) == 1 and aside[0].read_text() == without[p][1]  # the old result, kept
    assert "nothing to do" in cohort.run().out


def test_f02_unsupported_format(cohort):
    def to_png(p):  # a PNG saved under the slide's name, and a Zeiss file the glob cannot take
        Image.fromarray(np.full((300, 400, 3), 200, np.uint8)).save(p, format="PNG")
        (p.parent / "TCGA-FA-0066-01Z-00-DX1.czi").write_bytes(b"ZISRAWFILE" + bytes(100))

    cohort.write_yaml(slide_glob="*")
    r = _run_with_fault(cohort, to_png, 6)
    assert f"{cohort.slide(6)}: unsupported format: the file is a PNG image" in r.err
    assert "convert it to a pyramidal tiled TIFF" in r.err
    assert "TCGA-FA-0066-01Z-00-DX1.czi: unsupported format '.czi'" in r.err


def test_f03_slide_without_tissue(cohort):
    r = _run_with_fault(cohort, lambda p: write_slide(p, seed=7, white=True), 7)
    assert f"slide {slide_id(7)} ({cohort.slide(7)}): no tissue found at 20x" in r.err
    assert "Fix: look at it (`bench extract --visualize`)" in r.err
    # the empty-but-valid file counts as done: the next run neither segments it again nor fails
    r = cohort.run()
    assert r.code == 0 and "nothing to do" in r.out


def test_f04_missing_mpp(cohort):
    r = _run_with_fault(cohort, lambda p: write_slide(p, seed=8, mpp=None), 8)
    assert f"features of slide {slide_id(8)} unavailable" in r.err
    assert "no resolution metadata" in r.err and "`mpp_override: 0.25` in the dataset's YAML" in r.err
    cohort.write_yaml(mpp_override=0.5)  # the user's fix: every unit's identity changes, all are redone
    r = cohort.run()
    assert r.code == 0 and "no resolution metadata" not in r.err
    assert cohort.feature_file(slide_id(8)).is_file()
    m = json.loads((cohort.unit_dir("staging", 1) / "metrics.json").read_text())
    assert m["cases_without_input"] == []
