"""``bench tune``: nested Optuna search. Fast: a fake feature source stands in for the HDF5 cache and
records every case whose input is touched, which is how the tests prove the outer test fold never is."""

import json

import pandas as pd
import pytest
import torch

optuna = pytest.importorskip("optuna")

import bench.engine.inputs as inputs_mod
from bench.engine import runner  # noqa: E402
from fake_inputs import FakeFeatureInputs, write_toy_cohort  # noqa: E402
from bench.cli import main as cli  # noqa: E402
from bench.registry import get_method  # noqa: E402
from bench.engine.train import Sample  # noqa: E402
from bench.engine.tuning import TuningError, load_best, load_space, split_params, tune  # noqa: E402

N_CASES = 24


class RecordingInputs(FakeFeatureInputs):
    """Stands in for FeatureInputs: synthetic 1024-d bags whose mean carries the stage; records every
    case id that is prepared (ensure), probed (has) or loaded (sample load/views)."""

    log: dict[str, set] = {"ensured": set(), "probed": set(), "loaded": set()}

    def __init__(self, cohort, encoder_name, cache_root, allow_random, progress, standin=False, settings=None):
        super().__init__(cohort, encoder_name, cache_root, allow_random, progress, standin)
        self.stage = dict(zip(cohort.table["case_id"], cohort.table["stage"]))

    def ensure(self, cases=None):
        RecordingInputs.log["ensured"] |= set(cases if cases is not None else self.cohort.table["case_id"])

    def has(self, case_id):
        RecordingInputs.log["probed"].add(case_id)
        return True

    def _bag(self, case_id):
        RecordingInputs.log["loaded"].add(case_id)
        g = torch.Generator().manual_seed(abs(hash(case_id)) % 2**31)
        x = torch.randn(8, 1024, generator=g)
        x[:, :4] += 2.0 * float(self.stage[case_id])
        return x

    def sample(self, case_id, labels):
        return Sample(case_id, lambda: self._bag(case_id), labels)


@pytest.fixture()
def cohort(tmp_path, monkeypatch):
    """A 24-case dataset (empty slide files are enough: the fake inputs never open them)."""
    spec, _ = write_toy_cohort(tmp_path, N_CASES)
    monkeypatch.setitem(inputs_mod.FEATURE_INPUTS, "features", RecordingInputs)  # what make_inputs builds
    for v in RecordingInputs.log.values():
        v.clear()
    return spec, tmp_path / "results"


def _n_complete(results, fold=0, task="staging", method="meanmil.resnet50"):
    best = json.loads((results / "tuning" / "toy" / task / method / f"fold{fold}" / "best.json").read_text())
    study = optuna.load_study(study_name=best["study_name"],
                              storage=f"sqlite:///{results / 'tuning' / 'toy' / task / method / 'optuna.db'}")
    return len([t for t in study.trials if t.state.name == "COMPLETE"]), best


def test_three_trials_never_touch_the_outer_test_fold(cohort):
    spec, results = cohort
    report = tune(get_method("meanmil.resnet50"), str(spec), n_trials=3, tasks=["staging"], folds=[0],
                  results=results, train_overrides={"epochs": 2}, progress=False)
    assert len(report.folds) == 1 and report.folds[0].n_after == 3
    n, best = _n_complete(results)
    assert n == 3 and set(best["params"]) == {"lr", "weight_decay", "model.dropout"}  # epochs fixed by --set
    assert 0.0 <= best["value"] <= 1.0

    folds = pd.read_csv(results / "splits/toy/staging.csv")
    test, train = set(folds.loc[folds.fold == 0, "case_id"]), set(folds.loc[folds.fold != 0, "case_id"])
    log = RecordingInputs.log
    # the instrument saw the whole outer training fold (every case is validated once) ...
    assert log["loaded"] == train
    # ... and not one outer test case was prepared, probed or loaded
    assert not (log["ensured"] | log["probed"] | log["loaded"]) & test
    inner = pd.read_csv(results / "tuning/toy/staging/meanmil.resnet50/fold0/inner_folds.csv")
    assert set(inner["case_id"]) == train and inner["fold"].nunique() == 3

    # negative control: the same instrument does see the test cases when the outer fold is scored
    rep = runner.run([get_method("meanmil.resnet50")], str(spec), tasks=["staging"], folds=[0], results=results,
                     train_overrides={"epochs": 1}, progress=False)
    assert rep.ran and log["loaded"] & test


