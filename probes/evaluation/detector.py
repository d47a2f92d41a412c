"""Evaluation of anomaly detectors: what they catch that they never saw, and what they cost in false alarms.

:func:`evaluate_detector` takes a fitted, calibrated detector (:mod:`probes.train.anomaly`) and

- a **benign test set**: benign rows of the calibration distribution that neither fitting nor calibration
  used -- the reference for AUROC and the in-distribution false-alarm rate;
- **novel sets** the detector never saw (deceptive replies, role-played emotion, refusals, off-distribution
  text): for each, AUROC against the benign test rows with a (grouped) bootstrap interval, and the
  detection rate at the ``target_fpr`` threshold with an exact interval;
- **shifted benign sets**: benign traffic from *another* source than the calibration rows. Their
  false-alarm rate at the same threshold, with an exact (Clopper-Pearson) interval, is the number that
  says whether the guarantee survives a change of traffic -- the usual way such monitors fail. It is
  reported, and warned about when the interval lies above the target, never hidden.

The threshold is the detector's own conformal threshold (``detector.threshold(target_fpr)``), so the
in-distribution false-alarm rate is at most ``target_fpr`` in expectation (exchangeability) and the report
gives the per-threshold bound (:func:`~probes.evaluation.thresholds.conformal_fpr_bound`) beside it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from probes.evaluation.core import as_split
from probes.evaluation.metrics import auroc, clopper_pearson, with_ci
from probes.evaluation.report import _fmt, _fmt_ci, _fmt_pct
from probes.evaluation.thresholds import (
    _from_json_float,
    _json_float,
    conformal_fpr_bound,
    too_few_calibration_note,
)

SCHEMA_VERSION = 1


@dataclass
class FlagRate:
    """How many rows of one set the threshold flags, with an exact binomial interval."""

    name: str
    n: int
    n_flagged: int
    rate: float
    ci: tuple[float, float]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "rate": _json_float(self.rate), "ci": [_json_float(v) for v in self.ci]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FlagRate:
        d = dict(data)
        d["rate"] = _from_json_float(d["rate"])
        d["ci"] = tuple(_from_json_float(v) for v in d["ci"])
        return cls(**d)


@dataclass
class NovelResult:
    """One novel set against the benign test rows: ranking (AUROC) and detection at the threshold."""

    name: str
    n: int
    auroc: float
    auroc_ci: tuple[float, float]
    detection: FlagRate

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "n": self.n,
            "auroc": _json_float(self.auroc),
            "auroc_ci": [_json_float(v) for v in self.auroc_ci],
            "detection": self.detection.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NovelResult:
        return cls(
            name=data["name"],
            n=int(data["n"]),
            auroc=_from_json_float(data["auroc"]),  # type: ignore[arg-type]
            auroc_ci=tuple(_from_json_float(v) for v in data["auroc_ci"]),  # type: ignore[arg-type]
            detection=FlagRate.from_dict(data["detection"]),
        )


@dataclass
class DetectorReport:
    """Held-out evaluation of one anomaly detector at one threshold (``score > threshold`` flags).

    ``benign`` is the false-alarm rate on held-out rows of the calibration distribution, ``shifted`` the
    false-alarm rates on benign sets from other sources, ``novel`` one :class:`NovelResult` per set the
    detector never saw. Rates are fractions; intervals are at ``confidence``.
    """

    name: str | None
    detector_kind: str
    site: str | None
    target_fpr: float
    threshold: float
    n_fit: int
    n_calibration: int
    fpr_bound: float
    benign: FlagRate
    shifted: list[FlagRate]
    novel: list[NovelResult]
    n_bootstrap: int = 1000
    confidence: float = 0.95
    seed: int = 0
    warnings: list[str] = field(default_factory=list)
    # Raw scores ({"calibration", "benign": [...], "shifted"/"novel": {name: [...]}}) for plots; None when
    # evaluate_detector(..., keep_scores=False).
    scores: dict[str, Any] | None = None
    schema_version: int = SCHEMA_VERSION

    # --- serialisation ----------------------------------------------------------------------------
    def to_dict(self, include_scores: bool = True) -> dict[str, Any]:
        return {
            "name": self.name,
            "detector_kind": self.detector_kind,
            "site": self.site,
            "target_fpr": self.target_fpr,
            "threshold": _json_float(self.threshold),
            "n_fit": self.n_fit,
            "n_calibration": self.n_calibration,
            "fpr_bound": _json_float(self.fpr_bound),
            "benign": self.benign.to_dict(),
            "shifted": [r.to_dict() for r in self.shifted],
            "novel": [r.to_dict() for r in self.novel],
            "n_bootstrap": self.n_bootstrap,
            "confidence": self.confidence,
            "seed": self.seed,
            "warnings": list(self.warnings),
            "scores": self.scores if include_scores else None,
            "schema_version": self.schema_version,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DetectorReport:
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"DetectorReport.from_dict: unknown keys {sorted(unknown)} (schema mismatch?).")
        d = dict(data)
        d["threshold"] = _from_json_float(d["threshold"])
        d["fpr_bound"] = _from_json_float(d["fpr_bound"])
        d["benign"] = FlagRate.from_dict(d["benign"])
        d["shifted"] = [FlagRate.from_dict(r) for r in d["shifted"]]
        d["novel"] = [NovelResult.from_dict(r) for r in d["novel"]]
        return cls(**d)

    def to_json(self, path: str | Path | None = None, *, include_scores: bool = True) -> str:
        """The report as JSON text; also written to ``path`` when given."""
        text = json.dumps(self.to_dict(include_scores=include_scores), indent=2, allow_nan=False)
        if path is not None:
            Path(path).write_text(text + "\n", encoding="utf-8")
        return text

    @classmethod
    def from_json(cls, path_or_text: str | Path) -> DetectorReport:
        """Read a report from a JSON file path or a JSON string."""
        text = str(path_or_text)
        if not text.lstrip().startswith("{"):
            text = Path(path_or_text).read_text(encoding="utf-8")
        return cls.from_dict(json.loads(text))

    def summary_row(self) -> dict[str, Any]:
        """A flat dict of the headline numbers (keys MLflow accepts as metric names)."""
        row: dict[str, Any] = {
            "name": self.name,
            "detector_kind": self.detector_kind,
            "site": self.site,
            "threshold": self.threshold,
            "n_calibration": self.n_calibration,
            "benign_fpr": self.benign.rate,
            "benign_fpr_hi": self.benign.ci[1],
        }
        for r in self.shifted:
            row[f"shifted_fpr_{_key(r.name)}"] = r.rate
            row[f"shifted_fpr_{_key(r.name)}_hi"] = r.ci[1]
        for r in self.novel:
            row[f"novel_auroc_{_key(r.name)}"] = r.auroc
            row[f"novel_detection_{_key(r.name)}"] = r.detection.rate
        return row

    def metrics(self) -> dict[str, float]:
        """The finite numeric entries of :meth:`summary_row` (for ``mlflow.log_metrics``)."""
        return {
            k: float(v)
            for k, v in self.summary_row().items()
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(float(v))
        }

    # --- tables -----------------------------------------------------------------------------------
    def __rich__(self) -> Any:
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        title = f"{self.name or 'detector'} · {self.detector_kind} · {self.site or '-'}"
        caption = (
            f"threshold {_fmt(self.threshold)} @ target FPR {_fmt_pct(self.target_fpr)} from "
            f"{self.n_calibration} benign calibration rows (true FPR <= {_fmt_pct(self.fpr_bound)} w.p. "
            f"{self.confidence:.0%}) · {int(100 * self.confidence)}% CIs"
        )
        table = Table(title=title, caption=caption, header_style="bold")
        table.add_column("set")
        table.add_column("n", justify="right")
        table.add_column("AUROC vs benign [CI]", justify="right")
        table.add_column(f"flagged @ {_fmt_pct(self.target_fpr)} [exact CI]", justify="right")
        b = self.benign
        table.add_row(
            f"benign (held out): {b.name}", str(b.n), "-", f"{_fmt_pct(b.rate)} {_fmt_ci(b.ci, pct=True)}"
        )
        for r in self.shifted:
            table.add_row(
                f"benign, shifted: {r.name}", str(r.n), "-", f"{_fmt_pct(r.rate)} {_fmt_ci(r.ci, pct=True)}"
            )
        for r in self.novel:
            d = r.detection
            table.add_row(
                f"novel: {r.name}",
                str(r.n),
                f"{_fmt(r.auroc)} {_fmt_ci(r.auroc_ci)}",
                f"{_fmt_pct(d.rate)} {_fmt_ci(d.ci, pct=True)}",
            )
        if not self.warnings:
            return table
        return Group(table, *[Text(f"warning: {w}", style="yellow") for w in self.warnings])

    def __str__(self) -> str:
        from io import StringIO

        from rich.console import Console

        buffer = StringIO()
        Console(file=buffer, width=120, force_terminal=False, color_system=None).print(self.__rich__())
        return buffer.getvalue()

    # --- plots ------------------------------------------------------------------------------------
    def plots(self, out_dir: str | Path) -> list[Path]:
        """Score histograms, ROC of every novel set against benign, and false-alarm rates per benign set
        with their intervals; returns the PNG paths (histograms and ROC need ``keep_scores=True``)."""
        from probes.evaluation import plots

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        stem = (self.name or self.detector_kind).replace("/", "_").replace(" ", "_")
        if self.site:
            stem += f"_{self.site}"
        label = f"{self.name or self.detector_kind} {self.site or ''}".strip()
        written = []
        if self.scores is not None:
            sets = {
                "benign calibration": self.scores["calibration"],
                f"benign: {self.benign.name}": self.scores["benign"],
            }
            sets.update({f"shifted: {k}": v for k, v in self.scores["shifted"].items()})
            sets.update({f"novel: {k}": v for k, v in self.scores["novel"].items()})
            written.append(
                plots.anomaly_score_histograms(
                    sets,
                    out / f"{stem}_scores.png",
                    threshold=self.threshold,
                    title=f"Anomaly scores · {label}",
                )
            )
            if self.scores["novel"]:
                written.append(
                    plots.novel_roc_plot(
                        self.scores["benign"],
                        self.scores["novel"],
                        out / f"{stem}_roc.png",
                        threshold=self.threshold,
                        title=f"Novel vs benign · {label}",
                    )
                )
        rates = [self.benign, *self.shifted]
        written.append(
            plots.false_alarm_plot(
                [(r.name, r.rate, r.ci, r.n) for r in rates],
                out / f"{stem}_false_alarms.png",
                target_fpr=self.target_fpr,
                title=f"False alarms at the calibrated threshold · {label}",
            )
        )
        return written


def _key(name: str) -> str:
    return "".join(c if c.isalnum() or c in "_-." else "_" for c in name)


def _rows(
    data: Any, layer: str | int | None, what: str, rows: str
) -> tuple[Any, list[Any] | None, str | None]:
    """Features, groups and site of one set; ``rows="positive"`` keeps only rows labelled 1."""
    split = as_split(data, layer, what, labels_required=False)
    X, groups = split.X, split.groups
    if rows == "positive":
        if split.y is None:
            raise ValueError(f"{what}: novel_rows='positive' needs labels; pass an Activations or (X, y).")
        from probes.evaluation.core import take

        idx = np.flatnonzero(split.y == 1)
        if idx.size == 0:
            raise ValueError(f"{what}: no rows labelled positive (novel_rows='positive').")
        X = take(X, idx)
        groups = [groups[i] for i in idx] if groups is not None else None
    return X, groups, split.site


def evaluate_detector(
    detector: Any,
    benign: Any,
    novel: Mapping[str, Any],
    shifted: Mapping[str, Any] | None = None,
    *,
    layer: str | int | None = None,
    target_fpr: float = 0.01,
    novel_rows: str = "all",
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    keep_scores: bool = True,
    name: str | None = None,
    benign_name: str = "benign test",
) -> DetectorReport:
    """Evaluate a fitted, calibrated anomaly detector (see the module docstring).

    ``benign``, each value of ``novel`` and of ``shifted`` is an ``Activations`` (``layer=`` picks the
    site), ``(X, y)``, ``(X, y, groups)`` or a bare ``X``. ``novel_rows="positive"`` scores only the rows
    labelled 1 of each novel set (e.g. the deceptive half of a contrast dataset); ``"all"`` every row.
    """
    if not getattr(detector, "is_detector", False):
        raise TypeError(
            f"evaluate_detector needs an anomaly detector (MahalanobisDetector, PCAResidualDetector, "
            f"KNNDetector); got {type(detector).__name__}. Evaluate supervised probes with probes.evaluate."
        )
    if novel_rows not in ("all", "positive"):
        raise ValueError(f"novel_rows must be 'all' or 'positive'; got {novel_rows!r}.")
    if not novel:
        raise ValueError(
            "evaluate_detector needs at least one novel set: {name: data} the detector never saw."
        )
    warnings: list[str] = []
    note = too_few_calibration_note(float(target_fpr), detector.n_calibration_)
    if note is not None:
        warnings.append(note)
    import warnings as _warnings

    from probes.errors import CalibrationWarning

    with _warnings.catch_warnings():
        # The same note is in the report; do not also print it.
        _warnings.simplefilter("ignore", CalibrationWarning)
        threshold = float(detector.threshold(float(target_fpr)))

    Xb, groups_b, site = _rows(benign, layer, "benign", "all")
    s_benign = np.asarray(detector.decision_function(Xb), dtype=np.float64)
    if s_benign.size == 0:
        raise ValueError("the benign test set is empty.")
    benign_rate = _flag_rate(benign_name, s_benign, threshold, confidence)
    if benign_rate.ci[0] > target_fpr:
        warnings.append(
            f"false alarms on the held-out benign set are {_fmt_pct(benign_rate.rate)} "
            f"{_fmt_ci(benign_rate.ci, pct=True)}, above the target {_fmt_pct(target_fpr)}: it is not "
            "exchangeable with the calibration rows (another source, or rows the detector was fitted on?)."
        )

    shifted_rates: list[FlagRate] = []
    shifted_scores: dict[str, list[float]] = {}
    for set_name, data in (shifted or {}).items():
        X, _, _ = _rows(data, site or layer, f"shifted set {set_name!r}", "all")
        s = np.asarray(detector.decision_function(X), dtype=np.float64)
        rate = _flag_rate(set_name, s, threshold, confidence)
        shifted_rates.append(rate)
        shifted_scores[set_name] = s.tolist()
        if rate.ci[0] > target_fpr:
            warnings.append(
                f"distribution shift: false alarms on benign set {set_name!r} are {_fmt_pct(rate.rate)} "
                f"{_fmt_ci(rate.ci, pct=True)}, above the {_fmt_pct(target_fpr)} the threshold was calibrated "
                "for. The guarantee holds only for traffic like the calibration rows: calibrate on this kind of "
                "traffic (detector.calibrate) before deploying on it."
            )
        elif rate.n and rate.ci[1] > 2 * target_fpr:
            warnings.append(
                f"benign set {set_name!r} ({rate.n} rows) is too small to confirm FPR <= {target_fpr:g}: its "
                f"{int(100 * confidence)}% upper bound is {rate.ci[1]:.3g}."
            )

    novel_results: list[NovelResult] = []
    novel_scores: dict[str, list[float]] = {}
    for set_name, data in novel.items():
        X, groups_n, _ = _rows(data, site or layer, f"novel set {set_name!r}", novel_rows)
        s = np.asarray(detector.decision_function(X), dtype=np.float64)
        y = np.r_[np.zeros(s_benign.size, dtype=np.int64), np.ones(s.size, dtype=np.int64)]
        scores = np.r_[s_benign, s]
        groups = None
        if groups_b is not None or groups_n is not None:
            # Prefixes keep a benign and a novel group of the same name apart in the bootstrap.
            gb = groups_b if groups_b is not None else [None] * s_benign.size
            gn = groups_n if groups_n is not None else [None] * s.size
            groups = [None if g is None else f"benign:{g}" for g in gb] + [
                None if g is None else f"novel:{g}" for g in gn
            ]
        value, ci = with_ci(
            auroc, y, scores, groups, n_bootstrap=n_bootstrap, confidence=confidence, seed=seed
        )
        novel_results.append(
            NovelResult(set_name, int(s.size), value, ci, _flag_rate(set_name, s, threshold, confidence))
        )
        novel_scores[set_name] = s.tolist()
        if value < 0.5:
            warnings.append(
                f"novel set {set_name!r} scores *less* anomalous than benign (AUROC {value:.3f}): the detector "
                "does not see this state as unusual."
            )

    kept = None
    if keep_scores:
        kept = {
            "calibration": detector.calibration_scores_.double().tolist(),
            "benign": s_benign.tolist(),
            "shifted": shifted_scores,
            "novel": novel_scores,
        }
    return DetectorReport(
        name=name,
        detector_kind=str(getattr(detector, "kind", type(detector).__name__)),
        site=site if site is not None else (str(layer) if layer is not None else None),
        target_fpr=float(target_fpr),
        threshold=threshold,
        n_fit=int(getattr(detector, "n_fit_", 0)),
        n_calibration=int(detector.n_calibration_),
        fpr_bound=conformal_fpr_bound(int(detector.n_calibration_), float(target_fpr), confidence),
        benign=benign_rate,
        shifted=shifted_rates,
        novel=novel_results,
        n_bootstrap=n_bootstrap,
        confidence=confidence,
        seed=seed,
        warnings=warnings,
        scores=kept,
    )


def _flag_rate(name: str, scores: np.ndarray, threshold: float, confidence: float) -> FlagRate:
    k = int(np.sum(scores > threshold))
    n = int(scores.size)
    return FlagRate(name, n, k, k / n if n else float("nan"), clopper_pearson(k, n, confidence))
