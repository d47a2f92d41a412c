"""Config-driven runs: ``probes.run(config) -> RunResult``, and the stages behind ``probes collect|train|evaluate``.

A run, step by step::

    load datasets → split train (grouped, seeded, holdout) → load model → collect activations (cached)
    → layer sweep on train, pick the layer (and grid point) on validation only
    → evaluate on test with the control set (thresholds at the target FPRs), calibrate on validation,
      text-only baselines (full text and detected span), length/position baseline → eval sets → generalisation matrix (optional)
    → write <output_dir>/<name>-<timestamp>/ (report.json, plots/, bundle/, config.yaml) → log to MLflow

The public stages, each with one typed hand-off: ``prepare(config) -> Prepared`` (datasets, splits, model,
activations), ``select(prepared) -> Selection`` (the site and probe validation chose), ``set_thresholds(probe,
prepared, site)`` (the bundle thresholds - one function for ``run`` and ``train``, so both write the same ones)
and ``track_run(...)`` (MLflow, and ``tracking.json`` in every case).

The modules follow those steps: ``prepare`` (datasets, splits, model, activations), ``sweep`` (choosing the
layer and grid point on validation), ``runner`` (``run``: evaluation, baselines, generalisation, tracking),
``outputs`` (run folder, bundle, JSON reports), ``stages`` (the CLI stages and ``validate_*``),
``results`` (the result objects and the ``Reporter`` protocol), and beside the probe ``detectors``
(``detectors:``, fitted on benign control rows only) and ``cascade`` (``stages:``), joined by
``second_opinions``. Heavy imports (torch, transformers, mlflow)
happen inside functions, so importing this package is instant.
"""

from probes.pipeline.prepare import Prepared, load_spec, prepare, reproducibility_warnings, split_train
from probes.pipeline.results import EvaluateResult, LogReporter, Reporter, RunResult, TrainResult
from probes.pipeline.runner import run, run_metrics, track_run
from probes.pipeline.stages import collect_stage, evaluate_run, train_stage, validate_config, validate_dataset
from probes.pipeline.sweep import Selection, select
from probes.pipeline.thresholds import set_thresholds

__all__ = [
    "EvaluateResult",
    "LogReporter",
    "Prepared",
    "Reporter",
    "RunResult",
    "Selection",
    "TrainResult",
    "collect_stage",
    "evaluate_run",
    "load_spec",
    "prepare",
    "reproducibility_warnings",
    "run",
    "run_metrics",
    "select",
    "set_thresholds",
    "split_train",
    "track_run",
    "train_stage",
    "validate_config",
    "validate_dataset",
]