def test_resume_tops_up_to_the_requested_count(cohort):
    spec, results = cohort
    args = ["tune", "--method", "meanmil.resnet50", "--dataset", str(spec), "--results", str(results),
            "--task", "staging", "--folds", "1", "--set", "epochs=1", "-q"]
    assert cli([*args, "--trials", "2"]) == 0
    assert _n_complete(results, fold=1)[0] == 2
    assert cli([*args, "--trials", "2"]) == 0  # nothing added
    assert _n_complete(results, fold=1)[0] == 2
    assert cli([*args, "--trials", "4"]) == 0  # continues the same study
    n, best = _n_complete(results, fold=1)
    assert n == 4 and best["n_trials"] == 4


def test_run_tuned_uses_best_parameters_per_fold(cohort):
    spec, results = cohort
    m = get_method("meanmil.resnet50")
    tune(m, str(spec), n_trials=2, tasks=["staging"], folds=[0], results=results,
         train_overrides={"epochs": 1}, progress=False)
    best = load_best(results, "toy", "staging", "meanmil.resnet50", 0)
    rep = runner.run([m], str(spec), tasks=["staging"], folds=[0, 1], results=results, tuned=True,
                     train_overrides={"epochs": 1}, progress=False)
    # fold 0 ran with its tuned values; fold 1 was never tuned: it fails and says what to run
    assert [u.fold for u in rep.ran] == [0] and rep.ran[0].variant == "tuned"
    (unit1, msg), = rep.failed.items()
    assert unit1.fold == 1 and "bench tune --method meanmil.resnet50" in msg
    d = results / "runs/toy/staging/meanmil.resnet50/tuned/fold0"
    cfg = json.loads((d / "config.json").read_text())
    tr, mo = split_params(best["params"])
    assert cfg["tuned"]["params"] == best["params"] and cfg["train"]["lr"] == tr["lr"]
    assert cfg["model"]["dropout"] == mo["dropout"]
    assert json.loads((d / "metrics.json").read_text())["tuned"]["params"] == best["params"]
    # the untuned run of the same fold is another unit with another config hash
    runner.run([m], str(spec), tasks=["staging"], folds=[0], results=results, train_overrides={"epochs": 1},
               progress=False)
    plain = json.loads((results / "runs/toy/staging/meanmil.resnet50/fold0/config.json").read_text())
    assert plain["config_hash"] != cfg["config_hash"] and "tuned" not in plain
    assert json.loads((results / "runs/toy/staging/meanmil.resnet50/fold0/metrics.json").read_text())["tuned"] is None


def test_search_spaces(tmp_path, monkeypatch):
    s = load_space(get_method("abmil.conch"))
    assert {"lr", "weight_decay", "epochs", "model.dropout", "model.hidden"} <= set(s["space"])
    s = load_space(get_method("ilra.resnet50"))
    assert "model.dropout" not in s["space"] and "model.num_layers" in s["space"]  # null removes a key
    monkeypatch.setenv("BENCH_CONFIG", str(tmp_path))  # the user overlay wins over the shipped space
    (tmp_path / "tuning").mkdir()
    (tmp_path / "tuning" / "mil.yaml").write_text("space:\n  lr: {type: float, low: 0, high: 1, log: true}\n")
    with pytest.raises(TuningError, match="mil.yaml: `lr`: a log scale needs low > 0"):
        load_space(get_method("abmil.conch"))
    (tmp_path / "tuning" / "mil.yaml").write_text("space:\n  lr: {type: normal}\n")
    with pytest.raises(TuningError, match="type float, int or categorical"):
        load_space(get_method("abmil.conch"))


def test_missing_tuning_result_names_the_command(tmp_path):
    with pytest.raises(TuningError, match="bench tune --method abmil.conch --dataset luad --task staging"):
        load_best(tmp_path, "luad", "staging", "abmil.conch", 2)


def test_table_marks_tuned_rows(cohort):
    from bench.results.store import ResultsStore
    from bench.report.tables import build_table, to_latex, to_markdown

    spec, results = cohort
    m = get_method("meanmil.resnet50")
    tune(m, str(spec), n_trials=1, tasks=["staging"], folds=[0], results=results, inner=2,
         train_overrides={"epochs": 1}, progress=False)
    for tuned in (False, True):
        runner.run([m], str(spec), tasks=["staging"], folds=[0], results=results, tuned=tuned,
                   train_overrides={"epochs": 1}, progress=False)
    summary = ResultsStore(results).summarize("toy").assign(dataset="toy")
    wide, cols = build_table(summary, tasks=["staging"])
    assert list(wide["tuned"]) == [False, True]
    md, tex = to_markdown(wide, cols), to_latex(wide, cols)
    assert "| MeanMIL (tuned) \u2020" in md and "| MeanMIL \u2020" in md and "nested cross-validation" in md
    assert "MeanMIL (tuned)" in tex and "nested cross-validation" in tex


