"""The one resolver (bench.engine.recipe): `bench tune`, `bench run --tuned` and `bench run` train the
same network and training recipe, under the dataset's protocol preset too.

Features are written straight into the feature cache (random-weight ResNet-50 key), so the units
train real MeanMIL models on them without extracting anything."""

import json

import pytest

optuna = pytest.importorskip("optuna")

from bench.cli import main as cli  # noqa: E402
from bench.engine import tuning  # noqa: E402
from bench.engine.config import resolved_model_options  # noqa: E402
from bench.engine.recipe import split_params  # noqa: E402
from bench.registry import get_method  # noqa: E402
from fake_inputs import write_cached_cohort  # noqa: E402

N_CASES = 16
METHOD = "meanmil.resnet50"


@pytest.fixture(scope="module")
def paper_cohort(tmp_path_factory):
    """16 cases with cached features, as a dataset whose YAML says ``protocol: paper``."""
    root = tmp_path_factory.mktemp("recipe")
    return write_cached_cohort(root, N_CASES, "protocol: paper\n"), root


def _config(results, variant):
    return json.loads((results / "runs" / "toy" / "staging" / METHOD / variant / "fold0" / "config.json").read_text())


def test_tune_and_run_tuned_train_what_run_trains_under_the_datasets_protocol(paper_cohort, tmp_path, monkeypatch,
                                                                              capsys):
    spec, root = paper_cohort
    results = tmp_path / "results"
    common = ["--dataset", str(spec), "--results", str(results), "--cache", str(root / "cache"), "--folds", "0",
              "--set", "epochs=1", "--set", "min_epochs=0", "-q"]
    trained = []
    real = tuning.fit_and_score

    def spy(recipe, task, train, test, cfg, **kw):  # what each inner fold of a trial trains
        trained.append((dict(recipe.options), cfg.to_dict()))
        return real(recipe, task, train, test, cfg, **kw)

    monkeypatch.setattr(tuning, "fit_and_score", spy)
    assert cli(["tune", "--method", METHOD, "--task", "staging", "--trials", "1", "--inner-folds", "2",
                *common]) == 0
    best = json.loads((results / "tuning/toy/staging" / METHOD / "fold0/best.json").read_text())
    assert cli(["run", "--methods", METHOD, "--tasks", "staging", "--tuned", *common]) == 0
    tuned = _config(results, "tuned")
    assert tuned["protocol"] == "paper" and best["protocol"] == "paper"
    assert len(trained) == 2 and trained[0][0] == trained[1][0]
    model, train = trained[0]
    no_seed = lambda d: {k: v for k, v in d.items() if k != "seed"}  # noqa: E731 — the seed is the fold's
    # the trial's network and training recipe are the ones `run --tuned` trains
    assert resolved_model_options(get_method(METHOD), model) == tuned["model"]
    assert no_seed(train) == no_seed(tuned["train"])
    assert train["class_weights"] == "none" and train["schedule"] == "early_stopping"  # the paper preset's
    assert best["recipe"]["model"] == tuned["model"] and best["recipe"]["train"] == no_seed(tuned["train"])
    # ... and the ones `run` trains when given the tuned values itself
    tr, mo = split_params(best["params"])
    sets = [a for k, v in tr.items() for a in ("--set", f"{k}={v!r}")] + \
        [a for k, v in mo.items() for a in ("--model", f"{k}={v!r}")]
    assert cli(["run", "--methods", METHOD, "--tasks", "staging", "--variant", "explicit", *common, *sets]) == 0
    explicit = _config(results, "explicit")
    assert explicit["protocol"] == "paper"
    assert explicit["model"] == tuned["model"] and explicit["train"] == tuned["train"]
    capsys.readouterr()
    # tuned values searched under one preset are not trained under another
    assert cli(["run", "--methods", METHOD, "--tasks", "staging", "--tuned", "--protocol", "wsi-bench", *common]) == 2
    assert "searched under protocol 'paper'" in capsys.readouterr().err


def test_doctor_reports_the_recipe_run_resolves(paper_cohort, capsys):
    """`bench doctor --methods` prints the recipe of the one resolver: the dataset's protocol preset
    (the paper's CLAM early stopping, plain cross-entropy), or the preset named on the command line."""
    from bench.cli.doctor import check_recipes

    spec, _ = paper_cohort
    assert check_recipes(str(spec), METHOD)
    out = capsys.readouterr().out
    assert f"{METHOD} staging: protocol paper; early_stopping schedule" in out and "class weights none" in out
    assert check_recipes(str(spec), METHOD, protocol="wsi-bench")
    out = capsys.readouterr().out
    assert f"{METHOD} staging: protocol wsi-bench; fixed schedule" in out and "inverse_frequency" in out
