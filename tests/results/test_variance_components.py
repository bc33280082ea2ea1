"""The split (between-fold) and seed (within-fold) variance of a row, on a case worked by hand."""

from __future__ import annotations

import math

import pytest

from bench.results.repeats import fold_means, repeats_text, variance_components


def test_hand_worked_case():
    # folds 0, 1, 2 with two repeats each
    values = {0: [0.6, 0.8], 1: [0.5, 0.7], 2: [0.9, 0.9]}
    # fold means 0.7, 0.6, 0.9; their mean 0.7333...; sample variance
    # ((-1/30)^2 + (-4/30)^2 + (5/30)^2) / 2 = (1 + 16 + 25) / 900 / 2 = 0.023333...
    # within-fold sample variances 0.02, 0.02, 0 -> seed variance 0.013333...
    # split variance 0.023333... - 0.013333... / 2 = 0.016666...
    assert fold_means(values) == pytest.approx([0.7, 0.6, 0.9])
    v = variance_components(values)
    assert v["fold_means_var"] == pytest.approx(42 / 1800)
    assert v["seed_var"] == pytest.approx(0.04 / 3)
    assert v["split_var"] == pytest.approx(42 / 1800 - 0.02 / 3)
    assert v["n_repeats"] == 2 and v["balanced"]


def test_seed_noise_larger_than_the_folds_spread_gives_no_negative_split_variance():
    v = variance_components({0: [0.0, 1.0], 1: [1.0, 0.0]})  # fold means equal, seeds far apart
    assert v["split_var"] == 0.0 and v["seed_var"] == pytest.approx(0.5)


def test_one_repeat_has_no_seed_component():
    v = variance_components({0: [0.5], 1: [0.7], 2: [0.9]})
    assert math.isnan(v["seed_var"]) and v["split_var"] == pytest.approx(0.04)


def test_unequal_repeats_are_not_decomposed():
    v = variance_components({0: [0.5, 0.6], 1: [0.7]})
    assert not v["balanced"] and v["n_repeats"] == 0
    assert all(math.isnan(v[k]) for k in ("split_var", "seed_var", "fold_means_var"))
    assert repeats_text([2, 1]) == "repeats 2/1" and repeats_text([3, 3]) == "3 seeds" and repeats_text([1, 1]) == ""
