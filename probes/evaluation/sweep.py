"""Layer sweeps (pick the site on validation, never on test) and cross-dataset generalisation matrices."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from probes.evaluation.core import evaluate, probe_kind, resolve_site
from probes.evaluation.metrics import auroc, with_ci
from probes.evaluation.report import EvalReport, _fmt, _fmt_ci, _fmt_pct

if TYPE_CHECKING:
    from probes.collection.activations import Activations
    from probes.train.base import Probe

ProbeSpec = str | Callable[[], Any]


def build_probe(probe: ProbeSpec, probe_params: Mapping[str, Any] | None = None) -> Probe:
    """A fresh unfitted probe from a kind name (``"logistic"``, ...) or a zero-argument factory."""
    params = dict(probe_params or {})
    if callable(probe):
        if params:
            raise ValueError("probe_params only apply to a probe kind name; bake them into your factory.")
        return probe()
    from probes.train import make_probe

    return make_probe(probe, **params)


def _fit_groups(acts: Activations) -> list[Any] | None:
    groups = list(acts.groups) if acts.groups is not None else None
    return None if groups is None or all(g is None for g in groups) else groups


def _sites(acts: Activations, layers: Sequence[str | int] | None) -> list[str]:
    if layers is None:
        return list(acts.features)
    return [resolve_site(acts, layer, "train") for layer in layers]


# Hyperparameters fit_logistic_many shares with LogisticProbe. `seed` and `backend` do not change a
# plain (no cv) fit's objective, and L-BFGS is deterministic; anything else (e.g. cv=3) needs per-layer fits.
_BATCHABLE = {"C", "standardize", "fit_intercept", "max_iter", "class_weight"}
_IRRELEVANT_WITHOUT_CV = {"seed", "backend", "Cs", "cv"}


def _batch_params(params: Mapping[str, Any]) -> dict[str, Any] | None:
    """The kwargs for one batched logistic fit, or None when these params need per-layer fits."""
    if params.get("cv") is not None:
        return None
    kept = {k: v for k, v in params.items() if k not in _IRRELEVANT_WITHOUT_CV}
    return kept if set(kept) <= _BATCHABLE else None


def _fit_all(
    train: Activations, sites: list[str], probe: ProbeSpec, probe_params: Mapping[str, Any] | None
) -> dict[str, Probe]:
    """One fitted probe per site: one batched torch fit for all layers when the probe is plain logistic."""
    y, groups = np.asarray(train.labels), _fit_groups(train)
    params = dict(probe_params or {})
    dense = all(not hasattr(train.features[s], "offsets") for s in sites)
    batch = _batch_params(params) if probe == "logistic" and len(sites) > 1 and dense else None
    if batch is not None:
        from probes.train import fit_logistic_many

        return dict(
            zip(sites, fit_logistic_many([train.features[s] for s in sites], y, **batch), strict=True)
        )
    return {site: build_probe(probe, params).fit(train.features[site], y, groups=groups) for site in sites}


@dataclass
class SweepResult:
    """Per-layer probes and metrics; ``best_layer`` is chosen by validation AUROC only."""

    best_layer: str
    table: list[dict[str, Any]]
    probes: dict[str, Any] = field(repr=False)
    reports: dict[str, EvalReport] = field(default_factory=dict, repr=False)
    probe_kind: str = "probe"

    @property
    def best_probe(self) -> Any:
        return self.probes[self.best_layer]

    @property
    def best_report(self) -> EvalReport | None:
        return self.reports.get(self.best_layer)

    def to_dict(self, include_scores: bool = False) -> dict[str, Any]:
        return {
            "best_layer": self.best_layer,
            "selected_on": "validation AUROC",
            "probe_kind": self.probe_kind,
            "table": [{k: _json_safe(v) for k, v in row.items()} for row in self.table],
            "reports": {k: r.to_dict(include_scores=include_scores) for k, r in self.reports.items()},
        }

    def plot(self, path: str | Path) -> Path:
        from probes.evaluation.plots import layer_sweep_plot

        return layer_sweep_plot(
            self.table, path, best_layer=self.best_layer, title=f"Layer sweep · {self.probe_kind}"
        )

    def __rich__(self) -> Any:
        from rich.table import Table

        has_test = any(row.get("test_auroc") is not None for row in self.table)
        table = Table(title=f"Layer sweep · {self.probe_kind} (picked on validation)")
        table.add_column("layer")
        table.add_column("val AUROC", justify="right")
        table.add_column("val 95% CI", justify="right", no_wrap=True)
        if has_test:
            table.add_column("test AUROC", justify="right")
            table.add_column("test 95% CI", justify="right", no_wrap=True)
            target = next((row.get("target_fpr") for row in self.table if row.get("target_fpr")), None)
            table.add_column(f"recall @ FPR {_fmt_pct(target)}", justify="right")
        for row in self.table:
            mark = " *" if row["layer"] == self.best_layer else ""
            cells = [
                f"{row['layer']}{mark}",
                _fmt(row["val_auroc"]),
                _fmt_ci((row["val_auroc_lo"], row["val_auroc_hi"])),
            ]
            if has_test:
                cells += [
                    _fmt(row.get("test_auroc")),
                    _fmt_ci((row.get("test_auroc_lo"), row.get("test_auroc_hi"))),
                    _fmt_pct(row.get("recall_at_fpr")),
                ]
            table.add_row(*cells)
        return table


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def layer_sweep(
    train: Activations,
    val: Activations,
    *,
    probe: ProbeSpec = "logistic",
    probe_params: Mapping[str, Any] | None = None,
    test: Activations | None = None,
    control: Activations | Any | None = None,
    layers: Sequence[str | int] | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
    **evaluate_kw: Any,
) -> SweepResult:
    """Fit one probe per layer on ``train``; pick the layer with the best ``val`` AUROC.

    The choice never looks at ``test``: when ``test`` is given, every layer is evaluated on it afterwards
    (with ``control`` and ``evaluate_kw`` passed to :func:`evaluate`) so the table shows how much the
    validation pick costs against the test-best layer — a number to report, not to select on.
    """
    sites = _sites(train, layers)
    if not sites:
        raise ValueError("layer_sweep: no layers to sweep.")
    fitted = _fit_all(train, sites, probe, probe_params)
    y_val, val_groups = np.asarray(val.labels), _fit_groups(val)
    table: list[dict[str, Any]] = []
    reports: dict[str, EvalReport] = {}
    for site in sites:
        scores = fitted[site].decision_function(val[site])
        value, (lo, hi) = with_ci(auroc, y_val, scores, val_groups, n_bootstrap=n_bootstrap, seed=seed)
        row: dict[str, Any] = {"layer": site, "val_auroc": value, "val_auroc_lo": lo, "val_auroc_hi": hi}
        if test is not None:
            report = evaluate(
                fitted[site], test, control, layer=site, n_bootstrap=n_bootstrap, seed=seed, **evaluate_kw
            )
            reports[site] = report
            row.update(
                test_auroc=report.auroc,
                test_auroc_lo=report.auroc_ci[0],
                test_auroc_hi=report.auroc_ci[1],
                recall_at_fpr=report.recall_at_fpr,
                target_fpr=report.target_fpr,
                empirical_fpr=report.empirical_fpr,
            )
        table.append(row)
    val_aurocs = np.array([row["val_auroc"] for row in table], dtype=np.float64)
    if not np.isfinite(val_aurocs).any():
        raise ValueError(
            "layer_sweep: validation AUROC is undefined at every layer (val needs both classes)."
        )
    best = sites[int(np.nanargmax(val_aurocs))]  # ties -> the earliest layer
    kind = probe if isinstance(probe, str) else probe_kind(fitted[sites[0]])
    return SweepResult(best_layer=best, table=table, probes=fitted, reports=reports, probe_kind=kind)


@dataclass
class GeneralizationResult:
    """``auroc[i][j]``: probe trained on ``names[i]``'s train split, evaluated on ``names[j]``'s test split."""

    names: list[str]
    layer: str
    auroc: list[list[float]]
    auroc_ci: list[list[tuple[float, float]]]
    probes: dict[str, Any] = field(repr=False, default_factory=dict)
    probe_kind: str = "probe"

    def to_dict(self) -> dict[str, Any]:
        return {
            "names": self.names,
            "layer": self.layer,
            "probe_kind": self.probe_kind,
            "rows": "trained on",
            "columns": "evaluated on",
            "auroc": [[_json_safe(v) for v in row] for row in self.auroc],
            "auroc_ci": [[[_json_safe(v) for v in ci] for ci in row] for row in self.auroc_ci],
        }

    def plot(self, path: str | Path) -> Path:
        from probes.evaluation.plots import generalization_heatmap

        return generalization_heatmap(
            self.auroc, self.names, path, title=f"Generalisation AUROC · {self.probe_kind} · {self.layer}"
        )

    def __rich__(self) -> Any:
        from rich.table import Table

        table = Table(title=f"Generalisation AUROC · {self.probe_kind} · {self.layer} (rows: trained on)")
        table.add_column("train \\ eval")
        for name in self.names:
            table.add_column(name, justify="right")
        for i, name in enumerate(self.names):
            cells = []
            for j in range(len(self.names)):
                text = _fmt(self.auroc[i][j])
                cells.append(f"[bold]{text}[/bold]" if i == j else text)
            table.add_row(name, *cells)
        return table


def generalization_matrix(
    datasets: Mapping[str, tuple[Activations, Activations]],
    *,
    layer: str | int,
    probe: ProbeSpec = "logistic",
    probe_params: Mapping[str, Any] | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> GeneralizationResult:
    """Train on each dataset's train split, evaluate AUROC on every dataset's test split.

    The diagonal is in-distribution performance; off-diagonal cells answer whether the probe reads the
    same internal state across datasets (topics, framings) rather than each dataset's surface features.
    All datasets must be collected at ``layer`` from the same model.
    """
    names = list(datasets)
    if not names:
        raise ValueError("generalization_matrix: no datasets given.")
    fitted: dict[str, Any] = {}
    for name in names:
        train, _ = datasets[name]
        site = resolve_site(train, layer, f"{name} train")
        fitted[name] = build_probe(probe, probe_params).fit(
            train.features[site], np.asarray(train.labels), groups=_fit_groups(train)
        )
    matrix: list[list[float]] = []
    cis: list[list[tuple[float, float]]] = []
    for name in names:
        row, row_ci = [], []
        for other in names:
            _, test = datasets[other]
            site = resolve_site(test, layer, f"{other} test")
            scores = fitted[name].decision_function(test.features[site])
            value, ci = with_ci(
                auroc, np.asarray(test.labels), scores, _fit_groups(test), n_bootstrap=n_bootstrap, seed=seed
            )
            row.append(value)
            row_ci.append(ci)
        matrix.append(row)
        cis.append(row_ci)
    site_name = f"layers.{layer}" if isinstance(layer, int) else str(layer)
    kind = probe if isinstance(probe, str) else probe_kind(fitted[names[0]])
    return GeneralizationResult(
        names=names, layer=site_name, auroc=matrix, auroc_ci=cis, probes=fitted, probe_kind=kind
    )
