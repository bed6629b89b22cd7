"""The always-valid two-proportion test: formulas, p-value path, confidence sequence, simulations, sample size."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hamjax.serve import sequential
from hamjax.serve.sequential import (
    cs_radius,
    log_mixture_ratio,
    power,
    sample_size,
    simulate_aa,
    two_means,
    two_proportions,
)


def test_the_confidence_sequence_is_where_the_mixture_ratio_stays_below_one_over_alpha():
    s2, tau, alpha = 3e-5, 0.02, 0.05
    r = float(cs_radius(s2, tau, alpha))
    assert float(log_mixture_ratio(0.01 + r, s2, tau, theta0=0.01)) == pytest.approx(math.log(1 / alpha))
    assert float(log_mixture_ratio(0.0, s2, tau)) < 0  # no evidence at d = 0


def test_equal_arms_match_the_per_observation_form():
    v, n, tau, d = 0.1636, 4000, 0.02, 0.015
    per_obs = 0.5 * math.log(v / (v + n * tau**2)) + n * n * tau**2 * d * d / (2 * v * (v + n * tau**2))
    assert float(log_mixture_ratio(d, v / n, tau)) == pytest.approx(per_obs)


def test_p_value_is_a_running_minimum_and_the_decision_sticks():
    rng = np.random.default_rng(0)
    arm = np.tile([0, 1], 6000)
    correct = rng.random(12000) < np.where(arm == 1, 0.95, 0.9)
    full = two_proportions(arm, correct, np.ones(12000))
    assert full.decision == "B better" and full.p_value <= 0.05 and full.decided_at is not None
    prefixes = [two_proportions(arm[:k], correct[:k], np.ones(k)) for k in (500, 2000, 4000, 8000, 12000)]
    p_values = [r.p_value for r in prefixes]
    assert p_values == sorted(p_values, reverse=True)
    later = [r for r in prefixes if r.n_a + r.n_b >= full.decided_at]
    assert all(r.decision == "B better" for r in later)
    assert full.low <= full.difference <= full.high and full.low > 0
    assert full.mean_a == pytest.approx(correct[arm == 0].mean()) and full.n_a == 6000


def test_events_with_several_labels_count_every_label():
    one = two_proportions([0, 1], [40, 45], [50, 50], min_n=1)
    assert (one.n_a, one.n_b, one.mean_a, one.mean_b) == (50, 50, 0.8, 0.9)
    assert one.difference == pytest.approx(0.1) and -1 <= one.low < one.high <= 1


def test_before_min_n_the_test_waits():
    r = two_proportions([0, 1, 0, 1], [1, 0, 1, 0], [1, 1, 1, 1], min_n=30)
    assert r.p_value == 1.0 and r.decision == "continue" and r.low is None
    empty = two_proportions([], [], [])
    assert empty.n_a == 0 and empty.mean_a is None and empty.difference is None


def test_latency_test_reports_which_arm_is_slower():
    rng = np.random.default_rng(1)
    arm = np.tile([0, 1], 400)
    r = two_means(arm, rng.gamma(4.0, 2.0, 800) + 3.0 * (arm == 0))
    assert r.decision == "A higher" and r.difference < 0 and r.high < 0
    same = two_means(arm, rng.gamma(4.0, 2.0, 800))
    assert same.decision == "continue" and same.low < 0 < same.high


def test_aa_false_positives_under_continuous_checking_small():
    sim = simulate_aa(n_tests=300, n_per_arm=3000, p=0.9, seed=3)
    assert sim.rate <= 0.05 and sim.tests == 300 and sim.check_every == 1


def test_power_for_a_five_point_difference_small():
    sim = power(0.05, 1500, p=0.9, n_tests=200, seed=4)
    assert sim.rate >= 0.8 and sim.mean_stop < 1500


def test_checking_less_often_rejects_less_often():
    every = simulate_aa(n_tests=300, n_per_arm=2000, seed=5)
    sparse = simulate_aa(n_tests=300, n_per_arm=2000, seed=5, check_every=200)
    assert sparse.rejected <= every.rejected


def test_sample_size_for_a_two_point_difference_is_documented():
    assert sample_size(0.02, 0.90) == 6222
    assert sample_size(0.02, 0.90) < sample_size(0.01, 0.90) < sample_size(0.01, 0.90, power=0.9)
    assert sample_size(-0.02, 0.92) == sample_size(0.02, 0.90)
    assert f"**{sample_size(0.02, 0.90):,} at tau 0.02**" in " ".join(sequential.__doc__.split())


def test_full_scale_targets_aa_and_power():
    # The targets at full scale (1,000 tests each, checked after every observation): under a second.
    n = sample_size(0.02, 0.90)
    aa = simulate_aa(n_tests=1000, n_per_arm=n, p=0.9, seed=11)
    assert aa.rate <= 0.05
    ab = power(0.02, n, p=0.90, n_tests=1000, seed=12)
    assert ab.rate >= 0.8


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: two_proportions([0, 2], [1, 1], [1, 1]), "arm"),
        (lambda: two_proportions([0, 1], [2, 1], [1, 1]), "successes"),
        (lambda: two_proportions([0, 1], [1], [1, 1]), "length"),
        (lambda: two_proportions([0, 1], [1, 1], [1, 1], alpha=0), "alpha"),
        (lambda: two_means([0, 1], [1.0, float("nan")]), "finite"),
        (lambda: sample_size(0.0, 0.9), "delta"),
        (lambda: sample_size(0.2, 0.9), "delta"),
        (lambda: power(0.02, 0, n_tests=5), "n_per_arm"),
        (lambda: simulate_aa(n_tests=5, check_every=0), "check_every"),
    ],
)
def test_bad_arguments_are_refused(call, match):
    with pytest.raises(ValueError, match=match):
        call()
