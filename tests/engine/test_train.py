"""The trainer: learns a separable toy task, never touches test statistics, stops on NaN."""

import numpy as np
import pytest
import torch

from bench.registry import build_model
from bench.tasks import score
from bench.engine.train import Sample, TrainConfig, TrainingError, train_and_predict, zscore_samples


def bags(n, seed, dim=1024, shift=1.0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        stage = i % 4
        x = torch.randn(8, dim, generator=g) * 0.1
        x[:, stage] += shift  # one informative dimension per stage
        out.append(Sample(f"c{seed}-{i}", lambda x=x: x, {"stage": float(stage)}))
    return out


def test_learns_separable_staging():
    model = build_model("meanmil.resnet50", 4)
    pred, log, info = train_and_predict(model, "staging", bags(40, 0), bags(20, 1),
                                        TrainConfig(epochs=30, lr=1e-2, grad_accum=4), progress=False)
    assert score("staging", pred)["macro_f1"] > 0.9
    assert log["loss"].iloc[-1] < log["loss"].iloc[0]
    assert info["train_cases"] == 40 and len(pred) == 20


def test_zscore_uses_training_statistics_only():
    train = [Sample("a", lambda: torch.tensor([[1.0, 10.0], [3.0, 10.0]]), {}),
             Sample("b", lambda: torch.tensor([[5.0, 14.0]]), {})]
    test = [Sample("t", lambda: torch.tensor([[1000.0, -1000.0]]), {})]
    tr, te = zscore_samples(train, test)
    # train patches: dim0 mean 3, std sqrt(8/3); dim1 mean 34/3, std sqrt(32/9)
    m = torch.tensor([3.0, 34 / 3])
    sd = torch.tensor([np.sqrt(8 / 3), np.sqrt(32 / 9)], dtype=torch.float32)
    torch.testing.assert_close(te[0].load(), (torch.tensor([[1000.0, -1000.0]]) - m) / sd)
    allx = torch.cat([s.load() for s in tr])
    torch.testing.assert_close(allx.mean(0), torch.zeros(2), atol=1e-5, rtol=0)


def test_nan_loss_is_a_clear_error():
    model = build_model("meanmil.resnet50", 4)
    bad = [Sample("broken-case", lambda: torch.full((3, 1024), float("nan")), {"stage": 1.0})]
    with pytest.raises(TrainingError, match="broken-case"):
        train_and_predict(model, "staging", bad * 4, bad, TrainConfig(epochs=1), progress=False)


def test_survival_bins_cut_on_training_fold():
    g = torch.Generator().manual_seed(0)
    train = [Sample(f"s{i}", lambda: torch.randn(4, 512, generator=g), {"time": float(i + 1), "event": float(i % 2)})
             for i in range(16)]
    test = [Sample("late", lambda: torch.randn(4, 512), {"time": 1000.0, "event": 1.0})]
    pred, _, info = train_and_predict(build_model("abmil.conch", 4), "survival", train, test,
                                      TrainConfig(epochs=1), progress=False)
    odd = [float(i + 1) for i in range(16) if i % 2]
    np.testing.assert_allclose(info["bin_edges"][1:-1], np.quantile(odd, [0.25, 0.5, 0.75]))
    assert pred.loc[0, "y_bin"] == 3 and np.isfinite(pred.loc[0, "risk"])


def test_class_weights_act_on_single_case_steps():
    """One slide per step: F.cross_entropy(weight=w) would cancel w; ours must not (hand case)."""
    import math

    import torch

    from bench.engine.train import weighted_cross_entropy

    logits = torch.tensor([[2.0, 0.0, 0.0, 0.0]])
    w = torch.tensor([0.5, 3.0, 1.0, 1.0])
    ce = math.log(math.exp(2.0) + 3.0) - 0.0  # true class 1: -log softmax = logsumexp - logit
    got = weighted_cross_entropy(logits, torch.tensor([1]), w)
    assert abs(got.item() - 3.0 * ce) < 1e-5
    assert abs(weighted_cross_entropy(logits, torch.tensor([1]), None).item() - ce) < 1e-5
    # a batch: the plain mean of weighted per-case losses
    two = weighted_cross_entropy(logits.repeat(2, 1), torch.tensor([0, 1]), w)
    ce0 = math.log(math.exp(2.0) + 3.0) - 2.0
    assert abs(two.item() - (0.5 * ce0 + 3.0 * ce) / 2) < 1e-5


def test_a_given_early_stopping_set_replaces_the_carved_one_and_is_never_tested():
    """An imported split set's val cases: under early stopping they are the validation set (all of
    the training cases are trained on); under a fixed schedule they are left out; never predicted."""
    train, test, val = bags(12, 0), bags(4, 1), bags(5, 2)
    cfg = dict(epochs=2, lr=1e-2, feature_norm="zscore")
    _, log, info = train_and_predict(build_model("meanmil.resnet50", 4), "staging", train, test,
                                     TrainConfig(**cfg, schedule="early_stopping"), progress=False, val=val)
    assert info["val_cases"] == 5 and info["train_cases"] == 12 and "val_loss" in log
    pred, _, info = train_and_predict(build_model("meanmil.resnet50", 4), "staging", train, test,
                                      TrainConfig(**cfg), progress=False, val=val)
    assert info["train_cases"] == 12 and "val_cases" not in info
    assert sorted(pred["case_id"]) == sorted(s.case_id for s in test)
    _, _, carved = train_and_predict(build_model("meanmil.resnet50", 4), "staging", train, test,
                                     TrainConfig(**cfg, schedule="early_stopping"), progress=False)
    assert carved["train_cases"] < 12  # without a given set, validation is carved from the training cases
