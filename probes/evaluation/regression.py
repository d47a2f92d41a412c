"""Evaluation of regression probes: R² and Pearson r with grouped bootstrap CIs, and how sparse the read is.

:func:`evaluate_regression` -> :class:`RegressionReport`. The intervals resample *groups* when groups are
given (rows of one group move together, as in :func:`probes.evaluation.bootstrap_indices`), so rows that
share a source do not pass for independent evidence. ``n_coordinates`` says how many activation coordinates
the probe reads (nonzero coefficients) and ``support`` which, so a report shows whether the signal sits in a
few coordinates or is spread over all of them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from probes.evaluation.metrics import bootstrap_indices


def r2(y: Any, pred: Any) -> float:
    """``1 - SS_res / SS_tot``; ``nan`` when ``y`` is constant."""
    from probes.train.regression import r2_score

    return r2_score(y, pred)


def pearson_r(y: Any, pred: Any) -> float:
    """Pearson correlation of predictions and targets; ``nan`` when either is constant."""
    y_arr, p_arr = np.asarray(y, dtype=np.float64), np.asarray(pred, dtype=np.float64)
    if y_arr.size < 2 or np.ptp(y_arr) == 0 or np.ptp(p_arr) == 0:
        return float("nan")
    return float(np.corrcoef(y_arr, p_arr)[0, 1])


def _ci(
    metric: Any, y: np.ndarray, pred: np.ndarray, groups: Any, n_bootstrap: int, confidence: float, seed: int
) -> tuple[float, float]:
    if n_bootstrap <= 0:
        return (float("nan"), float("nan"))
    values = np.array(
        [metric(y[i], pred[i]) for i in bootstrap_indices(len(y), groups, n_bootstrap=n_bootstrap, seed=seed)]
    )
    values = values[np.isfinite(values)]
    if values.size == 0:
        return (float("nan"), float("nan"))
    tail = 100.0 * (1.0 - confidence) / 2.0
    lo, hi = np.percentile(values, [tail, 100.0 - tail])
    return (float(lo), float(hi))


@dataclass
class RegressionReport:
    """R², Pearson r (each with a bootstrap CI), RMSE, and the probe's sparsity on one evaluation set."""

    r2: float
    r2_ci: tuple[float, float]
    pearson_r: float
    pearson_ci: tuple[float, float]
    rmse: float
    n: int
    n_groups: int | None
    n_coordinates: int | None
    n_features: int | None
    support: list[int] = field(default_factory=list)
    layer: str | None = None
    target: str | None = None
    y_true: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    y_pred: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)

    def as_dict(self, include_values: bool = False) -> dict[str, Any]:
        out = {
            "r2": self.r2,
            "r2_ci": list(self.r2_ci),
            "pearson_r": self.pearson_r,
            "pearson_ci": list(self.pearson_ci),
            "rmse": self.rmse,
            "n": self.n,
            "n_groups": self.n_groups,
            "n_coordinates": self.n_coordinates,
            "n_features": self.n_features,
            "support": self.support,
            "layer": self.layer,
            "target": self.target,
        }
        if include_values:
            out["y_true"] = self.y_true.tolist()
            out["y_pred"] = self.y_pred.tolist()
        return out

    def to_json(self, path: str | Path | None = None, *, include_values: bool = True) -> str:
        text = json.dumps(self.as_dict(include_values), indent=2) + "\n"
        if path is not None:
            Path(path).write_text(text)
        return text

    def __str__(self) -> str:
        where = " at ".join(x for x in (self.target or "target", self.layer) if x)
        coords = (
            f"{self.n_coordinates} of {self.n_features} coordinates carry the signal"
            if self.n_coordinates is not None
            else "coordinates: n/a"
        )
        lead = f" (top: {self.support[:8]})" if self.support and self.n_coordinates != self.n_features else ""
        return (
            f"Regression probe for {where}: n={self.n}"
            + (f" in {self.n_groups} groups" if self.n_groups is not None else "")
            + f"\n  R²        {self.r2:.3f} [{self.r2_ci[0]:.3f}, {self.r2_ci[1]:.3f}]"
            + f"\n  Pearson r {self.pearson_r:.3f} [{self.pearson_ci[0]:.3f}, {self.pearson_ci[1]:.3f}]"
            + f"\n  RMSE      {self.rmse:.4g}"
            + f"\n  {coords}{lead}"
        )

    def plots(self, out_dir: str | Path) -> list[Path]:
        return [predicted_vs_true_plot(self, Path(out_dir) / "predicted_vs_true.png")]


