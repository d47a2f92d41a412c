"""``probes.run(config)``: the whole experiment in one call. After ``_prepare`` (data, splits, model,
activations) and the validation-chosen layer sweep, it evaluates the chosen probe on test with the control set
(thresholds at the target FPRs, calibration fitted on validation), adds the text-only and length/position
baselines, scores each
eval set, optionally builds the generalisation matrix, writes the run folder, and only then logs to MLflow, so
an unreachable tracking server never loses results.
"""

from __future__ import annotations

import contextlib
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from probes.config import RunConfig
from probes.errors import DatasetError
from probes.pipeline.outputs import (
    _datasets_info,
    _new_run_dir,
    _publish_run_dir,
    _report_dict,
    _save_bundle,
    _thresholds_from_report,
    _token_html,
    _write_json,
)
from probes.pipeline.prepare import _prepare, _Prepared, _rows_of, _two_class, control_for_evaluate
from probes.pipeline.results import LogReporter, Reporter, RunResult, _fmt, _timed
from probes.pipeline.sweep import _site_index, select
from probes.pipeline.thresholds import set_thresholds

if TYPE_CHECKING:  # pragma: no cover
    from probes.collection import Activations
    from probes.data import ContrastDataset
    from probes.track import TrackingOutcome


def run(config: RunConfig, *, reporter: Reporter | None = None) -> RunResult:
    """Run the whole experiment described by ``config`` (see the package docstring); returns a RunResult.

    Local outputs are always written before tracking starts, so an unreachable MLflow server never loses
    results (``tracking.on_error: fail`` then raises :class:`probes.errors.TrackingError` afterwards).
    """
    from probes.config import check_stage_models
    from probes.evaluation import evaluate
    from probes.pipeline.second_opinions import second_opinions

    reporter = reporter or LogReporter()
    if config.task == "regress":  # its own path, built from public functions
        from probes.pipeline.regress import run_regression

        return run_regression(config, reporter=reporter)  # type: ignore[return-value]
    check_stage_models(config.stages, config.source or "config")  # before anything is collected
    prep = _prepare(config, reporter)
    timings = prep.timings
    ev = config.evaluation

    with _timed(timings, "sweep"):  # (the sweep reports a stage per grid point itself)
        chosen = select(prep, reporter)
    sweep, params, sweep_rows = chosen.sweep, chosen.params, chosen.rows
    site, probe = chosen.site, chosen.probe
    reporter.info(f"chosen on validation: {site} (val AUROC {_fmt(chosen.val_auroc)})")

    with _timed(timings, "evaluate", reporter, f"Evaluating {site} on test, control and eval sets"):
        baselines = (
            _baselines(prep.splits["train"], prep.splits["test"], config, same_source=True)
            if ev.text_baselines
            else {}
        )
        lengths = _LengthBaseline(prep) if ev.length_baseline else None
        if lengths is not None:
            baselines.update(lengths.fit_and_score(prep.splits["test"], same_source=True))
        calibrate = None if ev.calibration == "none" else ev.calibration
        common = {
            "layer": site,
            "target_fpr": list(ev.target_fprs),
            "calibration": prep.acts["val"] if calibrate else None,
            "calibrate": calibrate,
            "n_bootstrap": ev.bootstrap,
            "seed": config.seed,
        }
        test_report = evaluate(
            probe,
            prep.acts["test"],
            control_for_evaluate(prep),
            text_baseline=_baseline_results(baselines),
            name=prep.train_ds.name,
            **common,
        )
        if "length" in baselines:
            test_report.add_length_baseline(baselines["length"])
        evals: dict[str, Any] = {}
        for name, ds in prep.eval_ds.items():
            acts = prep.acts[f"eval.{name}"]
            if not _two_class(ds):
                evals[name] = _flag_rate(probe, acts, site, test_report.threshold)
                continue
            eb = _baselines(prep.splits["train"], ds, config, same_source=False) if ev.text_baselines else {}
            evals[name] = evaluate(
                probe,
                acts,
                control_for_evaluate(prep),
                text_baseline=_baseline_results(eb),
                name=name,
                **common,
            )
            if lengths is not None:
                lb = lengths.fit_and_score(ds, same_source=False)
                if "length" in lb:
                    evals[name].add_length_baseline(lb["length"])
                elif "length_error" in lb:
                    evals[name].warnings.append(f"length baseline: {lb['length_error']}")

    extra = second_opinions(prep, probe, site, reporter)  # detectors: and stages:, when configured

    generalization = None
    warns = list(prep.warnings)
    if ev.generalization_matrix:
        with _timed(timings, "generalization", reporter, "Generalisation matrix"):
            generalization, note = _generalization(prep, site, params)
            if note:
                warns.append(note)

    with _timed(timings, "write", reporter, "Writing outputs"):
        run_dir = _new_run_dir(config)
        bundle_dir = _save_bundle(
            prep,
            probe,
            site,
            run_dir,
            # One function sets thresholds for run and train alike; without a control set the report's
            # (from test negatives, flagged as such) are all there is.
            set_thresholds(probe, prep, site)
            if prep.control_ds is not None
            else _thresholds_from_report(test_report, prep.control_ds),
            test_report.calibrator,
            {"test_auroc": test_report.auroc, "probe_params": params},
        )
        if prep.control_ds is not None:
            bundle_dir = extra.add_to_bundle(bundle_dir, prep.control_ds.name, config.primary_pooling)
        if ev.plots:
            plots = run_dir / "plots"
            plots.mkdir()
            sweep.plot(plots / "layer_sweep.png")
            test_report.plots(plots)
            for rep in evals.values():
                if not isinstance(rep, dict):
                    rep.plots(plots)
            if generalization is not None:
                generalization.plot(plots / "generalization.png")
            extra.plots(plots)
        if config.primary_pooling == "tokens":
            with contextlib.suppress(Exception):  # a visual aid: never fail a finished run over it
                _token_html(prep, probe, site, run_dir / "tokens.html", test_report.threshold)
        warns += [f"test: {w}" for w in test_report.warnings]
        result = RunResult(
            config=config,
            run_dir=run_dir,
            layer=site,
            probe_params=params,
            sweep=sweep_rows,
            test=test_report,
            evals=evals,
            baselines=baselines,
            generalization=generalization,
            bundle_dir=bundle_dir,
            warnings=warns,
            timings=timings,
            datasets=_datasets_info(prep),
            second_opinions=extra,
        )
        _write_json(run_dir / "report.json", {**_report_dict(result, prep), **extra.report()})
        result.run_dir = run_dir = _publish_run_dir(run_dir)
        result.bundle_dir = run_dir / bundle_dir.name

    with _timed(timings, "track", reporter if config.tracking.enabled else None, "Logging to MLflow"):
        result.tracking = track_run(
            config,
            prep,
            run_dir=run_dir,
            bundle_dir=result.bundle_dir,
            layer=site,
            sweep_rows=sweep_rows,
            metrics=run_metrics(result),
        )
    if config.tracking.enabled and not result.tracking.tracked:
        reporter.warn(result.tracking.message)
    return result


