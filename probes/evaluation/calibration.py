"""Calibration of probe probabilities: ECE, Brier score, reliability curves, Platt and isotonic maps.

Calibrators map raw decision scores to probabilities. Fit them on a calibration split held out from both
training and test data — never on the test set, or the reported calibration is optimistic. Their state is
plain JSON (Platt: two floats; isotonic: two lists), never pickle; a probe bundle stores exactly that state
(``to_dict()``) and applies it with ``transform_torch`` on the scores' device.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from probes.errors import NotFittedError

if TYPE_CHECKING:  # pragma: no cover
    import torch


def _as_arrays(y: Any, p: Any) -> tuple[np.ndarray, np.ndarray]:
    y_arr = np.asarray(y, dtype=np.float64).ravel()
    p_arr = np.asarray(p, dtype=np.float64).ravel()
    if y_arr.shape != p_arr.shape:
        raise ValueError(f"labels and probabilities differ in length: {y_arr.size} vs {p_arr.size}.")
    if p_arr.size and (p_arr.min() < 0.0 or p_arr.max() > 1.0):
        raise ValueError("probabilities must lie in [0, 1]; pass predict_proba(X)[:, 1], not raw scores.")
    return y_arr, p_arr


def _equal_mass_bins(p: np.ndarray, n_bins: int, y: np.ndarray | None = None) -> list[np.ndarray]:
    """Row indices of up to ``n_bins`` bins of (nearly) equal size, in order of increasing probability.

    Tied probabilities always share a bin (isotonic calibration outputs a few distinct values, each held by
    many rows): a boundary that would split a tie moves to the nearer end of the tied block. Rows are
    ordered by ``(p, y)``, so every bin's contents, and any metric of them, do not depend on row order.
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}.")
    if p.size == 0:
        return []
    order = np.lexsort((y, p)) if y is not None else np.argsort(p, kind="mergesort")
    sorted_p = p[order]
    k = min(n_bins, p.size)
    cuts = []
    sizes = np.full(k, p.size // k)
    sizes[: p.size % k] += 1  # the bin sizes of np.array_split
    for b in np.cumsum(sizes)[:-1]:
        lo = int(np.searchsorted(sorted_p, sorted_p[b], side="left"))
        hi = int(np.searchsorted(sorted_p, sorted_p[b], side="right"))
        cuts.append(
            lo if b - lo < hi - b else hi
        )  # ties go to the nearer edge of their block (upper on a draw)
    edges = sorted({0, p.size, *cuts})
    return [order[a:b] for a, b in zip(edges[:-1], edges[1:], strict=True) if b > a]


def reliability_curve(y: Any, p: Any, n_bins: int = 10) -> dict[str, list[float] | list[int]]:
    """Equal-mass reliability curve: per bin the mean predicted probability, observed frequency and count.

    Tied probabilities share a bin, so a bin may hold more than ``n / n_bins`` rows and there may be fewer
    than ``n_bins`` bins (one per distinct value at most).
    """
    y_arr, p_arr = _as_arrays(y, p)
    bins = _equal_mass_bins(p_arr, n_bins, y_arr)
    return {
        "mean_predicted": [float(p_arr[b].mean()) for b in bins],
        "observed_frequency": [float(y_arr[b].mean()) for b in bins],
        "counts": [int(b.size) for b in bins],
        "bin_lower": [float(p_arr[b].min()) for b in bins],
        "bin_upper": [float(p_arr[b].max()) for b in bins],
    }


def expected_calibration_error(y: Any, p: Any, n_bins: int = 10) -> float:
    """ECE with equal-mass bins: ``sum_b (n_b / n) |mean p_b - mean y_b|``.

    Equal-mass bins (rather than equal-width) keep every bin populated when probabilities pile up near
    0 and 1, as they do for confident probes. Tied probabilities fall in one bin, so the value depends on the
    multiset of ``(y, p)`` pairs only, never on row order. Even perfectly calibrated probabilities give ECE
    of order ``sqrt(n_bins / n)`` from sampling noise.
    """
    y_arr, p_arr = _as_arrays(y, p)
    if y_arr.size == 0:
        return float("nan")
    bins = _equal_mass_bins(p_arr, n_bins, y_arr)
    return float(sum(b.size * abs(p_arr[b].mean() - y_arr[b].mean()) for b in bins) / y_arr.size)


def brier_score(y: Any, p: Any) -> float:
    """Mean squared error of the probability of the positive class."""
    y_arr, p_arr = _as_arrays(y, p)
    return float(np.mean((p_arr - y_arr) ** 2)) if y_arr.size else float("nan")


class Calibrator:
    """Base class: a monotone map from decision scores to probabilities with JSON state."""

    kind: ClassVar[str] = "calibrator"

    def fit(self, scores: Any, y: Any) -> Calibrator:  # pragma: no cover - abstract
        raise NotImplementedError

    def transform(self, scores: Any) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def transform_torch(self, scores: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """:meth:`transform` in float32 torch, on ``scores``' device (what a monitor applies per step)."""
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibrator:
        """Rebuild any calibrator from :meth:`to_dict` output (dispatches on ``data["kind"]``)."""
        kinds: dict[str, type[Calibrator]] = {"platt": PlattCalibrator, "isotonic": IsotonicCalibrator}
        kind = data.get("kind")
        target = kinds.get(str(kind)) if cls is Calibrator else cls
        if target is None or (cls is not Calibrator and kind != cls.kind):
            raise ValueError(f"Unknown calibrator kind {kind!r}; expected one of {sorted(kinds)}.")
        try:
            return target._from_state(data)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(
                f"Malformed {kind} calibrator state with keys {sorted(data)} ({type(exc).__name__}: {exc}); "
                "pass a fitted calibrator's to_dict() output."
            ) from exc

    @classmethod
    def _from_state(cls, data: dict[str, Any]) -> Calibrator:  # pragma: no cover - abstract
        raise NotImplementedError

    def _check_fitted(self) -> None:
        if not getattr(self, "fitted_", False):
            raise NotFittedError(f"This {type(self).__name__} is not fitted yet. Call fit(scores, y) first.")


def _validate_fit_inputs(scores: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64).ravel()
    t = np.asarray(y).astype(np.float64).ravel()
    if s.shape != t.shape:
        raise ValueError(f"scores and labels differ in length: {s.size} vs {t.size}.")
    if not np.isin(t, (0.0, 1.0)).all():
        raise ValueError("labels must be 0/1.")
    if t.min(initial=1.0) == t.max(initial=0.0):
        raise ValueError("calibration needs both classes in the calibration split.")
    if not np.isfinite(s).all():
        raise ValueError("scores contain nan or inf.")
    return s, t


class PlattCalibrator(Calibrator):
    """Platt scaling: ``p = sigmoid(a * score + b)``.

    Fitted by Newton's method on Platt's (1999) smoothed targets ``(N+ + 1)/(N+ + 2)`` and ``1/(N- + 2)``,
    which keeps ``a`` finite when the calibration split is perfectly separable.
    """

    kind: ClassVar[str] = "platt"

    def __init__(self, max_iter: int = 100, tol: float = 1e-10) -> None:
        self.max_iter = max_iter
        self.tol = tol

    def fit(self, scores: Any, y: Any) -> PlattCalibrator:
        s, t = _validate_fit_inputs(scores, y)
        n_pos, n_neg = t.sum(), t.size - t.sum()
        target = np.where(t == 1.0, (n_pos + 1.0) / (n_pos + 2.0), 1.0 / (n_neg + 2.0))
        # Standardise for a well-conditioned Newton step, then map (a, b) back to raw score space.
        mu, sd = float(s.mean()), float(s.std()) or 1.0
        z = (s - mu) / sd
        X = np.stack([z, np.ones_like(z)], axis=1)
        w = np.zeros(2)
        for _ in range(self.max_iter):
            p = 1.0 / (1.0 + np.exp(-(X @ w)))
            grad = X.T @ (p - target)
            hess = (X * (p * (1.0 - p))[:, None]).T @ X + 1e-12 * np.eye(2)
            step = np.linalg.solve(hess, grad)
            w -= step
            if np.abs(step).max() < self.tol:
                break
        self.a_ = float(w[0] / sd)
        self.b_ = float(w[1] - w[0] * mu / sd)
        self.fitted_ = True
        return self

    def transform(self, scores: Any) -> np.ndarray:
        self._check_fitted()
        s = np.asarray(scores, dtype=np.float64).ravel()
        return 1.0 / (1.0 + np.exp(-(self.a_ * s + self.b_)))

    def transform_torch(self, scores: torch.Tensor) -> torch.Tensor:
        import torch

        self._check_fitted()
        return torch.sigmoid(self.a_ * scores.float() + self.b_)

    def to_dict(self) -> dict[str, Any]:
        self._check_fitted()
        return {"kind": self.kind, "a": self.a_, "b": self.b_}

    @classmethod
    def _from_state(cls, data: dict[str, Any]) -> PlattCalibrator:
        out = cls()
        out.a_, out.b_, out.fitted_ = float(data["a"]), float(data["b"]), True
        return out


class IsotonicCalibrator(Calibrator):
    """Isotonic regression of labels on scores (monotone step function, linear between knots).

    Fitted with scikit-learn; applied with ``np.interp`` over the knots, so a loaded calibrator needs
    only the two lists of its state. Scores outside the fitted range are clipped to the end knots.
    """

    kind: ClassVar[str] = "isotonic"

    def fit(self, scores: Any, y: Any) -> IsotonicCalibrator:
        from sklearn.isotonic import IsotonicRegression

        s, t = _validate_fit_inputs(scores, y)
        iso = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip").fit(s, t)
        self.x_thresholds_ = [float(v) for v in iso.X_thresholds_]
        self.y_thresholds_ = [float(v) for v in iso.y_thresholds_]
        self.fitted_ = True
        return self

    def transform(self, scores: Any) -> np.ndarray:
        self._check_fitted()
        s = np.asarray(scores, dtype=np.float64).ravel()
        return np.interp(s, self.x_thresholds_, self.y_thresholds_)

    def transform_torch(self, scores: torch.Tensor) -> torch.Tensor:
        import torch

        self._check_fitted()
        scores = scores.float()
        x = torch.tensor(self.x_thresholds_, dtype=torch.float32, device=scores.device)
        y = torch.tensor(self.y_thresholds_, dtype=torch.float32, device=scores.device)
        if len(x) == 1:  # np.interp with one knot: that knot's value everywhere
            return y[0].expand_as(scores).clone()
        s = scores.clamp(x[0], x[-1])
        idx = torch.searchsorted(x, s.contiguous()).clamp(1, len(x) - 1)
        x0, x1, y0, y1 = x[idx - 1], x[idx], y[idx - 1], y[idx]
        frac = torch.where(x1 > x0, (s - x0) / (x1 - x0).clamp_min(1e-12), torch.zeros_like(s))
        return y0 + frac * (y1 - y0)

    def to_dict(self) -> dict[str, Any]:
        self._check_fitted()
        return {"kind": self.kind, "x_thresholds": self.x_thresholds_, "y_thresholds": self.y_thresholds_}

    @classmethod
    def _from_state(cls, data: dict[str, Any]) -> IsotonicCalibrator:
        out = cls()
        out.x_thresholds_ = [float(v) for v in data["x_thresholds"]]
        out.y_thresholds_ = [float(v) for v in data["y_thresholds"]]
        if not out.x_thresholds_ or len(out.x_thresholds_) != len(out.y_thresholds_):
            raise ValueError("x_thresholds and y_thresholds must be non-empty lists of equal length")
        out.fitted_ = True
        return out


def make_calibrator(kind: str) -> Calibrator:
    """``"platt"`` or ``"isotonic"``."""
    if kind == "platt":
        return PlattCalibrator()
    if kind == "isotonic":
        return IsotonicCalibrator()
    raise ValueError(f"calibrate must be 'platt', 'isotonic' or None, got {kind!r}.")
