"""``task: regress`` runs: read a quantity off activations with a regression probe.

load the dataset (``kind: regress``: rows carry a numeric ``target_value``) -> grouped train/val/test split ->
collect every requested site once (cached) -> fit a ``ridge`` or ``sparse`` probe per site -> choose the site
by validation R² -> evaluate on test (R² and Pearson r with grouped bootstrap CIs, how many coordinates
carry the signal) -> ``report.json``, a layer sweep, a predicted-vs-true plot and the probe file in the run
folder -> MLflow. Built from public functions only; :func:`probes.pipeline.run` sends ``task: regress`` here.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from probes.config import RunConfig
from probes.errors import ConfigError


@dataclass
class RegressionRunResult:
    """What a ``task: regress`` run produced."""

    config: RunConfig
    run_dir: Path
    layer: str
    target: str
    sweep: list[dict[str, Any]]
    test: Any  # RegressionReport
    probe_path: Path
    timings: dict[str, float] = field(default_factory=dict)
    tracking: Any = None

    def summary(self) -> dict[str, Any]:
        return {
            "task": "regress",
            "run_dir": str(self.run_dir),
            "layer": self.layer,
            "target": self.target,
            "test": self.test.as_dict(),
            "sweep": self.sweep,
            "probe": str(self.probe_path),
            "timings": self.timings,
        }

    def table(self) -> str:
        lines = [f"Regression sweep for {self.target!r} (chosen on validation R²: {self.layer})"]
        lines.append(f" {'layer':<12} {'val R²':>8} {'coords':>7}")
        for row in self.sweep:
            mark = " *" if row["layer"] == self.layer else ""
            lines.append(f" {row['layer']:<12} {row['val_r2']:>8.3f} {row['n_coordinates']:>7}{mark}")
        return "\n".join(lines) + "\n\nTest set\n" + str(self.test)


def _check(config: RunConfig) -> tuple[Any, str, dict[str, Any]]:
    """The dataset, the target name and the train/val/test split of a ``task: regress`` config, checked."""
    from probes.train import REGRESSION_KINDS

    kind = config.probe.kind
    if kind not in REGRESSION_KINDS:
        raise ConfigError(
            f"task: regress needs a regression probe: probe.kind must be one of {sorted(REGRESSION_KINDS)}, "
            f"not {kind!r}."
        )
    cls, defaults = REGRESSION_KINDS[kind]
    for params in config.probe.candidates():
        try:
            cls(**{**defaults, **params})
        except TypeError as exc:
            raise ConfigError(f"probe.params do not fit probe kind {kind!r}: {exc}") from exc
    ds = _load_regress(config)
    names = ds.value_names
    target = config.target_value or (names[0] if len(names) == 1 else None)
    if target is None or target not in names:
        raise ConfigError(
            f"task: regress: set target_value to one of the dataset's values {names} (got {config.target_value!r})."
        )
    s = config.data.splits
    parts = ds.split(
        {"train": s.train, "val": s.val, "test": s.test},
        seed=config.seed,
        holdout=s.holdout or None,
        use_column=False,
    )
    return ds, target, parts


def validate_regression(config: RunConfig) -> list[str]:
    """``probes validate`` for a ``task: regress`` config: dataset, target, splits and probe, no model."""
    ds, target, parts = _check(config)
    values = ds.target_values(target)
    return [
        f"train   {ds.name}: {len(ds)} rows, target_value {target!r} in [{values.min():.4g}, {values.max():.4g}], "
        f"fingerprint {ds.fingerprint()[:12]}",
        "        splits: " + ", ".join(f"{k} {len(v)}" for k, v in parts.items()),
        f"probe   {config.probe.kind} (task: regress)",
        f"model   {config.model.name_or_path}",
    ]


def run_regression(config: RunConfig, *, reporter: Any = None) -> RegressionRunResult:
    """Run a ``task: regress`` config end to end (see the module docstring)."""
    from probes.collection import collect
    from probes.config import resolve_model_path
    from probes.evaluation import evaluate_regression
    from probes.evaluation.regression import r2
    from probes.models import load_model, model_fingerprint
    from probes.models.sites import num_layers
    from probes.pipeline.results import LogReporter
    from probes.train import REGRESSION_KINDS, save_probe

    reporter = reporter or LogReporter()
    timings: dict[str, float] = {}
    kind = config.probe.kind
    t0 = time.perf_counter()
    with reporter.stage("Loading the dataset"):
        ds, target, parts = _check(config)
    cls, defaults = REGRESSION_KINDS[kind]
    with reporter.stage(f"Loading {config.model.name_or_path}"):
        m = config.model
        model, tokenizer = load_model(
            resolve_model_path(m.name_or_path),
            dtype=m.dtype,
            device=m.device,
            revision=m.revision,
            layers_attr=m.layers_attr,
        )
        sites = config.layer_sites(num_layers(model))
    timings["load"] = round(time.perf_counter() - t0, 3)

    t0 = time.perf_counter()
    acts = {}
    for name, part in parts.items():
        with reporter.stage(f"Collecting {name} ({len(part)} rows, {len(sites)} sites)"):
            acts[name] = collect(
                model,
                tokenizer,
                part,
                sites,
                config.pooling,
                batch_size=config.batch_size,
                max_tokens=config.max_tokens,
                packing=config.packing,
                shard_rows=config.shard_rows,
                max_length=config.data.max_length,
                cache_dir=config.cache_dir,
                progress=False,
            )
    timings["collect"] = round(time.perf_counter() - t0, 3)

    t0 = time.perf_counter()
    sweep, fitted = [], {}
    y_train, y_val = acts["train"].values[target], acts["val"].values[target]
    with reporter.stage(f"Fitting a {kind} probe at {len(sites)} sites"):
        for site in sites:
            probe = cls(**{**defaults, **config.probe.params}).fit(
                acts["train"][site], y_train, groups=acts["train"].groups
            )
            fitted[site] = probe
            sweep.append(
                {
                    "layer": site,
                    "val_r2": r2(y_val, probe.predict(acts["val"][site])),
                    "n_coordinates": probe.n_nonzero_,
                }
            )
    best = max(sweep, key=lambda r: np.nan_to_num(r["val_r2"], nan=-np.inf))["layer"]
    timings["sweep"] = round(time.perf_counter() - t0, 3)
    reporter.info(f"chosen on validation: {best}")
    report = evaluate_regression(
        fitted[best],
        acts["test"],
        layer=best,
        target=target,
        n_bootstrap=config.evaluation.bootstrap,
        seed=config.seed,
    )

    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = Path(config.output_dir) / f"{config.run_name}-{stamp}"
    n = 1
    while run_dir.exists():
        n += 1
        run_dir = Path(config.output_dir) / f"{config.run_name}-{stamp}-{n}"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(config.to_yaml())
    probe_path = save_probe(fitted[best], run_dir / "probe.safetensors")
    if config.evaluation.plots:
        plots = run_dir / "plots"
        report.plots(plots)
        _sweep_plot(sweep, plots / "layer_sweep.png", target)
    result = RegressionRunResult(config, run_dir, best, target, sweep, report, probe_path, timings)
    data = {**result.summary(), "model": model_fingerprint(model), "dataset": ds.fingerprint()}
    (run_dir / "report.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
    if config.tracking.enabled:
        with reporter.stage("Logging to MLflow"):
            result.tracking = _track(result, config)
        if not result.tracking.tracked:
            reporter.warn(result.tracking.message)
    else:
        from probes.track import not_tracked_outcome, write_outcome

        result.tracking = not_tracked_outcome("tracking.enabled is false: the run was not logged to MLflow.")
        write_outcome(run_dir / "tracking.json", result.tracking)
    return result


def _load_regress(config: RunConfig) -> Any:
    """The training dataset read as ``kind: regress`` (label optional, target_value required in every row)."""
    import dataclasses

    from probes.data import ContrastDataset, load_dataset

    spec = config.data.train
    kwargs = {**spec.load_kwargs(), "kind": "regress"}
    parts = [load_dataset(p.removeprefix("hf:"), hf_split=spec.hf_split, **kwargs) for p in spec.paths]
    ds = parts[0]
    if len(parts) > 1:
        ds = ContrastDataset(
            [ex for d in parts for ex in d], ds.card, source=" + ".join(d.source for d in parts)
        )
    if spec.where:
        where = spec.where
        ds = ds.filter(lambda ex: all(ex.conditions.get(k) in set(v) for k, v in where.items()))
    if config.data.target == "all":
        ds = ContrastDataset([dataclasses.replace(ex, target=None) for ex in ds], ds.card, source=ds.source)
    if spec.limit is not None and spec.limit < len(ds):
        frac = spec.limit / len(ds)
        ds = ds.split({"keep": frac, "rest": 1.0 - frac}, seed=config.seed, use_column=False)["keep"]
    return ds


def _sweep_plot(sweep: list[dict[str, Any]], path: Path, target: str) -> Path:
    from probes.evaluation.plots import new_figure as _figure
    from probes.evaluation.plots import save_figure as _save

    fig = _figure(figsize=(6, 3.4))
    ax = fig.subplots()
    ax.plot(range(len(sweep)), [r["val_r2"] for r in sweep], marker="o")
    ax.set_xticks(range(len(sweep)), [r["layer"] for r in sweep], rotation=45, fontsize=7)
    ax.set_ylabel("validation R²")
    ax.set_title(f"{target}: R² by site")
    return _save(fig, path)


def _track(result: RegressionRunResult, config: RunConfig) -> Any:
    """Log params, the per-site sweep (``sweep/val_r2`` step series), ``test/r2`` ... and the run folder to
    MLflow through :func:`probes.track.log_run` (grouped keys, ``tracking.json`` in every case)."""
    from probes.track import log_run

    t = result.test
    metrics = {
        "test/r2": t.r2,
        "test/pearson_r": t.pearson_r,
        "test/rmse": t.rmse,
        "test/n_coordinates": float(t.n_coordinates or 0),
    }
    return log_run(
        run_name=result.run_dir.name,
        experiment=config.tracking.experiment,
        tracking_uri=config.tracking.tracking_uri,
        params=dict(config.flat()),
        layer_metrics=[
            (i, {"sweep/val_r2": float(np.nan_to_num(row["val_r2"]))}) for i, row in enumerate(result.sweep)
        ],
        metrics={k: float(v) for k, v in metrics.items() if v is not None and np.isfinite(float(v))},
        tags={"probes.task": "regress", **config.tracking.tags},
        run_dir=result.run_dir,
        log_model=False,
        on_error=config.tracking.on_error,
        outcome_path=result.run_dir / "tracking.json",
    )
