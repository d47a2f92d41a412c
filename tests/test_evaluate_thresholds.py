"""The conformal control-set threshold keeps its FPR promise; held-out FPR intervals cover at the nominal rate."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import norm

from probes.evaluation import conformal_n_needed, conformal_threshold, operating_point


def test_conformal_rank_is_the_documented_order_statistic() -> None:
    scores = np.arange(1, 100, dtype=float)[::-1]  # n = 99, shuffled order must not matter
    # alpha = 0.01, n = 99: k = ceil(0.99 * 100) = 99 -> the largest score
    assert conformal_threshold(scores, 0.01) == 99.0
    # alpha = 0.1: k = ceil(0.9 * 100) = 90
    assert conformal_threshold(scores, 0.1) == 90.0
    # alpha = 0.05, n = 99: k = 95
    assert conformal_threshold(scores, 0.05) == 95.0


def test_too_few_control_scores_gives_inf_and_needed_n() -> None:
    assert conformal_n_needed(0.01) == 99
    assert conformal_n_needed(0.001) == 999
    assert conformal_n_needed(0.3) == 3
    assert math.isinf(conformal_threshold(np.zeros(98), 0.01))
    assert math.isfinite(conformal_threshold(np.zeros(99), 0.01))
    op = operating_point(np.zeros(50), np.zeros(50), np.ones(10), 0.01)
    assert math.isinf(op.threshold) and op.recall == 0.0 and op.empirical_fpr == 0.0
    assert "99" in op.notes[0]
    with pytest.raises(ValueError):
        conformal_threshold([1.0, 2.0], 0.0)


def test_expected_fpr_on_fresh_benign_draws_is_at_most_target() -> None:
    # 400 calibration sets of benign N(0,1) scores; the true FPR of each threshold is 1 - Phi(t).
    alpha, n = 0.05, 199  # (n + 1) alpha is an integer: the guarantee is then tight, E[FPR] = alpha exactly
    rng = np.random.default_rng(0)
    fprs = np.array([norm.sf(conformal_threshold(rng.normal(size=n), alpha)) for _ in range(400)])
    assert fprs.mean() <= alpha + 0.003  # sd of the mean is about 0.0008
    assert fprs.mean() >= alpha - 0.005  # and not wastefully conservative
    # A naive empirical quantile at (1 - alpha) runs hot: its mean FPR exceeds alpha.
    naive = np.array([norm.sf(np.quantile(rng.normal(size=n), 1 - alpha)) for _ in range(400)])
    assert naive.mean() > fprs.mean()


def test_expected_fpr_guarantee_holds_at_1_percent_with_uneven_n() -> None:
    # Heavy-tailed benign scores (Student t, 4 dof): the guarantee is distribution-free.
    from scipy.stats import t as student_t

    alpha, n = 0.01, 250
    rng = np.random.default_rng(1)
    fprs = np.array(
        [student_t.sf(conformal_threshold(rng.standard_t(4, size=n), alpha), 4) for _ in range(400)]
    )
    assert fprs.mean() <= alpha + 0.002


def test_held_out_fpr_interval_covers_the_true_fpr_at_nominal_rate() -> None:
    rng = np.random.default_rng(2)
    covered = 0
    seeds = 200
    for _ in range(seeds):
        cal, hold = rng.normal(size=300), rng.normal(size=500)
        op = operating_point(cal, hold, rng.normal(2.0, 1.0, size=100), 0.05)
        true_fpr = norm.sf(op.threshold)
        lo, hi = op.empirical_fpr_ci
        covered += lo <= true_fpr <= hi
        # recall is measured on the positives with its own exact interval
        assert op.recall_ci[0] <= op.recall <= op.recall_ci[1]
    # Clopper-Pearson is conservative: coverage >= 95% up to Monte-Carlo noise (sd ~1.5%).
    assert covered / seeds >= 0.92


def test_fpr_bound_holds_per_threshold_at_its_confidence() -> None:
    from probes.evaluation import conformal_fpr_bound

    alpha, n = 0.05, 199
    bound = conformal_fpr_bound(n, alpha, confidence=0.9)
    assert alpha < bound < 0.1
    assert conformal_fpr_bound(20_000, alpha, 0.9) == pytest.approx(alpha, abs=0.003)  # tightens with n
    assert conformal_fpr_bound(50, 0.01) == 0.0  # infeasible -> +inf threshold -> never flags
    rng = np.random.default_rng(5)
    fprs = np.array([norm.sf(conformal_threshold(rng.normal(size=n), alpha)) for _ in range(400)])
    assert np.mean(fprs > bound) == pytest.approx(0.1, abs=0.04)
