"""Linear probes: L2 logistic regression (sklearn or batched torch L-BFGS) and mass-mean / LDA.

Every linear probe stores its learned direction in *raw activation space* -- the standardisation is
folded in -- so ``score = x @ coef_ + intercept_`` and a monitor can stack many probes of one layer into a
single matmul via :meth:`~probes.train.base.Probe.linear_form`. ``mean_``/``scale_`` keep the
standardiser for inspection; scoring never needs them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch

from probes.errors import BundleError
from probes.train._logistic_fit import (
    CHUNK_ROWS,
    fit_logistic_batched,
    fit_logistic_sklearn,
    standardizer_stats,
)
from probes.train._validate import (
    check_groups,
    check_matrix,
    check_n_features,
    cv_splits,
)
from probes.train.base import ArrayLike, ClassifierProbe, Probe, register_probe

DEFAULT_CS: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)


class LinearProbe(Probe):
    """Shared scoring and persistence of probes whose score is ``x @ coef_ + intercept_``."""

    #: learned tensors saved besides coef/intercept/mean/scale (subclasses extend)
    _extra_state: ClassVar[tuple[str, ...]] = ()

    def score_torch(self, X: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """Scores ``(n,)`` in float32 on ``X``'s device (half-precision inputs are upcast first)."""
        self._check_fitted()
        if not isinstance(X, torch.Tensor):
            raise ValueError(
                f"{type(self).__name__}.score_torch takes a torch tensor; got {type(X).__name__}."
            )
        if X.ndim != 2:
            raise ValueError(f"{type(self).__name__}: X must be 2-D (n, d); got shape {tuple(X.shape)}.")
        check_n_features(int(X.shape[1]), int(self.n_features_in_), type(self).__name__)
        w, b = self._weights_on(X.device)
        return X.to(torch.float32) @ w + b

    def linear_form(self) -> tuple[torch.Tensor, torch.Tensor]:
        self._check_fitted()
        return self.coef_.clone(), self.intercept_.reshape(()).clone()

    def flops_per_row(self) -> int:
        self._check_fitted()
        return 2 * int(self.n_features_in_)  # a dot product and the bias

    def _weights_on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        # Cache per device so a monitor scoring on the GPU copies the weights once, not per call.
        cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = self.__dict__.setdefault("_device_cache", {})
        key = str(device)
        if key not in cache:
            cache[key] = (self.coef_.to(device), self.intercept_.reshape(()).to(device))
        return cache[key]

    def _set_linear(self, w_std: np.ndarray, b_std: float, mean: np.ndarray, scale: np.ndarray) -> None:
        """Fold the standardiser into raw-space weights: ``((x - m) / s) @ w + b == x @ (w / s) + b'``."""
        w_raw = np.asarray(w_std, dtype=np.float64) / scale
        b_raw = float(b_std) - float(mean @ w_raw)
        self.coef_ = torch.as_tensor(w_raw, dtype=torch.float32)
        self.intercept_ = torch.tensor([b_raw], dtype=torch.float32)
        self.mean_ = torch.as_tensor(mean, dtype=torch.float32)
        self.scale_ = torch.as_tensor(scale, dtype=torch.float32)
        self.n_features_in_ = int(len(w_raw))
        self._device_cache = {}  # filled per device on first use (predict leaves __dict__ unchanged)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        self._check_fitted()
        out = {"coef": self.coef_, "intercept": self.intercept_, "mean": self.mean_, "scale": self.scale_}
        for name in self._extra_state:
            out[name] = getattr(self, f"{name}_")
        return {k: v.detach().cpu().contiguous() for k, v in out.items()}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> LinearProbe:
        names = ("coef", "intercept", "mean", "scale", *self._extra_state)
        missing = [k for k in names if k not in tensors]
        if missing:
            raise BundleError(
                f"{type(self).__name__} state is missing tensors {missing}; the file is incomplete."
            )
        d = int(tensors["coef"].numel())
        if tensors["coef"].ndim != 1 or tensors["intercept"].numel() != 1:
            raise BundleError(f"{type(self).__name__} state has malformed coef/intercept shapes.")
        if tensors["mean"].shape != (d,) or tensors["scale"].shape != (d,):
            raise BundleError(f"{type(self).__name__} state: mean/scale do not match coef's {d} features.")
        self.coef_ = tensors["coef"].to(torch.float32)
        self.intercept_ = tensors["intercept"].reshape(1).to(torch.float32)
        self.mean_ = tensors["mean"].to(torch.float32)
        self.scale_ = tensors["scale"].to(torch.float32)
        for name in self._extra_state:
            setattr(self, f"{name}_", tensors[name])
        self.n_features_in_ = d
        self._device_cache = {}  # filled per device on first use (predict leaves __dict__ unchanged)
        return self


