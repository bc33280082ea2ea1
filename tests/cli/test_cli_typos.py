"""A mistyped method, dataset, encoder, task or ablation name is reported with its did-you-mean
before the command imports torch (importing torch first would make a typo cost seconds).
Like tests/cli/test_cli_startup.py, this checks the cause (what is imported), not the machine's clock."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "timm", "torchvision", "sklearn", "sksurv")

PROBE = """
import contextlib, io, json, sys
from bench.cli import main
out = {}
for argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            rc = main(argv)
        except SystemExit as exc:
            rc = exc.code
    out[" ".join(argv)] = [rc, err.getvalue().strip().splitlines()[-1:],
                           sorted(m for m in json.loads(sys.argv[2]) if m in sys.modules)]
print("OUT=" + json.dumps(out))
"""

TYPOS = {  # argv -> what the error must suggest
    "run --methods abmil.resnt50 --dataset demo": "abmil.resnet50",
    "run --methods meanmil.resnet50 --dataset dmo": "'demo'",
    "run --methods meanmil.resnet50 --dataset demo --tasks stagng": "'staging'",
    "tune --trials 1 --method transmil.conh --dataset demo": "transmil.conch",
    "ablate alpah": "'alpha'",
    "ablate alpha --dataset dmo": "'demo'",
    "extract --encoders resnet50,gigapth --dataset demo": "'gigapath'",
    "extract --encoders resnet50 --dataset lad": "'luad'",
    "splits --dataset lua": "'luad'",
    "table --methods pixelmamba-6": "pixelmamba-6m",
}


def test_typos_are_answered_before_torch_is_imported(tmp_path):
    argvs = [[*a.split(), "--results", str(tmp_path / "r"), "--cache", str(tmp_path / "c")] for a in TYPOS]
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "BENCH_CONFIG": "",
           "BENCH_DATA": str(tmp_path / "data")}
    proc = subprocess.run([sys.executable, "-c", PROBE, json.dumps(argvs), json.dumps(HEAVY)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = json.loads([x for x in proc.stdout.splitlines() if x.startswith("OUT=")][-1][4:])
    for (typed, expected), (rc, err, heavy) in zip(TYPOS.items(), out.values()):
        assert rc == 2 and err and err[0].startswith("error: ") and "did you mean" in err[0].lower(), (typed, err)
        assert expected in err[0], (typed, err)
        assert heavy == [], f"{typed}: imported {heavy} before answering {err}"
    assert not (tmp_path / "r").exists()  # nothing written either