def test_prune_stops_a_trial_after_its_first_inner_fold(cohort, monkeypatch):
    class AlwaysPrune(optuna.pruners.BasePruner):
        def __init__(self, **kwargs):
            pass

        def prune(self, study, trial):
            return True

    monkeypatch.setattr(optuna.pruners, "MedianPruner", AlwaysPrune)
    spec, results = cohort
    with pytest.raises(TuningError, match="no trial finished"):
        tune(get_method("meanmil.resnet50"), str(spec), n_trials=2, tasks=["staging"], folds=[0], results=results,
             train_overrides={"epochs": 1}, prune=True, progress=False)
    study = optuna.load_study(study_name=optuna.get_all_study_names(
        f"sqlite:///{results / 'tuning/toy/staging/meanmil.resnet50/optuna.db'}")[0],
        storage=f"sqlite:///{results / 'tuning/toy/staging/meanmil.resnet50/optuna.db'}")
    assert [t.state.name for t in study.trials] == ["PRUNED", "PRUNED"]
    assert all({k for k in t.user_attrs if k.startswith("inner")} == {"inner0"} for t in study.trials)  # one inner fold trained, not three


# --- the hierarchical rows' search space (bench/configs/tuning/hierarchical.yaml) -----------------------------


def _constructor_args(builder: str) -> set[str]:
    """Parameter names of a builder class's __init__, read from its source (HIPT's module imports timm:
    parsing keeps this test fast)."""
    import ast
    import importlib.util

    module, _, cls = builder.partition(":")
    tree = ast.parse(open(importlib.util.find_spec(module).origin).read())
    c = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls)
    init = next(n for n in c.body if isinstance(n, ast.FunctionDef) and n.name == "__init__")
    return {a.arg for a in init.args.args + init.args.kwonlyargs}


@pytest.mark.parametrize("name,extra", [("hipt", {"model.dropout", "model.freeze_4k"}),
                                        ("prov-gigapath-cls", set()),
                                        ("prov-gigapath-feat", {"model.abmil_dropout"})])
def test_hierarchical_search_space(name, extra):
    spec = get_method(name)
    s = load_space(spec)
    assert s["source"].endswith("bench/configs/tuning/hierarchical.yaml") and s["inner_folds"] == 3
    assert set(s["space"]) == {"lr", "weight_decay", "epochs"} | extra
    # the ranges hold the originals' recipes: HIPT lr 2e-4 / wd 1e-5 / 20 epochs; Prov-GigaPath lr
    # 2e-3 x 32 / 256 = 2.5e-4 and 4e-3 x 32 / 256 = 5e-4, wd 1e-5 and 0.05, 5 epochs
    lr, wd, ep = s["space"]["lr"], s["space"]["weight_decay"], s["space"]["epochs"]
    assert all(lr["low"] <= v <= lr["high"] for v in (2e-4, 2e-3 * 32 / 256, 4e-3 * 32 / 256))
    assert all(wd["low"] <= v <= wd["high"] for v in (1e-5, 0.05)) and ep["low"] <= 5 and ep["high"] >= 20
    # every `model.` key is an option of the model's constructor
    assert {k[len("model."):] for k in extra} <= _constructor_args(spec.builder)


