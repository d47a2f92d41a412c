"""What the pipeline reports and returns: the ``Reporter`` protocol (live stage messages), and the result
objects of ``probes run`` / ``train`` / ``evaluate`` (``RunResult``, ``TrainResult``, ``EvaluateResult``)
with the rich tables the CLI prints and the small number-formatting helpers behind them. Nothing here
computes a metric; it only holds and shows what the stages produced.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from probes.config import RunConfig

if TYPE_CHECKING:  # pragma: no cover
    from probes.evaluation import EvalReport
    from probes.track import TrackingOutcome

log = logging.getLogger("probes")


# ----------------------------------------------------------------------------------------------------------
# Progress reporting


class Reporter(Protocol):
    """Where a run reports its stages (the CLI shows them live; the default logs them)."""

    def stage(self, message: str) -> contextlib.AbstractContextManager[None]: ...
    def info(self, message: str) -> None: ...
    def warn(self, message: str) -> None: ...


class LogReporter:
    """The default reporter: stage timings and warnings go to the ``probes`` logger."""

    @contextlib.contextmanager
    def stage(self, message: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        log.info("%s (%.1fs)", message, time.perf_counter() - start)

    def info(self, message: str) -> None:
        log.info(message)

    def warn(self, message: str) -> None:
        log.warning(message)


@contextlib.contextmanager
def _timed(
    timings: dict[str, float], key: str, reporter: Reporter | None = None, message: str = ""
) -> Iterator[None]:
    """Record a step's wall time (seconds) under ``timings[key]``; report it as a stage when given a reporter
    (without one the step reports its own stages, as the layer sweep does per grid point)."""
    start = time.perf_counter()
    with reporter.stage(message) if reporter is not None else contextlib.nullcontext():
        yield
    timings[key] = round(time.perf_counter() - start, 3)


# ----------------------------------------------------------------------------------------------------------
# Results


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.{digits}f}"


def _fmt_ci(ci: Sequence[float] | None) -> str:
    if not ci or any(v is None for v in ci):
        return ""
    return f" [{_fmt(ci[0])}, {_fmt(ci[1])}]"


def _pct(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"{100 * value:.1f}%"


def fpr_cell(rate: float | None, ci: Sequence[float] | None, n: int | None) -> str:
    """A held-out false-positive rate as every table prints it: the rate, its exact (Clopper-Pearson)
    interval and the number of held-out rows, e.g. ``1.0% [0.2%, 2.3%] n=500``."""
    if rate is None or not math.isfinite(rate):
        return "-"
    interval = f" [{_pct(ci[0])}, {_pct(ci[1])}]" if ci and all(v is not None for v in ci) else ""
    return f"{_pct(rate)}{interval} n={n}" if n is not None else f"{_pct(rate)}{interval}"


@dataclass
class RunResult:
    """Everything a run produced. ``table()`` is what ``probes run`` prints."""

    config: RunConfig
    run_dir: Path
    layer: str
    probe_params: dict[str, Any]
    sweep: list[dict[str, Any]]
    test: EvalReport
    evals: dict[str, Any] = field(default_factory=dict)  # name -> EvalReport | single-class flag rates
    baselines: dict[str, Any] = field(default_factory=dict)
    generalization: Any = None
    bundle_dir: Path | None = None
    tracking: TrackingOutcome | None = None
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    datasets: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Detectors and cascade (probes.pipeline.second_opinions.SecondOpinions), when the config has them.
    second_opinions: Any = None

    @property
    def report_path(self) -> Path:
        return self.run_dir / "report.json"

    def summary(self) -> dict[str, Any]:
        """A small JSON-ready summary (``probes run --json``)."""
        t = self.test
        return {
            "run_dir": str(self.run_dir),
            "layer": self.layer,
            "probe": {"kind": self.config.probe.kind, "params": self.probe_params},
            "test": {
                "auroc": t.auroc,
                "auroc_ci": list(t.auroc_ci),
                "recall_at_fpr": t.recall_at_fpr,
                "target_fpr": t.target_fpr,
                "empirical_fpr": t.empirical_fpr,
                "ece": t.ece,
                "text_baseline_auroc": t.text_baseline_auroc,
                "text_baseline_span_auroc": t.text_baseline_span_auroc,
                "length_baseline_auroc": t.length_baseline_auroc,
            },
            "evals": {k: _eval_summary(v) for k, v in self.evals.items()},
            "threshold_transfer": [tt.to_dict() for tt in t.threshold_transfer],
            "bundle": str(self.bundle_dir) if self.bundle_dir else None,
            "tracking": self.tracking.to_dict() if self.tracking else None,
            "warnings": self.warnings,
            **(self.second_opinions.report() if self.second_opinions else {}),
        }

    def table(self) -> Any:
        """Rich renderable: the layer sweep, then one row per evaluated set at the chosen layer."""
        from rich.console import Group
        from rich.table import Table

        sweep = Table(
            title=f"Layer sweep · {self.config.probe.kind} · picked on validation AUROC", title_justify="left"
        )
        sweep.add_column("layer")
        sweep.add_column("val AUROC [95% CI]", justify="right")
        sweep.add_column("test AUROC", justify="right")
        for row in self.sweep:
            mark = " ←" if row["layer"] == self.layer else ""
            sweep.add_row(
                row["layer"] + mark,
                _fmt(row["val_auroc"]) + _fmt_ci((row.get("val_auroc_lo"), row.get("val_auroc_hi"))),
                _fmt(row.get("test_auroc")),
            )

        fpr = self.test.target_fpr
        results = Table(
            title=f"Results at {self.layer} (thresholds on the control set)", title_justify="left"
        )
        for column in (
            "set",
            "AUROC [95% CI]",
            f"recall@{_pct(fpr)}FPR",
            "FPR held-out, exact 95% CI",
            "ECE",
            "text",
            "span",
            "length",
        ):
            results.add_column(column, justify="left" if column == "set" else "right", no_wrap=True)
        rows = [("test", self.test)] + [(f"eval:{k}", v) for k, v in self.evals.items()]
        for name, rep in rows:
            if isinstance(rep, dict):  # a single-class eval set: only its flag rate is defined
                results.add_row(name, "-", "-", f"flags {_pct(rep.get('flag_rate'))}", "-", "-", "-", "-")
                continue
            results.add_row(
                name,
                _fmt(rep.auroc) + _fmt_ci(rep.auroc_ci),
                _pct(rep.recall_at_fpr),
                fpr_cell(rep.empirical_fpr, _held_out_ci(rep), _held_out_n(rep))
                + ("" if rep.threshold_source == "control" else "*"),
                _fmt(rep.ece),
                _fmt(rep.text_baseline_auroc),
                _fmt(rep.text_baseline_span_auroc),
                _fmt(rep.length_baseline_auroc),
            )
        results.caption = (
            "text / span / length: AUROC of baselines (TF-IDF on the full text, on the span; length features)"
        )
        if any(not isinstance(r, dict) and r.threshold_source != "control" for _, r in rows):
            results.caption += "\n* no control set: threshold and FPR from test negatives"
        parts: list[Any] = [sweep, results]
        if self.test.threshold_transfer:  # several control sets: does a threshold set on one hold on another?
            parts.append(self.test.threshold_transfer[0])
        if self.generalization is not None:
            parts.append(self.generalization)
        if self.second_opinions:  # detectors: and the stages: cascade
            parts.extend(self.second_opinions.tables())
        if self.warnings:
            notes = Table.grid()
            notes.add_column()
            for w in self.warnings:
                notes.add_row(f"[yellow]• {w}[/]")
            parts.append(notes)
        return Group(*parts)


def _held_out_ci(rep: Any) -> Sequence[float] | None:
    ops = getattr(rep, "operating_points", None)
    return tuple(ops[0].empirical_fpr_ci) if ops else None


def _held_out_n(rep: Any) -> int | None:
    ops = getattr(rep, "operating_points", None)
    return int(ops[0].n_control_holdout) if ops else None


def _eval_summary(rep: Any) -> dict[str, Any]:
    if isinstance(rep, dict):
        return rep
    return {"auroc": rep.auroc, "auroc_ci": list(rep.auroc_ci), "recall_at_fpr": rep.recall_at_fpr}


@dataclass
class TrainResult:
    """What ``probes train`` produced: the chosen layer and the saved bundle."""

    run_dir: Path
    bundle_dir: Path
    layer: str
    probe_params: dict[str, Any]
    sweep: list[dict[str, Any]]
    thresholds: list[dict[str, Any]]
    tracking: TrackingOutcome | None = None

    def table(self) -> Any:
        from rich.table import Table

        table = Table(title=f"Layer sweep (picked on validation): {self.layer}", title_justify="left")
        table.add_column("layer")
        table.add_column("val AUROC [95% CI]", justify="right")
        for row in self.sweep:
            mark = " ←" if row["layer"] == self.layer else ""
            table.add_row(
                row["layer"] + mark,
                _fmt(row["val_auroc"]) + _fmt_ci((row.get("val_auroc_lo"), row.get("val_auroc_hi"))),
            )
        return table


@dataclass
class EvaluateResult:
    """What ``probes evaluate`` produced for one dataset."""

    path: Path
    layer: str
    report: EvalReport | None
    at_bundle_threshold: dict[str, Any]
    detectors: list[Any] = field(default_factory=list)  # DetectorReport per detector in the bundle

    def table(self) -> Any:
        from rich.console import Group
        from rich.table import Table

        parts: list[Any] = []
        if self.report is not None:
            parts.append(self.report)
        t = Table(title="At the bundle's saved threshold", title_justify="left")
        t.add_column("quantity")
        t.add_column("value", justify="right")
        at = self.at_bundle_threshold
        for key, value in at.items():
            if key.endswith(("_ci", "_n")) and key.rsplit("_", 1)[0] in at:
                continue  # printed with their rate
            if key.startswith("fpr_on_"):
                t.add_row(key + " (exact 95% CI)", fpr_cell(value, at.get(f"{key}_ci"), at.get(f"{key}_n")))
            else:
                t.add_row(key, _fmt(value) if isinstance(value, float) else str(value))
        parts.append(t)
        parts.extend(self.detectors)
        return Group(*parts)
