"""The cost probe before training (bench.engine.cost): the arithmetic on hand cases with an
injected step timer, the cache that spares a rerun the measurement, the ETA it seeds, and (slow) a
prediction against the measured time of a tiny unit."""

import json
from dataclasses import dataclass
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from bench.engine.cost import Probe, StepCost, estimate, unit_seconds
from bench.engine.eta import Eta
from bench.engine.executor import ModelRecipe
from bench.registry import get_method
from bench.results.store import Unit


def test_unit_seconds_hand_case():
    # 3 epochs x 10 slides x 2 s, 3 x ceil(10 / 4) = 9 optimizer steps x 0.1 s, 6 test slides x 0.5 s,
    # and 1.5 s to build the network
    assert unit_seconds(StepCost(2.0, 0.5, 0.1, 1.5), epochs=3, n_train=10, grad_accum=4, n_predict=6) == \
        pytest.approx(60 + 0.9 + 3 + 1.5)


@dataclass
class _Split:
    train: dict[int, list[str]]
    test: dict[int, list[str]]

    def train_cases(self, k):
        return self.train[k]

    def test_cases(self, k):
        return self.test[k]


def _plan(method, variant, fold, opts, family="end-to-end"):
    spec = get_method(method)
    return SimpleNamespace(unit=Unit("tiny", "staging", method, fold, variant), spec=SimpleNamespace(
        name=method, family=family, raw_rgb=spec.raw_rgb), variant=SimpleNamespace(name=variant),
        recipe=ModelRecipe(spec, 4, opts), train={"epochs": 2, "grad_accum": 3},
        inputs_key="regions" if family == "end-to-end" else "features")


def test_estimate_multiplies_one_measurement_per_configuration_and_caches_it(tmp_path):
    """Two settings x two folds: each setting is timed once (not per fold), every unit's seconds are
    its planned passes times the injected costs, the lines name each setting with the total, and a
    second estimate reads the cache instead of timing again."""
    cases = [f"C{i}" for i in range(6)]
    split = _Split(train={0: cases[:4], 1: cases[2:]}, test={0: cases[4:], 1: cases[:2]})
    cohort = SimpleNamespace(slides_of=lambda: {c: [c + "a", c + "b"] if c == "C0" else [c] for c in cases},
                             table=pd.DataFrame({"slide_path": []}), spec=SimpleNamespace(mpp_override=None))
    regions = SimpleNamespace(opts={"size": 48, "n": 1})  # random tissue regions: the size needs no header
    planner = SimpleNamespace(cohort=cohort, splits={"staging": split}, inputs={"regions": regions, "features": None})
    todo = [_plan("vim-ti", f"depth={d}", k, {"depth": d}) for k in (0, 1) for d in (1, 2)]
    todo.append(_plan("abmil.resnet50", None, 0, {}, family="two-stage"))
    per_pass = {1: StepCost(1.0, 0.25, 0.5), 2: StepCost(3.0, 1.0, 0.5)}
    timed: list[Probe] = []

    def timer(probe: Probe) -> StepCost:
        timed.append(probe)
        return per_pass[probe.recipe.options["depth"]]

    est = estimate(todo, planner, "cpu", tmp_path, timer=timer)
    assert sorted(p.recipe.options["depth"] for p in timed) == [1, 2] and timed[0].shape == (1, 3, 48, 48)
    # fold 0: 2 epochs x 4 slides, 2 x ceil(4 / 3) = 4 steps, test C4, C5 (2 slides);
    # fold 1: the same, test C0 (2 slides) and C1 (1 slide)
    want = [8 * 1.0 + 4 * 0.5 + 2 * 0.25, 8 * 3.0 + 4 * 0.5 + 2 * 1.0,
            8 * 1.0 + 4 * 0.5 + 3 * 0.25, 8 * 3.0 + 4 * 0.5 + 3 * 1.0]
    assert [u.seconds for u in est.units[:4]] == pytest.approx(want) and est.units[4] is None
    assert est.per_unit() is None  # a unit was not probed: the ETA keeps its measured rate
    lines = est.lines(processes=1)
    assert lines[0].startswith("predicted cost: depth=1 ~ 0m21s for 2 unit(s) (1.00 s per training pass at 48x48")
    assert lines[1].startswith("predicted cost: depth=2 ~ 0m57s for 2 unit(s)")
    assert "total ~ 1m18s for 4 end-to-end unit(s) on 1 cpu process(es), plus 1 unit(s) without" in lines[2]
    assert "measured" in lines[0] and len(list((tmp_path / "step_costs").glob("*.json"))) == 2

    again = estimate(todo[:4], planner, "cpu", tmp_path, timer=lambda p: pytest.fail("measured again"))
    assert again.per_unit() == pytest.approx(want) and "cached" in again.lines(1)[0]
    assert "~ 0m39s for 4 end-to-end unit(s) on 2 cpu" in again.lines(2)[-1]  # two processes share the units


