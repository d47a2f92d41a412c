"""Anomaly detectors: fitted on benign activations only, with conformal p-values for controlled false alarms.

A supervised probe finds the state it was trained on; a detector flags activations *far from benign
traffic*, whatever made them so. Each detector has the probe contract (:mod:`probes.train.base`): ``fit``
returns ``self``, learned state ends in ``_``, ``decision_function`` / ``score_torch`` give one score per
row -- **higher = more anomalous** -- and the state is safetensors + JSON (``save_probe``, ``ProbeBundle``).

=========================  =================================================  ==========================
detector                   score of a row ``x``                               cost per row (d = width)
=========================  =================================================  ==========================
``MahalanobisDetector``    ``(x - mu)^T Sigma^-1 (x - mu)``, ``Sigma`` shrunk  ``d^2`` multiply-adds
                           (Ledoit-Wolf / OAS / fixed) by scikit-learn
``PCAResidualDetector``    squared distance of ``x`` from the ``k``-dim        ``2 d k``
                           principal subspace of benign rows
``KNNDetector``            distance to the ``k``-th nearest benign row         ``n_ref * d`` + top-k over
                           (scikit-learn ``NearestNeighbors`` or faiss)        ``n_ref`` distances
=========================  =================================================  ==========================

**Conformal p-values.** ``fit`` holds out ``calibration_fraction`` of the benign rows (seeded, by group),
fits on the rest and keeps the sorted scores of the held-out part (``calibration_scores_``, saved with the
detector); :meth:`AnomalyDetector.calibrate` replaces them with another benign set. ``p_values(X)`` is
:func:`probes.evaluation.thresholds.conformal_p_values` against them, and ``threshold(alpha)`` is the
conformal rank :func:`~probes.evaluation.thresholds.conformal_threshold` -- the same finite-sample
guarantee as the supervised probes' control thresholds: a new benign row exchangeable with the calibration
rows gets ``p <= alpha`` (equivalently ``score > threshold(alpha)``) with probability at most ``alpha``.
The guarantee is per *row of the kind calibrated on*; a monitor that takes the maximum over the tokens of a
generation needs a threshold calibrated on benign generations instead.

**Standardisation.** Residual streams have a few "massive" dimensions hundreds of times larger than the
rest; ``standardize=True`` (the default) z-scores every feature on the fitting rows first, so shrinkage
towards the identity and Euclidean neighbours are not dominated by them. It is folded into the stored
state: scoring reads raw activations.
"""

from __future__ import annotations

import math
import warnings
from abc import abstractmethod
from typing import Any, ClassVar

import numpy as np
import torch

from probes.collection.activations import RaggedTokens
from probes.errors import BundleError, CalibrationWarning
from probes.train._validate import check_groups, check_matrix, check_n_features, check_rows
from probes.train.base import ArrayLike, Probe, register_probe

#: Shrinkage choices of :class:`MahalanobisDetector` (or a float in [0, 1]).
SHRINKAGES = ("ledoit_wolf", "oas", "none")


