"""The package as a user installs it: declared dependencies, optional extras, the wheel."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("bench", "feature_cache", "baselines", "pixelmamba")
# import name -> distribution name, where they differ
DIST = {"yaml": "pyyaml", "sklearn": "scikit-learn", "sksurv": "scikit-survival", "skimage": "scikit-image",
        "PIL": "pillow", "openslide": "openslide-python", "open_clip": "open-clip-torch",
        "huggingface_hub": "huggingface-hub", "mamba_ssm": "mamba-ssm", "causal_conv1d": "causal-conv1d",
        "mlflow": "mlflow-skinny"}


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _dist_names(reqs: list[str]) -> set[str]:
    return {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower().replace("_", "-") for r in reqs}


def _third_party_imports() -> dict[str, set[str]]:
    """Top-level third-party modules imported anywhere in the four packages -> files importing them."""
    out: dict[str, set[str]] = {}
    files = subprocess.run(["git", "ls-files", *(f"{p}/*.py" for p in PACKAGES)], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    for f in files:
        for node in ast.walk(ast.parse((ROOT / f).read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module
                     else [])
            for n in names:
                top = n.split(".")[0]
                if top not in sys.stdlib_module_names and top not in PACKAGES and top != "__future__":
                    out.setdefault(top, set()).add(f)
    return out


def test_every_third_party_import_is_declared_and_nothing_unused():
    proj = _pyproject()["project"]
    core = _dist_names(proj["dependencies"])
    extras = set().union(*(_dist_names(v) for v in proj["optional-dependencies"].values()))
    imports = _third_party_imports()
    undeclared = {m: sorted(f) for m, f in imports.items()
                  if DIST.get(m, m).lower().replace("_", "-") not in core | extras}
    assert not undeclared, f"imported but not in pyproject: {undeclared}"
    # runtime plugins used without an import statement: tifffile's codecs, OpenSlide's library
    # loaded by other packages, never imported by name: tifffile codecs, the OpenSlide library, and
    # TensorBoard (torch.utils.tensorboard writes its event files)
    used = {DIST.get(m, m).lower().replace("_", "-") for m in imports} | {"imagecodecs", "openslide-bin", "tensorboard"}
    assert not core - used, f"core dependencies nothing imports: {sorted(core - used)}"


def test_declared_package_data_exists():
    data = _pyproject()["tool"]["setuptools"]["package-data"]
    for pkg, patterns in data.items():
        for pat in patterns:
            assert list((ROOT / pkg).glob(pat)), f"pyproject declares {pkg}/{pat}, which matches no file"


@pytest.mark.parametrize("argv, module, extra", [
    (["tune", "--method", "meanmil.resnet50", "--dataset", "demo", "--trials", "1"], "optuna", "cluster"),
    (["run", "--methods", "meanmil.resnet50", "--dataset", "demo", "--launcher", "submitit"], "submitit", "cluster"),
])
def test_commands_needing_an_extra_name_it(argv, module, extra, tmp_path, monkeypatch, capsys):
    """Without the `cluster` extra, `tune` and `--launcher submitit` stop before any work and say
    which extra to install (pyproject: optuna and submitit stay optional)."""
    from bench.cli import main

    assert module not in _dist_names(_pyproject()["project"]["dependencies"])
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    rc = main([*argv, "--results", str(tmp_path / "results"), "--cache", str(tmp_path / "cache")])
    err = capsys.readouterr().err
    assert rc == 2 and f"pip install 'wsi-bench[{extra}]'" in err, err
    assert not (tmp_path / "results").exists()  # nothing was computed or written


# --- the wheel ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a copy of the project's files (the checkout gets no build/ or egg-info)."""
    import shutil

    src = tmp_path_factory.mktemp("src")
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for f in filter(None, files):
        if (ROOT / f).is_file():
            (src / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, src / f)
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(src)], check=True, capture_output=True, timeout=300)
    (whl,) = out.glob("wsi_bench-*.whl")
    return whl


def test_wheel_ships_the_configs(wheel):
    import zipfile

    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {f.relative_to(ROOT).as_posix() for f in (ROOT / "bench" / "configs").glob("*/*.yaml")}
    assert shipped and shipped <= names, sorted(shipped - names)
    assert "bench/py.typed" in names and "bench/resources.py" in names
    assert not any(n.startswith(("tests/", "benchmarks/", "docs/")) for n in names)


def _venv_over_running_packages(venv: Path) -> Path:
    """A venv that sees the site-packages of the interpreter running the tests, whichever it is: the
    system's, or a user's venv (whose `--system-site-packages` child would see the base interpreter's
    site instead, without the venv's pandas or PIL). Plain path lines in a .pth: the .pth files inside
    those directories (an editable install of this checkout among them) are not processed."""
    import site

    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    dirs = [*site.getsitepackages(), *([site.getusersitepackages()] if site.ENABLE_USER_SITE else [])]
    dirs = [d for d in dirs if d in sys.path and Path(d).is_dir()]
    (own,) = (venv / "lib").glob("python3*/site-packages")
    (own / "_running_interpreter_packages.pth").write_text("".join(f"{d}\n" for d in dirs))
    return venv


def test_installed_wheel_runs_the_first_commands(wheel, tmp_path):
    """(Slow: mostly the demo's generation.) The wheel in a fresh venv
    (torch & co from the packages these tests run with, wsi-bench itself only from the wheel), run from a
    directory where the checkout is not importable: `bench ls datasets` lists the demo and
    `bench splits --dataset demo` generates it and writes folds."""
    venv = _venv_over_running_packages(tmp_path / "venv")
    py = venv / "bin" / "python"
    subprocess.run([py, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--ignore-installed", str(wheel)],
                   check=True, capture_output=True, timeout=300)
    work = tmp_path / "work"
    work.mkdir()
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path), "BENCH_DATA": str(work / "data"),
           "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}

    def bench(*args: str) -> str:
        p = subprocess.run([str(venv / "bin" / "bench"), *args], cwd=work, env=env, capture_output=True, text=True,
                           timeout=600)
        assert p.returncode == 0, p.stdout + p.stderr
        return p.stdout

    where = subprocess.run([py, "-c", "import bench; print(bench.__file__)"], cwd=work, env=env, capture_output=True,
                           text=True, check=True).stdout.strip()
    assert Path(where).is_relative_to(venv), where  # the wheel's copy, not the checkout nor an editable install
    out = bench("ls", "datasets")
    assert "demo" in out.split() and "blca" in out.split(), out
    out = bench("splits", "--dataset", "demo")
    assert "train/test overlap: 0 cases" in out, out
    assert (work / "results" / "splits" / "demo" / "staging.csv").is_file()


def test_every_registered_builder_resolves():
    """Each method's lazy "module:attr" builder names a module and attribute that exist (a module
    moved or renamed would otherwise surface only when that method is first built)."""
    import importlib.util

    from bench.registry import list_methods

    for spec in list_methods():  # without importing the builders (torch): find the module, parse it
        module, _, attr = spec.builder.partition(":")
        found = importlib.util.find_spec(module)
        assert found is not None and found.origin, f"{spec.name}: no module {module}"
        tree = ast.parse(Path(found.origin).read_text(encoding="utf-8"))
        names = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
        names |= {t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
        assert attr in names, f"{spec.name}: {module} has no {attr}"