def _auroc(y: np.ndarray, s: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, s))


@register_probe
class LogisticProbe(ClassifierProbe, LinearProbe):
    """L2-regularised logistic regression on standardised activations.

    Same objective as scikit-learn's ``LogisticRegression(C=C)`` (the intercept is not penalised).
    ``cv=k`` picks ``C`` from ``Cs`` by k-fold cross-validated AUROC -- grouped (``StratifiedGroupKFold``)
    when ``fit`` gets ``groups`` -- and stores the choice in ``C_``.

    ``backend``: ``"torch"`` fits with the batched, preconditioned L-BFGS of :func:`fit_logistic_many` on
    ``X``'s device (several times faster than sklearn on large sets, streams a memory-mapped ``X``);
    ``"sklearn"`` with scikit-learn's lbfgs on the CPU; ``"auto"`` (default) picks torch when
    ``n_rows x n_features >= AUTO_TORCH_CELLS`` (2**21, e.g. 2,731 rows of d=768) or ``X`` is on a GPU, and
    sklearn below that, where sklearn is fast anyway and is the reference. Both minimise the same objective
    to the same gradient tolerance; on 100k x 768 their test AUROCs agree within 1e-4 (bench/fit.py).
    ``backend_`` records the choice.
    """

    #: ``backend="auto"`` uses torch from this many matrix cells (rows x features) on
    AUTO_TORCH_CELLS: ClassVar[int] = 2**21

    kind = "logistic"
    _extra_state = ("C",)

    def __init__(
        self,
        C: float = 1.0,
        standardize: bool = True,
        fit_intercept: bool = True,
        max_iter: int = 1000,
        cv: int | None = None,
        Cs: Sequence[float] = DEFAULT_CS,
        class_weight: str | None = None,
        backend: str = "auto",
        seed: int = 0,
    ) -> None:
        self.C = C
        self.standardize = standardize
        self.fit_intercept = fit_intercept
        self.max_iter = max_iter
        self.cv = cv
        self.Cs = Cs
        self.class_weight = class_weight
        self.backend = backend
        self.seed = seed

    def _validate_params(self) -> None:
        if not float(self.C) > 0:
            raise ValueError(f"LogisticProbe: C must be > 0 (inverse regularisation); got {self.C}.")
        if not (self.class_weight in (None, "balanced") or isinstance(self.class_weight, dict)):
            raise ValueError(
                "LogisticProbe: class_weight must be None, 'balanced' or a {label: weight} dict; "
                f"got {self.class_weight!r}."
            )
        if isinstance(self.class_weight, dict) and self.backend == "torch":
            raise ValueError(
                "LogisticProbe: a class_weight dict needs backend='sklearn' (the torch backend takes "
                "None or 'balanced')."
            )
        if self.backend not in ("auto", "sklearn", "torch"):
            raise ValueError(
                f"LogisticProbe: backend must be 'auto', 'sklearn' or 'torch'; got {self.backend!r}."
            )
        if self.cv is not None and (not self.Cs or any(not float(c) > 0 for c in self.Cs)):
            raise ValueError(
                f"LogisticProbe: Cs must be a non-empty list of positive values; got {self.Cs!r}."
            )

    def fit(self, X: ArrayLike, y: ArrayLike, groups: Any = None) -> LogisticProbe:
        self._validate_params()
        Xt = check_matrix(X, "LogisticProbe.fit")
        y_np = self._fit_labels(y, Xt.shape[0], "LogisticProbe.fit")
        g = check_groups(groups, Xt.shape[0], "LogisticProbe.fit")
        self._class_weight = self._encoded_class_weight()
        C = float(self.C)
        self.backend_ = self._pick_backend(Xt)
        if self.cv is not None:
            C = self._choose_C(Xt, y_np, g)
        if self.backend_ == "torch":
            fitted = fit_logistic_many(
                Xt[None],
                y_np,
                C=C,
                standardize=self.standardize,
                fit_intercept=self.fit_intercept,
                max_iter=self.max_iter,
                class_weight=self.class_weight,
            )[0]
            for name in ("coef_", "intercept_", "mean_", "scale_", "n_features_in_", "n_iter_"):
                setattr(self, name, getattr(fitted, name))
            self._device_cache = {}  # filled per device on first use (predict leaves __dict__ unchanged)
        else:
            w, b, mean, scale, n_iter = self._fit_sklearn(Xt, y_np, C)
            self._set_linear(w, b, mean, scale)
            self.n_iter_ = n_iter
        self.C_ = torch.tensor([C], dtype=torch.float64)
        return self

    def _encoded_class_weight(self) -> str | dict[int, float] | None:
        """``class_weight`` keyed by the encoded labels 0/1 (a dict is keyed by the caller's labels)."""
        cw = self.class_weight
        if not isinstance(cw, dict):
            return cw
        return {k: float(cw.get(label, 1.0)) for k, label in enumerate(self.classes_.tolist())}

    def _pick_backend(self, X: torch.Tensor) -> str:
        if self.backend != "auto":
            return str(self.backend)
        if isinstance(self.class_weight, dict):
            return "sklearn"  # the torch solver takes None or 'balanced' only
        big = int(X.shape[0]) * int(X.shape[1]) >= self.AUTO_TORCH_CELLS
        return "torch" if big or X.device.type != "cpu" else "sklearn"

    def _fit_sklearn(
        self, X: torch.Tensor, y: np.ndarray, C: float
    ) -> tuple[np.ndarray, float, np.ndarray, np.ndarray, int]:
        return fit_logistic_sklearn(
            X, y, C, self.standardize, self.fit_intercept, self.max_iter, self.__dict__["_class_weight"]
        )

    def _choose_C(self, X: torch.Tensor, y: np.ndarray, groups: np.ndarray | None) -> float:
        folds = cv_splits(y, groups, int(self.cv), self.seed)  # type: ignore[arg-type]
        Cs = sorted(float(c) for c in self.Cs)
        scores = np.zeros((len(folds), len(Cs)))
        for k, (tr, va) in enumerate(folds):
            Xtr, Xva = X[torch.as_tensor(tr)], X[torch.as_tensor(va)]
            if self.backend_ == "torch":
                probes = fit_logistic_many(
                    Xtr[None].expand(len(Cs), -1, -1),
                    y[tr],
                    C=Cs,
                    standardize=self.standardize,
                    fit_intercept=self.fit_intercept,
                    max_iter=self.max_iter,
                    class_weight=self.class_weight,
                )
                for j, p in enumerate(probes):
                    scores[k, j] = _auroc(y[va], p.decision_function(Xva))
            else:
                for j, C in enumerate(Cs):
                    w, b, mean, scale, _ = self._fit_sklearn(Xtr, y[tr], C)
                    s = ((Xva.detach().cpu().double().numpy() - mean) / scale) @ w + b
                    scores[k, j] = _auroc(y[va], s)
        mean_scores = scores.mean(0)
        self.cv_scores_ = torch.as_tensor(mean_scores)
        # Ties go to the smallest C (strongest regularisation): the simpler probe generalises better.
        return Cs[int(np.argmax(mean_scores))]


