"""`bench weights`: a report of what every method's pretrained parts would load. With a fake Hugging
Face cache in the official layout it lists those files as found (with their SHA-256, taken from the
blob name or hashed once and remembered), names what is missing and where to put it, exits 0, and
imports no deep-learning library."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SNAPSHOT = "0123456789abcdef0123456789abcdef01234567"


def _hub_file(cache: Path, repo: str, filename: str, content: bytes) -> str:
    """models--org--name/{blobs/<sha256>, snapshots/<rev>/<file> -> blob, refs/main}."""
    base = cache / f"models--{repo.replace('/', '--')}"
    digest = hashlib.sha256(content).hexdigest()
    (base / "blobs").mkdir(parents=True, exist_ok=True)
    (base / "blobs" / digest).write_bytes(content)
    snap = base / "snapshots" / SNAPSHOT
    snap.mkdir(parents=True, exist_ok=True)
    (snap / filename).symlink_to(base / "blobs" / digest)
    (base / "refs").mkdir(exist_ok=True)
    (base / "refs" / "main").write_text(SNAPSHOT)
    return digest


def _checkpoint(tag: str) -> bytes:
    """A small file in the format torch.save writes (the report checks files without loading them)."""
    import io

    import torch

    buf = io.BytesIO()
    torch.save({tag: torch.zeros(2)}, buf)
    return buf.getvalue()


def _run(tmp_path: Path, methods: str, **env: str) -> tuple[int, list[dict], str]:
    code = ("import sys, json\nfrom bench.cli import main\n"
            f"rc = main(['weights', '--methods', {methods!r}, '--json'])\n"
            "heavy = sorted(m for m in ('torch', 'timm', 'open_clip', 'torchvision') if m in sys.modules)\n"
            "print(json.dumps({'rc': rc, 'heavy': heavy}))\n")
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("BENCH_WEIGHTS_", "HF_"))}
    full_env |= {"PYTHONPATH": str(REPO), "BENCH_STATE_DIR": str(tmp_path / "state"),
                 "HF_HOME": str(tmp_path / "hf"), "TORCH_HOME": str(tmp_path / "torch")} | env
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full_env,
                          cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(ln) for ln in proc.stdout.splitlines() if ln.startswith("{")]
    tail = lines.pop()
    assert tail["heavy"] == [], f"bench weights imported {tail['heavy']}"
    return tail["rc"], lines, proc.stderr


def test_fake_hub_cache_is_found_and_missing_files_are_named(tmp_path: Path) -> None:
    cache = tmp_path / "hf" / "hub"  # HF_HOME/hub: where huggingface_hub looks by default
    tile = _hub_file(cache, "prov-gigapath/prov-gigapath", "pytorch_model.bin", _checkpoint("tile encoder"))
    slide = _hub_file(cache, "prov-gigapath/prov-gigapath", "slide_encoder.pth", _checkpoint("slide encoder"))
    vit4k = tmp_path / "vit4k_xs_dino.pth"
    vit4k.write_bytes(_checkpoint("dino checkpoint"))
    rc, rows, _ = _run(tmp_path, "prov-gigapath-cls,hipt,abmil.conch,pixelmamba-6m",
                       BENCH_WEIGHTS_HIPT_VIT4K=str(vit4k))
    assert rc == 0  # a report: missing files are not a failure
    parts = {(r["method"], p["part"]): p for r in rows for p in r["parts"]}
    enc = parts[("prov-gigapath-cls", "patch encoder gigapath")]
    assert enc["status"] == "found" and enc["sha256"] == tile and "local hub cache prov-gigapath" in enc["how"]
    assert enc["path"].endswith(f"snapshots/{SNAPSHOT}/pytorch_model.bin")
    sec = parts[("prov-gigapath-cls", "second stage")]
    assert sec["status"] == "found" and sec["sha256"] == slide and sec["layouts"] == ["gigapath slide_encoder"]
    v4 = parts[("hipt", "second stage")]
    assert v4["status"] == "found" and v4["how"] == "$BENCH_WEIGHTS_HIPT_VIT4K"
    assert v4["sha256"] == hashlib.sha256(vit4k.read_bytes()).hexdigest()
    v256 = parts[("hipt", "patch encoder hipt-vit256")]
    assert v256["status"] == "missing" and v256["fetch"] == "vit256_small_dino.pth"
    assert "$BENCH_WEIGHTS_HIPT_VIT256=" in v256["put"] and "mahmoodlab/HIPT" in v256["official"]
    assert v256["published_sha256"] == "6960cd5a8657dc8bb214671aa0c6dbd3f5b698e84386884955836487ddc89e24"
    conch = parts[("abmil.conch", "patch encoder conch")]
    assert conch["status"] == "missing" and conch["fetch"] == "pytorch_model.bin" and "HF_TOKEN" in conch["official"]
    assert str(cache / "models--MahmoodLab--conch" / "snapshots") in conch["put"]
    assert parts[("pixelmamba-6m", "initialisation (--init)")]["status"] == "none published"
    # the env file's hash is remembered by (path, size, mtime): a second report does not re-hash it
    store = json.loads((tmp_path / "state" / "weights-sha256.json").read_text())
    assert [v for k, v in store.items() if k.startswith(str(vit4k.resolve()))] == [v4["sha256"]]


def test_text_report_says_where_to_put_missing_files(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BENCH_WEIGHTS_", "HF_"))}
    env |= {"PYTHONPATH": str(REPO), "BENCH_STATE_DIR": str(tmp_path / "s"), "HF_HOME": str(tmp_path / "hf"),
            "TORCH_HOME": str(tmp_path / "torch")}
    proc = subprocess.run([sys.executable, "-m", "bench", "weights", "--methods", "vim-ti,longvit-s"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "MISSING vim_t_midclstok_76p1acc.pth" in out and "hustvl/Vim-tiny-midclstok" in out
    assert "MISSING longvit_small_patch32_1024.pth" in out and "$BENCH_WEIGHTS_LONGVIT_S=" in out
    assert "0 of 2 published parts found" in out
