"""The check before an ablation trains (bench/ablation_check.py): values that give the model the
same input are found from the slides' headers and the models' arithmetic, said, and not trained."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from bench.ablation_check import check_ablation, input_size, schedule
from bench.ablations import ablation_grid, get_ablation
from bench.data.datasets import load_cohort

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("hw, window, alpha", [((70, 70), 64, 0.8), ((165, 140), 32, 0.4), ((165, 140), 32, 1.0),
                                                ((330, 330), 32, 0.6)])
def test_schedule_is_pixelmambas_plan(hw, window, alpha):
    from pixelmamba import create_model

    m = create_model("pixelmamba-6m", num_classes=2, scan_window=window, alpha=alpha)
    plan = m.plan(*hw)
    n0 = -(-hw[0] // window) * -(-hw[1] // window)
    assert schedule(n0, alpha, len(plan)) == tuple(r.n_regions for r in plan)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A 6-case demo-style cohort, as a dataset YAML carrying the demo's own model and ablation settings."""
    root = tmp_path_factory.mktemp("tiny")
    demo = yaml.safe_load((ROOT / "bench" / "configs" / "datasets" / "demo.yaml").read_text())
    spec = {**demo, "generator_args": {"n_cases": 6, "seed": 3}, "root": str(root / "data")}
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path, load_cohort(str(path))


def test_input_size_is_what_the_slide_cache_reads(tiny):
    from feature_cache import mag_to_mpp, open_slide

    _, cohort = tiny
    for p in list(cohort.table["slide_path"])[:2]:
        with open_slide(p) as s:
            for mag in (0.3125, 0.75):
                assert input_size(s.dimensions, s.require_mpp(), mag) == s.read_at_mpp(mag_to_mpp(mag)).shape[:2]


def test_alpha_at_the_demos_plain_input_is_the_same_model(tiny, tmp_path):
    """At the demo's end-to-end input (0.625x, scan window 64: 1-4 regions) every alpha merges the same
    regions: the check says so, names the region count that would separate them and trains nothing."""
    from bench.cli import main

    path, cohort = tiny
    data = yaml.safe_load(path.read_text())
    data["ablations"].pop("alpha", None)  # the paper's grid, on the demo's plain settings
    plain = tmp_path / "plain.yaml"
    plain.write_text(yaml.safe_dump(data))
    a = get_ablation("alpha")
    chk = check_ablation(a, ablation_grid(a, str(plain)), load_cohort(str(plain)))
    assert not chk.ok and len(chk.identical) == 6  # all four values, pairwise
    assert "alpha=0.4 = alpha=0.6 = alpha=0.8 = alpha=1.0" in chk.advice[0]
    assert "They differ from n0 >= 97 regions" in chk.advice[0] and "raise the magnification above" in chk.advice[0]
    res = tmp_path / "results"
    rc = main(["ablate", "alpha", "--dataset", str(plain), "--results", str(res), "--cache", str(tmp_path / "c"), "-q"])
    assert rc == 2 and not (res / "runs").exists()


def test_scan_windows_larger_than_the_input_are_the_same_regions(tiny):
    path, cohort = tiny
    a = get_ablation("scan-window")
    chk = check_ablation(a, ablation_grid(a, str(path), values=[64, 96, 128]), cohort, {"magnification": 0.625})
    assert [(p.a, p.b) for p in chk.identical] == [("scan_window=96", "scan_window=128")]
    assert "into the same regions" in chk.advice[0]


@pytest.mark.parametrize("name", ["scan-window", "magnification", "token-scale", "end-to-end"])
def test_the_demos_ablation_settings_differ_in_what_the_model_sees(tiny, name):
    path, cohort = tiny
    a = get_ablation(name)
    chk = check_ablation(a, ablation_grid(a, str(path)), cohort)
    assert chk.ok, "\n".join(chk.summary() + chk.advice)
    assert not any(p.same_on for p in chk.pairs), "\n".join(chk.summary())  # not even on one slide


def test_the_demo_refuses_alpha_before_training_and_says_what_would_differ(tiny):
    """The demo leaves alpha unmapped (its values differ only from 97 regions, hours of CPU training):
    the check stops it before any unit trains and names the setting to raise."""
    path, cohort = tiny
    a = get_ablation("alpha")
    chk = check_ablation(a, ablation_grid(a, str(path)), cohort)
    assert not chk.ok and len(chk.identical) == 6  # every pair of the four values
    assert "They differ from n0 >= 97 regions" in chk.advice[0] and "--input magnification=" in chk.advice[0]


def test_the_check_asks_the_network_the_protocol_builds(tiny, tmp_path):
    """Under ``protocol: paper`` Pixel-Mamba's Region Fusion takes k from the *current* region count
    (``fusion_k_from: current``): the check resolves each row as the run does and asks that network's
    own plan, so its schedules are the paper network's, not the default one's."""
    from pixelmamba import create_model

    path, _ = tiny
    data = yaml.safe_load(path.read_text())
    paper = tmp_path / "paper.yaml"
    paper.write_text(yaml.safe_dump({**data, "protocol": "paper"}))
    a = get_ablation("scan-window")
    chk = check_ablation(a, ablation_grid(a, str(paper), values=[32, 64]), load_cohort(str(paper)),
                         {"magnification": 2.5})  # 2.5x: 64-100 regions of 32 px, where the two rules differ
    differs = 0
    for v in chk.views["scan_window=32"]:
        h, w = v["size"]
        as_paper = create_model("pixelmamba-6m", num_classes=4, scan_window=32, fusion_k_from="current",
                                bidirectional_merge="sum").plan(h, w)
        as_default = create_model("pixelmamba-6m", num_classes=4, scan_window=32).plan(h, w)
        assert v["schedule"] == tuple(r.n_regions for r in as_paper)
        differs += tuple(r.n_regions for r in as_paper) != tuple(r.n_regions for r in as_default)
    assert differs == len(chk.views["scan_window=32"])  # the case tells the two networks apart
