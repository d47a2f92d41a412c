"""The evaluation report: every number needed to reproduce a results table, as JSON and as a rich table."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from probes.evaluation.thresholds import OperatingPoint, _from_json_float, _json_float
from probes.evaluation.transfer import ThresholdTransfer

SCHEMA_VERSION = 1

# Fields holding a float or a (lo, hi) pair of floats: written through _json_float so inf/nan survive JSON.
_FLOAT_FIELDS = (
    "auroc",
    "auprc",
    "accuracy",
    "recall_at_fpr",
    "threshold",
    "empirical_fpr",
    "target_fpr",
    "ece",
    "brier",
    "ece_uncalibrated",
    "brier_uncalibrated",
    "text_baseline_auroc",
    "text_baseline_span_auroc",
    "length_baseline_auroc",
)
_PAIR_FIELDS = (
    "auroc_ci",
    "auprc_ci",
    "accuracy_ci",
    "recall_ci",
    "empirical_fpr_ci",
    "text_baseline_auroc_ci",
    "text_baseline_span_auroc_ci",
    "length_baseline_auroc_ci",
)


def _fmt_pct(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "-"
    return f"{100 * value:.2f}%"


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float) and math.isinf(value):
        return "+inf" if value > 0 else "-inf"
    return f"{value:.{digits}f}"


def _fmt_ci(ci: tuple[float, float] | None, pct: bool = False) -> str:
    if ci is None:
        return ""
    f = _fmt_pct if pct else _fmt
    return f"[{f(ci[0])}, {f(ci[1])}]"


@dataclass
class EvalReport:
    """Held-out evaluation of one probe at one site.

    Rates (recall, FPR) are fractions in [0, 1]. ``threshold`` is in the probe's ``decision_function``
    space (flag when ``score > threshold``) and belongs to the *primary* target FPR, the first of
    ``operating_points``. Intervals are ``(lo, hi)`` at ``confidence``: bootstrap (grouped when the test set
    has groups) for AUROC/AUPRC/accuracy, exact binomial (Clopper-Pearson) for recall and FPR.
    """

    name: str | None
    probe_kind: str
    layer: str | None
    n_test: int
    n_pos: int
    n_neg: int
    n_groups: int
    auroc: float
    auroc_ci: tuple[float, float]
    auprc: float
    auprc_ci: tuple[float, float]
    accuracy: float
    accuracy_ci: tuple[float, float]
    target_fpr: float
    threshold: float
    recall_at_fpr: float
    recall_ci: tuple[float, float]
    empirical_fpr: float
    empirical_fpr_ci: tuple[float, float]
    operating_points: list[OperatingPoint]
    threshold_source: str  # "control" or "test_negatives"
    n_control: int
    ece: float
    brier: float
    reliability: dict[str, list[Any]]
    ece_uncalibrated: float
    brier_uncalibrated: float
    calibrate: str | None = None
    calibrator: dict[str, Any] | None = None
    text_baseline_auroc: float | None = None
    text_baseline_auroc_ci: tuple[float, float] | None = None
    text_baseline_span_auroc: float | None = None
    text_baseline_span_auroc_ci: tuple[float, float] | None = None
    # Logistic regression on token counts (probes.evaluation.length_baseline): the position/length confound.
    length_baseline_auroc: float | None = None
    length_baseline_auroc_ci: tuple[float, float] | None = None
    n_bootstrap: int = 1000
    confidence: float = 0.95
    seed: int = 0
    warnings: list[str] = field(default_factory=list)
    # Names of the control sets (several: the threshold is set on them pooled) and, with two or more, one
    # threshold-transfer matrix per target FPR (probes.evaluation.transfer).
    control_sets: list[str] | None = None
    threshold_transfer: list[ThresholdTransfer] = field(default_factory=list)
    # Raw scores (test scores and labels, control calibration / held-out scores) so plots and new metrics
    # can be recomputed from the JSON alone; None when evaluate(..., keep_scores=False).
    scores: dict[str, list[float]] | None = None
    schema_version: int = SCHEMA_VERSION

    # --- baselines added after evaluate ----------------------------------------------------------
    def add_length_baseline(self, baseline: Any, *, margin: float = 0.05) -> None:
        """Record the length/position baseline (a ``BaselineResult`` or an AUROC) on the same test rows,
        and warn (:func:`~probes.evaluation.confound_check`) when it comes within ``margin`` of the probe."""
        from probes.evaluation.baseline import BaselineResult, confound_check

        if isinstance(baseline, BaselineResult):
            value, ci = baseline.auroc, (float(baseline.auroc_ci[0]), float(baseline.auroc_ci[1]))
        elif isinstance(baseline, int | float) and not isinstance(baseline, bool):
            value, ci = float(baseline), None
        else:
            raise TypeError(
                f"a length baseline must be a BaselineResult or an AUROC float, got {type(baseline).__name__}."
            )
        self.length_baseline_auroc, self.length_baseline_auroc_ci = value, ci
        msg = confound_check(self.auroc, value, margin, what="length/position")
        if msg:
            self.warnings.append(msg)

    # --- serialisation ----------------------------------------------------------------------------
    def to_dict(self, include_scores: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in _FLOAT_FIELDS:
                value = _json_float(value)
            elif f.name in _PAIR_FIELDS:
                value = None if value is None else [_json_float(v) for v in value]
            elif f.name in ("operating_points", "threshold_transfer"):
                value = [item.to_dict() for item in value]
            elif f.name == "scores":
                value = value if include_scores else None
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvalReport:
        kwargs: dict[str, Any] = {}
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"EvalReport.from_dict: unknown keys {sorted(unknown)} (schema mismatch?).")
        for key, value in data.items():
            if key in _FLOAT_FIELDS:
                value = _from_json_float(value)
            elif key in _PAIR_FIELDS:
                value = None if value is None else tuple(_from_json_float(v) for v in value)
            elif key == "operating_points":
                value = [OperatingPoint.from_dict(op) for op in value]
            elif key == "threshold_transfer":
                value = [ThresholdTransfer.from_dict(t) for t in value]
            kwargs[key] = value
        return cls(**kwargs)

    def to_json(self, path: str | Path | None = None, *, include_scores: bool = True) -> str:
        """The report as JSON text; also written to ``path`` when given."""
        text = json.dumps(self.to_dict(include_scores=include_scores), indent=2, allow_nan=False)
        if path is not None:
            Path(path).write_text(text + "\n", encoding="utf-8")
        return text

    @classmethod
    def from_json(cls, path_or_text: str | Path) -> EvalReport:
        """Read a report from a JSON file path or a JSON string."""
        text = str(path_or_text)
        if not text.lstrip().startswith("{"):
            text = Path(path_or_text).read_text(encoding="utf-8")
        return cls.from_dict(json.loads(text))

    # --- tables -----------------------------------------------------------------------------------
    def summary_row(self) -> dict[str, Any]:
        """A flat dict (one table row): identifiers plus every headline number, one key per target FPR.

        Keys use only characters MLflow accepts in metric names; :meth:`metrics` keeps the numeric ones.
        """
        row: dict[str, Any] = {
            "name": self.name,
            "probe_kind": self.probe_kind,
            "layer": self.layer,
            "n_test": self.n_test,
            "n_pos": self.n_pos,
            "n_neg": self.n_neg,
            "n_control": self.n_control,
            "auroc": self.auroc,
            "auroc_lo": self.auroc_ci[0],
            "auroc_hi": self.auroc_ci[1],
            "auprc": self.auprc,
            "accuracy": self.accuracy,
            "recall_at_fpr": self.recall_at_fpr,
            "threshold": self.threshold,
            "empirical_fpr": self.empirical_fpr,
            "ece": self.ece,
            "brier": self.brier,
            "ece_uncalibrated": self.ece_uncalibrated,
            "text_baseline_auroc": self.text_baseline_auroc,
            "text_baseline_span_auroc": self.text_baseline_span_auroc,
            "length_baseline_auroc": self.length_baseline_auroc,
        }
        for transfer in self.threshold_transfer:
            _, _, worst = transfer.worst
            row[f"transfer_fpr_max_at_{transfer.target_fpr:g}"] = worst
        for op in self.operating_points:
            tag = f"{op.target_fpr:g}"
            row[f"recall_at_fpr_{tag}"] = op.recall
            row[f"recall_at_fpr_{tag}_lo"] = op.recall_ci[0]
            row[f"recall_at_fpr_{tag}_hi"] = op.recall_ci[1]
            row[f"threshold_at_fpr_{tag}"] = op.threshold
            row[f"empirical_fpr_at_{tag}"] = op.empirical_fpr
            row[f"empirical_fpr_at_{tag}_hi"] = op.empirical_fpr_ci[1]
        return row

    def grouped_metrics(self) -> dict[str, float]:
        """Headline numbers under MLflow's grouped, slash-separated names (the UI groups charts by the part
        before the first ``/`` a caller prefixes, e.g. ``test/``): ``auroc``, ``auroc/lo``,
        ``recall_at_fpr/0.01``, ``recall_at_fpr/0.01/hi``, ``empirical_fpr/0.01``, ``threshold/0.01``, ...
        Only finite values."""
        raw: dict[str, Any] = {
            "auroc": self.auroc,
            "auroc/lo": self.auroc_ci[0],
            "auroc/hi": self.auroc_ci[1],
            "auprc": self.auprc,
            "accuracy": self.accuracy,
            "ece": self.ece,
            "ece/uncalibrated": self.ece_uncalibrated,
            "brier": self.brier,
            "n/test": self.n_test,
            "n/control": self.n_control,
            "baseline/text/auroc": self.text_baseline_auroc,
            "baseline/span/auroc": self.text_baseline_span_auroc,
            "baseline/length/auroc": self.length_baseline_auroc,
        }
        for op in self.operating_points:
            tag = f"{op.target_fpr:g}"
            raw[f"recall_at_fpr/{tag}"] = op.recall
            raw[f"recall_at_fpr/{tag}/lo"] = op.recall_ci[0]
            raw[f"recall_at_fpr/{tag}/hi"] = op.recall_ci[1]
            raw[f"threshold/{tag}"] = op.threshold
            raw[f"empirical_fpr/{tag}"] = op.empirical_fpr
            raw[f"empirical_fpr/{tag}/lo"] = op.empirical_fpr_ci[0]
            raw[f"empirical_fpr/{tag}/hi"] = op.empirical_fpr_ci[1]
            raw[f"empirical_fpr/{tag}/n"] = op.n_control_holdout
        for transfer in self.threshold_transfer:
            raw[f"transfer_fpr_max/{transfer.target_fpr:g}"] = transfer.worst[2]
        return {
            k: float(v)
            for k, v in raw.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(float(v))
        }

    def metrics(self) -> dict[str, float]:
        """The finite numeric entries of :meth:`summary_row` (for ``mlflow.log_metrics``)."""
        out: dict[str, float] = {}
        for key, value in self.summary_row().items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                continue
            if math.isfinite(float(value)):
                out[key] = float(value)
        return out

    def __rich__(self) -> Any:
        from rich.table import Table

        title = f"{self.name or 'probe'} · {self.probe_kind} · {self.layer or '-'}"
        caption = (
            f"n_test={self.n_test} ({self.n_pos} pos / {self.n_neg} neg, {self.n_groups} groups) · "
            f"control={self.n_control}"
            + (f" ({' + '.join(self.control_sets)}, pooled)" if len(self.control_sets or []) > 1 else "")
            + f" · threshold from {self.threshold_source} · "
            f"{int(100 * self.confidence)}% CIs"
        )
        table = Table(title=title, caption=caption, show_header=True, header_style="bold")
        table.add_column("metric")
        table.add_column("value", justify="right")
        table.add_column("interval", justify="right")
        table.add_row("AUROC", _fmt(self.auroc), _fmt_ci(self.auroc_ci))
        table.add_row("AUPRC", _fmt(self.auprc), _fmt_ci(self.auprc_ci))
        table.add_row("accuracy (score > 0)", _fmt(self.accuracy), _fmt_ci(self.accuracy_ci))
        for op in self.operating_points:
            tag = _fmt_pct(op.target_fpr)
            table.add_row(
                f"threshold @ FPR {tag}",
                _fmt(op.threshold),
                f"n_cal={op.n_control_cal}; true FPR <= {_fmt_pct(op.fpr_bound)} w.p. {self.confidence:.0%}",
            )
            table.add_row(f"recall @ FPR {tag}", _fmt_pct(op.recall), _fmt_ci(op.recall_ci, pct=True))
            table.add_row(
                f"held-out FPR @ {tag}",
                _fmt_pct(op.empirical_fpr),
                f"{_fmt_ci(op.empirical_fpr_ci, pct=True)} n={op.n_control_holdout}",
            )
        cal = f" ({self.calibrate})" if self.calibrate else ""
        table.add_row(f"ECE{cal}", _fmt(self.ece), f"uncalibrated {_fmt(self.ece_uncalibrated)}")
        table.add_row(f"Brier{cal}", _fmt(self.brier), f"uncalibrated {_fmt(self.brier_uncalibrated)}")
        if self.text_baseline_auroc is not None:
            table.add_row(
                "text-only baseline AUROC",
                _fmt(self.text_baseline_auroc),
                _fmt_ci(self.text_baseline_auroc_ci),
            )
        if self.text_baseline_span_auroc is not None:
            table.add_row(
                "span-only baseline AUROC",
                _fmt(self.text_baseline_span_auroc),
                _fmt_ci(self.text_baseline_span_auroc_ci),
            )
        if self.length_baseline_auroc is not None:
            table.add_row(
                "length baseline AUROC",
                _fmt(self.length_baseline_auroc),
                _fmt_ci(self.length_baseline_auroc_ci),
            )
        from rich.console import Group
        from rich.text import Text

        transfers = [self.threshold_transfer[0]] if self.threshold_transfer else []
        notes = [Text(f"warning: {w}", style="yellow") for w in self.warnings]
        return Group(table, *transfers, *notes) if transfers or notes else table

    def __str__(self) -> str:
        from io import StringIO

        from rich.console import Console

        buffer = StringIO()
        Console(file=buffer, width=120, force_terminal=False, color_system=None).print(self.__rich__())
        return buffer.getvalue()

    # --- plots ------------------------------------------------------------------------------------
    def plots(self, out_dir: str | Path) -> list[Path]:
        """Write ROC, reliability and score-histogram PNGs into ``out_dir``; returns their paths.

        ROC and histograms need the raw scores (``keep_scores=True``, the default); without them only the
        reliability diagram is written.
        """
        from probes.evaluation import plots

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        stem = (self.name or "probe").replace("/", "_").replace(" ", "_")
        if self.layer:
            stem += f"_{self.layer}"
        label = f"{self.name or self.probe_kind} {self.layer or ''}".strip()
        written = []
        ops = [(op.target_fpr, op.threshold) for op in self.operating_points]
        if self.scores is not None:
            written.append(
                plots.roc_curve_plot(
                    self.scores["test_labels"],
                    self.scores["test_scores"],
                    out / f"{stem}_roc.png",
                    operating_points=ops,
                    title=f"ROC · {label}",
                )
            )
            control = list(self.scores.get("control_cal_scores", [])) + list(
                self.scores.get("control_holdout_scores", [])
            )
            written.append(
                plots.score_histograms(
                    self.scores["test_labels"],
                    self.scores["test_scores"],
                    out / f"{stem}_scores.png",
                    control_scores=control if self.threshold_source == "control" else None,
                    thresholds=ops,
                    title=f"Scores · {label}",
                )
            )
        written.append(
            plots.reliability_diagram(
                self.reliability,
                out / f"{stem}_reliability.png",
                title=f"Reliability · {label}" + (f" ({self.calibrate})" if self.calibrate else ""),
            )
        )
        for transfer in self.threshold_transfer:
            written.append(
                transfer.plot(
                    out / f"{stem}_threshold_transfer_{transfer.target_fpr:g}.png",
                    title=f"Threshold transfer · {label} · target FPR {100 * transfer.target_fpr:g}%",
                )
            )
        return written