def run_metrics(result: RunResult) -> dict[str, float]:
    """The chosen layer's numbers under MLflow's grouped names: ``test/auroc``,
    ``test/recall_at_fpr/0.01``, ``eval/<set>/auroc``, ``eval/<set>/flag_rate``, ``test/baseline/text/auroc``."""
    metrics = {f"test/{k}": v for k, v in result.test.grouped_metrics().items()}
    for name, rep in result.evals.items():
        key = re.sub(r"[^A-Za-z0-9_.\-]", "_", name)
        if isinstance(rep, dict):
            metrics[f"eval/{key}/flag_rate"] = rep["flag_rate"]
        else:
            metrics.update({f"eval/{key}/{k}": v for k, v in rep.grouped_metrics().items()})
    for key in ("text", "span", "length"):
        b = result.baselines.get(key)
        if b is not None:
            metrics[f"test/baseline/{key}/auroc"] = b.auroc
    extra = getattr(result, "second_opinions", None)
    if extra is not None:  # detectors: and stages:, grouped as detector/<name>/... and cascade/...
        for d in extra.detectors:
            key = re.sub(r"[^A-Za-z0-9_.\-]", "_", d.config.name)
            metrics.update({f"detector/{key}/{k}": v for k, v in d.report.metrics().items()})
        metrics.update(
            {
                f"cascade/{k[len('cascade_') :]}": v
                for k, v in extra.metrics().items()
                if k.startswith("cascade_")
            }
        )
    return {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}


