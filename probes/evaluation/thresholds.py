"""Thresholds chosen on benign control traffic, and the operating points they give.

A monitor is only useful if its false-positive rate is known, so the threshold is set on *benign control*
scores (traffic the monitor will see in deployment that should never be flagged), not on the test set,
and its FPR is then checked on a held-out part of the control set with an exact binomial interval.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from probes.evaluation.metrics import clopper_pearson


def conformal_n_needed(target_fpr: float) -> int:
    """Smallest number of calibration scores for which :func:`conformal_threshold` is finite.

    ``k = ceil((1 - alpha)(n + 1)) <= n``  holds exactly when  ``n >= 1/alpha - 1``.
    """
    _check_alpha(target_fpr)
    return max(1, math.ceil(1.0 / target_fpr - 1.0 - 1e-9))


def _check_alpha(target_fpr: float) -> None:
    if not 0.0 < float(target_fpr) < 1.0:
        raise ValueError(f"target_fpr must be in (0, 1), got {target_fpr}.")


def conformal_threshold(control_scores: Any, target_fpr: float) -> float:
    """Threshold on benign control scores with a finite-sample false-positive guarantee.

    With ``n`` benign calibration scores and ``alpha = target_fpr`` the threshold is the ``k``-th smallest
    score, ``k = ceil((1 - alpha)(n + 1))``; the monitor flags when ``score > threshold``.

    Guarantee: if a new benign score and the ``n`` calibration scores are *exchangeable* (drawn i.i.d. from
    the same distribution, in any order), then ``P(new score > threshold) <= alpha``, where the probability
    is over both the calibration draw and the new score — i.e. the FPR is at most ``alpha`` *in expectation*
    over calibration sets (the rank of the new score among the ``n + 1`` is uniform, so it lands above the
    ``k``-th smallest with probability at most ``(n + 1 - k) / (n + 1) <= alpha``). One particular threshold
    may still have an FPR above ``alpha``; the held-out check in :func:`operating_point` measures it.

    Assumption: the control set is exchangeable with the benign traffic seen in deployment. If deployment
    traffic differs (other topics, prompt formats, languages) the guarantee does not transfer — use a
    control set drawn from the deployment distribution.

    If ``n < 1/alpha - 1`` then ``k > n`` and no finite threshold has the guarantee: ``+inf`` is returned
    (the monitor never flags). :func:`conformal_n_needed` gives the number of scores required.
    """
    _check_alpha(target_fpr)
    scores = np.sort(np.asarray(control_scores, dtype=np.float64).ravel())
    if scores.size and not np.isfinite(scores).all():
        raise ValueError("control scores contain nan or inf; check the probe's inputs.")
    n = scores.size
    # The tiny slack keeps float error in (1 - alpha)(n + 1) (e.g. 0.99 * 100 = 99.00000000000001) from
    # bumping k up by one.
    k = math.ceil((1.0 - float(target_fpr)) * (n + 1) - 1e-9)
    if k > n:
        return float("inf")
    return float(scores[k - 1])


def too_few_calibration_note(target_fpr: float, n: int) -> str | None:
    """The warning given when ``n`` calibration scores are too few for ``target_fpr`` (else ``None``).

    One wording for every threshold the library sets (supervised probes' control thresholds and anomaly
    detectors' conformal p-values), so a reader recognises the same problem wherever it shows up.
    """
    n_needed = conformal_n_needed(target_fpr)
    if n >= n_needed:
        return None
    return (
        f"target FPR {target_fpr:g} needs at least {n_needed} calibration control scores "
        f"(n >= 1/alpha - 1); got {n}: the threshold is +inf and the probe never flags."
    )


def conformal_p_values(calibration_scores: Any, scores: Any) -> np.ndarray:
    """Conformal p-values of ``scores`` against benign calibration scores (higher score = more anomalous).

    ``p(s) = (1 + #{i : c_i >= s}) / (n + 1)`` for ``n`` calibration scores ``c_i``. If a new benign score
    is exchangeable with the ``n`` calibration scores, ``P(p(s) <= alpha) <= alpha`` for every ``alpha``
    (the rank argument of :func:`conformal_threshold`), and the two agree exactly: ``p(s) <= alpha`` if and
    only if ``s > conformal_threshold(calibration_scores, alpha)``. The smallest p-value is ``1 / (n + 1)``,
    so fewer than ``1/alpha - 1`` scores can never reach ``alpha`` (:func:`too_few_calibration_note`).
    """
    cal = np.sort(np.asarray(calibration_scores, dtype=np.float64).ravel())
    s = np.asarray(scores, dtype=np.float64)
    if not np.isfinite(cal).all():
        raise ValueError("calibration scores contain nan or inf; check the detector's inputs.")
    if np.isnan(s).any():
        raise ValueError("scores contain nan; check the detector's inputs.")
    at_or_above = cal.size - np.searchsorted(cal, s, side="left")
    return (1.0 + at_or_above) / (cal.size + 1.0)


def conformal_fpr_bound(n: int, target_fpr: float, confidence: float = 0.95) -> float:
    """With probability ``confidence`` over the calibration draw, the conformal threshold's FPR is at most this.

    The threshold is the ``k``-th smallest of ``n`` exchangeable benign scores, so (for continuous scores)
    its true FPR is distributed as ``Beta(n + 1 - k, k)``, whose mean is at most ``alpha``; this returns
    that distribution's ``confidence`` quantile (ties only make the FPR smaller). It shrinks towards
    ``alpha`` as ``n`` grows: the per-threshold counterpart of the in-expectation guarantee. ``0.0`` when
    the threshold is ``+inf``.
    """
    from scipy.stats import beta

    _check_alpha(target_fpr)
    k = math.ceil((1.0 - float(target_fpr)) * (n + 1) - 1e-9)
    if k > n:
        return 0.0
    return float(beta.ppf(confidence, n + 1 - k, k))


@dataclass
class OperatingPoint:
    """One threshold chosen for a target FPR, with what it achieves on held-out data.

    ``threshold`` is in the probe's ``decision_function`` space; flag when ``score > threshold``.
    """

    target_fpr: float
    threshold: float
    recall: float
    recall_ci: tuple[float, float]
    empirical_fpr: float
    empirical_fpr_ci: tuple[float, float]
    n_control_cal: int
    n_control_holdout: int
    n_pos: int
    n_false_positives: int
    n_true_positives: int
    n_needed: int
    source: str = "control"  # "control" or "test_negatives" (the fallback when no control set is given)
    #: with probability ``confidence`` over the calibration draw the threshold's true FPR is below this
    fpr_bound: float = float("nan")
    notes: list[str] = field(default_factory=list)

    @property
    def finite(self) -> bool:
        return math.isfinite(self.threshold)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["threshold"] = _json_float(self.threshold)
        out["fpr_bound"] = _json_float(self.fpr_bound)
        out["recall_ci"] = [_json_float(v) for v in self.recall_ci]
        out["empirical_fpr_ci"] = [_json_float(v) for v in self.empirical_fpr_ci]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OperatingPoint:
        data = dict(data)
        data["threshold"] = _from_json_float(data["threshold"])
        data["recall_ci"] = tuple(_from_json_float(v) for v in data["recall_ci"])
        data["empirical_fpr_ci"] = tuple(_from_json_float(v) for v in data["empirical_fpr_ci"])
        data["recall"] = _from_json_float(data["recall"])
        data["empirical_fpr"] = _from_json_float(data["empirical_fpr"])
        if "fpr_bound" in data:
            data["fpr_bound"] = _from_json_float(data["fpr_bound"])
        return cls(**data)


def _json_float(value: float) -> float | str | None:
    """JSON has no inf/nan: write them as strings so a report reads back exactly."""
    if value is None:
        return None
    value = float(value)
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return value


def _from_json_float(value: Any) -> float | None:
    if value is None:
        return None
    return float(value)  # float("inf") / float("nan") parse the string forms


def operating_point(
    cal_scores: Any,
    holdout_scores: Any,
    positive_scores: Any,
    target_fpr: float,
    *,
    confidence: float = 0.95,
    source: str = "control",
) -> OperatingPoint:
    """Conformal threshold on ``cal_scores``; empirical FPR on ``holdout_scores``; recall on positives.

    ``fpr_bound`` is :func:`conformal_fpr_bound` at ``confidence``. Both rates come with exact (Clopper-Pearson) binomial intervals: the threshold is fixed, so flags on
    the held-out benign rows and on the positives are counts of independent Bernoulli trials (rows of one
    group are treated as independent here).
    """
    cal = np.asarray(cal_scores, dtype=np.float64).ravel()
    hold = np.asarray(holdout_scores, dtype=np.float64).ravel()
    pos = np.asarray(positive_scores, dtype=np.float64).ravel()
    threshold = conformal_threshold(cal, target_fpr)
    n_fp = int(np.sum(hold > threshold))
    n_tp = int(np.sum(pos > threshold))
    notes: list[str] = []
    n_needed = conformal_n_needed(target_fpr)
    note = too_few_calibration_note(target_fpr, cal.size)
    if note is not None:
        notes.append(note)
    return OperatingPoint(
        target_fpr=float(target_fpr),
        threshold=threshold,
        recall=float(n_tp / pos.size) if pos.size else float("nan"),
        recall_ci=clopper_pearson(n_tp, pos.size, confidence),
        empirical_fpr=float(n_fp / hold.size) if hold.size else float("nan"),
        empirical_fpr_ci=clopper_pearson(n_fp, hold.size, confidence),
        n_control_cal=int(cal.size),
        n_control_holdout=int(hold.size),
        n_pos=int(pos.size),
        n_false_positives=n_fp,
        n_true_positives=n_tp,
        n_needed=n_needed,
        source=source,
        fpr_bound=conformal_fpr_bound(cal.size, target_fpr, confidence),
        notes=notes,
    )
