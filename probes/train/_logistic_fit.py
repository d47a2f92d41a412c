"""Solvers for L2 logistic regression on standardised activations, tensors in and tensors out.

:func:`fit_logistic_sklearn` runs scikit-learn's lbfgs on one problem; :func:`fit_logistic_batched` solves
``L`` problems (one per layer, or one per ``C``) together with a batched, preconditioned L-BFGS in torch.
:class:`~probes.train.linear.LogisticProbe` and :func:`~probes.train.linear.fit_logistic_many` wrap them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch

from probes.train._validate import check_labels
from probes.train.base import ArrayLike


class BatchedFit(NamedTuple):
    """The solutions of :func:`fit_logistic_batched`, in standardised space, one row per problem."""

    C: list[float]
    coef: torch.Tensor  # (L, d) weights on standardised inputs
    intercept: torch.Tensor  # (L,)
    mean: torch.Tensor  # (L, d) float64 standardiser
    scale: torch.Tensor  # (L, d) float64
    n_iter: torch.Tensor  # (L,) iterations each problem ran


# Rows per chunk wherever a solver reads all of X into a temporary (float64 copies, centred copies, masks):
# X itself may be memory-mapped from the activation cache and larger than RAM.
CHUNK_ROWS = 65536


def column_stats(X: torch.Tensor, chunk_rows: int = CHUNK_ROWS) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 column ``(mean, std)`` of ``(n, d)`` ``X``, two passes over row chunks (no full copy)."""
    n, d = X.shape
    total = torch.zeros(d, dtype=torch.float64, device=X.device)
    for i in range(0, n, chunk_rows):
        total += X[i : i + chunk_rows].to(torch.float64).sum(0)
    mean = total / n
    sq = torch.zeros(d, dtype=torch.float64, device=X.device)
    for i in range(0, n, chunk_rows):
        sq += ((X[i : i + chunk_rows].to(torch.float64) - mean) ** 2).sum(0)
    return mean, (sq / n).sqrt()