def _generalization(prep: _Prepared, site: str, params: dict[str, Any]) -> tuple[Any, str | None]:
    """Train-on-one, test-on-another AUROCs over the training set and each two-class eval set (70/30 split).

    Returns (matrix or None, a note when it had to be skipped).
    """
    from probes.evaluation import generalization_matrix

    config = prep.config
    datasets = {prep.train_ds.name: (prep.acts["train"], prep.acts["test"])}
    for name, ds in prep.eval_ds.items():
        if not _two_class(ds):
            continue
        try:
            parts = ds.split({"train": 0.7, "test": 0.3}, seed=config.seed, use_column=False)
        except (ValueError, DatasetError):
            continue
        if not all(_two_class(p) for p in parts.values()):
            continue
        acts = prep.acts[f"eval.{name}"]
        datasets[name] = (_rows_of(acts, ds, parts["train"]), _rows_of(acts, ds, parts["test"]))
    if len(datasets) < 2:
        return None, "generalization_matrix needs at least one labelled (two-class) eval dataset; skipped."
    return (
        generalization_matrix(
            datasets,
            layer=site,
            probe=config.probe.kind,
            probe_params=params,
            n_bootstrap=config.evaluation.bootstrap,
            seed=config.seed,
        ),
        None,
    )


def _baselines(
    train: ContrastDataset, test: ContrastDataset, config: RunConfig, *, same_source: bool
) -> dict[str, Any]:
    """TF-IDF baselines on the full text and on the detected span; failures become notes, not crashes."""
    from probes.evaluation import text_baseline

    out: dict[str, Any] = {}
    groups = (
        {"train_groups": train.groups, "test_groups": test.groups}
        if same_source
        else {"test_groups": test.groups}
    )
    pairs = [("text", train.texts, test.texts)]
    if config.data.target != "all":
        pairs.append(("span", train.target_texts, test.target_texts))
    for key, tr, te in pairs:
        try:
            out[key] = text_baseline(
                tr,
                train.labels,
                te,
                test.labels,
                n_bootstrap=config.evaluation.bootstrap,
                seed=config.seed,
                **groups,
            )
        except ValueError as exc:  # e.g. an empty vocabulary
            out[f"{key}_error"] = str(exc)
    return out


class _LengthBaseline:
    """The length/position baseline: token counts of each row, encoded exactly as collection encodes them
    (same tokenizer, ``max_length`` and chat template); the train split is encoded once and reused for
    every set it is scored on."""

    def __init__(self, prep: _Prepared) -> None:
        self._prep = prep
        self._train = prep.splits["train"]
        self._model: tuple[Any, Any, Any] | None = None  # (train features, labels, groups)

    def _features(self, ds: ContrastDataset) -> Any:
        import warnings

        from probes.data import encode_dataset
        from probes.evaluation import length_features

        config = self._prep.config
        with warnings.catch_warnings():  # collection already warned about targets cut by max_length
            warnings.simplefilter("ignore", UserWarning)
            encoded = encode_dataset(
                ds,
                self._prep.tokenizer,
                max_length=config.data.max_length,
                max_chars=config.data.max_chars,
                chat_template=config.data.chat_template,
            )
        return length_features(encoded)

    def fit_and_score(self, test: ContrastDataset, *, same_source: bool) -> dict[str, Any]:
        """``{"length": BaselineResult}`` on ``test``, or ``{"length_error": why}``; never raises ValueError."""
        from probes.evaluation import length_baseline

        config = self._prep.config
        try:
            if self._model is None:
                self._model = (self._features(self._train), self._train.labels, self._train.groups)
            X_train, y_train, g_train = self._model
            result = length_baseline(
                X_train,
                y_train,
                self._features(test),
                test.labels,
                train_groups=g_train if same_source else None,
                test_groups=test.groups,
                n_bootstrap=config.evaluation.bootstrap,
                seed=config.seed,
            )
        except ValueError as exc:  # e.g. a train split with one class
            return {"length_error": str(exc)}
        return {"length": result}