@register_probe
class DiffMeansProbe(ClassifierProbe, LinearProbe):
    """Mass-mean probe: direction ``mu+ - mu-``, threshold at the midpoint of the class means.

    ``lda=False``: ``w = (mu+ - mu-) / sigma^2`` with ``sigma^2`` the average pooled within-class variance,
    so the score is the log-odds under an isotropic Gaussian model (equal priors). ``lda=True``:
    ``w = Sigma^-1 (mu+ - mu-)`` with ``Sigma`` the pooled within-class covariance shrunk towards
    ``trace(Sigma)/d * I`` -- by the Ledoit-Wolf amount (``shrinkage="auto"``) or a fixed amount in
    [0, 1]; the score is then the LDA log-odds. ``standardize=True`` computes both in z-scored space.
    """

    kind = "diffmeans"
    _extra_state = ("shrinkage",)

    def __init__(self, lda: bool = False, shrinkage: str | float = "auto", standardize: bool = False) -> None:
        self.lda = lda
        self.shrinkage = shrinkage
        self.standardize = standardize

    def fit(self, X: ArrayLike, y: ArrayLike, groups: Any = None) -> DiffMeansProbe:
        if not (
            self.shrinkage == "auto" or (isinstance(self.shrinkage, int | float) and 0 <= self.shrinkage <= 1)
        ):
            raise ValueError(
                f"DiffMeansProbe: shrinkage must be 'auto' or a float in [0, 1]; got {self.shrinkage!r}."
            )
        Xt = check_matrix(X, "DiffMeansProbe.fit")
        y_np = self._fit_labels(y, Xt.shape[0], "DiffMeansProbe.fit")
        check_groups(groups, Xt.shape[0], "DiffMeansProbe.fit")
        mean, scale = standardizer_stats(Xt, self.standardize)
        m_t, s_t = torch.as_tensor(mean, device=Xt.device), torch.as_tensor(scale, device=Xt.device)
        pos = torch.as_tensor(y_np == 1, device=Xt.device)
        n, d = Xt.shape
        mu = torch.zeros(2, d, dtype=torch.float64, device=Xt.device)
        cov = torch.zeros(d, d, dtype=torch.float64, device=Xt.device) if self.lda else None
        sq_norms = torch.zeros(n, dtype=torch.float64, device=Xt.device)
        # Chunks keep every float64 temporary small (100k x 768 would be 600 MB at once), so X may be
        # memory-mapped from the cache and larger than RAM.
        counts = torch.zeros(2, dtype=torch.float64, device=Xt.device)
        for start in range(0, n, 8192):
            sl = slice(start, start + 8192)
            z = (Xt[sl].to(torch.float64) - m_t) / s_t
            cls = pos[sl].long()
            mu.index_add_(0, cls, z)
            counts += torch.bincount(cls, minlength=2).to(torch.float64)
        mu /= counts[:, None]
        for start in range(0, n, 8192):
            sl = slice(start, start + 8192)
            xc = (Xt[sl].to(torch.float64) - m_t) / s_t - mu[pos[sl].long()]
            sq_norms[sl] = (xc * xc).sum(1)
            if cov is not None:
                cov += xc.T @ xc
        delta = mu[1] - mu[0]
        avg_var = float(sq_norms.sum()) / (n * d)
        if cov is None:
            w = delta / max(avg_var, 1e-12)
            shrink = 1.0
        else:
            cov /= n
            shrink = (
                self._ledoit_wolf(cov, sq_norms, n) if self.shrinkage == "auto" else float(self.shrinkage)
            )
            target = float(torch.trace(cov)) / d
            sigma = (1 - shrink) * cov + shrink * target * torch.eye(d, dtype=torch.float64, device=Xt.device)
            w = torch.linalg.solve(
                sigma + 1e-12 * target * torch.eye(d, dtype=torch.float64, device=Xt.device), delta
            )
        b = -float(w @ (mu[0] + mu[1])) / 2.0
        self._set_linear(w.cpu().numpy(), b, mean, scale)
        self.shrinkage_ = torch.tensor([shrink], dtype=torch.float64)
        return self

    @staticmethod
    def _ledoit_wolf(cov: torch.Tensor, sq_norms: torch.Tensor, n: int) -> float:
        """Ledoit-Wolf shrinkage towards ``mu * I`` (sklearn's formula; ``sum(X2.T @ X2) = sum ||x_i||^4``)."""
        d = cov.shape[0]
        mu = float(torch.trace(cov)) / d
        delta_ = float((cov * cov).sum())  # = ||X^T X||_F^2 / n^2
        beta_ = float((sq_norms * sq_norms).sum())
        beta = (beta_ / n - delta_) / (d * n)
        delta = (delta_ - 2.0 * mu * float(torch.trace(cov)) + d * mu * mu) / d
        beta = min(beta, delta)
        return 0.0 if beta <= 0 else float(beta / delta)