def evaluate_regression(
    probe: Any,
    X: Any,
    y: Sequence[float] | np.ndarray | None = None,
    *,
    layer: str | None = None,
    target: str | None = None,
    groups: Sequence[Any] | None = None,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> RegressionReport:
    """Score a fitted regression probe on held-out rows.

    ``X`` is an ``(n, d)`` matrix, or :class:`~probes.collection.Activations` (then ``layer`` picks the
    site, ``y`` defaults to the activations' target values named ``target`` — or the only one — and
    ``groups`` to their groups).
    """
    from probes.collection.activations import Activations

    if isinstance(X, Activations):
        if layer is None:
            if len(X.layers) != 1:
                raise ValueError(f"evaluate_regression: pass layer= (collected: {', '.join(X.layers)}).")
            layer = X.layers[0]
        if y is None:
            target, y = X.target_values(target)
        if groups is None:
            groups = X.groups
        X = X[layer]
    if y is None:
        raise ValueError("evaluate_regression: pass y (the true values) with a plain matrix X.")
    y_arr = np.asarray(y, dtype=np.float64)
    pred = np.asarray(probe.predict(X), dtype=np.float64)
    if pred.shape != y_arr.shape:
        raise ValueError(f"evaluate_regression: {len(pred)} predictions for {len(y_arr)} true values.")
    coef = getattr(probe, "coef_", None)
    n_coordinates = n_features = None
    support: list[int] = []
    if coef is not None:
        n_features = int(coef.numel())
        n_coordinates = int((coef != 0).sum())
        support = [int(i) for i in getattr(probe, "support_", [])][:32]
    n_groups = len({g for g in groups}) if groups is not None else None
    return RegressionReport(
        r2=r2(y_arr, pred),
        r2_ci=_ci(r2, y_arr, pred, groups, n_bootstrap, confidence, seed),
        pearson_r=pearson_r(y_arr, pred),
        pearson_ci=_ci(pearson_r, y_arr, pred, groups, n_bootstrap, confidence, seed + 1),
        rmse=float(np.sqrt(np.mean((y_arr - pred) ** 2))),
        n=int(len(y_arr)),
        n_groups=n_groups,
        n_coordinates=n_coordinates,
        n_features=n_features,
        support=support,
        layer=layer,
        target=target,
        y_true=y_arr,
        y_pred=pred,
    )


def predicted_vs_true_plot(report: RegressionReport, path: str | Path, *, title: str | None = None) -> Path:
    """Scatter of predicted against true values with the identity line and R² / r in the title."""
    from probes.evaluation.plots import _figure, _save

    fig = _figure(figsize=(4.8, 4.6))
    ax = fig.subplots()
    ax.scatter(report.y_true, report.y_pred, s=10, alpha=0.7)
    lo = float(min(report.y_true.min(initial=0.0), report.y_pred.min(initial=0.0)))
    hi = float(max(report.y_true.max(initial=1.0), report.y_pred.max(initial=1.0)))
    ax.plot([lo, hi], [lo, hi], color="grey", ls=":", lw=1)
    ax.set_xlabel("true value")
    ax.set_ylabel("probe prediction")
    name = " at ".join(x for x in (report.target, report.layer) if x)
    ax.set_title(title or f"{name}  R²={report.r2:.3f}  r={report.pearson_r:.3f}", fontsize=9)
    return _save(fig, path)