def _baseline_results(baselines: dict[str, Any]) -> dict[str, Any] | None:
    """The baseline results evaluate takes (``text``/``span``), without the notes of ones that failed."""
    return {k: v for k, v in baselines.items() if k in ("text", "span")} or None


def _flag_rate(probe: Any, acts: Activations, site: str, threshold: float) -> dict[str, Any]:
    """What a single-class eval set can report: how often the probe flags it at the test threshold."""
    import numpy as np

    scores = probe.decision_function(acts[site])
    labels = set(np.asarray(acts.labels).tolist())
    return {
        "n": len(acts),
        "labels": sorted(labels),
        "threshold": threshold,
        "flag_rate": float(np.mean(scores > threshold)) if math.isfinite(threshold) else 0.0,
        "note": "single-class set: AUROC is undefined; flag_rate is the FPR (benign) or recall (positive)",
    }


def track_run(
    config: RunConfig,
    prep: _Prepared,
    *,
    run_dir: Path,
    bundle_dir: Path | None,
    layer: str,
    sweep_rows: list[dict[str, Any]],
    metrics: dict[str, float],
) -> TrackingOutcome:
    """Log a finished ``probes run`` or ``probes train`` to MLflow and write its ``tracking.json`` (always:
    also when tracking is disabled, unreachable or fails with ``on_error: fail``).

    Params are the flattened config; ``sweep/val_auroc`` (``/lo``, ``/hi``) and ``sweep/test_auroc`` are step
    series over the layer index; every dataset is an MLflow input with its fingerprint.
    """
    from probes._version import __version__
    from probes.track import git_commit, log_run, not_tracked_outcome, write_outcome

    t = config.tracking
    if not t.enabled:
        outcome = not_tracked_outcome("tracking.enabled is false: the run was not logged to MLflow.")
        write_outcome(run_dir / "tracking.json", outcome)
        return outcome
    n_layers = int(prep.fingerprint.get("num_layers") or 0)
    layer_metrics = []
    for row in sweep_rows:
        values = {
            "sweep/val_auroc": row.get("val_auroc"),
            "sweep/val_auroc/lo": row.get("val_auroc_lo"),
            "sweep/val_auroc/hi": row.get("val_auroc_hi"),
            "sweep/test_auroc": row.get("test_auroc"),
        }
        layer_metrics.append((_site_index(row["layer"], n_layers), values))
    metrics = {**metrics, "sweep/chosen_layer_index": _site_index(layer, n_layers)}
    fp = prep.fingerprint
    tags = {
        "probes.version": __version__,
        "probes.git_commit": git_commit(),
        "probes.config": config.source,
        "probes.overrides": " ".join(config.overrides) or None,
        "probes.model": config.model.name_or_path,
        "probes.model_path": fp.get("name"),
        "probes.model_revision": config.model.revision,
        "probes.model_weight_hash": fp.get("weight_hash"),
        "probes.model_architecture": fp.get("architecture"),
        "probes.layer": layer,
        "probes.probe_kind": config.probe.kind,
        "probes.reproducible": "false" if prep.warnings else "true",
    }
    datasets = _datasets_info(prep)
    for role, info in datasets.items():
        tags[f"probes.dataset.{role}.fingerprint"] = info["fingerprint"]
        tags[f"probes.dataset.{role}.name"] = info["name"]
    tags.update(t.tags)
    params = dict(config.flat())
    params["overrides"] = " ".join(config.overrides) or "none"
    params["chosen_layer"] = layer
    first = prep.acts["test"][layer]
    # Token probes take ragged input (a list of (tokens, d) arrays): no flat example to infer a signature from.
    example = None if hasattr(first, "offsets") else first[:5].float().cpu().numpy()
    return log_run(
        run_name=run_dir.name,
        experiment=t.experiment,
        tracking_uri=t.tracking_uri,
        params=params,
        layer_metrics=layer_metrics,
        metrics=metrics,
        tags=tags,
        run_dir=run_dir,
        bundle_dir=bundle_dir,
        example_features=example,
        log_model=t.log_model,
        on_error=t.on_error,
        datasets=datasets,
        register_as=t.register_as,
        outcome_path=run_dir / "tracking.json",
    )
