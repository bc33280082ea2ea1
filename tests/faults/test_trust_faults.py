"""Faults 19-20: untrusted checkpoints and ids that would escape the output directories; and
`bench doctor --dataset` finding every problem before any compute."""

import ast
import os
import pickle
from pathlib import Path

import pytest
import torch

from conftest import REPO, case_id, slide_id, write_slide
from sources import PROJECT_DIRS, project_files


class _Payload:
    """Pickles to a call of os.system: what a malicious checkpoint carries."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def test_f19_pickle_payload_checkpoint_is_refused(cohort, tmp_path, monkeypatch):
    assert cohort.run("--folds", "0").code == 0
    before = cohort.done()
    marker = tmp_path / "PAYLOAD-RAN"
    evil = tmp_path / "resnet50-weights.pth"
    torch.save({"conv1.weight": torch.zeros(1), "extra": _Payload(marker)}, evil)
    assert b"system" in evil.read_bytes()  # the payload is really in the file
    monkeypatch.setenv("BENCH_WEIGHTS_RESNET50", str(evil))
    r = cohort.run(command="extract")
    assert r.code == 2
    assert f"{evil}: refused: this checkpoint holds more than tensors" in r.err
    assert "GLOBAL posix.system" in r.err and "Fix: use weights from a trusted source as .safetensors" in r.err
    r = cohort.run()
    assert r.code == 1 and "EncoderWeightsError" in r.out and "refused" in r.out
    assert not marker.exists()  # the payload never ran
    cohort.assert_kept(before)
    monkeypatch.delenv("BENCH_WEIGHTS_RESNET50")  # the user's fix: drop the untrusted file
    assert cohort.run().code == 0
    cohort.assert_kept(before)
    cohort.assert_complete()


def _sources(root: Path) -> list[Path]:
    """The project's own source files, tests aside: never a .venv's or data's (tests/helpers/sources.py)."""
    return project_files(root, dirs=tuple(d for d in PROJECT_DIRS if d != "tests"))


def _torch_load_calls(root: Path):
    for path in _sources(root):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load" \
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch":
                yield path, node


def _assert_weights_only(root: Path) -> None:
    calls = list(_torch_load_calls(root))
    assert calls, "no torch.load found: the scan is broken"
    for path, node in calls:
        kw = {k.arg: k.value for k in node.keywords}
        assert "weights_only" in kw and isinstance(kw["weights_only"], ast.Constant) and kw["weights_only"].value is True, \
            f"{path}:{node.lineno}: torch.load without weights_only=True"
    for path in _sources(root):  # and nothing unpickles by other means
        text = path.read_text(encoding="utf-8")
        assert "pickle.load" not in text and "allow_pickle=True" not in text, path


def test_f19_every_checkpoint_load_is_weights_only():
    _assert_weights_only(REPO)


@pytest.mark.parametrize("with_git", [True, False])
def test_f19_scan_reads_only_the_projects_files(tmp_path, with_git):
    """A virtual environment (or any file) inside the checkout changes nothing: a .venv
    holding a non-UTF-8 .py and an unsafe torch.load, beside the project's own packages."""
    import shutil
    import subprocess

    root = tmp_path / "checkout"
    for d in ("bench", "pixelmamba"):
        (root / d).mkdir(parents=True)
    (root / "bench" / "ok.py").write_text("import torch\nx = torch.load('w.pt', weights_only=True)\n")
    (root / "pixelmamba" / "ok.py").write_text("y = 1\n")
    for venv in (".venv/lib/python3.11/site-packages", "venv/lib/site-packages/bench"):
        (root / venv).mkdir(parents=True)
        (root / venv / "latin1.py").write_bytes(b"# caf\xe9 \xff\xfe\nimport torch\ntorch.load('x')\n")
        (root / venv / "evil.py").write_text("import pickle\npickle.loads(b'')\npickle.load(open('x', 'rb'))\n")
    (root / "data").mkdir()
    (root / "data" / "blob.py").write_bytes(b"\x80\x81\x82")
    if with_git:
        if shutil.which("git") is None:
            pytest.skip("git not installed")
        (root / ".gitignore").write_text("/.venv/\n/data/\n")  # venv/ is *not* ignored: still not read
        subprocess.run(["git", "init", "-q", str(root)], check=True)
        subprocess.run(["git", "-C", str(root), "add", "bench"], check=True)  # pixelmamba/ok.py untracked
    with pytest.raises(UnicodeDecodeError):  # what the old whole-tree walk did
        [p.read_text(encoding="utf-8") for p in sorted(root.rglob("*.py")) if "tests" not in p.parts]
    assert [p.relative_to(root).as_posix() for p in _sources(root)] == ["bench/ok.py", "pixelmamba/ok.py"]
    _assert_weights_only(root)


