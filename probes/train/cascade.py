"""Two-stage cascades: a cheap probe decides most rows, a costlier judge the uncertain ones.

Stage 1 (a linear probe on the monitored model's own activations: a few thousand FLOPs per row) scores
every row. Rows whose stage-1 score falls inside an **escalation band** ``[lo_, hi_]`` also get a stage-2
score (a larger or multi-layer probe, or an LM judge, :class:`~probes.train.judge.LMJudge`). Both stages
are put on one scale -- log-odds by a Platt map fitted on validation -- so the final score of a row is
stage 1's log-odds, or for an escalated row stage 2's (``combine="replace"``) or the mean of both
(``combine="mean"``). A threshold on the final score flags rows.

The band is chosen on **validation** to hit a target escalation fraction ``escalation``: among all windows
of the sorted validation stage-1 scores holding that fraction of rows, the one whose cascade has the highest
validation recall at ``target_fpr`` (threshold at the conformal rank on the validation negatives, or on a
benign control set); ties go to the window nearest the stage-1 threshold, where stage 1 is least sure. The
decision threshold ``threshold_`` is set the same way, so the test set is never consulted.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from probes.errors import NotFittedError

COMBINES = ("replace", "mean")


@dataclass
class CascadeDecision:
    """What :meth:`Cascade.decide` did: final scores, flags, and which rows went to stage 2."""

    scores: np.ndarray  # (n,) final log-odds
    flagged: np.ndarray  # (n,) bool: final score > threshold
    escalated: np.ndarray  # (n,) bool: rows whose stage-2 score was computed

    @property
    def escalation_fraction(self) -> float:
        return float(self.escalated.mean()) if self.escalated.size else float("nan")


class Cascade:
    """Escalation band and decision threshold of a two-stage cascade, chosen on validation scores.

    >>> cascade = Cascade(escalation=0.1, target_fpr=0.01).fit(s1_val, s2_val, y_val)
    >>> decision = cascade.decide(s1_test, lambda idx: judge.score([rows[i] for i in idx]))

    ``fit`` takes the stage-1 and stage-2 scores of the same validation rows (higher = more of the state)
    and their labels; ``control=(s1, s2)`` -- both stages' scores on benign control traffic -- sets the
    thresholds on that instead of on the validation negatives. ``n_positions`` window positions are tried.
    """

    def __init__(
        self,
        escalation: float = 0.1,
        target_fpr: float = 0.01,
        combine: str = "replace",
        n_positions: int = 101,
    ) -> None:
        self.escalation = escalation
        self.target_fpr = target_fpr
        self.combine = combine
        self.n_positions = n_positions

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {
            "escalation": self.escalation,
            "target_fpr": self.target_fpr,
            "combine": self.combine,
            "n_positions": self.n_positions,
        }

    def __repr__(self) -> str:
        return f"Cascade({', '.join(f'{k}={v!r}' for k, v in self.get_params().items())})"

    # --- fitting --------------------------------------------------------------------------------
    def fit(
        self,
        stage1: Any,
        stage2: Any,
        y: Any,
        *,
        control: tuple[Any, Any] | None = None,
    ) -> Cascade:
        from probes.evaluation.calibration import PlattCalibrator

        if not 0.0 <= float(self.escalation) <= 1.0:
            raise ValueError(f"Cascade: escalation must be a fraction in [0, 1]; got {self.escalation}.")
        if not 0.0 < float(self.target_fpr) < 1.0:
            raise ValueError(f"Cascade: target_fpr must be in (0, 1); got {self.target_fpr}.")
        if self.combine not in COMBINES:
            raise ValueError(f"Cascade: combine must be one of {COMBINES}; got {self.combine!r}.")
        s1, s2, y_arr = (
            _scores(stage1, "stage1"),
            _scores(stage2, "stage2"),
            np.asarray(y).astype(np.int64).ravel(),
        )
        if not (s1.size == s2.size == y_arr.size):
            raise ValueError(
                f"Cascade.fit: stage1 ({s1.size}), stage2 ({s2.size}) and y ({y_arr.size}) must score the same rows."
            )
        if not np.isin(y_arr, (0, 1)).all() or y_arr.min(initial=1) == y_arr.max(initial=0):
            raise ValueError("Cascade.fit: y must be 0/1 with both classes present (validation labels).")
        self.stage1_map_ = PlattCalibrator().fit(s1, y_arr)
        self.stage2_map_ = PlattCalibrator().fit(s2, y_arr)
        z1, z2 = self._z1(s1), self._z2(s2)
        if control is not None:
            c1, c2 = _scores(control[0], "control stage1"), _scores(control[1], "control stage2")
            if c1.size != c2.size:
                raise ValueError("Cascade.fit: control stage-1 and stage-2 scores must score the same rows.")
            neg1, neg2, neg_s1 = self._z1(c1), self._z2(c2), c1
            self.threshold_source_ = "control"
        else:
            neg1, neg2, neg_s1 = z1[y_arr == 0], z2[y_arr == 0], s1[y_arr == 0]
            self.threshold_source_ = "validation negatives"
        self._check_enough(neg1.size)

        order = np.argsort(s1, kind="mergesort")
        s_sorted = s1[order]
        n = s1.size
        m = int(round(float(self.escalation) * n))
        # Stage 1's own threshold: the band is centred on it when several windows tie.
        t1 = _conformal(neg_s1, float(self.target_fpr))
        centre = int(np.searchsorted(s_sorted, t1)) if math.isfinite(t1) else n
        if m == 0:
            lo, hi = math.inf, -math.inf
        elif m >= n:
            lo, hi = -math.inf, math.inf
        else:
            starts = np.unique(np.linspace(0, n - m, max(2, int(self.n_positions))).round().astype(np.int64))
            best: tuple[float, float, int] | None = None
            for start in starts:
                lo_c, hi_c = float(s_sorted[start]), float(s_sorted[start + m - 1])
                recall = self._recall(s1, z1, z2, y_arr, lo_c, hi_c, neg_s1, neg1, neg2)
                key = (recall, -abs(start + m / 2 - centre), int(start))
                if best is None or key[:2] > best[:2]:
                    best = key
            assert best is not None
            start = best[2]
            lo, hi = float(s_sorted[start]), float(s_sorted[start + m - 1])
        self.lo_, self.hi_ = lo, hi
        self.threshold_ = _conformal(self._final(neg_s1, neg1, neg2, lo, hi), float(self.target_fpr))
        self.stage1_threshold_ = t1
        final_val = self._final(s1, z1, z2, lo, hi)
        self.val_recall_ = float(np.mean(final_val[y_arr == 1] > self.threshold_))
        self.val_escalation_ = float(np.mean((s1 >= lo) & (s1 <= hi)))
        self.n_val_ = int(n)
        return self

    def _check_enough(self, n_neg: int) -> None:
        from probes.evaluation.thresholds import too_few_calibration_note

        note = too_few_calibration_note(float(self.target_fpr), n_neg)
        if note is not None:
            raise ValueError(
                f"Cascade.fit: the {self.threshold_source_} are too few for the decision threshold: {note} "
                "Pass control=(stage1_scores, stage2_scores) on more benign rows, or a larger target_fpr."
            )

    def _z1(self, s: np.ndarray) -> np.ndarray:
        return self.stage1_map_.a_ * s + self.stage1_map_.b_

    def _z2(self, s: np.ndarray) -> np.ndarray:
        return self.stage2_map_.a_ * s + self.stage2_map_.b_

    def _final(self, s1: np.ndarray, z1: np.ndarray, z2: np.ndarray, lo: float, hi: float) -> np.ndarray:
        esc = (s1 >= lo) & (s1 <= hi)
        out = z1.copy()
        out[esc] = z2[esc] if self.combine == "replace" else 0.5 * (z1[esc] + z2[esc])
        return out

    def _recall(
        self,
        s1: np.ndarray,
        z1: np.ndarray,
        z2: np.ndarray,
        y: np.ndarray,
        lo: float,
        hi: float,
        neg_s1: np.ndarray,
        neg1: np.ndarray,
        neg2: np.ndarray,
    ) -> float:
        t = _conformal(self._final(neg_s1, neg1, neg2, lo, hi), float(self.target_fpr))
        return float(np.mean(self._final(s1, z1, z2, lo, hi)[y == 1] > t))

    # --- deciding -------------------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if not hasattr(self, "threshold_"):
            raise NotFittedError("This Cascade is not fitted yet. Call fit(stage1_val, stage2_val, y_val).")

    def escalate(self, stage1: Any) -> np.ndarray:
        """``(n,)`` bool: the rows whose stage-1 score lies in the band (they need a stage-2 score)."""
        self._check_fitted()
        s1 = _scores(stage1, "stage1")
        return (s1 >= self.lo_) & (s1 <= self.hi_)

    def scores(self, stage1: Any, stage2: Any) -> np.ndarray:
        """Final log-odds when stage-2 scores are known for every row (evaluation); only escalated rows'
        stage-2 scores are used."""
        self._check_fitted()
        s1, s2 = _scores(stage1, "stage1"), _scores(stage2, "stage2")
        if s1.size != s2.size:
            raise ValueError("Cascade.scores: stage1 and stage2 must score the same rows.")
        return self._final(s1, self._z1(s1), self._z2(s2), self.lo_, self.hi_)

    def decide(self, stage1: Any, stage2: Callable[[np.ndarray], Any]) -> CascadeDecision:
        """Decide every row, calling ``stage2(indices)`` (scores of those rows) only for escalated rows."""
        self._check_fitted()
        s1 = _scores(stage1, "stage1")
        esc = self.escalate(s1)
        z1 = self._z1(s1)
        z2 = np.zeros_like(z1)
        idx = np.flatnonzero(esc)
        if idx.size:
            got = _scores(stage2(idx), "stage2")
            if got.size != idx.size:
                raise ValueError(f"stage2 returned {got.size} scores for {idx.size} escalated rows.")
            z2[idx] = self._z2(got)
        final = self._final(s1, z1, z2, self.lo_, self.hi_)
        return CascadeDecision(final, final > self.threshold_, esc)


def _scores(values: Any, what: str) -> np.ndarray:
    s = np.asarray(values, dtype=np.float64).ravel()
    if not np.isfinite(s).all():
        raise ValueError(f"{what} scores contain nan or inf.")
    return s


def _conformal(negatives: np.ndarray, alpha: float) -> float:
    from probes.evaluation.thresholds import conformal_threshold

    return conformal_threshold(negatives, alpha)
