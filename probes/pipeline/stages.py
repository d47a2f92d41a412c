"""The stages behind ``probes collect``, ``probes train`` and ``probes evaluate``, and the model-free checks
behind ``probes validate``. ``collect_stage`` and ``train_stage`` reuse the run's preparation and layer sweep;
``evaluate_run`` scores a new dataset with the bundle a finished run saved, at the bundle's own threshold.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from probes.config import DatasetSpec, RunConfig, load_config, resolve_model_path
from probes.errors import ConfigError, DatasetError
from probes.pipeline.outputs import (
    _dataset_info,
    _new_run_dir,
    _publish_run_dir,
    _save_bundle,
    _slug,
    _write_json,
)
from probes.pipeline.prepare import (
    CONTROL_SET,
    _collect,
    _load_all_datasets,
    _load_model,
    _prepare,
    _two_class,
    load_spec,
    reproducibility_warnings,
    split_train,
)
from probes.pipeline.results import EvaluateResult, LogReporter, Reporter, TrainResult
from probes.pipeline.runner import track_run
from probes.pipeline.sweep import _probe_params, select
from probes.pipeline.thresholds import set_thresholds

if TYPE_CHECKING:  # pragma: no cover
    from probes.collection import Activations
    from probes.data import ContrastDataset


def collect_stage(config: RunConfig, *, reporter: Reporter | None = None) -> list[dict[str, Any]]:
    """Collect (and cache) every dataset's activations; returns one summary row per dataset."""
    prep = _prepare(config, reporter or LogReporter())
    return prep.collected


def train_stage(config: RunConfig, *, reporter: Reporter | None = None) -> TrainResult:
    """Collect, sweep, choose the layer on validation, save the bundle (thresholds set by
    :func:`set_thresholds`, exactly as ``probes run`` sets them) and track it like a run."""
    reporter = reporter or LogReporter()
    prep = _prepare(config, reporter)
    chosen = select(prep, reporter)
    site, probe, params, rows = chosen.site, chosen.probe, chosen.params, chosen.rows
    thresholds = set_thresholds(probe, prep, site, reporter)
    from probes.pipeline.detectors import add_detectors_to_bundle, fit_detectors

    detectors = fit_detectors(prep, site, reporter)  # detectors: go in the bundle beside the probe
    run_dir = _new_run_dir(config)
    bundle_dir = _save_bundle(prep, probe, site, run_dir, thresholds, None, {"probe_params": params})
    if prep.control_ds is not None:
        bundle_dir = add_detectors_to_bundle(
            bundle_dir, detectors, prep.control_ds.name, config.primary_pooling
        )
    _write_json(
        run_dir / "sweep.json", {"chosen_layer": site, "selected_on": "validation AUROC", "sweep": rows}
    )
    run_dir = _publish_run_dir(run_dir)
    bundle_dir = run_dir / bundle_dir.name
    result = TrainResult(
        run_dir=run_dir,
        bundle_dir=bundle_dir,
        layer=site,
        probe_params=params,
        sweep=rows,
        thresholds=thresholds,
    )
    with reporter.stage("Logging to MLflow") if config.tracking.enabled else contextlib.nullcontext():
        result.tracking = track_run(
            config, prep, run_dir=run_dir, bundle_dir=bundle_dir, layer=site, sweep_rows=rows, metrics={}
        )
    if config.tracking.enabled and not result.tracking.tracked:
        reporter.warn(result.tracking.message)
    return result


