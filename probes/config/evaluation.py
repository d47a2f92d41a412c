"""The ``evaluation`` and ``tracking`` sections: what is measured, and where the run is logged (MLflow)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from probes.config.base import Strict


class EvaluationConfig(Strict):
    """What is measured on the test, eval and control sets."""

    target_fprs: list[float] = Field(
        default_factory=lambda: [0.01],
        description="False-positive rates on the control set; the first sets the bundle's threshold.",
    )
    calibration: Literal["platt", "isotonic", "none"] = "platt"
    bootstrap: int = Field(1000, ge=0, description="Bootstrap resamples for confidence intervals (0 = none).")
    text_baselines: bool = Field(
        True, description="TF-IDF + logistic baselines on the full text and the span."
    )
    length_baseline: bool = Field(
        True,
        description="Logistic baseline on token counts (before the span, span, total): exposes a probe "
        "that reads position or length.",
    )
    generalization_matrix: bool = Field(False, description="Train on each dataset, test on every other.")
    plots: bool = Field(
        True, description="Write PNG plots (layer sweep, ROC, scores, reliability) to plots/."
    )

    @field_validator("target_fprs")
    @classmethod
    def _fprs(cls, fprs: list[float]) -> list[float]:
        if not fprs:
            raise ValueError("give at least one target FPR, e.g. [0.01]")
        bad = [f for f in fprs if not 0 < f < 1]
        if bad:
            raise ValueError(f"target FPRs must lie strictly between 0 and 1, got {bad}")
        return fprs


class TrackingConfig(Strict):
    """MLflow tracking. ``tracking_uri: null`` uses $MLFLOW_TRACKING_URI, else MLflow's default local
    SQLite store (``mlflow.db`` in the current directory; browse it with ``mlflow ui``)."""

    enabled: bool = True
    experiment: str = "probes"
    tracking_uri: str | None = None
    tags: dict[str, str] = Field(default_factory=dict)
    on_error: Literal["warn", "fail"] = Field(
        "warn",
        description="'warn': finish locally and say the run was not tracked; 'fail': raise TrackingError.",
    )
    log_model: bool = Field(True, description="Log the probe as an MLflow pyfunc model (models-from-code).")
    register_as: str | None = Field(
        None,
        description="Register the logged model in the MLflow model registry under this name (a new version "
        "per run, linked to the run).",
    )