class AnomalyDetector(Probe):
    """Base of detectors fitted on benign rows only; higher ``decision_function`` = more anomalous.

    Subclasses implement ``_fit_benign(Z)`` on the (standardised) fitting rows, ``_score_device(X)`` in
    torch, and ``_state()`` / ``_load_state()`` for their learned tensors.
    """

    kind: ClassVar[str] = "anomaly"
    #: Marks detectors: no positive class in training, scores are anomaly scores, p-values exist.
    is_detector: ClassVar[bool] = True
    _state_names: ClassVar[tuple[str, ...]] = ()

    # Hyperparameters every detector shares (subclasses list them in their own __init__ too, so
    # get_params reads one signature).
    standardize: bool
    calibration_fraction: float
    alpha: float
    seed: int

    # --- fitting --------------------------------------------------------------------------------
    def fit(self, X: ArrayLike, y: ArrayLike | None = None, groups: Any = None) -> AnomalyDetector:
        """Fit on benign rows ``X``; ``calibration_fraction`` of them (by group) calibrate the p-values.

        ``y`` may be omitted (scikit-learn's convention for unsupervised estimators) or all zeros; a row
        labelled positive is refused, because a detector must never learn the states it should flag.
        """
        who = f"{type(self).__name__}.fit"
        self._validate_common(who)
        self._validate_params()
        Xt = _check_rows(X, who)
        n = int(Xt.shape[0])
        _check_benign(y, n, who)
        g = check_groups(groups, n, who)
        fit_idx, cal_idx = self._split(n, g, who)
        X_fit = Xt[torch.as_tensor(fit_idx, device=Xt.device)] if cal_idx.size else Xt
        self._fit_rows(X_fit, who)
        self.n_features_in_ = int(Xt.shape[1])
        self.n_fit_ = int(X_fit.shape[0])
        self._device_cache = {}  # filled per device on first use (predict leaves __dict__ unchanged)
        if cal_idx.size:
            self._set_calibration(Xt[torch.as_tensor(cal_idx, device=Xt.device)])
        else:
            self.calibration_scores_ = torch.zeros(0, dtype=torch.float32)
        return self

    def calibrate(self, X: ArrayLike) -> AnomalyDetector:
        """Replace the calibration scores with those of ``X``: benign rows the detector was not fitted on.

        Use it when the deployment's benign traffic differs from the fitting data, or after
        ``calibration_fraction=0`` (fit on every row, calibrate on a separate benign set).
        """
        self._check_fitted()
        who = f"{type(self).__name__}.calibrate"
        Xt = _check_rows(X, who, min_rows=1)
        check_n_features(int(Xt.shape[1]), int(self.n_features_in_), type(self).__name__)
        self._set_calibration(Xt)
        return self

    def _set_calibration(self, X_cal: torch.Tensor) -> None:
        scores = torch.as_tensor(self.decision_function(X_cal), dtype=torch.float32)
        self.calibration_scores_ = torch.sort(scores).values.contiguous()
        self._device_cache = {}  # filled per device on first use (predict leaves __dict__ unchanged)

    def _split(self, n: int, groups: np.ndarray | None, who: str) -> tuple[np.ndarray, np.ndarray]:
        fraction = float(self.calibration_fraction)
        if fraction == 0.0:
            return np.arange(n), np.arange(0)
        # Lazy: evaluation imports train-side types only for typing, but keep train importable alone.
        from probes.evaluation.core import grouped_holdout_split

        fit_idx, cal_idx = grouped_holdout_split(
            n, None if groups is None else list(groups), fraction, self.seed
        )
        if cal_idx.size == 0 or fit_idx.size < 2:
            raise ValueError(
                f"{who}: calibration_fraction={fraction:g} of {n} rows leaves {fit_idx.size} rows to fit and "
                f"{cal_idx.size} to calibrate (groups are kept whole). Pass more benign rows, smaller groups, "
                "or calibration_fraction=0 and call calibrate(X_benign) on a separate benign set."
            )
        return fit_idx, cal_idx

    def _fit_rows(self, X: torch.Tensor, who: str) -> None:
        Xd = X.detach().to("cpu", torch.float64)
        if self.standardize:
            mean = Xd.mean(0)
            std = Xd.std(0, correction=0)
            # A constant feature carries no information about anomalies in the fitting data; scale 1
            # keeps it finite (any deviation from the constant still shows up in the score).
            scale = torch.where(std > 1e-12 * max(float(std.max()), 1e-300), std, torch.ones_like(std))
            Z = ((Xd - mean) / scale).numpy()
        else:
            mean = torch.zeros(X.shape[1], dtype=torch.float64)
            scale = torch.ones(X.shape[1], dtype=torch.float64)
            Z = Xd.numpy()
        self.mean_ = mean.float()
        self.scale_ = scale.float()
        self._fit_benign(Z, mean.numpy(), scale.numpy(), who)

    def _validate_common(self, who: str) -> None:
        if not 0.0 <= float(self.calibration_fraction) < 1.0:
            raise ValueError(
                f"{who}: calibration_fraction must be in [0, 1); got {self.calibration_fraction}."
            )
        if not 0.0 < float(self.alpha) < 1.0:
            raise ValueError(f"{who}: alpha (the false-alarm rate) must be in (0, 1); got {self.alpha}.")

    def _validate_params(self) -> None:  # noqa: B027 - optional hook
        """Subclass hyperparameter checks (run before any data is read)."""

    @abstractmethod
    def _fit_benign(self, Z: np.ndarray, mean: np.ndarray, scale: np.ndarray, who: str) -> None:
        """Fit on standardised float64 rows ``Z = (X - mean) / scale``; store raw-space state."""

    # --- scoring --------------------------------------------------------------------------------
    def score_torch(self, X: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """Anomaly scores ``(n,)`` in float32 on ``X``'s device (no host sync)."""
        self._check_fitted()
        if not isinstance(X, torch.Tensor):
            raise ValueError(
                f"{type(self).__name__}.score_torch takes a torch tensor; got {type(X).__name__}."
            )
        if X.ndim != 2:
            raise ValueError(f"{type(self).__name__}: X must be 2-D (n, d); got shape {tuple(X.shape)}.")
        check_n_features(int(X.shape[1]), int(self.n_features_in_), type(self).__name__)
        return self._score_device(X.to(torch.float32))

    @abstractmethod
    def _score_device(self, X: torch.Tensor) -> torch.Tensor: ...

    def _on(self, device: torch.device, names: tuple[str, ...]) -> tuple[torch.Tensor, ...]:
        # Cached per device so a monitor on the GPU copies the state once, not per token.
        cache: dict[str, dict[str, torch.Tensor]] = self.__dict__.setdefault("_device_cache", {})
        slot = cache.setdefault(str(device), {})
        for name in names:
            if name not in slot:
                slot[name] = self._device_tensor(name).to(device)
        return tuple(slot[name] for name in names)

    def _device_tensor(self, name: str) -> torch.Tensor:
        return getattr(self, f"{name}_")

    def to(self, device: str | torch.device) -> AnomalyDetector:
        """Copy the scoring state to ``device`` ahead of time (the monitor calls this when attaching)."""
        self._check_fitted()
        self._on(torch.device(device), self._state_names)
        return self

    # --- conformal p-values and thresholds ------------------------------------------------------
    @property
    def n_calibration_(self) -> int:
        return int(self.calibration_scores_.numel())

    def p_values(self, X: ArrayLike) -> np.ndarray:
        """Conformal p-values ``(n,)``: small = unlike the benign calibration rows (see the module doc)."""
        from probes.evaluation.thresholds import conformal_p_values

        self._require_calibration("p_values")
        return conformal_p_values(self.calibration_scores_.double().numpy(), self.decision_function(X))

    def p_values_torch(self, X: torch.Tensor) -> torch.Tensor:
        """:meth:`p_values` in torch on ``X``'s device (float32), for scoring inside a forward pass."""
        self._require_calibration("p_values_torch")
        scores = self.score_torch(X)
        (cal,) = self._on(scores.device, ("calibration_scores",))
        at_or_above = cal.numel() - torch.searchsorted(cal, scores.contiguous(), side="left")
        return (1.0 + at_or_above.to(torch.float32)) / (cal.numel() + 1.0)

    def threshold(self, alpha: float | None = None) -> float:
        """Score threshold for false-alarm rate ``alpha`` (default ``self.alpha``): flag ``score > it``.

        The conformal rank over the calibration scores; ``+inf`` (never flags) with a
        :class:`~probes.errors.CalibrationWarning` when there are too few of them for ``alpha``.
        """
        from probes.evaluation.thresholds import conformal_threshold, too_few_calibration_note

        self._require_calibration("threshold")
        a = float(self.alpha if alpha is None else alpha)
        note = too_few_calibration_note(a, self.n_calibration_)
        if note is not None:
            warnings.warn(f"{type(self).__name__}: {note}", CalibrationWarning, stacklevel=2)
        return conformal_threshold(self.calibration_scores_.double().numpy(), a)

    def threshold_spec(self, alpha: float | None = None, control_set: str | None = None) -> dict[str, Any]:
        """``threshold(alpha)`` with what it was calibrated on, in the form ``ProbeBundle.add(threshold=)``
        takes. Refuses (``ValueError``) when the calibration set is too small for ``alpha``."""
        a = float(self.alpha if alpha is None else alpha)
        value = self.threshold(a)
        if not math.isfinite(value):
            raise ValueError(
                f"{type(self).__name__} has {self.n_calibration_} calibration scores, too few for a finite "
                f"threshold at alpha={a:g}; calibrate on more benign rows (calibrate(X_benign))."
            )
        return {
            "value": value,
            "target_fpr": a,
            "control_set": control_set or "detector calibration part (benign rows held out from fit)",
            "n_control": self.n_calibration_,
            "kind": "text",
        }

    def predict(self, X: ArrayLike) -> np.ndarray:
        """1 where the row is flagged at false-alarm rate ``alpha`` (``p_value <= alpha``), else 0."""
        from probes.evaluation.thresholds import too_few_calibration_note

        self._require_calibration("predict")
        note = too_few_calibration_note(float(self.alpha), self.n_calibration_)
        if note is not None:
            warnings.warn(f"{type(self).__name__}: {note}", CalibrationWarning, stacklevel=2)
        return (self.p_values(X) <= float(self.alpha)).astype(np.int64)

    @property
    def predict_proba(self) -> Any:  # type: ignore[override]
        """Absent (an ``AttributeError``), as on scikit-learn estimators without probabilities, so
        ``hasattr(detector, "predict_proba")`` is False and scikit-learn's scorers use ``decision_function``."""
        raise AttributeError(
            f"{type(self).__name__} is an anomaly detector: it has no class probabilities. Use p_values(X) "
            "(conformal, calibrated on benign rows), threshold(alpha), or probes.evaluation.evaluate_detector."
        )

    def _require_calibration(self, what: str) -> None:
        self._check_fitted()
        if self.n_calibration_ == 0:
            raise ValueError(
                f"{type(self).__name__}.{what} needs calibration scores: it was fitted with "
                "calibration_fraction=0. Call calibrate(X_benign) on benign rows it was not fitted on."
            )

    # --- persistence ----------------------------------------------------------------------------
    def state_tensors(self) -> dict[str, torch.Tensor]:
        self._check_fitted()
        names = (*self._state_names, "mean", "scale", "calibration_scores")
        out = {name: getattr(self, f"{name}_") for name in names}
        out["n_fit"] = torch.tensor([self.n_fit_], dtype=torch.int64)
        return {k: v.detach().cpu().contiguous() for k, v in out.items()}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> AnomalyDetector:
        names = (*self._state_names, "mean", "scale", "calibration_scores", "n_fit")
        missing = [k for k in names if k not in tensors]
        if missing:
            raise BundleError(
                f"{type(self).__name__} state is missing tensors {missing}; the file is incomplete."
            )
        d = int(tensors["mean"].numel())
        if (
            tensors["mean"].shape != (d,)
            or tensors["scale"].shape != (d,)
            or tensors["calibration_scores"].ndim != 1
        ):
            raise BundleError(f"{type(self).__name__} state has malformed mean/scale/calibration shapes.")
        cal = tensors["calibration_scores"].to(torch.float32)
        if cal.numel() and not bool((cal[1:] >= cal[:-1]).all()):
            raise BundleError(
                f"{type(self).__name__} state: calibration_scores are not sorted; the file is damaged."
            )
        self.mean_ = tensors["mean"].to(torch.float32)
        self.scale_ = tensors["scale"].to(torch.float32)
        self.calibration_scores_ = cal
        self.n_fit_ = int(tensors["n_fit"].reshape(-1)[0])
        self._load_state(tensors, d)
        self.n_features_in_ = d
        self._device_cache = {}  # filled per device on first use (predict leaves __dict__ unchanged)
        return self

    @abstractmethod
    def _load_state(self, tensors: dict[str, torch.Tensor], d: int) -> None:
        """Check shapes against width ``d`` (raise :class:`BundleError`) and set the learned attributes."""


@register_probe
class MahalanobisDetector(AnomalyDetector):
    """Mahalanobis distance to the benign mean under a shrunk covariance (scikit-learn estimators).

    ``shrinkage``: ``"ledoit_wolf"`` (``sklearn.covariance.LedoitWolf``), ``"oas"`` (``OAS``), a float in
    [0, 1] (``ShrunkCovariance``) or ``"none"`` (``EmpiricalCovariance``; needs more fitting rows than
    dimensions). With ``standardize=True`` the covariance is estimated on z-scored features, i.e. the
    correlation matrix is shrunk towards the identity; the score is then the Mahalanobis distance in that
    space. The inverse is stored as a factor ``F`` with ``Sigma^-1 = F F^T`` (from an eigendecomposition),
    folded with the standardisation, so the score of a row is ``||(x - location) @ F||^2``.
    """

    kind = "mahalanobis"
    _state_names = ("location", "factor", "shrinkage")

    def __init__(
        self,
        shrinkage: str | float = "ledoit_wolf",
        standardize: bool = True,
        calibration_fraction: float = 0.2,
        alpha: float = 0.01,
        seed: int = 0,
    ) -> None:
        self.shrinkage = shrinkage
        self.standardize = standardize
        self.calibration_fraction = calibration_fraction
        self.alpha = alpha
        self.seed = seed

    def _validate_params(self) -> None:
        s = self.shrinkage
        ok = s in SHRINKAGES or (
            isinstance(s, int | float) and not isinstance(s, bool) and 0.0 <= float(s) <= 1.0
        )
        if not ok:
            raise ValueError(
                f"MahalanobisDetector: shrinkage must be one of {', '.join(SHRINKAGES)} or a float in [0, 1]; "
                f"got {s!r}."
            )

    def _fit_benign(self, Z: np.ndarray, mean: np.ndarray, scale: np.ndarray, who: str) -> None:
        from sklearn.covariance import OAS, EmpiricalCovariance, LedoitWolf, ShrunkCovariance

        n, d = Z.shape
        if self.shrinkage == "none" and n <= d:
            raise ValueError(
                f"{who}: {n} fitting rows in {d} dimensions: without shrinkage the covariance has rank at most "
                f"{n - 1} < {d} and no inverse. Use shrinkage='ledoit_wolf' or 'oas', reduce the dimension "
                "first (PCAResidualDetector, or a PCA in front), or fit on more benign rows."
            )
        # store_precision=False: the inverse is taken once, below, as an eigendecomposition.
        if self.shrinkage == "ledoit_wolf":
            est = LedoitWolf(store_precision=False).fit(Z)
            shrink = float(est.shrinkage_)
        elif self.shrinkage == "oas":
            est = OAS(store_precision=False).fit(Z)
            shrink = float(est.shrinkage_)
        elif self.shrinkage == "none":
            est = EmpiricalCovariance(store_precision=False).fit(Z)
            shrink = 0.0
        else:
            shrink = float(self.shrinkage)
            est = ShrunkCovariance(store_precision=False, shrinkage=shrink).fit(Z)
        evals, evecs = np.linalg.eigh(np.asarray(est.covariance_, dtype=np.float64))
        top = float(evals.max()) if evals.size else 0.0
        if not top > 0 or float(evals.min()) <= 1e-10 * top:
            raise ValueError(
                f"{who}: the covariance of the {n} fitting rows is singular (smallest eigenvalue "
                f"{float(evals.min()):.3g}, largest {top:.3g}): some features are constant or collinear. "
                "Use shrinkage='ledoit_wolf' or 'oas', or reduce the dimension first (PCAResidualDetector)."
            )
        # Sigma^-1 = V diag(1/l) V^T = F F^T with F = V diag(1/sqrt(l)); folding z = (x - m) / s gives
        # rows of F divided by s, and location m + s * mu_z.
        factor = evecs / np.sqrt(evals)[None, :] / scale[:, None]
        self.location_ = torch.as_tensor(mean + scale * np.asarray(est.location_), dtype=torch.float32)
        # eigh returns Fortran-ordered arrays: make the state C-contiguous, so scoring runs the same kernel
        # before and after a save/load round trip (bit-identical scores).
        self.factor_ = torch.as_tensor(factor, dtype=torch.float32).contiguous()
        self.shrinkage_ = torch.tensor([shrink], dtype=torch.float64)

    def flops_per_row(self) -> int:
        self._check_fitted()
        d = int(self.n_features_in_)
        return 2 * d * d + 3 * d

    def _score_device(self, X: torch.Tensor) -> torch.Tensor:
        loc, factor = self._on(X.device, ("location", "factor"))
        proj = (X - loc) @ factor
        return (proj * proj).sum(1)

    def _load_state(self, tensors: dict[str, torch.Tensor], d: int) -> None:
        if tensors["location"].shape != (d,) or tensors["factor"].shape != (d, d):
            raise BundleError("MahalanobisDetector state: location/factor do not match the feature width.")
        self.location_ = tensors["location"].to(torch.float32)
        self.factor_ = tensors["factor"].to(torch.float32)
        self.shrinkage_ = tensors["shrinkage"].to(torch.float64)


@register_probe
class PCAResidualDetector(AnomalyDetector):
    """Squared reconstruction error outside the top ``n_components`` principal directions of benign rows.

    Benign activations concentrate near a low-dimensional subspace; a row with energy off it is unusual.
    ``n_components`` is an int ``k`` (``1 <= k < min(rows, d)``) or a float in (0, 1): the smallest ``k``
    explaining that share of the variance (scikit-learn's ``PCA`` semantics). With ``standardize=True``
    the PCA and the residual are in z-scored space. Score: ``||u - (u V^T) V||^2`` with
    ``u = (x - mean) / scale`` and ``V`` the ``(k, d)`` components.
    """

    kind = "pca_residual"
    _state_names = ("components", "explained_variance_ratio")

    def __init__(
        self,
        n_components: int | float = 0.9,
        standardize: bool = True,
        calibration_fraction: float = 0.2,
        alpha: float = 0.01,
        seed: int = 0,
    ) -> None:
        self.n_components = n_components
        self.standardize = standardize
        self.calibration_fraction = calibration_fraction
        self.alpha = alpha
        self.seed = seed

    def _validate_params(self) -> None:
        k = self.n_components
        if isinstance(k, bool) or not isinstance(k, int | float):
            raise ValueError(f"PCAResidualDetector: n_components must be an int or a float; got {k!r}.")
        if isinstance(k, float) and not 0.0 < k < 1.0:
            raise ValueError(
                f"PCAResidualDetector: a float n_components is a variance share in (0, 1); got {k}. "
                "Pass an int for a fixed number of components."
            )
        if isinstance(k, int) and k < 1:
            raise ValueError(f"PCAResidualDetector: n_components must be >= 1; got {k}.")

    def _fit_benign(self, Z: np.ndarray, mean: np.ndarray, scale: np.ndarray, who: str) -> None:
        from sklearn.decomposition import PCA

        n, d = Z.shape
        k = self.n_components
        if isinstance(k, int) and k >= min(n, d):
            raise ValueError(
                f"{who}: n_components={k} must be below min(fitting rows, dimensions) = {min(n, d)} "
                f"(n_samples={n}, n_features={d}): the "
                "residual outside that many components is zero for every row. Use fewer components."
            )
        # With more rows than dimensions the eigendecomposition of the d x d covariance is exact and far
        # cheaper than an SVD of the rows ("auto" picks a randomized solver for some shapes).
        solver = "covariance_eigh" if n >= d else "full"
        pca = PCA(n_components=k, svd_solver=solver, random_state=self.seed)
        pca.fit(Z)
        if pca.n_components_ >= d:
            raise ValueError(
                f"{who}: n_components={k} keeps all {d} dimensions, so nothing is left to score; use a "
                "smaller variance share or an int below the width."
            )
        # PCA centres on the standardised mean, which is 0 by construction up to rounding: fold it in.
        self.mean_ = torch.as_tensor(mean + scale * pca.mean_, dtype=torch.float32)
        self.components_ = torch.as_tensor(pca.components_, dtype=torch.float32).contiguous()
        self.explained_variance_ratio_ = torch.as_tensor(pca.explained_variance_ratio_, dtype=torch.float64)

    @property
    def n_components_(self) -> int:
        return int(self.components_.shape[0])

    def _device_tensor(self, name: str) -> torch.Tensor:
        if name == "inv_scale":
            return 1.0 / self.scale_
        return super()._device_tensor(name)

    def flops_per_row(self) -> int:
        self._check_fitted()
        d, k = int(self.n_features_in_), self.n_components_
        return 4 * d * k + 5 * d

    def _score_device(self, X: torch.Tensor) -> torch.Tensor:
        mean, inv_scale, V = self._on(X.device, ("mean", "inv_scale", "components"))
        u = (X - mean) * inv_scale
        r = u - (u @ V.T) @ V
        return (r * r).sum(1)

    def _load_state(self, tensors: dict[str, torch.Tensor], d: int) -> None:
        V = tensors["components"]
        if V.ndim != 2 or V.shape[1] != d or not 1 <= V.shape[0] < d:
            raise BundleError("PCAResidualDetector state: components do not match the feature width.")
        self.components_ = V.to(torch.float32)
        self.explained_variance_ratio_ = tensors["explained_variance_ratio"].to(torch.float64)


@register_probe
class KNNDetector(AnomalyDetector):
    """Distance to the ``n_neighbors``-th nearest benign fitting row (in standardised space).

    The search on the host (``decision_function``, calibration, evaluation) is exact and done by a library:
    scikit-learn's ``NearestNeighbors`` (``backend="sklearn"``) or a faiss ``IndexFlatL2``
    (``backend="faiss"``, needs ``pip install faiss-cpu``). ``score_torch`` -- what a monitor runs on the
    model's device -- is the same exact brute-force search as one matmul against the stored reference rows
    plus a top-k, agreeing with the host search to float32 rounding (~1e-6 relative).

    What is stored: the ``(n_ref, d)`` reference rows themselves (standardised, float32), so a bundle costs
    ``4 * n_ref * d`` bytes (50k x 768 = 154 MB) and scoring one token costs ``n_ref * d`` multiply-adds
    (39 M at 50k x 768, about 65x a Mahalanobis detector's ``d^2``). ``max_reference`` keeps a seeded random
    subset of the fitting rows instead, trading a noisier score for size and speed; the conformal guarantee
    is unaffected (it comes from the held-out calibration scores, whatever the score function).
    ``metric="cosine"`` L2-normalises the standardised rows first (distances are then ``sqrt(2 - 2 cos)``).
    """

    kind = "knn"
    _state_names = ("reference",)

    def __init__(
        self,
        n_neighbors: int = 5,
        metric: str = "euclidean",
        max_reference: int | None = None,
        backend: str = "sklearn",
        standardize: bool = True,
        calibration_fraction: float = 0.2,
        alpha: float = 0.01,
        seed: int = 0,
    ) -> None:
        self.n_neighbors = n_neighbors
        self.metric = metric
        self.max_reference = max_reference
        self.backend = backend
        self.standardize = standardize
        self.calibration_fraction = calibration_fraction
        self.alpha = alpha
        self.seed = seed

    def _validate_params(self) -> None:
        if (
            isinstance(self.n_neighbors, bool)
            or not isinstance(self.n_neighbors, int)
            or self.n_neighbors < 1
        ):
            raise ValueError(f"KNNDetector: n_neighbors must be an int >= 1; got {self.n_neighbors!r}.")
        if self.metric not in ("euclidean", "cosine"):
            raise ValueError(f"KNNDetector: metric must be 'euclidean' or 'cosine'; got {self.metric!r}.")
        if self.backend not in ("sklearn", "faiss"):
            raise ValueError(f"KNNDetector: backend must be 'sklearn' or 'faiss'; got {self.backend!r}.")
        if self.max_reference is not None and (
            not isinstance(self.max_reference, int) or self.max_reference < self.n_neighbors
        ):
            raise ValueError(
                f"KNNDetector: max_reference must be None or an int >= n_neighbors; got {self.max_reference!r}."
            )
        if self.backend == "faiss":
            _import_faiss()

    def _fit_benign(self, Z: np.ndarray, mean: np.ndarray, scale: np.ndarray, who: str) -> None:
        n = Z.shape[0]
        if n < self.n_neighbors:
            raise ValueError(
                f"{who}: n_neighbors={self.n_neighbors} needs at least that many fitting rows; got {n}."
            )
        if self.max_reference is not None and n > self.max_reference:
            rng = np.random.default_rng(self.seed)
            Z = Z[np.sort(rng.choice(n, size=self.max_reference, replace=False))]
        self.reference_ = torch.as_tensor(self._normalise(Z), dtype=torch.float32).contiguous()
        self._device_cache = {}  # the search index is rebuilt on first use

    def _normalise(self, Z: np.ndarray) -> np.ndarray:
        if self.metric == "cosine":
            norms = np.linalg.norm(Z, axis=1, keepdims=True)
            return Z / np.maximum(norms, 1e-12)
        return Z

    def _transform(self, X: torch.Tensor) -> np.ndarray:
        Z = (X.detach().to("cpu", torch.float32) - self.mean_) / self.scale_
        return self._normalise(Z.numpy().astype(np.float32, copy=False)).astype(np.float32, copy=False)

    @property
    def n_reference_(self) -> int:
        return int(self.reference_.shape[0])

    def _search_index(self) -> Any:
        index = self.__dict__.setdefault("_device_cache", {}).get("search_index")
        if index is None:
            ref = self.reference_.numpy()
            if self.backend == "faiss":
                faiss = _import_faiss()
                index = faiss.IndexFlatL2(ref.shape[1])
                index.add(np.ascontiguousarray(ref, dtype=np.float32))
            else:
                from sklearn.neighbors import NearestNeighbors

                index = NearestNeighbors(n_neighbors=int(self.n_neighbors), algorithm="brute").fit(ref)
            self._device_cache["search_index"] = index
        return index

    def decision_function(self, X: ArrayLike) -> np.ndarray:
        """Distances to the ``n_neighbors``-th nearest reference row, by the library search (host)."""
        self._check_fitted()
        if isinstance(X, RaggedTokens):
            raise ValueError("KNNDetector.decision_function takes a 2-D array (n, d), not RaggedTokens.")
        Xt = X if isinstance(X, torch.Tensor) else check_rows(X, "KNNDetector.decision_function")
        if Xt.ndim != 2:
            raise ValueError(
                f"KNNDetector.decision_function takes a 2-D array (n, d); got shape {tuple(Xt.shape)}. "
                "Reshape your data with X.reshape(1, -1) for a single row."
            )
        check_n_features(int(Xt.shape[1]), int(self.n_features_in_), "KNNDetector")
        if Xt.shape[0] == 0:
            return np.zeros(0, dtype=np.float32)
        Z = self._transform(Xt)
        k = int(self.n_neighbors)
        index = self._search_index()
        if self.backend == "faiss":
            sq, _ = index.search(np.ascontiguousarray(Z), k)
            dist = np.sqrt(np.maximum(sq[:, k - 1], 0.0))
        else:
            dist = index.kneighbors(Z, n_neighbors=k, return_distance=True)[0][:, k - 1]
        return np.asarray(dist, dtype=np.float32)

    def _device_tensor(self, name: str) -> torch.Tensor:
        if name == "reference_sq":
            return (self.reference_.double() ** 2).sum(1).float()
        return super()._device_tensor(name)

    def flops_per_row(self) -> int:
        self._check_fitted()
        d, n_ref = int(self.n_features_in_), self.n_reference_
        return 2 * n_ref * d + 3 * n_ref + 4 * d  # distances to every reference row; top-k not counted

    def _score_device(self, X: torch.Tensor) -> torch.Tensor:
        mean, scale, ref, ref_sq = self._on(X.device, ("mean", "scale", "reference", "reference_sq"))
        Z = (X - mean) / scale
        if self.metric == "cosine":
            Z = Z / Z.norm(dim=1, keepdim=True).clamp_min(1e-12)
        k = int(self.n_neighbors)
        # Chunks bound the (rows, n_ref) distance block at ~16M floats (64 MB) whatever the batch.
        step = max(1, (1 << 24) // max(1, ref.shape[0]))
        out = []
        for start in range(0, Z.shape[0], step):
            z = Z[start : start + step]
            sq = (z * z).sum(1, keepdim=True) + ref_sq[None, :] - 2.0 * (z @ ref.T)
            kth = torch.topk(sq, k, dim=1, largest=False).values[:, k - 1]
            out.append(kth.clamp_min(0.0).sqrt())
        return torch.cat(out) if out else Z.new_zeros(0)

    def _load_state(self, tensors: dict[str, torch.Tensor], d: int) -> None:
        ref = tensors["reference"]
        if ref.ndim != 2 or ref.shape[1] != d or ref.shape[0] < int(self.n_neighbors):
            raise BundleError(
                "KNNDetector state: reference rows do not match the feature width or n_neighbors."
            )
        self.reference_ = ref.to(torch.float32).contiguous()
        self._device_cache = {}  # the search index is rebuilt on first use


def _import_faiss() -> Any:
    try:
        import faiss
    except ImportError as exc:
        raise ImportError(
            "KNNDetector(backend='faiss') needs faiss: pip install faiss-cpu (or use backend='sklearn')."
        ) from exc
    return faiss


def _check_rows(X: Any, who: str, min_rows: int = 2) -> torch.Tensor:
    if isinstance(X, RaggedTokens):
        raise ValueError(
            f"{who} reads one row per example (n, d); got token-level RaggedTokens. Collect with "
            "pooling='last' or 'mean', or pass X.values to treat every token as a row (per-token scores; "
            "a per-generation false-alarm rate then needs its own calibration on benign generations)."
        )
    if min_rows < 2:
        Xt = check_rows(X, who)
        if Xt.shape[0] < min_rows:
            raise ValueError(f"{who}: X needs at least {min_rows} row; got shape {tuple(Xt.shape)}.")
        if not bool(torch.isfinite(Xt).all()):
            raise ValueError(f"{who}: X contains NaN or infinite values.")
        return Xt
    return check_matrix(X, who)


def _check_benign(y: Any, n: int, who: str) -> None:
    """Refuse probe labels with positives in them; any other ``y`` is ignored, as scikit-learn's unsupervised
    estimators ignore it (``Pipeline`` and ``GridSearchCV`` pass one along)."""
    if y is None:
        return
    y_np = y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
    if y_np.dtype == bool:
        y_np = y_np.astype(np.int64)
    if y_np.ndim != 1 or len(y_np) != n:
        raise ValueError(f"{who}: y must be None or one label per row ({n}); got shape {tuple(y_np.shape)}.")
    probe_labels = np.issubdtype(y_np.dtype, np.number) and bool(np.isin(y_np, [0, 1]).all())
    if probe_labels and np.any(y_np != 0):
        raise ValueError(
            f"{who}: {int(np.count_nonzero(y_np))} rows are labelled positive. A detector is fitted on benign "
            "rows only: pass X[y == 0] (or no y at all); evaluate positives with evaluate_detector."
        )