def test_f20_ids_that_would_escape_are_sanitised_or_refused(cohort, tmp_path):
    from feature_cache import FeatureCache
    from feature_cache.slide_cache import SlideImageCache

    from bench.results.store import ResultsStore, Unit
    from bench.data.splits import SplitManager

    assert cohort.run("--folds", "0").code == 0
    before = cohort.done()
    outside = {p for p in tmp_path.parent.iterdir()} | {p for p in tmp_path.iterdir()}
    # a dataset whose name is a path, a macOS metadata file, clinical ids that are paths
    cohort.write_yaml(name="../../escaped")
    (cohort.slides / f"._{slide_id(1)}.tiff").write_bytes(b"\0\x05\x16\x07" + bytes(60))
    t = cohort.table()
    t.loc[len(t)] = ["../../../etc/evil", "1", "5.0", "1"]
    t.loc[len(t)] = ["/tmp/abs-evil", "2", "6.0", "0"]
    t.to_csv(cohort.clinical, index=False)
    r = cohort.run()
    assert r.code == 0, r.text
    assert f"._{slide_id(1)}.tiff: hidden file (e.g. macOS '._' metadata), not a slide" in r.err
    assert "cases in the clinical table without a slide are left out: ../../../etc/evil, /tmp/abs-evil" in r.err
    # the name became one safe component (its safe form and a hash of the raw name)
    assert [p.name for p in (cohort.results / "runs").glob("escaped-*/staging")] == ["staging"]
    assert len(list((cohort.results / "splits").glob("escaped-*/staging.csv"))) == 1
    assert {p for p in tmp_path.parent.iterdir()} | {p for p in tmp_path.iterdir()} == outside
    assert not Path("/tmp/abs-evil").exists() and not Path("/etc/evil").exists()
    cohort.assert_kept(before)

    # every place an id becomes a path, called directly
    root = tmp_path / "lib"
    store = ResultsStore(root)
    d = store.unit_dir(Unit("../../d", "../t", "/abs/m", 0, variant="../v"))
    assert d.resolve().is_relative_to(root.resolve()) and ".." not in d.relative_to(root).parts
    assert SplitManager(root).path("../../d", "/t").resolve().is_relative_to(root.resolve())
    import feature_cache

    enc = feature_cache.get_encoder("resnet50", allow_random=True)
    fc = FeatureCache(root / "cache")
    for bad in ("../x", "/etc/passwd", "..", "a/b"):
        with pytest.raises(ValueError, match="is a path"):
            fc.path_for(bad, enc)
        with pytest.raises(ValueError, match="is a path"):
            SlideImageCache(root / "cache").path(bad, 2.5, cohort.slide(0))
    odd = fc.path_for(".hidden id é", enc)
    assert odd.parent == fc.dir_for(enc) and odd.name.startswith("hidden_id-")
    assert fc.path_for(".hidden id é", enc) != fc.path_for("hidden id", enc)  # no two ids share a file


def test_doctor_reports_everything_before_compute(cohort):
    write_slide(cohort.slide(5), seed=5)
    data = cohort.slide(5).read_bytes()
    cohort.slide(5).write_bytes(data[: len(data) // 3])  # truncated
    cohort.slide(6).write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))  # not a slide
    write_slide(cohort.slide(7), seed=7, white=True)  # no tissue
    write_slide(cohort.slide(8), seed=8, mpp=None)  # no mpp
    write_slide(cohort.slides / "TCGA-ZZ-0077-01Z-00-DX1.tiff", seed=77)  # no clinical row
    t = cohort.table()
    t.loc[len(t)] = [case_id(99), "2", "10.0", "1"]  # no slide
    t.loc[3, "stage"] = "Stage V"  # unknown stage
    t.loc[4, "time"] = "-1"  # negative time
    t.to_csv(cohort.clinical, index=False)
    cache_before = sorted(cohort.cache.rglob("*"))
    r = cohort.run("--tissue", command="doctor")
    assert r.code == 1
    out = r.out
    assert f"cannot open {slide_id(5)}: {cohort.slide(5)}" in out
    assert f"cannot open {slide_id(6)}: {cohort.slide(6)}: unsupported format: the file is a PNG image" in out
    assert f"no mpp: {slide_id(8)} -- set `mpp_override: <um/px>`" in out
    assert f"no tissue: {slide_id(7)}" in out
    assert "slides: 10 of 12 open; 1 without mpp; 1 without tissue" in out
    dropped = {line.split()[0]: line for line in out.splitlines() if line.startswith("    ")}
    assert set(dropped) == {"TCGA-ZZ-0077-01Z-00-DX1", case_id(99), case_id(5), case_id(6), case_id(7),
                            case_id(8), case_id(3), case_id(4)}, out
    assert "from staging: no valid stage" in dropped[case_id(3)]
    assert "from survival: no valid time and event" in dropped[case_id(4)]
    assert "none of its slides is usable" in dropped[case_id(5)]
    assert f"row 5 ({case_id(3)}): 'Stage V'" in r.err and f"{case_id(4)} (-1)" in r.err
    assert "staging: 7 of 12 cases will be used" in out and "survival: 7 of 12 cases will be used" in out
    assert not cohort.results.exists() and sorted(cohort.cache.rglob("*")) == cache_before  # no compute
