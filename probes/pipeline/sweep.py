"""Choosing the probe: every probe-parameter grid point is fitted at every site on the training split, and the
(site, grid point) with the best validation AUROC wins. Test AUROC per site is reported beside it but never
used to choose. Also the check that a config's probe parameters are ones its probe kind accepts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from probes.errors import ConfigError
from probes.pipeline.prepare import _Prepared
from probes.pipeline.results import Reporter


def _probe_params(kind: str, params: dict[str, Any], seed: int) -> dict[str, Any]:
    """The candidate's params, seeded with the run's seed when the probe takes one and none was given."""
    import inspect

    import probes.train  # noqa: F401  (registers the built-in probe kinds)
    from probes.train import PROBE_REGISTRY

    if kind not in PROBE_REGISTRY:
        raise ConfigError(
            f"probe.kind: unknown probe kind {kind!r}; known: {', '.join(sorted(PROBE_REGISTRY))}."
        )
    accepted = inspect.signature(PROBE_REGISTRY[kind][0].__init__).parameters
    unknown = [
        k for k in params if k not in accepted and not any(p.kind == p.VAR_KEYWORD for p in accepted.values())
    ]
    if unknown:
        names = [n for n in accepted if n != "self"]
        raise ConfigError(
            f"probe.params: {kind} probes take no parameter(s) {unknown}; they take: {', '.join(names)}."
        )
    out = dict(params)
    if "seed" in accepted and "seed" not in out:
        out["seed"] = seed
    return out


def _sweep(prep: _Prepared, reporter: Reporter) -> tuple[Any, dict[str, Any], list[dict[str, Any]]]:
    """Fit every (grid point, layer) on train; keep the best by validation AUROC. Returns (sweep, params, rows)."""
    from probes.evaluation import auroc, layer_sweep

    config = prep.config
    best: tuple[float, Any, dict[str, Any]] | None = None
    candidates = config.probe.candidates()
    for i, params in enumerate(candidates):
        full_params = _probe_params(config.probe.kind, params, config.seed)
        label = f" grid point {i + 1}/{len(candidates)} {params}" if len(candidates) > 1 else ""
        with reporter.stage(f"Layer sweep{label}: {config.probe.kind} probe at {len(prep.sites)} sites"):
            sw = layer_sweep(
                prep.acts["train"],
                prep.acts["val"],
                probe=config.probe.kind,
                probe_params=full_params,
                layers=prep.sites,
                n_bootstrap=config.evaluation.bootstrap,
                seed=config.seed,
            )
        score = max(row["val_auroc"] for row in sw.table if row["val_auroc"] == row["val_auroc"])
        if best is None or score > best[0]:
            best = (score, sw, full_params)
    assert best is not None  # candidates() always yields at least one
    _, sweep, params = best
    rows = [dict(row) for row in sweep.table]
    # Test AUROC per layer is reported (never used to choose): how much the validation pick costs.
    y_test = prep.acts["test"].labels
    for row in rows:
        row["test_auroc"] = float(
            auroc(y_test, sweep.probes[row["layer"]].decision_function(prep.acts["test"][row["layer"]]))
        )
    return sweep, params, rows


def _site_index(site: str, n_layers: int) -> int:
    """A site's position in depth (``final_norm`` after the last block), for per-layer metric steps."""
    from probes.models.site_names import parse_site

    return parse_site(site, n_layers).index


@dataclass
class Selection:
    """The hand-off of the choosing stage: the probe fitted at the site validation chose, and why."""

    site: str
    probe: Any
    params: dict[str, Any]
    sweep: Any  # the LayerSweep of the winning grid point (its plot, every site's probe)
    rows: list[dict[str, Any]]  # one row per site: val AUROC [CI], test AUROC (reported, never used)

    @property
    def val_auroc(self) -> float:
        return float(next(r["val_auroc"] for r in self.rows if r["layer"] == self.site))


def select(prep: _Prepared, reporter: Reporter) -> Selection:
    """Stage 2: fit every (grid point, site) on train and keep the best by validation AUROC."""
    sweep, params, rows = _sweep(prep, reporter)
    site = sweep.best_layer
    return Selection(site=site, probe=sweep.probes[site], params=params, sweep=sweep, rows=rows)