def evaluate_run(
    run_dir: str | Path,
    data: str | Path,
    *,
    control: str | Path | None = None,
    benign: Sequence[str | Path] = (),
    limit: int | None = None,
    device: str | None = None,
    reporter: Reporter | None = None,
) -> EvaluateResult:
    """Score ``data`` (and ``control``) with the probe saved in ``run_dir``; writes ``evaluations/<name>.json``.

    The bundle's detectors, if any, are evaluated too: ``data`` as a novel set against ``control`` and the
    false-alarm rate on each ``benign`` set (benign traffic they were not calibrated on)."""
    import numpy as np
    import torch

    from probes.evaluation import evaluate
    from probes.package import ProbeBundle

    reporter = reporter or LogReporter()
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file() or not (run_dir / "bundle").is_dir():
        raise ConfigError(
            f"{run_dir} is not a run folder (it needs config.yaml and bundle/ written by probes run)."
        )
    config = load_config(run_dir / "config.yaml", check_paths=False)
    bundle = ProbeBundle.load(run_dir / "bundle")
    from probes.pipeline.detectors import detector_entries, evaluate_bundle_detectors

    detectors = detector_entries(bundle)
    entry = next((e for e in bundle if not getattr(e.probe, "is_detector", False)), next(iter(bundle)))
    for p in (data, control, *benign):
        if p is not None and not Path(p).exists():
            raise DatasetError(f"dataset {str(p)!r} not found (relative paths resolve against {Path.cwd()}).")
    with reporter.stage("Loading datasets"):
        ds = load_spec(DatasetSpec(path=str(data), limit=limit), seed=config.seed, target=config.data.target)
        control_ds = (
            load_spec(
                DatasetSpec(path=str(control), limit=limit),
                seed=config.seed,
                target=config.data.target,
                control=True,
            )
            if control is not None
            else None
        )
        benign_ds = {
            str(p): load_spec(
                DatasetSpec(path=str(p), limit=limit),
                seed=config.seed,
                target=config.data.target,
                control=True,
            )
            for p in benign
        }
    with reporter.stage(f"Loading model {config.model.name_or_path}"):
        model, tokenizer = _load_model(config, device)
        bundle.check_model(model, config.model.layers_attr)
    site = entry.site
    pooling = entry.pooling or config.primary_pooling
    cfg = config.model_copy(update={"pooling": pooling})
    sites = list(dict.fromkeys([site, *(e.site for e in detectors)]))
    with reporter.stage(f"Collecting activations at {', '.join(sites)}"):
        acts = _collect(model, tokenizer, ds, sites, cfg)
        control_acts = _collect(model, tokenizer, control_ds, sites, cfg) if control_ds is not None else None
        benign_acts = {k: _collect(model, tokenizer, v, sites, cfg) for k, v in benign_ds.items()}
    threshold = entry.threshold_for()
    at: dict[str, Any] = {"layer": site, "threshold": threshold.value if threshold else None}

    def scores_of(a: Activations) -> np.ndarray:
        with torch.inference_mode():
            return (
                entry.score(a[site]).float().cpu().numpy()
                if not hasattr(a[site], "offsets")
                else entry.probe.decision_function(a[site])
            )

    s = scores_of(acts)
    labels = ds.labels
    if threshold is not None:
        flags = s > threshold.value
        if (labels == 1).any():
            at["recall_at_threshold"] = float(flags[labels == 1].mean())
        from probes.evaluation.metrics import clopper_pearson

        def rate(hits: np.ndarray, key: str) -> None:  # the rate, its exact interval and n, for every table
            at[key] = float(hits.mean())
            at[f"{key}_ci"] = list(clopper_pearson(int(hits.sum()), int(hits.size)))
            at[f"{key}_n"] = int(hits.size)

        if (labels == 0).any():
            rate(flags[labels == 0], "fpr_on_negatives")
        if control_acts is not None:
            rate(scores_of(control_acts) > threshold.value, "fpr_on_control")
    report = None
    if _two_class(ds):
        fprs = [t.target_fpr for t in entry.thresholds if t.target_fpr is not None] or list(
            config.evaluation.target_fprs
        )
        report = evaluate(
            entry.probe,
            acts,
            control_acts,
            layer=site,
            target_fpr=fprs,
            n_bootstrap=config.evaluation.bootstrap,
            seed=config.seed,
            name=ds.name,
        )
    else:
        reporter.warn(
            f"{ds.name} has a single class: AUROC is undefined; only rates at the threshold are shown."
        )
    detector_reports = evaluate_bundle_detectors(
        detectors,
        acts,
        ds.name,
        control_acts,
        control_ds.name if control_ds is not None else "control",
        {v.name: benign_acts[k] for k, v in benign_ds.items()},
        n_bootstrap=config.evaluation.bootstrap,
        seed=config.seed,
        reporter=reporter,
    )
    out_dir = run_dir / "evaluations"
    out_dir.mkdir(exist_ok=True)
    path = out_dir / f"{_slug(ds.name)}.json"
    _write_json(
        path,
        {
            "dataset": _dataset_info(ds, None),
            "control": _dataset_info(control_ds, None) if control_ds is not None else None,
            "at_bundle_threshold": at,
            "report": report.to_dict(include_scores=False) if report is not None else None,
            "detectors": [r.to_dict(include_scores=False) for r in detector_reports],
        },
    )
    return EvaluateResult(
        path=path, layer=site, report=report, at_bundle_threshold=at, detectors=detector_reports
    )


