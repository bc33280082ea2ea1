"""Protocol choices as named options (docs/protocol.md): each changes what it claims and nothing
else, and the presets set them (``--protocol paper|wsi-bench``)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from bench.engine.protocol import ProtocolError, list_protocols, load_protocol, resolve_protocol
from bench.engine.runner import method_train_config, model_options
from bench.tasks import get_task, survival_bins
from bench.engine.train import Sample, TrainConfig, predict, train_and_predict, validation_split
from bench.registry import get_method

# -- 1. staging loss class weights --------------------------------------------------------------

STAGES = [0, 1, 1, 1, 2, 2, 3, 3]  # 8 cases: n / (4 * n_c) = 2, 2/3, 1, 1


def test_class_weights_option_changes_the_loss_weights_only() -> None:
    labels = [{"stage": float(s)} for s in STAGES]
    inv = get_task("staging").fit(labels, 4, class_weights="inverse_frequency")
    plain = get_task("staging").fit(labels, 4, class_weights="none")
    np.testing.assert_allclose(inv.weights_np, [2.0, 2 / 3, 1.0, 1.0])
    assert plain.weights is None
    logits = torch.tensor([[0.5, 0.0, -0.5, 1.0]])
    tgt = plain.target({"stage": 0.0})
    ce = torch.nn.functional.cross_entropy(logits, tgt["stage"])
    torch.testing.assert_close(plain.loss(logits, tgt), ce)
    torch.testing.assert_close(inv.loss(logits, tgt), 2.0 * ce)
    # nothing else: the same targets and prediction rows; survival has no class weights at all
    assert inv.target({"stage": 3.0})["stage"].tolist() == plain.target({"stage": 3.0})["stage"].tolist() == [3]
    assert inv.row(logits, {}) == plain.row(logits, {})
    surv = [{"time": float(t), "event": 1.0} for t in range(1, 9)]
    a = get_task("survival").fit(surv, class_weights="inverse_frequency").info()
    assert a == get_task("survival").fit(surv, class_weights="none").info()


def test_class_weights_is_validated() -> None:
    with pytest.raises(ValueError, match="class_weights"):
        TrainConfig.from_dict({"class_weights": "balanced"})
    with pytest.raises(ValueError, match="unknown training options"):
        TrainConfig.from_dict({"class_balance": True})  # the old switch is gone, not silently ignored


# -- 2. MIL bag subsampling ------------------------------------------------------------------------


class Recorder(torch.nn.Module):
    """Mean-pools a bag; remembers the bag sizes it was given in training and in eval."""

    def __init__(self) -> None:
        super().__init__()
        self.head = torch.nn.Linear(4, 4)
        self.seen: dict[bool, list[int]] = {True: [], False: []}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen[self.training].append(int(x.shape[0]))
        return self.head(x.mean(0, keepdim=True))


def _bags(n: int, size: int, seed: int = 0) -> list[Sample]:
    g = torch.Generator().manual_seed(seed)
    return [Sample(f"c{seed}-{i}", lambda x=torch.randn(size, 4, generator=g): x, {"stage": float(i % 4)}) for i in range(n)]


@pytest.mark.parametrize("max_patches, want", [(None, 30), (7, 7), (100, 30)])
def test_max_patches_is_the_bag_size_the_model_sees_in_training(max_patches, want) -> None:
    model = Recorder()
    train_and_predict(model, "staging", _bags(8, 30), _bags(3, 30, 1),
                      TrainConfig(epochs=2, max_patches=max_patches), progress=False)
    assert set(model.seen[True]) == {want}
    assert set(model.seen[False]) == {30}  # test bags are always whole


# -- 3. MIL schedule: early stopping on a split of the training fold --------------------------------


def test_validation_split_is_stratified_seeded_and_from_the_training_fold() -> None:
    labels = [{"stage": float(s)} for s in [0] * 10 + [1] * 20 + [2] * 30 + [3] * 40]
    val = validation_split("staging", labels, 0.1, seed=3)
    assert val == validation_split("staging", labels, 0.1, seed=3)
    assert val != validation_split("staging", labels, 0.1, seed=4)
    assert len(val) == 10
    assert np.bincount([int(labels[i]["stage"]) for i in val]).tolist() == [1, 2, 3, 4]


def test_early_stopping_never_sees_the_test_fold_and_keeps_the_best_weights() -> None:
    train, test = _bags(20, 5), _bags(4, 5, 1)
    seen_ids: list[str] = []
    wrap = [Sample(s.case_id, (lambda s=s: (seen_ids.append(s.case_id), s.load())[1]), s.labels) for s in train]
    torch.manual_seed(0)
    model = Recorder()
    cfg = TrainConfig(epochs=30, lr=0.05, schedule="early_stopping", val_fraction=0.2, patience=2, min_epochs=3)
    pred, log, info = train_and_predict(model, "staging", wrap, test, cfg, progress=False)
    assert info["val_cases"] == 4 and info["epochs_run"] == len(log) < 30  # stopped early
    assert info["epochs_run"] == max(cfg.min_epochs + 1, info["best_epoch"] + cfg.patience)
    assert "val_loss" in log and log["val_loss"].notna().all()
    assert info["best_epoch"] == int(log.loc[log["val_loss"].idxmin(), "epoch"])
    assert not set(seen_ids) & {s.case_id for s in test}  # training and validation: training fold only
    # the model predicting the test fold is the best epoch's (its val loss recomputed)
    from bench.engine.train import validation_loss

    fitted = get_task("staging").fit([s.labels for s in train], 4)
    held = validation_split("staging", [s.labels for s in train], 0.2, cfg.seed)
    v = validation_loss(model, [train[i] for i in held], fitted, torch.device("cpu"))
    assert v == pytest.approx(log["val_loss"].min(), rel=1e-5)


def test_fixed_schedule_is_unchanged_by_early_stopping_options() -> None:
    def run(**kw):
        torch.manual_seed(0)
        model = Recorder()
        pred, log, info = train_and_predict(model, "staging", _bags(8, 6), _bags(3, 6, 1),
                                            TrainConfig(epochs=3, **kw), progress=False)
        return pred, log.drop(columns="seconds")
    a, b = run(), run(patience=1, min_epochs=1, val_fraction=0.5)
    pd.testing.assert_frame_equal(a[0], b[0])
    pd.testing.assert_frame_equal(a[1], b[1])


# -- 4. survival bins closed right or left ---------------------------------------------------------


def test_survival_bins_closed_moves_only_cases_on_an_edge() -> None:
    edges = np.array([-np.inf, 2.0, 5.0, 9.0, np.inf])
    times = np.array([1.0, 2.0, 3.0, 5.0, 9.0, 12.0])
    assert survival_bins(times, edges).tolist() == [0, 0, 1, 1, 2, 3]  # right-closed: (2, 5]
    assert survival_bins(times, edges, "right").tolist() == [0, 0, 1, 1, 2, 3]
    assert survival_bins(times, edges, "left").tolist() == [0, 1, 1, 2, 3, 3]  # MCAT: [2, 5)
    train = [{"time": float(t), "event": 1.0} for t in (1, 2, 3, 4, 5, 6, 7, 8, 9)]
    right = get_task("survival").fit(train, survival_bins_closed="right")
    left = get_task("survival").fit(train, survival_bins_closed="left")
    assert right.info() == left.info()  # the same edges (3, 5, 7)
    assert right.target({"time": 5.0, "event": 1.0})["y_bin"].item() == 1
    assert left.target({"time": 5.0, "event": 1.0})["y_bin"].item() == 2
    assert right.target({"time": 6.0, "event": 1.0})["y_bin"].item() == left.target(
        {"time": 6.0, "event": 1.0})["y_bin"].item() == 2


# -- 8. the ± --------------------------------------------------------------------------------------


def test_std_ddof_option(tmp_path) -> None:
    from bench.results.store import ResultsStore, Unit
    from record_factory import make_record

    store = ResultsStore(tmp_path)
    vals = [0.5, 0.6, 0.7]
    for k, v in enumerate(vals):
        u = Unit("ds", "survival", "meanmil.conch", k)
        store.prepare(u, {}, "h")
        store.finish(u, pd.DataFrame({"case_id": ["a"], "risk": [0.1]}), pd.DataFrame(),
                     make_record(dataset="ds", task="survival", method="meanmil.conch", fold=k,
                                 primary_metric="c_index", metrics={"c_index": v}))
    pop = store.summarize("ds")
    sample = store.summarize("ds", ddof=1)
    assert pop["std"].iloc[0] == pytest.approx(np.std(vals)) and pop["ddof"].iloc[0] == 0
    assert sample["std"].iloc[0] == pytest.approx(np.std(vals, ddof=1)) and sample["ddof"].iloc[0] == 1
    assert pop["mean"].iloc[0] == sample["mean"].iloc[0]


# -- presets ---------------------------------------------------------------------------------------


def test_presets_set_every_option() -> None:
    assert list_protocols() == ["paper", "wsi-bench"]
    mil, e2e, hipt = get_method("abmil.conch"), get_method("pixelmamba-6m"), get_method("hipt")
    ours = method_train_config(mil)
    paper = method_train_config(mil, protocol=load_protocol("paper"))
    assert (ours["class_weights"], ours["max_patches"], ours["schedule"], ours["survival_bins_closed"]) == (
        "inverse_frequency", 8192, "fixed", "right")
    assert (paper["class_weights"], paper["max_patches"], paper["schedule"], paper["survival_bins_closed"]) == (
        "none", None, "early_stopping", "left")
    assert (paper["epochs"], paper["patience"], paper["min_epochs"], paper["val_fraction"]) == (200, 20, 50, 0.1)
    assert method_train_config(hipt)["max_patches"] is None  # hierarchical rows keep whole bags in both
    e2e_paper = method_train_config(e2e, protocol=load_protocol("paper"))
    assert (e2e_paper["schedule"], e2e_paper["epochs"], e2e_paper["class_weights"]) == ("fixed", 100, "none")
    # what the presets leave alone stays the method config's
    assert {k: v for k, v in paper.items() if k not in load_protocol("paper").train_options("two-stage")} == {
        k: v for k, v in ours.items() if k not in load_protocol("paper").train_options("two-stage")}
    # a CLI --set still wins over the preset
    assert method_train_config(mil, {"class_weights": "inverse_frequency"},
                               protocol=load_protocol("paper"))["class_weights"] == "inverse_frequency"


def test_presets_model_options() -> None:
    class Spec:
        model: dict = {}

    class Cohort:
        spec = Spec()

    e2e = get_method("pixelmamba-6m")
    assert model_options(e2e, Cohort()) == {"fusion_k_from": "initial", "fusion_partition": "alternate",
                                            "bidirectional_merge": "mean"}
    assert model_options(e2e, Cohort(), protocol=load_protocol("paper")) == {
        "fusion_k_from": "current", "fusion_partition": "alternate", "bidirectional_merge": "sum"}
    assert model_options(get_method("vim-ti"), Cohort(), protocol=load_protocol("paper")) == {}
    assert model_options(e2e, Cohort(), {"fusion_k_from": "initial"}, load_protocol("paper"))["fusion_k_from"] == "initial"


def test_protocol_resolution() -> None:
    assert resolve_protocol() == "wsi-bench"
    assert resolve_protocol(None, "paper") == "paper"
    assert resolve_protocol(None, None, "paper") == "paper"
    assert resolve_protocol("wsi-bench", "paper", "paper") == "wsi-bench"
    with pytest.raises(ProtocolError, match="unknown protocol"):
        resolve_protocol("clam")


def test_predict_without_fitting_keeps_its_columns() -> None:
    pred = predict(Recorder(), "staging", _bags(2, 3))
    assert list(pred.columns) == ["case_id", "stage", "pred", "prob0", "prob1", "prob2", "prob3"]


def test_run_records_the_protocol_in_every_unit_config(tmp_path, monkeypatch) -> None:
    """``bench run``'s unit configs name their preset and hold its options; the dataset YAML's
    ``protocol:`` applies unless ``--protocol`` says otherwise; the presets' config hashes differ."""
    from bench.engine import plan as plan_mod, runner
    from bench.registry import resolve_methods
    from fake_inputs import FakeFeatureInputs

    (tmp_path / "slides").mkdir()
    rows = []
    for i in range(20):
        (tmp_path / "slides" / f"TCGA-AA-{i:04d}-01Z-00-DX1.tiff").touch()
        rows.append({"case_id": f"TCGA-AA-{i:04d}", "stage": i % 4, "time": 5.0 + 3 * i, "event": i % 2})
    pd.DataFrame(rows).to_csv(tmp_path / "clinical.csv", index=False)
    spec = tmp_path / "tiny.yaml"
    spec.write_text(f"root: {tmp_path}\nslides: slides\nslide_glob: '*.tiff'\nclinical: clinical.csv\n"
                    "clinical_format: normalized\ntasks: [staging]\nprotocol: paper\n")

    # a dry run resolves configs without reading any slide
    monkeypatch.setattr(plan_mod, "make_inputs", lambda spec, cohort, *a, **k: FakeFeatureInputs(cohort, "x", None, 1, 0))

    def plans(**kw):
        rep = runner.run(resolve_methods("meanmil.resnet50,pixelmamba-6m"), str(spec), results=tmp_path / "res",
                         dry_run=True, folds=[0], from_scratch=True, **kw)
        return {p.unit.method: p for p in rep.todo}

    paper, ours = plans(), plans(protocol="wsi-bench")
    assert paper["meanmil.resnet50"].config["protocol"] == "paper"
    assert paper["meanmil.resnet50"].config["train"]["schedule"] == "early_stopping"
    assert paper["pixelmamba-6m"].config["model"]["bidirectional_merge"] == "sum"
    assert ours["meanmil.resnet50"].config["protocol"] == "wsi-bench"
    assert ours["pixelmamba-6m"].config["model"]["fusion_k_from"] == "initial"
    assert paper["meanmil.resnet50"].chash != ours["meanmil.resnet50"].chash