class RecordingTiles(RecordingInputs):
    """Prov-GigaPath's inputs: 1536-d tile features with grid positions (a 2 x 3 grid)."""

    def _bag(self, case_id):
        from baselines.bag import Bag

        g = torch.Generator().manual_seed(abs(hash(case_id)) % 2**31)
        x = torch.randn(6, 1536, generator=g)
        x[:, :4] += 2.0 * float(self.stage[case_id])
        RecordingInputs.log["loaded"].add(case_id)
        return Bag(x, coords=torch.tensor([[i % 3, i // 3] for i in range(6)]))


def test_tune_accepts_the_hierarchical_space(cohort, monkeypatch):
    """`bench tune` on prov-gigapath-feat with the hierarchical space (a toy-width slide encoder through
    --model): trials complete and the searched keys are the space's minus what --set fixes."""
    spec, results = cohort
    monkeypatch.setitem(inputs_mod.FEATURE_INPUTS, "tiles", RecordingTiles)
    small = {"embed_dim": 16, "depth": 2, "heads": 2, "feat_layers": [1, 2], "abmil_hidden": 8, "abmil_attn": 4}
    report = tune(get_method("prov-gigapath-feat"), str(spec), n_trials=2, tasks=["staging"], folds=[0], inner=2,
                  results=results, train_overrides={"epochs": 1}, model_overrides=small, progress=False)
    assert report.folds[0].n_after == 2
    n, best = _n_complete(results, method="prov-gigapath-feat")
    assert n == 2 and set(best["params"]) == {"lr", "weight_decay", "model.abmil_dropout"}
    assert 5e-5 <= best["params"]["lr"] <= 1e-3 and 0 <= best["params"]["model.abmil_dropout"] <= 0.5


def _import_split_set(spec, results, name="pub"):
    """A published-style split set for the 24 toy cases (``case_id, fold, split``): fold k tests the
    cases i % 4 == k, stops early on i % 4 == k + 1, trains on the rest; imported with the CLI."""
    rows = [(f"CASE-{i:03d}", k, "test" if i % 4 == k else "val" if i % 4 == (k + 1) % 4 else "train")
            for k in range(4) for i in range(N_CASES)]
    f = spec.parent / f"{name}.csv"
    pd.DataFrame(rows, columns=["case_id", "fold", "split"]).to_csv(f, index=False)
    assert cli(["splits", "--dataset", str(spec), "--task", "staging", "--results", str(results), "--import", str(f),
                "--format", "csv", "--name", name]) == 0
    return {role: {c for c, k, r in rows if k == 0 and r == role} for role in ("train", "val", "test")}


def test_tune_on_an_imported_split_set_and_run_tuned_on_it(cohort):
    """`tune --splits NAME`: the outer folds are the imported set's; neither its test cases nor its
    early-stopping cases of the outer fold are touched; the result is kept per split set and
    `run --tuned --splits NAME` trains with it, while the seeded folds have no tuning result."""
    spec, results = cohort
    roles = _import_split_set(spec, results)
    assert cli(["tune", "--method", "meanmil.resnet50", "--dataset", str(spec), "--results", str(results),
                "--task", "staging", "--folds", "0", "--trials", "2", "--set", "epochs=1", "--splits", "pub",
                "-q"]) == 0
    touched = set().union(*RecordingInputs.log.values())
    assert touched and touched <= roles["train"], sorted(touched - roles["train"])  # never test nor val cases
    fd = results / "tuning/toy/staging/meanmil.resnet50/splits-pub/fold0"
    best = json.loads((fd / "best.json").read_text())
    inner = pd.read_csv(fd / "inner_folds.csv")
    assert set(inner["case_id"]) == roles["train"]
    assert not (results / "tuning/toy/staging/meanmil.resnet50/fold0").exists()  # the seeded set's place

    m = get_method("meanmil.resnet50")
    rep = runner.run([m], str(spec), tasks=["staging"], folds=[0], results=results, tuned=True,
                     splits_name="pub", train_overrides={"epochs": 1}, progress=False)
    assert [u.variant for u in rep.ran] == ["tuned+splits-pub"], rep.failed
    cfg = json.loads((results / "runs/toy/staging/meanmil.resnet50/tuned+splits-pub/fold0/config.json").read_text())
    assert cfg["tuned"]["params"] == best["params"] and cfg["split"]["name"] == "pub"
    rep = runner.run([m], str(spec), tasks=["staging"], folds=[0], results=results, tuned=True,
                     train_overrides={"epochs": 1}, progress=False)
    (msg,) = rep.failed.values()  # the seeded folds were never tuned: pub's parameters are not taken
    assert "fold0/best.json is missing" in msg and "bench tune --method meanmil.resnet50" in msg


def test_run_tuned_refuses_parameters_tuned_on_other_folds(cohort):
    """A best.json whose split hash is not the run's folds (e.g. copied from another split set) is
    refused, naming the file: its outer test fold may have been tuned on."""
    spec, results = cohort
    m = get_method("meanmil.resnet50")
    tune(m, str(spec), n_trials=1, tasks=["staging"], folds=[0], results=results, inner=2,
         train_overrides={"epochs": 1}, progress=False)
    p = results / "tuning/toy/staging/meanmil.resnet50/fold0/best.json"
    best = json.loads(p.read_text())
    p.write_text(json.dumps({**best, "split_hash": "0123456789abcdef"}))
    rep = runner.run([m], str(spec), tasks=["staging"], folds=[0], results=results, tuned=True,
                     train_overrides={"epochs": 1}, progress=False)
    (msg,) = rep.failed.values()
    assert "was tuned on other folds (split hash 0123456789abcdef" in msg and str(p) in msg