# ----------------------------------------------------------------------------------------------------------
# Validation without a model


def validate_dataset(path: str | Path) -> list[str]:
    """Parse a dataset (folder or file); returns summary lines. Raises DatasetError when malformed."""
    from probes.data import load_dataset

    if not Path(path).exists():
        raise DatasetError(f"{path}: no such file or folder (relative paths resolve against {Path.cwd()}).")
    ds = load_dataset(str(path))
    return [_describe(ds)]


def _describe(ds: ContrastDataset) -> str:
    labels = ds.labels
    neg, pos = ds.label_names
    n_pos = int(labels.sum())
    groups = len(set(ds.groups))
    return (
        f"{ds.name}: {len(ds)} rows ({neg}: {len(ds) - n_pos}, {pos}: {n_pos}), {groups} groups, "
        f"fingerprint {ds.fingerprint()[:12]}"
    )


def validate_config(path: str | Path, overrides: Sequence[str] = ()) -> list[str]:
    """Parse a run config and every dataset it names, check splits, holdout values and probe parameters.

    No model is loaded. Raises ConfigError / DatasetError; returns summary lines (and reproducibility notes).
    """
    config = load_config(path, overrides)
    if config.task == "regress":
        from probes.pipeline.regress import validate_regression

        return validate_regression(config)
    lines = []
    train, control, evals = _load_all_datasets(config)
    splits = split_train(train, config)
    lines.append("train   " + _describe(train))
    lines.append(
        "        splits: " + ", ".join(f"{k} {len(v)} ({int(v.labels.sum())} pos)" for k, v in splits.items())
    )
    if control is not None:
        lines.append("control " + _describe(control))
        if len(config.data.control_specs) > 1:
            sets = Counter(control.conditions(CONTROL_SET))
            lines.append("        control sets: " + ", ".join(f"{k} {v}" for k, v in sets.items()))
        if int(control.labels.sum()) > 0:
            lines.append(
                f"        note: {int(control.labels.sum())} control rows are labelled positive; a control set should be benign"
            )
    for name, ds in evals.items():
        lines.append(f"eval.{name} " + _describe(ds))
    for params in config.probe.candidates():
        _probe_params(config.probe.kind, params, config.seed)
    from probes.pipeline.second_opinions import validate_second_opinions

    lines.extend(validate_second_opinions(config))
    model = config.model.name_or_path
    if config.model.is_package:
        lines.append(f"model   {model} → {resolve_model_path(model)}")
    else:
        lines.append(
            f"model   {model}"
            + (" (local folder)" if Path(model).expanduser().exists() else " (Hugging Face Hub id)")
        )
    lines.extend(f"note: {w}" for w in reproducibility_warnings(config))
    return lines