def fit_logistic_many(
    Xs: torch.Tensor | np.ndarray | Sequence[torch.Tensor | np.ndarray],
    y: ArrayLike,
    C: float | Sequence[float] = 1.0,
    standardize: bool = True,
    fit_intercept: bool = True,
    max_iter: int = 1000,
    tol: float = 1e-4,
    class_weight: str | None = None,
    history: int = 10,
    device: str | torch.device | None = None,
    sample_weight: ArrayLike | None = None,
    precondition: bool = True,
    chunk_rows: int = CHUNK_ROWS,
) -> list[LogisticProbe]:
    """Fit one L2 logistic probe per layer at once: ``Xs`` is ``(L, n, d)`` (or a list of ``(n, d)``).

    All ``L`` problems share the labels and are solved together by a batched L-BFGS in torch (float32,
    on ``Xs``'s device or ``device``), each with its own curvature history, step size and stopping test.
    The objective is scikit-learn's ``LogisticRegression(C)`` on standardised inputs (mean loss +
    ``||w||^2 / (2 C n)``), stopped like sklearn when the largest gradient entry falls below ``tol``.
    ``C`` may be one value per problem, which makes a grid over C one batched fit. ``precondition``
    starts L-BFGS from the exact inverse Hessian at ``w = 0`` (costs ``L * d^2`` memory and one
    ``n d^2`` Gram matrix per layer; turn it off for very wide models on small memory). Temporaries
    (standardiser, Gram matrix, finiteness check) are built ``chunk_rows`` rows at a time, so ``Xs`` may be
    memory-mapped (a cached collection) and larger than RAM: each iteration only streams it.
    """
    # Keyword arguments: the solver's signature mirrors this one and must not be matched by position.
    Cs, w, b, mean64, std64, n_iter = fit_logistic_batched(
        Xs,
        y,
        C,
        standardize=standardize,
        fit_intercept=fit_intercept,
        max_iter=max_iter,
        tol=tol,
        class_weight=class_weight,
        history=history,
        device=device,
        sample_weight=sample_weight,
        precondition=precondition,
        chunk_rows=chunk_rows,
    )
    out = []
    for layer in range(len(Cs)):
        p = LogisticProbe(
            C=Cs[layer],
            standardize=standardize,
            fit_intercept=fit_intercept,
            max_iter=max_iter,
            class_weight=class_weight,
            backend="torch",
        )
        p._set_linear(
            w[layer].double().cpu().numpy(),
            float(b[layer]),
            mean64[layer].cpu().numpy(),
            std64[layer].cpu().numpy(),
        )
        p.n_iter_ = int(n_iter[layer])
        p.C_ = torch.tensor([Cs[layer]], dtype=torch.float64)
        out.append(p)
    return out
