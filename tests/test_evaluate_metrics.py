"""Metrics, bootstrap intervals (row and grouped), exact binomial intervals: known answers."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from probes.evaluation import (
    accuracy,
    auprc,
    auroc,
    bootstrap_ci,
    bootstrap_indices,
    clopper_pearson,
    with_ci,
)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auroc_and_auprc_match_sklearn_including_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 300)
    scores = np.round(rng.normal(size=300) + y, 1)  # rounding makes many ties
    assert auroc(y, scores) == pytest.approx(roc_auc_score(y, scores), abs=1e-12)
    assert auprc(y, scores) == pytest.approx(average_precision_score(y, scores), abs=1e-12)


def test_metrics_are_nan_for_one_class_and_accuracy_uses_threshold() -> None:
    assert np.isnan(auroc([1, 1, 1], [0.1, 0.2, 0.3]))
    assert np.isnan(auprc([0, 0], [0.1, 0.2]))
    y, s = np.array([0, 0, 1, 1]), np.array([-1.0, 0.5, 0.2, 2.0])
    assert accuracy(y, s) == 0.75  # threshold 0: row 1 is a false positive
    assert accuracy(y, s, threshold=0.3) == 0.5  # now row 2 is missed too
    assert accuracy(y, s, threshold=-2.0) == 0.5  # everything flagged


def test_bootstrap_ci_covers_value_and_shrinks_with_n() -> None:
    rng = np.random.default_rng(0)
    widths = []
    for n in (200, 3200):
        y = rng.integers(0, 2, n)
        s = rng.normal(size=n) + y
        value, (lo, hi) = with_ci(auroc, y, s, n_bootstrap=400, seed=0)
        assert lo < value < hi
        widths.append(hi - lo)
    # CI width scales like 1/sqrt(n): 16x the rows -> about 4x narrower.
    assert 2.5 < widths[0] / widths[1] < 6.0


def test_bootstrap_survives_degenerate_resamples() -> None:
    # One positive among 30 rows: about a third of row resamples draw no positive and are dropped.
    y = np.zeros(30, dtype=int)
    y[0] = 1
    s = np.linspace(0, 1, 30)[::-1]
    lo, hi = bootstrap_ci(auroc, y, s, n_bootstrap=300, seed=0)
    assert lo == hi == 1.0
    # All positives in one group: every grouped resample without that group is undefined, yet no error.
    lo, hi = bootstrap_ci(
        auroc, [1, 1, 0, 0], [1.0, 2.0, 0.0, 0.5], groups=["a", "a", "b", "b"], n_bootstrap=50
    )
    assert (lo, hi) == (1.0, 1.0)
    assert np.isnan(bootstrap_ci(auroc, [1, 1], [0.2, 0.3], n_bootstrap=10)).all()


def test_grouped_bootstrap_draws_whole_groups() -> None:
    groups = np.repeat([f"g{i}" for i in range(20)], [1, 2, 3, 4, 5] * 4)
    members = {g: set(np.flatnonzero(groups == g)) for g in np.unique(groups)}
    for idx in bootstrap_indices(len(groups), groups, n_bootstrap=50, seed=3):
        counts = np.bincount(idx, minlength=len(groups))
        for rows in members.values():
            # every row of a group is drawn the same number of times (0 when the group was not drawn)
            assert len({int(counts[r]) for r in rows}) == 1
        # as many groups drawn as exist
        assert sum(int(counts[min(rows)]) for rows in members.values()) == len(members)


def test_grouped_bootstrap_is_not_fooled_by_duplicated_rows() -> None:
    rng = np.random.default_rng(0)
    n = 300
    y = rng.integers(0, 2, n)
    s = rng.normal(size=n) + y
    _, (lo1, hi1) = with_ci(auroc, y, s, n_bootstrap=500, seed=1)
    # Each row copied 10 times: a row bootstrap thinks it has 10x the data, a grouped one does not.
    y10, s10, g10 = np.repeat(y, 10), np.repeat(s, 10), np.repeat(np.arange(n), 10)
    _, (lo_row, hi_row) = with_ci(auroc, y10, s10, n_bootstrap=500, seed=1)
    _, (lo_grp, hi_grp) = with_ci(auroc, y10, s10, g10, n_bootstrap=500, seed=1)
    assert (hi_row - lo_row) < 0.5 * (hi1 - lo1)
    assert (hi_grp - lo_grp) == pytest.approx(hi1 - lo1, rel=0.25)


def test_none_groups_are_singletons() -> None:
    idx_sets = list(bootstrap_indices(4, [None, None, "a", "a"], n_bootstrap=30, seed=0))
    for idx in idx_sets:
        counts = np.bincount(idx, minlength=4)
        assert counts[2] == counts[3]


def test_clopper_pearson_known_values() -> None:
    # k = 0: upper bound has the closed form 1 - (alpha/2)^(1/n).
    lo, hi = clopper_pearson(0, 100)
    assert lo == 0.0 and hi == pytest.approx(1 - 0.025 ** (1 / 100))
    lo, hi = clopper_pearson(100, 100)
    assert hi == 1.0 and lo == pytest.approx(0.025 ** (1 / 100))
    lo, hi = clopper_pearson(5, 10)
    assert lo == pytest.approx(0.187086, abs=1e-5) and hi == pytest.approx(0.812914, abs=1e-5)
    assert clopper_pearson(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        clopper_pearson(3, 2)


def test_label_validation() -> None:
    with pytest.raises(ValueError, match="0/1"):
        auroc([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="length"):
        auroc([0, 1, 1], [0.1, 0.2])


@pytest.mark.parametrize("metric", [auroc, auprc, accuracy])
def test_fast_weighted_bootstrap_equals_recomputing_each_resample(metric) -> None:
    # bootstrap_ci scores built-in metrics from one sort with resample multiplicities; a wrapped metric
    # takes the generic path (re-index and recompute). Same seeds -> the same intervals.
    rng = np.random.default_rng(7)
    y = rng.integers(0, 2, 400)
    s = np.round(rng.normal(size=400) + y, 1)
    groups = rng.integers(0, 50, 400)
    for g in (None, groups):
        fast = bootstrap_ci(metric, y, s, g, n_bootstrap=100, seed=1)
        slow = bootstrap_ci(lambda a, b: metric(a, b), y, s, g, n_bootstrap=100, seed=1)
        assert fast == pytest.approx(slow, abs=1e-12)
