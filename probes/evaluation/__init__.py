"""Honest evaluation of probes.

- :func:`evaluate` -> :class:`EvalReport`: AUROC/AUPRC/accuracy with (grouped) bootstrap CIs; thresholds at
  target FPRs set on benign control traffic with the conformal rank (:func:`conformal_threshold`), recall
  at them on test positives and the empirical FPR on held-out control, each with an exact binomial CI;
  ECE/Brier/reliability, optionally after Platt or isotonic calibration fitted on a calibration split.
- :func:`text_baseline`: TF-IDF + logistic regression on the same splits — if the text alone scores as well
  as the probe, the dataset is confounded (:func:`confound_check`). :func:`length_baseline` does the same
  with token counts (:func:`length_features`: tokens before the target, target tokens, total), which
  exposes a probe that reads position or length.
- :func:`layer_sweep` (choose the site on validation only) and :func:`generalization_matrix`.
- :func:`threshold_transfer` -> :class:`ThresholdTransfer`: with several benign control sets, the FPR a
  threshold set on one gives on another (``evaluate(..., control={"a": ..., "b": ...})`` computes it).
- :func:`evaluate_detector` -> :class:`DetectorReport`: anomaly detectors on novel sets they never saw
  (AUROC against benign, detection rate at the calibrated threshold) and false alarms on benign sets from
  other sources (distribution shift, reported with exact intervals).
- :func:`evaluate_regression` -> :class:`RegressionReport`: R² and Pearson r of a regression probe with
  grouped bootstrap CIs, how many coordinates carry the signal, a predicted-vs-true plot.
- Fourier tools for modular-arithmetic models (:func:`key_frequencies`, :func:`excluded_loss`, ...): the
  grokking known-answer test.
- :func:`cascade_curve` -> :class:`CascadeCurve`: recall at a fixed FPR of a probe -> judge cascade versus the
  share of rows escalated, with each stage's compute per decision (:class:`StageCost`).
"""

from __future__ import annotations

from probes.evaluation.baseline import (
    BaselineResult,
    confound_check,
    length_baseline,
    length_features,
    text_baseline,
)
from probes.evaluation.calibration import (
    Calibrator,
    IsotonicCalibrator,
    PlattCalibrator,
    brier_score,
    expected_calibration_error,
    reliability_curve,
)
from probes.evaluation.cascade import CascadeCurve, CascadePoint, StageCost, cascade_curve, measure_seconds
from probes.evaluation.core import evaluate
from probes.evaluation.detector import DetectorReport, FlagRate, NovelResult, evaluate_detector
from probes.evaluation.fourier import (
    excluded_loss,
    fourier_basis,
    fourier_targets,
    frequency_norms,
    key_frequencies,
)
from probes.evaluation.metrics import (
    accuracy,
    auprc,
    auroc,
    bootstrap_ci,
    bootstrap_indices,
    clopper_pearson,
    with_ci,
)
from probes.evaluation.regression import RegressionReport, evaluate_regression, pearson_r, r2
from probes.evaluation.report import EvalReport
from probes.evaluation.sweep import GeneralizationResult, SweepResult, generalization_matrix, layer_sweep
from probes.evaluation.thresholds import (
    OperatingPoint,
    conformal_fpr_bound,
    conformal_n_needed,
    conformal_p_values,
    conformal_threshold,
    operating_point,
    too_few_calibration_note,
)
from probes.evaluation.transfer import ThresholdTransfer, threshold_transfer

__all__ = [
    "BaselineResult",
    "Calibrator",
    "CascadeCurve",
    "CascadePoint",
    "DetectorReport",
    "EvalReport",
    "FlagRate",
    "NovelResult",
    "StageCost",
    "GeneralizationResult",
    "IsotonicCalibrator",
    "OperatingPoint",
    "PlattCalibrator",
    "RegressionReport",
    "SweepResult",
    "ThresholdTransfer",
    "accuracy",
    "auprc",
    "evaluate_regression",
    "excluded_loss",
    "fourier_basis",
    "fourier_targets",
    "frequency_norms",
    "key_frequencies",
    "pearson_r",
    "r2",
    "auroc",
    "bootstrap_ci",
    "bootstrap_indices",
    "brier_score",
    "cascade_curve",
    "clopper_pearson",
    "confound_check",
    "conformal_fpr_bound",
    "conformal_n_needed",
    "conformal_p_values",
    "conformal_threshold",
    "evaluate",
    "evaluate_detector",
    "expected_calibration_error",
    "generalization_matrix",
    "layer_sweep",
    "length_baseline",
    "length_features",
    "measure_seconds",
    "operating_point",
    "reliability_curve",
    "text_baseline",
    "threshold_transfer",
    "too_few_calibration_note",
    "with_ci",
]
