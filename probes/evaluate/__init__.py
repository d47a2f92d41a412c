"""Honest evaluation of probes.

- :func:`evaluate` -> :class:`EvalReport`: AUROC/AUPRC/accuracy with (grouped) bootstrap CIs; thresholds at
  target FPRs set on benign control traffic with the conformal rank (:func:`conformal_threshold`), recall
  at them on test positives and the empirical FPR on held-out control, each with an exact binomial CI;
  ECE/Brier/reliability, optionally after Platt or isotonic calibration fitted on a calibration split.
- :func:`text_baseline`: TF-IDF + logistic regression on the same splits — if the text alone scores as well
  as the probe, the dataset is confounded (:func:`confound_check`).
- :func:`layer_sweep` (choose the site on validation only) and :func:`generalization_matrix`.
"""

from __future__ import annotations

import sys
import types
from typing import Any

from probes.evaluate.baseline import BaselineResult, confound_check, text_baseline
from probes.evaluate.calibration import (
    Calibrator,
    IsotonicCalibrator,
    PlattCalibrator,
    brier_score,
    expected_calibration_error,
    reliability_curve,
)
from probes.evaluate.core import evaluate
from probes.evaluate.metrics import (
    accuracy,
    auprc,
    auroc,
    bootstrap_ci,
    bootstrap_indices,
    clopper_pearson,
    with_ci,
)
from probes.evaluate.report import EvalReport
from probes.evaluate.sweep import GeneralizationResult, SweepResult, generalization_matrix, layer_sweep
from probes.evaluate.thresholds import (
    OperatingPoint,
    conformal_fpr_bound,
    conformal_n_needed,
    conformal_threshold,
    operating_point,
)

__all__ = [
    "BaselineResult",
    "Calibrator",
    "EvalReport",
    "GeneralizationResult",
    "IsotonicCalibrator",
    "OperatingPoint",
    "PlattCalibrator",
    "SweepResult",
    "accuracy",
    "auprc",
    "auroc",
    "bootstrap_ci",
    "bootstrap_indices",
    "brier_score",
    "clopper_pearson",
    "confound_check",
    "conformal_fpr_bound",
    "conformal_n_needed",
    "conformal_threshold",
    "evaluate",
    "expected_calibration_error",
    "generalization_matrix",
    "layer_sweep",
    "operating_point",
    "reliability_curve",
    "text_baseline",
    "with_ci",
]


class _CallablePackage(types.ModuleType):
    """Once imported, the subpackage ``probes.evaluate`` hides the public function ``probes.evaluate``
    (Python binds submodules onto their parent); calling the package calls the function, so
    ``probes.evaluate(probe, test, ...)`` works whatever was imported first (as ``probes.collect`` does)."""

    def __call__(self, *args: Any, **kwargs: Any) -> EvalReport:
        return evaluate(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
