"""Config-driven runs: ``probes.run(config) -> RunResult``, and the stages behind ``probes collect|train|evaluate``.

A run, step by step::

    load datasets → split train (grouped, seeded, holdout) → load model → collect activations (cached)
    → layer sweep on train, pick the layer (and grid point) on validation only
    → evaluate on test with the control set (thresholds at the target FPRs), calibrate on validation,
      text-only baselines (full text and detected span), length/position baseline → eval sets → generalisation matrix (optional)
    → write <output_dir>/<name>-<timestamp>/ (report.json, plots/, bundle/, config.yaml) → log to MLflow

The modules follow those steps: ``prepare`` (datasets, splits, model, activations), ``sweep`` (choosing the
layer and grid point on validation), ``runner`` (``run``: evaluation, baselines, generalisation, tracking),
``outputs`` (run folder, bundle, JSON reports), ``stages`` (the CLI stages and ``validate_*``),
``results`` (the result objects and the ``Reporter`` protocol), and beside the probe ``detectors``
(``detectors:``, fitted on benign control rows only) and ``cascade`` (``stages:``), joined by
``second_opinions``. Heavy imports (torch, transformers, mlflow)
happen inside functions, so importing this package is instant.
"""

from probes.pipeline.prepare import load_spec, reproducibility_warnings, split_train
from probes.pipeline.results import EvaluateResult, LogReporter, Reporter, RunResult, TrainResult
from probes.pipeline.runner import run
from probes.pipeline.stages import collect_stage, evaluate_run, train_stage, validate_config, validate_dataset

__all__ = [
    "EvaluateResult",
    "LogReporter",
    "Reporter",
    "RunResult",
    "TrainResult",
    "collect_stage",
    "evaluate_run",
    "load_spec",
    "reproducibility_warnings",
    "run",
    "split_train",
    "train_stage",
    "validate_config",
    "validate_dataset",
]