def _safe_scale(mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    # Constant features carry no signal; a unit scale keeps them (and their zero weight) finite.
    return torch.where(std > 1e-12 * (1.0 + mean.abs()), std, torch.ones_like(std))


def standardizer_stats(
    X: torch.Tensor, standardize: bool, chunk_rows: int = CHUNK_ROWS
) -> tuple[np.ndarray, np.ndarray]:
    """float64 ``(mean, scale)`` of ``X``'s columns as numpy arrays, or ``(0, 1)`` without ``standardize``."""
    d = X.shape[1]
    if not standardize:
        return np.zeros(d), np.ones(d)
    mean, std = column_stats(X, chunk_rows)
    return mean.cpu().numpy(), _safe_scale(mean, std).cpu().numpy()


def fit_logistic_sklearn(
    X: torch.Tensor,
    y: np.ndarray,
    C: float,
    standardize: bool = True,
    fit_intercept: bool = True,
    max_iter: int = 1000,
    class_weight: str | dict[int, float] | None = None,
    sample_weight: np.ndarray | None = None,
) -> tuple[np.ndarray, float, np.ndarray, np.ndarray, int]:
    """sklearn ``LogisticRegression(lbfgs)`` on standardised ``X``: ``(w_std, b_std, mean, scale, n_iter)``."""
    from sklearn.linear_model import LogisticRegression

    mean, scale = standardizer_stats(X, standardize)
    # float32 halves memory and time; sklearn's lbfgs keeps the input dtype.
    Xs = (
        ((X.detach().cpu().to(torch.float64) - torch.as_tensor(mean)) / torch.as_tensor(scale))
        .float()
        .numpy()
    )
    clf = LogisticRegression(C=C, fit_intercept=fit_intercept, max_iter=max_iter, class_weight=class_weight)
    clf.fit(Xs, y, sample_weight=sample_weight)
    b = float(clf.intercept_[0]) if fit_intercept else 0.0
    return clf.coef_[0].astype(np.float64), b, mean, scale, int(np.max(clf.n_iter_))


def fit_logistic_batched(
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
) -> BatchedFit:
    """Validate the inputs of :func:`~probes.train.linear.fit_logistic_many` and solve its ``L`` problems."""
    X = torch.stack([torch.as_tensor(x) for x in Xs]) if isinstance(Xs, list | tuple) else torch.as_tensor(Xs)
    if X.ndim != 3:
        raise ValueError(
            f"fit_logistic_many: Xs must be (layers, n, d) or a list of (n, d); got {tuple(X.shape)}."
        )
    if device is not None:
        X = X.to(device)
    if not X.is_floating_point():
        X = X.float()
    L, n, d = X.shape
    if n < 2:
        raise ValueError(f"fit_logistic_many: need at least 2 rows; got {n}.")
    finite = all(
        bool(torch.isfinite(X[:, i : i + chunk_rows]).all()) for i in range(0, X.shape[1], chunk_rows)
    )
    if not finite:
        raise ValueError("fit_logistic_many: Xs contains NaN or infinite values.")
    y_np = check_labels(y, n, "fit_logistic_many")
    Cs = [float(C)] * L if isinstance(C, int | float) else [float(c) for c in C]
    if len(Cs) != L or any(not c > 0 for c in Cs):
        raise ValueError(
            f"fit_logistic_many: C must be positive, one value or one per layer ({L}); got {C!r}."
        )
    if class_weight not in (None, "balanced"):
        raise ValueError(f"fit_logistic_many: class_weight must be None or 'balanced'; got {class_weight!r}.")

    dev = X.device
    dtype = torch.float32 if X.dtype in (torch.float16, torch.bfloat16) else X.dtype
    X = X.to(dtype)
    if standardize:
        stats = [column_stats(X[layer], chunk_rows) for layer in range(L)]
        mean64 = torch.stack([m for m, _ in stats])
        std64 = _safe_scale(mean64, torch.stack([s for _, s in stats]))
    else:
        mean64 = torch.zeros(L, d, dtype=torch.float64, device=dev)
        std64 = torch.ones(L, d, dtype=torch.float64, device=dev)
    yt = torch.as_tensor(y_np, dtype=dtype, device=dev)
    if class_weight == "balanced":
        counts = np.bincount(y_np, minlength=2)
        sw = torch.as_tensor((n / (2.0 * counts))[y_np], dtype=dtype, device=dev)
    else:
        sw = torch.ones(n, dtype=dtype, device=dev)
    if sample_weight is not None:
        sw_user = torch.as_tensor(np.asarray(sample_weight, dtype=np.float64), dtype=dtype, device=dev)
        if sw_user.shape != (n,) or not bool((sw_user >= 0).all()) or not float(sw_user.sum()) > 0:
            raise ValueError(
                "fit_logistic_many: sample_weight must be (n,) non-negative with a positive sum."
            )
        sw = sw * sw_user
    w, b, n_iter = _batched_lbfgs(
        X,
        yt,
        sw,
        torch.as_tensor(Cs, dtype=dtype, device=dev),
        mean64.to(dtype),
        std64.to(dtype),
        fit_intercept,
        max_iter,
        tol,
        history,
        precondition,
        chunk_rows,
    )
    return BatchedFit(Cs, w, b, mean64, std64, n_iter)


def _batched_lbfgs(
    X: torch.Tensor,
    y: torch.Tensor,
    sw: torch.Tensor,
    C: torch.Tensor,
    mean: torch.Tensor,
    scale: torch.Tensor,
    fit_intercept: bool,
    max_iter: int,
    tol: float,
    m: int,
    precondition: bool = True,
    chunk_rows: int = CHUNK_ROWS,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """L-BFGS with Armijo backtracking, vectorised over ``L`` independent logistic problems.

    With ``precondition`` the initial inverse Hessian is the exact inverse Hessian at the start point
    (``(X~'X~ / 4n + lam I)^-1``, one Cholesky per layer) instead of a multiple of the identity:
    residual streams are strongly anisotropic, and this cuts the iterations several-fold for the price
    of one ``n d^2`` Gram matrix per layer (compute-bound, unlike the memory-bound iterations).

    The standardisation is applied inside the matvecs (``X~ w = X (w/s) - m.(w/s)``), so ``X`` is never
    copied; each iteration reads ``X`` twice (the direction's logits, then the new gradient) however many
    backtracking steps it takes, because trial logits are ``z + t * X~p``.
    """
    L, n, d = X.shape
    S = sw.sum()
    sw_n = sw / S
    lam = 1.0 / (C * S)  # (L,) the sklearn penalty 1/(2 C S) ||w||^2, differentiated
    p_dim = d + 1
    y64, sw64 = y.double(), sw_n.double()

    def logits(theta: torch.Tensor) -> torch.Tensor:
        wr = theta[:, :d] / scale
        off = theta[:, d] - (mean * wr).sum(1)
        return torch.bmm(X, wr.unsqueeze(-1)).squeeze(-1) + off[:, None]

    def loss_of(z: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        # float64 sums: the line search compares losses that differ by less than float32 resolution.
        z64 = z.double()
        data = ((torch.nn.functional.softplus(z64) - y64 * z64) * sw64).sum(1)
        return data + 0.5 * lam.double() * (theta[:, :d].double() ** 2).sum(1)

    def grad_of(z: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        r = (torch.sigmoid(z) - y) * sw_n  # (L, n)
        xr = torch.bmm(r.unsqueeze(1), X).squeeze(1)  # (L, d)
        g = torch.empty(L, p_dim, dtype=X.dtype, device=X.device)
        g[:, :d] = (xr - mean * r.sum(1, keepdim=True)) / scale + lam[:, None] * theta[:, :d]
        g[:, d] = r.sum(1) if fit_intercept else 0.0
        return g

    theta = torch.zeros(L, p_dim, dtype=X.dtype, device=X.device)
    p1 = float((sw_n * y).sum())
    if fit_intercept:
        theta[:, d] = float(np.log(p1 / (1.0 - p1)))
    chol: torch.Tensor | None = None
    if precondition:
        # Hessian at w = 0: p(1-p) X~' W X~ + lam I (the weighted, standardised Gram matrix).
        chol = torch.empty(L, d, d, dtype=X.dtype, device=X.device)
        eye = torch.eye(d, dtype=X.dtype, device=X.device)
        for layer in range(L):  # one layer and one row chunk at a time: a centred copy would double memory
            gram = torch.zeros(d, d, dtype=X.dtype, device=X.device)
            for i in range(0, n, chunk_rows):
                xc = (X[layer, i : i + chunk_rows] - mean[layer]) / scale[layer]
                gram += (xc * sw_n[i : i + chunk_rows, None]).T @ xc
            hess = p1 * (1.0 - p1) * gram + (lam[layer] + 1e-6) * eye
            chol[layer] = torch.linalg.cholesky(hess)
    h_b = 1.0 / (p1 * (1.0 - p1))

    def apply_h0(v: torch.Tensor) -> torch.Tensor:
        """The initial inverse-Hessian approximation applied to ``(L, d+1)`` vectors."""
        if chol is None:
            return v
        out = torch.empty_like(v)
        out[:, :d] = torch.cholesky_solve(v[:, :d, None], chol).squeeze(-1)
        out[:, d] = v[:, d] * h_b
        return out

    z = logits(theta)
    f = loss_of(z, theta)
    g = grad_of(z, theta)
    S_hist = torch.zeros(m, L, p_dim, dtype=X.dtype, device=X.device)
    Y_hist = torch.zeros_like(S_hist)
    rho = torch.zeros(m, L, dtype=X.dtype, device=X.device)
    gamma = torch.ones(L, dtype=X.dtype, device=X.device)
    active = g.abs().amax(1) > tol
    n_iter = torch.zeros(L, dtype=torch.long, device=X.device)
    c1 = 1e-4
    for it in range(max_iter):
        if not bool(active.any()):
            break
        # Two-loop recursion, newest pair first; unused or rejected pairs have rho = 0 and drop out.
        q = -g.clone()
        alphas = []
        for k in range(min(it, m)):
            slot = (it - 1 - k) % m
            a = rho[slot] * (S_hist[slot] * q).sum(1)
            q -= a[:, None] * Y_hist[slot]
            alphas.append((slot, a))
        q = apply_h0(q) * gamma[:, None]
        for slot, a in reversed(alphas):
            bcoef = rho[slot] * (Y_hist[slot] * q).sum(1)
            q += (a - bcoef)[:, None] * S_hist[slot]
        direction = q
        if not fit_intercept:
            direction[:, d] = 0.0
        slope = (direction.double() * g.double()).sum(1)
        bad = slope >= 0  # lost descent (rare): restart that problem from steepest descent
        if bool(bad.any()):
            direction[bad] = -apply_h0(g)[bad]
            slope = (direction.double() * g.double()).sum(1)
            rho[:, bad] = 0.0
        # Without a preconditioner the first step is steepest descent: scale it so it does not overshoot.
        first = it == 0 and chol is None
        t = torch.clamp(1.0 / g.double().norm(dim=1), max=1.0) if first else torch.ones_like(slope)
        t = torch.where(active, t, torch.zeros_like(t))
        wr = direction[:, :d] / scale
        zp = torch.bmm(X, wr.unsqueeze(-1)).squeeze(-1) + (direction[:, d] - (mean * wr).sum(1))[:, None]
        accepted = ~active
        for _ in range(40):
            tx = t.to(X.dtype)[:, None]
            f_t = loss_of(z + tx * zp, theta + tx * direction)
            ok = f_t <= f + c1 * t * slope
            accepted = accepted | ok
            if bool(accepted.all()):
                break
            t = torch.where(accepted, t, t * 0.5)
        t = torch.where(accepted, t, torch.zeros_like(t))  # line search failed: stop that problem
        tx = t.to(X.dtype)
        step = tx[:, None] * direction
        theta_new = theta + step
        z_new = z + tx[:, None] * zp if (it + 1) % 25 else logits(theta_new)  # refresh to stop drift
        f_new = loss_of(z_new, theta_new)
        g_new = grad_of(z_new, theta_new)
        yv = g_new - g
        sy = (step * yv).sum(1)
        valid = sy > 1e-10 * (yv * yv).sum(1).clamp_min(1e-30)
        slot = it % m
        S_hist[slot], Y_hist[slot] = step, yv
        rho[slot] = torch.where(valid, 1.0 / sy.clamp_min(1e-30), torch.zeros_like(sy))
        gamma = torch.where(valid, sy / (yv * apply_h0(yv)).sum(1).clamp_min(1e-30), gamma)
        n_iter += active.long()
        theta, z, f, g = theta_new, z_new, f_new, g_new
        active = active & (t > 0) & (g.abs().amax(1) > tol)
    return theta[:, :d], theta[:, d], n_iter
