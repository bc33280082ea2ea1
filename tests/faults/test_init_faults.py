"""`--init` with a checkpoint that fills only part of a network: the share of the backbone loaded is
measured before anything runs; below every tensor of the backbone the run is refused, unless
`--init-partial` says so, and then the share is in the record and the row is marked."""

from __future__ import annotations

import json

import pytest
import torch

E2E = "pixelmamba-6m"


def _one_tensor(path, *, full: bool = False):
    """A checkpoint of our own names holding one backbone tensor (or all of them)."""
    from bench.registry import build_model

    own = build_model(E2E, 4).state_dict()
    backbone = [k for k in own if not k.startswith("head.")]
    keep = backbone if full else backbone[:1]
    torch.save({"model": {k: own[k] for k in keep}}, path)
    return len(backbone), sum(own[k].numel() for k in backbone), own[backbone[0]].numel()


def test_f17_partial_init_is_refused(cohort, tmp_path) -> None:
    ckpt = tmp_path / "one_tensor.pt"
    n, params, first = _one_tensor(ckpt)
    args = ("--tasks", "staging", "--folds", "0", "--set", "epochs=1", "--init", str(ckpt))
    r = cohort.run(*args, methods=E2E)
    share = f"{first:,} of {params:,} parameters, <0.01%"
    assert r.code == 2 and "Traceback" not in r.text, r.text
    assert (f"error: faults/staging/{E2E}/fold0: --init {ckpt} fills only part of {E2E}: only 1 of {n} backbone "
            f"tensors ({share}) loaded from one_tensor.pt; the rest stay at random initialisation. Nothing was run. "
            f"Fix: start from a checkpoint of this architecture") in r.err, r.err
    assert "--init-partial" in r.err
    assert not (cohort.results / "runs").exists() or not list((cohort.results / "runs").rglob("metrics.json"))


@pytest.mark.slow  # ~95 s: one Pixel-Mamba unit trained
def test_f17_partial_init_accepted_is_recorded_and_marked(cohort, tmp_path) -> None:
    ckpt = tmp_path / "one_tensor.pt"
    n, params, first = _one_tensor(ckpt)
    share = f"{first:,} of {params:,} parameters, <0.01%"
    args = ("--tasks", "staging", "--folds", "0", "--set", "epochs=1", "--init", str(ckpt))
    r = cohort.run(*args, "--init-partial", methods=E2E)
    assert r.code == 0, r.text
    rec = json.loads((cohort.unit_dir("staging", 0, E2E) / "metrics.json").read_text())
    assert rec["info"]["init_loaded"]["backbone_tensors"] == [1, n]
    assert rec["info"]["init_loaded"]["share"] == round(first / params, 6)
    model = [w for w in rec["weights"] if w["part"] == "model"]
    assert model and model[0]["source"] == "init-partial" and f"only 1 of {n} backbone tensors" in model[0]["label"]
    t = cohort.run(command="table")
    assert t.code == 0, t.text
    assert f"only 1 of {n} backbone tensors ({share}) loaded from one_tensor.pt" in t.out, t.out


def test_full_init_records_its_share(cohort, tmp_path) -> None:
    from bench.engine.pretrain import load_init
    from bench.registry import build_model

    ckpt = tmp_path / "full.pt"
    n, params, _ = _one_tensor(ckpt, full=True)
    report = load_init(build_model(E2E, 4), ckpt)
    assert report.partial() is None and report.backbone_tensors == (n, n) and report.share == 1.0
    assert report.backbone_params == (params, params)
