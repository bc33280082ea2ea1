"""A TCGA cohort as researchers download it (tests/helpers/tcga_cohort.py) joins completely from
every clinical source, or says exactly why not: one test per way a real download differs from the
normalized table (sections numbered below)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

import tcga_cohort as T
from bench.data.clinical import DatasetError, load_clinical
from bench.data.datasets import load_cohort, load_spec

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return T.build(tmp_path_factory.mktemp("tcga"))


def _cohort(tmp_path: Path, data: Path, source: str = "gdc", **extra: str):
    return load_cohort(str(T.write_yaml(tmp_path / "tcga.yaml", data, source, **extra)))


# 1 -- every source joins 12 of 12; GDC classic: the barcode wins over the UUID before it
@pytest.mark.parametrize("source", list(T.SOURCES))
def test_every_source_joins_12_of_12(tmp_path, data, source, caplog):
    with caplog.at_level(logging.WARNING):
        c = _cohort(tmp_path, data, source)
    assert c.n_cases == 12 and c.n_clinical == 12 and len(c.table) == 12
    assert len(c.cases("staging")) == 12 and len(c.cases("survival")) == 12
    row = c.table.set_index("case_id").loc[T.case_id(9)]
    assert row["stage"] == 3 and row["event"] == 1
    assert row["time"] == pytest.approx(T.LABELS[9][1], abs=0.02)
    assert "12 of 12 cases in the clinical table joined" in c.report()[0]
    # 2 -- the 8 slides under the symlinked batch1/ are found; 3 -- the normal slide is named
    assert c.n_slides_found == 13 and sum(p.count("/batch1/") for p in c.table["slide_path"]) == 8
    assert "1 of 13 slides are left out by the slide filter" in caplog.text
    assert "sample type 11 (solid tissue normal)" in caplog.text


def test_gdc_uuid_column_is_never_the_case_id(tmp_path):
    p = tmp_path / "clinical.tsv"
    p.write_text("case_id\tproject_id\tvital_status\n" + "".join(
        f"{T.fake_uuid(str(i))}\tTCGA-LUAD\tAlive\n" for i in range(3)))
    with pytest.raises(DatasetError, match=r"no case id column.*case_id holds GDC UUIDs.*columns: \{case_id"):
        load_clinical(p, "gdc")
    p2 = tmp_path / "c.csv"
    p2.write_text("case_id,stage\n" + "".join(f"{T.fake_uuid(str(i))},Stage I\n" for i in range(3)))
    with pytest.raises(DatasetError, match=r"holds UUIDs \(row 2"):
        load_clinical(p2, "normalized")


# 2 -- dangling links and directories named *.svs are named
def test_dangling_link_and_svs_directory_are_named(tmp_path, data, caplog):
    (tmp_path / "slides").mkdir()
    root = tmp_path / "d"
    import shutil

    shutil.copytree(data, root, symlinks=True)
    (root / "slides" / "share").symlink_to(tmp_path / "unmounted", target_is_directory=True)
    (root / "slides" / "TCGA-05-4299-01Z-00-DX1.svs").mkdir()
    (root / "slides" / "loop").symlink_to(root / "slides", target_is_directory=True)
    with caplog.at_level(logging.WARNING):
        c = _cohort(tmp_path, root)
    assert c.n_cases == 12
    why = dict(c.ignored_files)
    assert "dangling symlink" in why[str(root / "slides" / "share")]
    assert "a directory named like a slide file" in why[str(root / "slides" / "TCGA-05-4299-01Z-00-DX1.svs")]
    assert any("symlink loop" in w for w in why.values())


# 3 -- the slide filter is configurable
def test_slide_filter_configurable(tmp_path, data):
    c = _cohort(tmp_path, data, slide_filter="{sample_types: all, slide_types: all}")
    assert len(c.table) == 13 and not c.filtered
    c = _cohort(tmp_path, data, slide_filter="{sample_types: [11], slide_types: [TS]}")
    assert list(c.table["slide_id"]) == [T.slide_name(0, "11A-01-TS1")]


# 4 -- digit stages are an error that says how to declare them
def test_digit_stages_need_a_stage_map(tmp_path, data):
    p = tmp_path / "c.tsv"
    text = (data / "clinical.tsv").read_text()
    for k, roman in enumerate(T.AJCC):
        text = text.replace(f"\t{roman}\t", f"\t{k + 1}\t")
    p.write_text(text)
    with pytest.raises(DatasetError, match=r"writes stages as digits \(1, 2, 3, 4.*stage_map: \{1: I, 2: II, 3: III, 4: IV\}"):
        load_clinical(p, "gdc")
    df = load_clinical(p, "gdc", stage_map={1: "I", 2: "II", 3: "III", 4: "IV"}).set_index("case_id")
    assert df.loc[T.case_id(9), "stage"] == 3 and df.loc[T.case_id(0), "stage"] == 0
    q = tmp_path / "n.csv"
    q.write_text("case_id,stage,time,event\nTCGA-05-4200,1,3,1\nTCGA-05-4201,4,3,0\n")
    with pytest.raises(DatasetError, match="stage_map"):
        load_clinical(q, "normalized")


# 5 -- conflicting duplicate rows are an error naming the case and both values
def test_conflicting_rows_name_case_and_values(tmp_path):
    p = tmp_path / "clinical.tsv"
    p.write_text("case_id\tcase_submitter_id\tajcc_pathologic_stage\tvital_status\tdays_to_death\tdays_to_last_follow_up\n"
                 f"{T.fake_uuid('a')}\tTCGA-05-4200\tStage I\tAlive\t'--\t1852\n"
                 f"{T.fake_uuid('a')}\tTCGA-05-4200\tStage I\tDead\t152\t'--\n"
                 f"{T.fake_uuid('b')}\tTCGA-05-4201\tStage II\tAlive\t'--\t100\n"
                 f"{T.fake_uuid('b')}\tTCGA-05-4201\tStage III\tAlive\t'--\t100\n")
    with pytest.raises(DatasetError) as e:
        load_clinical(p, "gdc")
    msg = str(e.value)
    assert "TCGA-05-4200: 1852 days, censored (row 2) vs 152 days, event (row 3)" in msg
    assert "TCGA-05-4201: stage II (row 4) vs stage III (row 5)" in msg


# 6 -- '1,234', inf and non-positive times are named by file row
def test_bad_times_named_by_row(tmp_path, caplog):
    p = tmp_path / "clinical.tsv"
    p.write_text("case_submitter_id\tajcc_pathologic_stage\tvital_status\tdays_to_death\tdays_to_last_follow_up\n"
                 "TCGA-05-4200\tStage I\tAlive\t'--\t1,234\n"
                 "TCGA-05-4201\tStage I\tDead\tinf\t'--\n"
                 "TCGA-05-4202\tStage I\tDead\t-30\t'--\n"
                 "TCGA-05-4203\tStage I\tAlive\t'--\t400\n")
    with caplog.at_level(logging.WARNING):
        df = load_clinical(p, "gdc").set_index("case_id")
    assert df["time"].notna().tolist() == [False, False, False, True]
    assert "row 2 (TCGA-05-4200): days_to_last_follow_up = '1,234' (thousands separator)" in caplog.text
    assert "row 3 (TCGA-05-4201): days_to_death = 'inf' (not a finite number)" in caplog.text
    assert "TCGA-05-4202 (-30) (rows 4; times in days)" in caplog.text


# 7 -- a 72-dpi TIFF is refused with the mpp_override fix
def test_72_dpi_tiff_is_refused(tmp_path):
    import tifffile

    from feature_cache import SlideError, open_slide

    p = tmp_path / "TCGA-05-4200-01Z-00-DX1.tiff"
    img = np.full((512, 512, 3), 200, np.uint8)
    with tifffile.TiffWriter(p) as tw:  # what an image editor writes: 72 dpi
        tw.write(img, tile=(256, 256), photometric="rgb", compression="jpeg", resolution=(72, 72),
                 resolutionunit="INCH", metadata=None)
    with open_slide(p) as s:
        assert s.mpp == pytest.approx(352.8, rel=1e-3)
        with pytest.raises(SlideError, match=r"352\.8 um/px.*72 dpi.*mpp_override: 0\.25"):
            s.require_mpp()
    with open_slide(p, mpp=0.5) as s:
        assert s.require_mpp() == 0.5


# 8 -- a DICOM WSI folder is one slide
def test_dicom_folder_is_one_slide(tmp_path):
    pytest.importorskip("pydicom")
    from dicom_writer import write_dicom_wsi
    from slide_writers import pyramid_levels

    from bench.data.slides import walk
    from feature_cache import open_slide

    folder = tmp_path / "slides" / "TCGA-05-4200-01Z-00-DX1"
    write_dicom_wsi(folder, pyramid_levels(np.full((512, 512, 3), 200, np.uint8)), mpp=0.5)
    found = walk(tmp_path / "slides", ["**/*"])
    assert list(found.slides) == ["TCGA-05-4200-01Z-00-DX1"]
    with open_slide(found.slides["TCGA-05-4200-01Z-00-DX1"]) as s:
        assert s.dimensions == (512, 512) and s.level_count == 3


# 9 -- doctor computes run's verdict and exits non-zero when run would fail
def _doctor(yaml: Path, tmp_path: Path, **kw) -> tuple[bool, str]:
    import contextlib
    import io

    from bench.cli.doctor import check_dataset

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        ok = check_dataset(str(yaml), results=str(tmp_path / "results"), cache=str(tmp_path / "cache"), **kw)
    return ok, buf.getvalue()


def test_doctor_and_run_agree(tmp_path, data):
    y = T.write_yaml(tmp_path / "tcga.yaml", data, "gdc")
    ok, out = _doctor(y, tmp_path)
    assert ok, out
    assert "12 of 12 cases in the clinical table joined; 12 of 13 slides found used" in out
    assert "left out by the slide filter: 1 of 13 slides: sample type 11" in out
    assert "staging: 12 of 12 cases will be used" in out and "every task fills 5 folds" in out
    assert not (tmp_path / "results").exists()  # doctor writes nothing
    four = tmp_path / "four.csv"
    four.write_text(T.normalized(list(enumerate(T.LABELS))[:4]))
    y4 = T.write_yaml(tmp_path / "four.yaml", data, "normalized", clinical=str(four))
    ok, out = _doctor(y4, tmp_path)
    assert not ok and "run would fail: staging: 4 of 4 joined cases have its labels, fewer than the 5 folds" in out
    with pytest.raises(DatasetError, match="fewer than the 5 folds"):
        load_cohort(str(y4)).require_folds(["staging"], 5)  # what run calls before writing splits
    ok, out = _doctor(y4, tmp_path, n_folds=4)
    assert ok, out


def test_doctor_names_unwritable_roots(tmp_path, data):
    y = T.write_yaml(tmp_path / "tcga.yaml", data, "gdc")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    import contextlib
    import io

    from bench.cli.doctor import check_dataset

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        ok = check_dataset(str(y), results=str(blocker / "results"), cache=str(tmp_path / "c"))
    assert not ok and f"results root {blocker / 'results'} is not writable ({blocker} is not a directory)" in buf.getvalue()


# 10 -- config typos are errors naming file, line and key
@pytest.mark.parametrize("line,match", [
    ("train: {two_stage: {epochs: 1}}", r"line 8: `train`: unknown key 'two_stage' \(did you mean 'two-stage'\?\)"),
    ("model: {'absmil.*': {dropout: 0.1}}", r"`model.absmil.\*`: 'absmil.\*' is neither a method family"),
    ("columns: {stgae: x}", r"`columns`: unknown key 'stgae' \(did you mean 'stage'\?\)"),
    ("allow_random_weights: \"false\"", r"`allow_random_weights` must be true or false, got the string 'false' \(write false without quotes\)"),
    ("slide_glob_: '*.svs'", r"unknown key 'slide_glob_' \(did you mean 'slide_glob'\?\)"),
    ("features: {resnet50: {path: f, encoder: resnet50, patch_size: 256}}", r"`magnification` is required"),
])
def test_config_typos_are_errors(tmp_path, data, line, match):
    y = T.write_yaml(tmp_path / "bad.yaml", data, "gdc")
    y.write_text(y.read_text() + line + "\n")
    with pytest.raises(DatasetError, match=match):
        load_spec(str(y))


def test_case_id_upper_case_list_and_tab_yaml(tmp_path, data):
    y = T.write_yaml(tmp_path / "bad.yaml", data, "gdc")
    y.write_text(y.read_text().replace("case_id: tcga", "case_id: TCGA"))
    with pytest.raises(DatasetError, match=r"line 6: `case_id` must be one of 'tcga', 'stem', got the string 'TCGA' \(did you mean 'tcga'\?\)"):
        load_spec(str(y))
    y.write_text("- root: x\n- slides: y\n")
    with pytest.raises(DatasetError, match=r"bad.yaml, line 1: the dataset config is a list"):
        load_spec(str(y))
    y.write_text("root: x\nmodel:\n\tend-to-end: {}\n")
    with pytest.raises(DatasetError, match=r"bad.yaml, line 3, column 1: not valid YAML.*tab"):
        load_spec(str(y))


def test_shipped_configs_validate():
    from bench.data.datasets import list_datasets

    for name in list_datasets():
        load_spec(name)


# 11 -- a worker waiting on a slide lock says who holds it; dead holders' locks are broken
HOLD = """
import sys, time
from filelock import FileLock
from feature_cache.cache import acquire_talking
lock = FileLock(sys.argv[1])
acquire_talking(lock, "slide S", blocking=True)
print("held", flush=True)
time.sleep(60)
"""


def test_lock_says_who_holds_it_and_breaks_dead_holders(tmp_path, caplog, monkeypatch):
    from filelock import FileLock

    from feature_cache.cache import acquire_talking, release_talking

    path = str(tmp_path / "S.h5.lock")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    holder = subprocess.Popen([sys.executable, "-c", HOLD, path], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout.readline().strip() == "held"
        os.kill(holder.pid, signal.SIGSTOP)  # Ctrl-Z / scontrol suspend
        info = json.loads(Path(path + ".info").read_text())
        assert info["pid"] == holder.pid and info["host"] and info["since"]
        lock = FileLock(path)
        assert not acquire_talking(lock, "slide S", blocking=False)
        with caplog.at_level(logging.WARNING):
            import threading

            got = []
            def wait_then_release() -> None:  # filelock locks are per thread: release where acquired
                got.append(acquire_talking(lock, "slide S", blocking=True, report_every=0.3))
                release_talking(lock)

            t = threading.Thread(target=wait_then_release)
            t.start()
            time.sleep(1.2)
            waits = [r for r in caplog.records if "waiting" in r.getMessage()]
            assert len(waits) >= 2, caplog.text  # and keeps saying it
            assert f"held by pid {holder.pid} on {info['host']} since {info['since']}" in waits[0].getMessage()
            assert "scontrol resume" in waits[0].getMessage()
            os.kill(holder.pid, signal.SIGCONT)
            holder.kill()
            t.join(10)
        assert got == [True] and not Path(path + ".info").exists()
    finally:
        holder.kill()
        holder.wait()
    # a holder that is gone while its lock is still held (the fd lived on elsewhere): broken
    keeper = FileLock(path)
    keeper.acquire(timeout=10)
    Path(path + ".info").write_text(json.dumps({"pid": 2 ** 22 + 12345, "host": info["host"], "since": "x"}))
    with caplog.at_level(logging.WARNING):
        assert acquire_talking(FileLock(path), "slide S", blocking=True, report_every=0.3)
    assert "breaking the lock" in caplog.text and "no longer running" in caplog.text
    keeper.release()


# 12 -- a public TRIDENT/CLAM feature release as the input of MIL rows, with no slides
def _release(root: Path, dim: int = 1024, **attrs) -> Path:
    rng = np.random.default_rng(0)
    folder = root / "TCGA-LUAD"  # per-project folders
    for i in range(12):
        for sample in ("01Z-00-DX1",) + (("11A-01-TS1",) if i == 0 else ()):
            p = folder / f"{T.slide_name(i, sample)}.h5"
            p.parent.mkdir(parents=True, exist_ok=True)
            n = 6 + i % 3
            with h5py.File(p, "w") as f:
                f["features"] = rng.normal(size=(n, dim)).astype(np.float32) + T.LABELS[i][0]
                d = f.create_dataset("coords", data=np.array([[512 * k, 0] for k in range(n)], np.int64))
                for k, v in attrs.items():
                    d.attrs[k] = v
    return root


def _features_yaml(tmp_path: Path, data: Path, release: Path, **decl) -> Path:
    d = {"path": str(release / "TCGA-LUAD"), "encoder": "resnet50", "patch_size": 256, "magnification": 20, **decl}
    return T.write_yaml(tmp_path / "feat.yaml", data, "gdc", slides="no-slides-here",
                        features="{resnet50: " + json.dumps(d) + "}")


def test_pre_extracted_release_runs_mil_without_slides(tmp_path, data):
    from bench.engine.inputs import make_inputs
    from bench.engine.runner import run
    from bench.registry import list_methods

    rel = _release(tmp_path / "trident", patch_size=256, patch_size_level0=512, target_magnification=20)
    y = _features_yaml(tmp_path, data, rel)
    c = load_cohort(str(y))
    assert c.source == "features" and c.n_cases == 12 and len(c.table) == 12  # the normal one filtered
    assert c.filtered and "sample type 11" in next(iter(c.filtered))
    spec = list_methods("meanmil.resnet50")[0]
    fi = make_inputs(spec, c, tmp_path / "cache", {}, progress=False)
    fi.ensure()
    assert not fi.missing and fi.has(T.case_id(3))
    (w,) = fi.provenance()
    assert "pre-extracted resnet50" in w.label and not w.random
    assert fi.spec.source.startswith("pre-extracted:") and fi.spec.label() == "features:resnet50"
    report = run([spec], str(y), folds=[0], tasks=["staging"], results=tmp_path / "res", cache=tmp_path / "cache",
                 train_overrides={"epochs": 1}, progress=False)
    assert not report.failed, report.failed
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").rglob("*.h5"))  # no re-extraction
    ok, out = _doctor(y, tmp_path)
    assert ok and "features resnet50 (pre-extracted" in out and "12 of 12 slides have a valid file" in out


def test_pre_extracted_release_checks_declared_attributes(tmp_path, data):
    from bench.engine.inputs import make_inputs
    from bench.registry import list_methods

    rel = _release(tmp_path / "trident", patch_size=224, target_magnification=20)
    c = load_cohort(str(_features_yaml(tmp_path, data, rel)))
    fi = make_inputs(list_methods("meanmil.resnet50")[0], c, tmp_path / "cache", {}, progress=False)
    fi.ensure()
    assert len(fi.missing) == 12
    ok, out = _doctor(_features_yaml(tmp_path, data, rel), tmp_path)
    assert "patches of 224 px, the dataset declares patch_size 256" in out
    rel2 = _release(tmp_path / "conch", dim=512)
    c = load_cohort(str(_features_yaml(tmp_path, data, rel2)))
    fi = make_inputs(list_methods("meanmil.resnet50")[0], c, tmp_path / "cache", {}, progress=False)
    fi.ensure()
    assert len(fi.missing) == 12
