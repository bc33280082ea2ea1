"""`bench ls`, `bench --help` and every `bench <command> --help` import no torch, scikit-learn or
scikit-survival (each costs seconds to import, and listing needs none). Timing against `import torch` is measured by
`benchmarks/cli_startup.py`; this test checks the cause, which does not depend on the machine's load.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.cli import COMMANDS

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "sklearn", "sksurv", "timm", "torchvision", "scipy", "matplotlib", "numba", "h5py")

PROBE = """
import json, sys
from bench.cli import main
argvs = json.loads(sys.argv[1])
out = {}
for argv in argvs:
    try:
        main(argv)
    except SystemExit:
        pass
    out[" ".join(argv)] = sorted(m for m in json.loads(sys.argv[2]) if m in sys.modules)
print("MODULES=" + json.dumps(out))
"""


def _loaded(argvs: list[list[str]], tmp_path: Path, heavy: tuple[str, ...] = HEAVY) -> dict[str, list[str]]:
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "BENCH_CONFIG": ""}
    proc = subprocess.run([sys.executable, "-c", PROBE, json.dumps(argvs), json.dumps(heavy)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    line = [x for x in proc.stdout.splitlines() if x.startswith("MODULES=")][-1]
    return json.loads(line[len("MODULES="):])


def test_help_imports_nothing_heavy(tmp_path):
    names = [m.__name__.rsplit(".", 1)[-1] for m in COMMANDS]
    # --help reads no data either: not even numpy or pandas
    loaded = _loaded([["--help"], *([n, "--help"] for n in names)], tmp_path, HEAVY + ("numpy", "pandas"))
    assert loaded == {k: [] for k in loaded}, loaded


@pytest.mark.parametrize("what", ["all", "methods", "encoders", "datasets", "tasks", "ablations"])
def test_ls_imports_nothing_heavy(what, tmp_path):
    loaded = _loaded([["ls", what]], tmp_path)
    assert loaded == {f"ls {what}": []}, loaded


def test_ls_encoders_comes_from_the_feature_cache_registry(capsys, tmp_path, monkeypatch):
    from feature_cache import list_encoders

    from bench.cli import main

    assert main(["ls", "encoders"]) == 0
    out = capsys.readouterr().out
    lines = [x.split()[0] for x in out.splitlines()[1:]]
    from bench.encoders import encoder_table

    releases = {n for n, i in encoder_table().items() if i.release}  # feature releases datasets declared
    assert [n for n in lines if n not in releases] == list_encoders()
    assert {"resnet50", "conch", "gigapath", "hipt-vit256"} <= set(lines)
    assert len(lines) >= 16 and "not found (set BENCH_WEIGHTS_UNI_V2)" in out and "hf MahmoodLab/UNI2-h" in out
    assert main(["ls", "encoders", "g*"]) == 0
    assert capsys.readouterr().out.split()[1:3] == ["gigapath", "1536-d"]
    (tmp_path / "w.bin").write_bytes(b"x")
    monkeypatch.setenv("BENCH_WEIGHTS_VIRCHOW2", str(tmp_path / "w.bin"))
    assert main(["ls", "encoders", "virchow2"]) == 0
    assert "2560-d" in (row := capsys.readouterr().out) and "weights: $BENCH_WEIGHTS_VIRCHOW2" in row


def test_startup_benchmark_prints_the_ratio(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "cli_startup.py"), "--quick", "--repeat", "1"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300, check=True).stdout
    assert "| import torch |" in out and "| bench ls |" in out and "| bench --help |" in out, out
    assert "slowest bench command / import torch (median wall):" in out, out


def test_library_chatter_stays_out_of_a_commands_log() -> None:
    """numexpr (imported by pandas) logs "NumExpr defaulting to N threads." at INFO: a `bench run`
    printed it among its own lines."""
    import os

    code = ("import sys; from bench.cli import main\n"
            "try:\n    main(['ls', 'methods'])\nexcept SystemExit:\n    pass\n"
            "import numexpr  # noqa: F401\n")
    env = {k: v for k, v in os.environ.items() if k not in ("NUMEXPR_MAX_THREADS", "NUMEXPR_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "NumExpr" not in out.stderr, out.stderr
