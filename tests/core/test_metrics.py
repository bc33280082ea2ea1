"""Metrics and the survival loss against hand-computed cases."""

import math

import numpy as np
import pytest
import torch

from bench.metrics import UndefinedMetric, c_index, macro_f1
from bench.tasks import nll_survival_loss, survival_bin_edges, survival_bins, survival_risk


def test_c_index_hand_computed():
    # comparable pairs (earlier time with an event): (0,1) (0,2) (0,3) (2,3); (2,3) discordant
    assert c_index([1, 2, 3, 4], [1, 0, 1, 1], [4, 3, 1, 2]) == pytest.approx(3 / 4)


def test_c_index_risk_tie_counts_half():
    assert c_index([1, 2, 3, 4], [1, 0, 1, 1], [4, 3, 2, 2]) == pytest.approx(3.5 / 4)


def test_c_index_tied_times_match_brute_force():
    rng = np.random.default_rng(0)
    t = rng.integers(1, 6, 40).astype(float)  # many tied times
    e = rng.integers(0, 2, 40)
    r = rng.normal(size=40).round(1)  # and tied risks
    num = den = 0.0
    for i in range(40):
        for j in range(40):
            # Harrell: i had the event before j's time, or at j's time with j censored then
            # (a case censored at t was still at risk at t: scikit-survival's convention)
            if e[i] and (t[i] < t[j] or (t[i] == t[j] and not e[j])):
                den += 1
                num += 1.0 if r[i] > r[j] else 0.5 if r[i] == r[j] else 0.0
    assert c_index(t, e, r) == pytest.approx(num / den)


def test_c_index_no_events_is_undefined():
    with pytest.raises(UndefinedMetric, match="no observed event"):
        c_index([1, 2, 3], [0, 0, 0], [1, 2, 3])


def test_macro_f1_absent_class_hand_computed():
    # class 3 absent from truth and predictions: not averaged in
    got = macro_f1([0, 0, 1, 1, 2], [0, 1, 1, 1, 2])
    assert got == pytest.approx((2 / 3 + 0.8 + 1.0) / 3)


def test_macro_f1_predicted_but_absent_class_counts_zero():
    # class 3 predicted but absent from truth: F1 0 for it (scikit-learn's label set)
    assert macro_f1([0, 1], [0, 3]) == pytest.approx((1.0 + 0.0 + 0.0) / 3)


def test_nll_uniform_logits_hand_computed():
    logits = torch.zeros(2, 4)  # hazards 0.5: S = .5 .25 .125 .0625
    y = torch.tensor([1, 2])
    event = torch.tensor([1.0, 0.0])  # first died in bin 1, second censored in bin 2
    # died: -log S_pad[1] - log h[1] = 2 log 2;  censored: -log S_pad[3] = 3 log 2
    assert nll_survival_loss(logits, y, event).item() == pytest.approx(2.5 * math.log(2), rel=1e-6)


def test_nll_nonuniform_hand_computed():
    z = [1.0, -1.0, 0.5, 2.0]
    h = [1 / (1 + math.exp(-v)) for v in z]
    s1 = 1 - h[0]
    s2 = s1 * (1 - h[1])
    s3 = s2 * (1 - h[2])
    died_in_2 = -(math.log(s2) + math.log(h[2]))
    censored_in_2 = -math.log(s3)
    logits = torch.tensor([z, z])
    got = nll_survival_loss(logits, torch.tensor([2, 2]), torch.tensor([1.0, 0.0]))
    assert got.item() == pytest.approx((died_in_2 + censored_in_2) / 2, rel=1e-6)


def test_nll_alpha_weights_uncensored_term():
    logits = torch.zeros(1, 4)
    censored = nll_survival_loss(logits, torch.tensor([2]), torch.tensor([0.0]), alpha=1.0)
    assert censored.item() == pytest.approx(0.0)  # alpha=1 keeps only the uncensored term


def test_risk_is_minus_sum_of_survival():
    logits = torch.zeros(1, 4)
    assert survival_risk(logits).item() == pytest.approx(-(0.5 + 0.25 + 0.125 + 0.0625))


def test_bins_from_training_fold_only():
    t = np.array([1, 2, 3, 4, 5, 6, 7, 8, 100.0])
    e = np.array([1, 1, 1, 1, 1, 1, 1, 1, 0])
    edges = survival_bin_edges(t, e)
    # quartiles of the 8 uncensored times; outer edges open so any test time falls in a bin
    assert edges[0] == -np.inf and edges[-1] == np.inf
    np.testing.assert_allclose(edges[1:-1], np.quantile(t[:8], [0.25, 0.5, 0.75]))
    assert list(survival_bins(np.array([0.1, 1, 2.75, 2.76, 500]), edges)) == [0, 0, 0, 1, 3]
