"""Calibration metrics and calibrators: known answers, improvement on miscalibrated scores, JSON round trips."""

from __future__ import annotations

import json

import numpy as np
import pytest

from probes.errors import NotFittedError
from probes.evaluation import (
    Calibrator,
    IsotonicCalibrator,
    PlattCalibrator,
    brier_score,
    expected_calibration_error,
    reliability_curve,
)


def _calibrated(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    p = rng.uniform(size=n)
    return (rng.uniform(size=n) < p).astype(int), p


def test_perfectly_calibrated_scores_have_ece_near_zero() -> None:
    y, p = _calibrated(20_000, 0)
    # sampling noise alone: about sqrt(p(1-p)/2000) ~ 0.01 per bin
    assert expected_calibration_error(y, p) < 0.02
    # Brier of calibrated uniform p: E[p(1-p)] = 1/6
    assert brier_score(y, p) == pytest.approx(1 / 6, abs=0.01)


def test_miscalibrated_scores_have_large_ece() -> None:
    y, p = _calibrated(20_000, 1)
    overconfident = np.clip(0.5 + 2.0 * (p - 0.5), 0, 1)
    assert expected_calibration_error(y, overconfident) > 0.1
    assert expected_calibration_error(y, p**3) > 0.1
    assert brier_score(y, overconfident) > brier_score(y, p)


def test_reliability_curve_uses_equal_mass_bins() -> None:
    y, p = _calibrated(1000, 2)
    curve = reliability_curve(y, p, n_bins=10)
    assert curve["counts"] == [100] * 10
    assert np.all(np.diff(curve["mean_predicted"]) > 0)
    assert np.allclose(curve["mean_predicted"], curve["observed_frequency"], atol=0.15)
    with pytest.raises(ValueError, match="raw scores"):
        reliability_curve(y, p * 5)


@pytest.mark.parametrize("cls", [PlattCalibrator, IsotonicCalibrator])
def test_calibrators_fix_miscalibrated_scores_and_round_trip_json(cls: type[Calibrator]) -> None:
    rng = np.random.default_rng(3)

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        logit = rng.normal(0, 2, size=n)
        y = (rng.uniform(size=n) < 1 / (1 + np.exp(-logit))).astype(int)
        return 3.0 * logit + 1.5, y  # raw scores: wrong scale and offset for a sigmoid

    s_cal, y_cal = draw(4000)
    s_test, y_test = draw(4000)
    raw = 1 / (1 + np.exp(-s_test))
    cal = cls().fit(s_cal, y_cal)
    p = cal.transform(s_test)
    assert expected_calibration_error(y_test, p) < 0.5 * expected_calibration_error(y_test, raw)
    assert expected_calibration_error(y_test, p) < 0.03
    assert brier_score(y_test, p) < brier_score(y_test, raw)
    assert np.all(np.diff(p[np.argsort(s_test)]) >= -1e-12)  # monotone

    state = json.loads(json.dumps(cal.to_dict()))
    for loaded in (cls.from_dict(state), Calibrator.from_dict(state)):
        assert type(loaded) is cls
        np.testing.assert_array_equal(loaded.transform(s_test), p)


def test_platt_recovers_known_parameters_and_survives_separable_data() -> None:
    rng = np.random.default_rng(4)
    s = rng.normal(0, 3, size=20_000)
    y = (rng.uniform(size=s.size) < 1 / (1 + np.exp(-(0.5 * s - 1.0)))).astype(int)
    cal = PlattCalibrator().fit(s, y)
    assert cal.a_ == pytest.approx(0.5, abs=0.05) and cal.b_ == pytest.approx(-1.0, abs=0.1)
    # perfectly separable: Platt's smoothed targets keep the slope finite
    sep = PlattCalibrator().fit([-2.0, -1.0, 1.0, 2.0], [0, 0, 1, 1])
    assert np.isfinite(sep.a_) and 0 < sep.transform([0.5])[0] < 1


def test_calibrator_errors() -> None:
    with pytest.raises(NotFittedError):
        PlattCalibrator().transform([0.0])
    with pytest.raises(ValueError, match="both classes"):
        IsotonicCalibrator().fit([0.0, 1.0], [1, 1])
    with pytest.raises(ValueError, match="kind"):
        PlattCalibrator.from_dict({"kind": "isotonic", "x_thresholds": [0.0], "y_thresholds": [0.0]})