def test_eta_from_predictions_before_and_after_units():
    """Predicted 10, 30, 60 s: 100 s from the start; after the first unit took 20 s (twice its
    prediction) the rest is charged at twice theirs, not at 20 s a unit."""
    eta = Eta(["k"] * 3, predicted=[10, 30, 60])
    assert eta.left(0, 0, 3) == pytest.approx(100)
    assert eta.left(20, 1, 2) == pytest.approx(180)
    assert Eta(["k"] * 3, predicted=[10, 30, 60], processes=2).left(0, 0, 3) == pytest.approx(50)
    assert Eta(["k"] * 3).left(0, 0, 3) is None  # without predictions: no ETA before the first unit


@pytest.mark.slow  # ~1 min of CPU: generating 8 slides and training two tiny end-to-end units
def test_prediction_within_a_factor_two_of_the_units_measured_time(tmp_path, monkeypatch, request):
    from bench.cli import main
    from fake_inputs import write_tiny_demo_spec

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    spec = write_tiny_demo_spec(tmp_path, epochs=3, magnification=0.3)
    res, cache = tmp_path / "results", tmp_path / "cache"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: on a shared CPU two threads wait on each other at every barrier
    request.addfinalizer(lambda: torch.set_num_threads(threads))
    args = ["run", "--methods", "vim-ti", "--dataset", str(spec), "--results", str(res), "--cache", str(cache),
            "--tasks", "staging", "--n-folds", "2", "--folds", "0", "--model", "embed_dim=32", "--jobs", "1", "-q"]
    assert main(args) == 0
    (cost_file,) = (cache / "step_costs").glob("*.json")
    c = json.loads(cost_file.read_text())
    record = json.loads(next(res.glob("runs/tiny/staging/vim-ti/*/fold0/metrics.json")).read_text())  # seed0-k2/
    test_cases = set(pd.read_csv(res / "splits" / "tiny" / "seed0-k2" / "staging.csv").query("fold == 0")["case_id"])
    n_predict = sum(p.name[:12] in test_cases for p in (tmp_path / "data" / "slides").glob("*.tiff"))  # TCGA ids
    predicted = unit_seconds(StepCost(c["train_pass"], c["predict_pass"], c["update"], c["build"]), epochs=3,
                             n_train=record["n_train"], grad_accum=2, n_predict=n_predict)
    actual = record["info"]["unit_seconds"]
    print(f"predicted {predicted:.2f} s, measured {actual:.2f} s")
    assert actual / 2 <= predicted <= actual * 2


def test_a_failing_probe_leaves_its_units_unpredicted_and_the_others_predicted(tmp_path, caplog):
    split = _Split(train={0: ["A", "B"]}, test={0: ["C"]})
    cohort = SimpleNamespace(slides_of=lambda: {c: [c] for c in "ABC"}, table=pd.DataFrame({"slide_path": []}),
                             spec=SimpleNamespace(mpp_override=None))
    planner = SimpleNamespace(cohort=cohort, splits={"staging": split},
                              inputs={"regions": SimpleNamespace(opts={"size": 32, "n": 2})})
    todo = [_plan("vim-ti", f"depth={d}", 0, {"depth": d}) for d in (1, 2)]

    def timer(probe):
        if probe.recipe.options["depth"] == 2:
            raise RuntimeError("out of memory")
        return StepCost(1.0, 0.5, 0.0)

    est = estimate(todo, planner, "cpu", tmp_path, timer=timer)
    # 2 epochs x 2 slides x 1 s + 2 regions of the one test slide x 0.5 s
    assert est.units[0].seconds == pytest.approx(5.0) and est.units[1] is None
    assert "cost probe of vim-ti at 32x32 px on cpu" in caplog.text and "out of memory" in caplog.text


def test_no_estimate_flag_and_launcher_jobs_skip_the_probe():
    from bench.cli import build_parser
    from bench.engine.options import RunOptions

    p = build_parser()
    assert p.parse_args(["ablate", "scan-window"]).estimate and p.parse_args(["run", "--methods", "vim-ti"]).estimate
    assert not p.parse_args(["ablate", "scan-window", "--no-estimate"]).estimate
    assert not p.parse_args(["run", "--methods", "vim-ti", "--no-estimate"]).estimate
    opts = RunOptions("demo")
    assert opts.estimate and not opts.for_job("staging", 0).estimate  # one submitted unit: no probe per job
    assert RunOptions.from_json(opts.to_json()) == opts
