"""Regression probes: read a quantity (a continuous target) off activations, densely or from few coordinates.

``RidgeProbe``         L2 linear regression on standardised activations (alpha by grouped CV if asked)
``SparseProbe``        L1 (Lasso) linear regression: a fixed ``alpha``, grouped-CV ``alpha``, or the point of
                       the Lasso path with at most ``k`` coordinates, refitted on them (``k=``)

Both keep the probe contract of the classifiers: ``fit(X, y, groups)`` returns ``self``; scoring is in torch
(``score_torch`` = the predicted value); the learned map is stored in raw activation space
(``value = x @ coef_ + intercept_``) and saves with :func:`probes.save_probe` (safetensors + JSON). They are
regressors: ``predict`` gives the value, ``score`` the R² (scikit-learn's regressor contract), and there is no
``predict_proba``. ``support_`` lists the coordinates that carry the signal (every one, for ridge).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch

from probes.train._validate import check_groups, check_matrix
from probes.train.base import ArrayLike, register_probe
from probes.train.linear import LinearProbe

DEFAULT_ALPHAS: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0)


def check_targets(y: Any, n: int, who: str) -> np.ndarray:
    """``y`` as a finite float64 vector with one value per row and some spread."""
    arr = y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise ValueError(f"{who}: y must be numeric (one target value per row); got dtype {arr.dtype}.")
    arr = arr.astype(np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{who}: y must be 1-D (one value per row); got shape {tuple(arr.shape)}.")
    if len(arr) != n:
        raise ValueError(f"{who}: X has {n} rows but y has {len(arr)} values; pass one value per row.")
    if not np.isfinite(arr).all():
        bad = np.flatnonzero(~np.isfinite(arr))[:5].tolist()
        raise ValueError(f"{who}: y holds NaN or inf at rows {bad}; drop or fix those rows.")
    if np.ptp(arr) == 0:
        raise ValueError(f"{who}: y is constant ({arr[0]}); a regression probe needs targets that vary.")
    return arr


def r2_score(y: Any, pred: Any) -> float:
    """Coefficient of determination ``1 - SS_res / SS_tot`` (``nan`` when ``y`` is constant)."""
    y_arr, p_arr = np.asarray(y, dtype=np.float64), np.asarray(pred, dtype=np.float64)
    ss_tot = float(np.sum((y_arr - y_arr.mean()) ** 2)) if y_arr.size else 0.0
    if ss_tot == 0.0:
        return float("nan")
    return 1.0 - float(np.sum((y_arr - p_arr) ** 2)) / ss_tot


def _kfold(
    n: int, groups: np.ndarray | None, n_splits: int, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    from sklearn.model_selection import GroupKFold, KFold

    if n_splits < 2:
        raise ValueError(f"cv must be an int >= 2 (number of folds); got {n_splits}.")
    if groups is None:
        if n < n_splits:
            raise ValueError(f"cv={n_splits} folds need at least {n_splits} rows; got {n}.")
        return list(KFold(n_splits=n_splits, shuffle=True, random_state=seed).split(np.zeros(n)))
    if len(np.unique(groups)) < n_splits:
        raise ValueError(f"cv={n_splits} folds need at least {n_splits} distinct groups.")
    return list(GroupKFold(n_splits=n_splits).split(np.zeros(n), groups=groups))


class RegressionProbe(LinearProbe):
    """Shared surface of linear regressors: the score is the predicted value."""

    def predict(self, X: ArrayLike) -> np.ndarray:  # type: ignore[override]
        """Predicted target values ``(n,)``."""
        return self.decision_function(X)

    def predict_proba(self, X: ArrayLike) -> np.ndarray:
        raise TypeError(
            f"{type(self).__name__} is a regression probe: it predicts values (predict), not probabilities."
        )

    def score(self, X: ArrayLike, y: ArrayLike) -> float:
        """R² of the predictions on ``(X, y)``."""
        return r2_score(np.asarray(y, dtype=np.float64), self.predict(X))

    @property
    def n_nonzero_(self) -> int:
        """How many coordinates the probe reads (nonzero coefficients)."""
        self._check_fitted()
        return int((self.coef_ != 0).sum())

    @property
    def support_(self) -> np.ndarray:
        """Indices of the coordinates the probe reads, by decreasing |standardised coefficient|."""
        self._check_fitted()
        w = (self.coef_ * self.scale_).abs().numpy()
        nz = np.flatnonzero(w)
        return nz[np.argsort(-w[nz], kind="stable")]

    def _prepare(self, X: ArrayLike, y: ArrayLike, groups: Any) -> tuple[np.ndarray, np.ndarray, Any]:
        who = f"{type(self).__name__}.fit"
        Xt = check_matrix(X, who)
        y_np = check_targets(y, Xt.shape[0], who)
        g = check_groups(groups, Xt.shape[0], who)
        return Xt.detach().cpu().double().numpy(), y_np, g

    def _standardize(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        mean = X.mean(0)
        if self.standardize:
            scale = X.std(0)
            scale[scale < 1e-12] = 1.0  # a constant coordinate carries nothing; keep it finite
        else:
            scale = np.ones(X.shape[1])
        return (X - mean) / scale, mean, scale


@register_probe
class RidgeProbe(RegressionProbe):
    """L2-regularised linear regression (scikit-learn's ``Ridge``) on standardised activations.

    ``cv=k`` picks ``alpha`` from ``alphas`` by k-fold cross-validated R², grouped (``GroupKFold``) when
    ``fit`` gets ``groups``; the choice is stored in ``alpha_``.
    """

    kind = "ridge"
    _extra_state: ClassVar[tuple[str, ...]] = ("alpha",)

    def __init__(
        self,
        alpha: float = 1.0,
        standardize: bool = True,
        cv: int | None = None,
        alphas: Sequence[float] = DEFAULT_ALPHAS,
        seed: int = 0,
    ) -> None:
        self.alpha = alpha
        self.standardize = standardize
        self.cv = cv
        self.alphas = alphas
        self.seed = seed

    def fit(self, X: ArrayLike, y: ArrayLike, groups: Any = None) -> RidgeProbe:
        if not float(self.alpha) >= 0:
            raise ValueError(f"RidgeProbe: alpha must be >= 0; got {self.alpha}.")
        Xn, y_np, g = self._prepare(X, y, groups)
        Z, mean, scale = self._standardize(Xn)
        alpha = float(self.alpha)
        if self.cv is not None:
            alphas = sorted(float(a) for a in self.alphas)
            if not alphas or any(a < 0 for a in alphas):
                raise ValueError(f"RidgeProbe: alphas must be non-negative values; got {self.alphas!r}.")
            folds = _kfold(len(y_np), g, int(self.cv), self.seed)
            scores = np.array(
                [
                    [r2_score(y_np[va], _ridge(Z[tr], y_np[tr], a).predict(Z[va])) for a in alphas]
                    for tr, va in folds
                ]
            )
            self.cv_scores_ = torch.as_tensor(scores.mean(0))
            mean_scores = scores.mean(0)
            # Ties go to the largest alpha (strongest penalty): the simpler probe generalises better.
            alpha = alphas[len(alphas) - 1 - int(np.argmax(mean_scores[::-1]))]
        model = _ridge(Z, y_np, alpha)
        self._set_linear(model.coef_, float(model.intercept_), mean, scale)
        self.alpha_ = torch.tensor([alpha], dtype=torch.float64)
        return self


def _ridge(Z: np.ndarray, y: np.ndarray, alpha: float) -> Any:
    from sklearn.linear_model import Ridge

    return Ridge(alpha=alpha).fit(Z, y)


@register_probe
class SparseProbe(RegressionProbe):
    """L1-regularised linear regression (scikit-learn's Lasso) that reads few coordinates.

    The path has ``n_alphas`` penalties from the smallest that zeroes every coefficient down to ``eps`` times
    it. Exactly one way to set the sparsity:

    - ``k=N``: walk the Lasso path (``sklearn.linear_model.lasso_path``) from the strongest penalty down and
      keep the last point that uses at most ``N`` coordinates; then refit an (almost unpenalised) ridge on
      those coordinates only, so the values are not shrunk. ``path_alphas_`` / ``path_nonzero_`` keep the
      path for the report.
    - ``alpha=a``: one Lasso fit at that penalty (on standardised activations).
    - neither: ``alpha`` by ``cv``-fold (grouped when ``groups`` are given) cross-validated R² on the path.
    """

    kind = "sparse"
    _extra_state: ClassVar[tuple[str, ...]] = ("alpha",)

    def __init__(
        self,
        k: int | None = None,
        alpha: float | None = None,
        standardize: bool = True,
        cv: int = 5,
        n_alphas: int = 100,
        eps: float = 1e-3,
        refit_alpha: float = 1e-6,
        max_iter: int = 10_000,
        seed: int = 0,
    ) -> None:
        self.k = k
        self.alpha = alpha
        self.standardize = standardize
        self.cv = cv
        self.n_alphas = n_alphas
        self.eps = eps
        self.refit_alpha = refit_alpha
        self.max_iter = max_iter
        self.seed = seed

    def fit(self, X: ArrayLike, y: ArrayLike, groups: Any = None) -> SparseProbe:
        if self.k is not None and self.alpha is not None:
            raise ValueError("SparseProbe: pass k (a coordinate budget) or alpha (an L1 penalty), not both.")
        if self.k is not None and not int(self.k) >= 1:
            raise ValueError(f"SparseProbe: k must be >= 1; got {self.k}.")
        if self.alpha is not None and not float(self.alpha) > 0:
            raise ValueError(f"SparseProbe: alpha must be > 0; got {self.alpha}.")
        from sklearn.linear_model import Lasso, lasso_path

        Xn, y_np, g = self._prepare(X, y, groups)
        Z, mean, scale = self._standardize(Xn)
        yc = y_np - y_np.mean()
        if self.k is not None:
            alphas, coefs, _ = lasso_path(Z, yc, alphas=self._grid(Z, yc), max_iter=int(self.max_iter))
            nonzero = (coefs != 0).sum(0)
            ok = np.flatnonzero(nonzero <= int(self.k))  # alphas decrease along the path
            j = int(ok[-1])
            support = np.flatnonzero(coefs[:, j])
            w = np.zeros(Z.shape[1])
            if support.size:
                w[support] = _ridge(Z[:, support], yc, float(self.refit_alpha)).coef_
            alpha = float(alphas[j])
            self.path_alphas_ = torch.as_tensor(np.ascontiguousarray(alphas))
            self.path_nonzero_ = torch.as_tensor(np.ascontiguousarray(nonzero))
        else:
            alpha = float(self.alpha) if self.alpha is not None else self._choose_alpha(Z, y_np, g)
            w = Lasso(alpha=alpha, max_iter=int(self.max_iter)).fit(Z, yc).coef_
        self._set_linear(w, float(y_np.mean()), mean, scale)
        self.alpha_ = torch.tensor([alpha], dtype=torch.float64)
        return self

    def _grid(self, Z: np.ndarray, yc: np.ndarray) -> np.ndarray:
        # sklearn's own grid: from the smallest alpha that zeroes every coefficient down by eps, log-spaced.
        top = float(np.abs(Z.T @ yc).max()) / len(yc)
        return np.geomspace(top, top * float(self.eps), int(self.n_alphas)) if top > 0 else np.array([1.0])

    def _choose_alpha(self, Z: np.ndarray, y: np.ndarray, groups: np.ndarray | None) -> float:
        from sklearn.linear_model import lasso_path

        alphas = self._grid(Z, y - y.mean())
        folds = _kfold(len(y), groups, int(self.cv), self.seed)
        scores = np.zeros((len(folds), len(alphas)))
        for f, (tr, va) in enumerate(folds):
            m = y[tr].mean()
            _, coefs, _ = lasso_path(Z[tr], y[tr] - m, alphas=alphas, max_iter=int(self.max_iter))
            pred = Z[va] @ coefs + m  # (n_va, n_alphas)
            scores[f] = [r2_score(y[va], pred[:, j]) for j in range(len(alphas))]
        self.cv_scores_ = torch.as_tensor(scores.mean(0))
        return float(alphas[int(np.nanargmax(scores.mean(0)))])
