"""How much a second opinion buys: recall at a fixed FPR of a two-stage cascade against the share escalated.

:func:`cascade_curve` fits a :class:`~probes.train.cascade.Cascade` on validation scores for each target
escalation fraction (band and threshold chosen on validation only), applies it to the test scores, and
records recall on the test positives and the false-positive rate on the test negatives at that threshold,
each with an exact (Clopper-Pearson) interval. Stage 1 alone is the point at escalation 0; stage 2 alone is
reported beside the curve with its own validation threshold. With the compute per decision of each stage
(:class:`StageCost`: measured seconds and/or FLOPs), every point also gets the expected compute per decision
``cost_1 + escalated share * cost_2`` -- the curve's price tag.

Both stages are compared on their validation-calibrated (Platt) log-odds: "stage 2 alone" thresholds the
same calibrated stage-2 scores the cascade uses, and a stage whose scores fall with the positive class on
validation (negative Platt slope) is flipped by that map and warned about.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from probes.evaluation.metrics import clopper_pearson
from probes.evaluation.report import _fmt_ci, _fmt_pct
from probes.evaluation.thresholds import _from_json_float, _json_float

SCHEMA_VERSION = 1
DEFAULT_FRACTIONS = (0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0)


@dataclass
class StageCost:
    """Compute per decision of one stage: measured seconds (wall, and process CPU) and/or FLOPs."""

    name: str
    seconds: float | None = None
    cpu_seconds: float | None = None
    flops: float | None = None
    note: str = ""

    @classmethod
    def of_probe(cls, probe: Any, name: str | None = None, X: Any = None, repeats: int = 3) -> StageCost:
        """A probe's FLOPs per row (:meth:`~probes.train.base.Probe.flops_per_row`) and, given rows ``X``,
        its measured seconds per row (best of ``repeats``)."""
        seconds = cpu = None
        if X is not None:
            n = int(X.shape[0]) if hasattr(X, "shape") else len(X)
            seconds, cpu = measure_seconds(lambda: probe.decision_function(X), repeats=repeats)
            seconds, cpu = seconds / max(n, 1), cpu / max(n, 1)
        flops = probe.flops_per_row() if hasattr(probe, "flops_per_row") else None
        return cls(
            name or str(getattr(probe, "kind", type(probe).__name__)),
            seconds,
            cpu,
            None if flops is None else float(flops),
            "probe on activations the monitored model computes anyway",
        )

    @classmethod
    def of_judge(cls, judge: Any, name: str = "LM judge") -> StageCost:
        """An :class:`~probes.train.judge.LMJudge`'s cost per decision, as measured by its last ``score``."""
        return cls(
            name,
            _finite_or_none(judge.seconds_per_decision_),
            _finite_or_none(judge.cpu_seconds_per_decision_),
            _finite_or_none(judge.flops_per_decision_),
            f"{judge.tokens_per_decision_:.0f} tokens forwarded per decision; {judge.n_params:,} parameters",
        )


def _finite_or_none(value: float) -> float | None:
    return float(value) if value is not None and math.isfinite(float(value)) else None


def measure_seconds(fn: Callable[[], Any], repeats: int = 3) -> tuple[float, float]:
    """Best-of-``repeats`` ``(wall seconds, process CPU seconds)`` of one call of ``fn``."""
    best_wall, best_cpu = math.inf, math.inf
    for _ in range(max(1, int(repeats))):
        w, c = time.perf_counter(), time.process_time()
        fn()
        best_wall = min(best_wall, time.perf_counter() - w)
        best_cpu = min(best_cpu, time.process_time() - c)
    return best_wall, best_cpu


@dataclass
class CascadePoint:
    """One cascade (one target escalation fraction) evaluated on the test set."""

    target_escalation: float
    val_escalation: float
    test_escalation: float
    band: tuple[float, float]
    threshold: float
    recall: float
    recall_ci: tuple[float, float]
    fpr: float
    fpr_ci: tuple[float, float]
    val_recall: float
    seconds_per_decision: float | None = None
    flops_per_decision: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("band", "recall_ci", "fpr_ci"):
            out[key] = [_json_float(v) for v in getattr(self, key)]
        for key in ("threshold", "recall", "fpr", "val_recall", "target_escalation"):
            out[key] = _json_float(getattr(self, key))
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CascadePoint:
        d = dict(data)
        for key in ("band", "recall_ci", "fpr_ci"):
            d[key] = tuple(_from_json_float(v) for v in d[key])
        for key in ("threshold", "recall", "fpr", "val_recall", "target_escalation"):
            d[key] = _from_json_float(d[key])
        return cls(**d)


@dataclass
class CascadeCurve:
    """Recall at ``target_fpr`` versus escalation fraction, with stage 2 alone and the stages' costs."""

    target_fpr: float
    combine: str
    threshold_source: str
    points: list[CascadePoint]
    stage2_alone: dict[str, Any]
    costs: list[StageCost]
    n_val: int
    n_test_pos: int
    n_test_neg: int
    confidence: float = 0.95
    warnings: list[str] = field(default_factory=list)
    schema_version: int = SCHEMA_VERSION

    @property
    def stage1_alone(self) -> CascadePoint | None:
        return next((p for p in self.points if p.target_escalation == 0.0), None)

    def to_dict(self) -> dict[str, Any]:
        s2 = dict(self.stage2_alone)
        for key in ("recall", "fpr", "threshold"):
            s2[key] = _json_float(s2[key])
        for key in ("recall_ci", "fpr_ci"):
            s2[key] = [_json_float(v) for v in s2[key]]
        return {
            "target_fpr": self.target_fpr,
            "combine": self.combine,
            "threshold_source": self.threshold_source,
            "points": [p.to_dict() for p in self.points],
            "stage2_alone": s2,
            "costs": [asdict(c) for c in self.costs],
            "n_val": self.n_val,
            "n_test_pos": self.n_test_pos,
            "n_test_neg": self.n_test_neg,
            "confidence": self.confidence,
            "warnings": list(self.warnings),
            "schema_version": self.schema_version,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CascadeCurve:
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"CascadeCurve.from_dict: unknown keys {sorted(unknown)} (schema mismatch?).")
        d = dict(data)
        d["points"] = [CascadePoint.from_dict(p) for p in d["points"]]
        s2 = dict(d["stage2_alone"])
        for key in ("recall", "fpr", "threshold"):
            s2[key] = _from_json_float(s2[key])
        for key in ("recall_ci", "fpr_ci"):
            s2[key] = tuple(_from_json_float(v) for v in s2[key])
        d["stage2_alone"] = s2
        d["costs"] = [StageCost(**c) for c in d["costs"]]
        return cls(**d)

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2, allow_nan=False)
        if path is not None:
            Path(path).write_text(text + "\n", encoding="utf-8")
        return text

    @classmethod
    def from_json(cls, path_or_text: str | Path) -> CascadeCurve:
        text = str(path_or_text)
        if not text.lstrip().startswith("{"):
            text = Path(path_or_text).read_text(encoding="utf-8")
        return cls.from_dict(json.loads(text))

    def __rich__(self) -> Any:
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        table = Table(
            title=f"Cascade · recall at FPR {_fmt_pct(self.target_fpr)} (threshold on {self.threshold_source})",
            caption=f"test: {self.n_test_pos} positives / {self.n_test_neg} negatives · combine={self.combine} · "
            f"{int(100 * self.confidence)}% exact CIs",
            header_style="bold",
        )
        for col in (
            "escalated (target / test)",
            "recall [CI]",
            "test FPR [CI]",
            "s / decision",
            "FLOPs / decision",
        ):
            table.add_column(col, justify="right")
        for p in self.points:
            table.add_row(
                f"{_fmt_pct(p.target_escalation)} / {_fmt_pct(p.test_escalation)}",
                f"{_fmt_pct(p.recall)} {_fmt_ci(p.recall_ci, pct=True)}",
                f"{_fmt_pct(p.fpr)} {_fmt_ci(p.fpr_ci, pct=True)}",
                _fmt_sci(p.seconds_per_decision),
                _fmt_sci(p.flops_per_decision),
            )
        s2 = self.stage2_alone
        table.add_row(
            "stage 2 alone",
            f"{_fmt_pct(s2['recall'])} {_fmt_ci(s2['recall_ci'], pct=True)}",
            f"{_fmt_pct(s2['fpr'])} {_fmt_ci(s2['fpr_ci'], pct=True)}",
            _fmt_sci(_cost_sum(self.costs, "seconds", 1.0, stage1=False)),
            _fmt_sci(_cost_sum(self.costs, "flops", 1.0, stage1=False)),
        )
        notes = [
            Text(f"{c.name}: {_fmt_sci(c.seconds)} s, {_fmt_sci(c.flops)} FLOPs per decision ({c.note})")
            for c in self.costs
        ]
        notes += [Text(f"warning: {w}", style="yellow") for w in self.warnings]
        return Group(table, *notes) if notes else table

    def __str__(self) -> str:
        from io import StringIO

        from rich.console import Console

        buffer = StringIO()
        Console(file=buffer, width=120, force_terminal=False, color_system=None).print(self.__rich__())
        return buffer.getvalue()

    def plot(self, path: str | Path) -> Path:
        """Recall at the target FPR versus escalation fraction (and versus compute per decision when the
        stages' costs are known), with stage 1 and stage 2 alone as references."""
        from probes.evaluation.plots import cascade_plot

        return cascade_plot(self, path)


def _fmt_sci(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:.3g}"


def _cost_sum(costs: Sequence[StageCost], attr: str, share: float, stage1: bool = True) -> float | None:
    """``cost_1 + share * cost_2`` (or ``share * cost_2`` alone), ``None`` when a needed cost is unknown."""
    if len(costs) < 2:
        return None
    c1, c2 = getattr(costs[0], attr), getattr(costs[1], attr)
    if c2 is None or (stage1 and c1 is None):
        return None
    return (c1 if stage1 else 0.0) + share * c2


def cascade_curve(
    stage1_val: Any,
    stage2_val: Any,
    y_val: Any,
    stage1_test: Any,
    stage2_test: Any,
    y_test: Any,
    *,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    target_fpr: float = 0.01,
    combine: str = "replace",
    control: tuple[Any, Any] | None = None,
    costs: Sequence[StageCost] = (),
    confidence: float = 0.95,
) -> CascadeCurve:
    """The cascade at each escalation fraction in ``fractions`` (see the module docstring).

    Scores are higher = more of the state for both stages, on the same validation and test rows (stage-2
    scores for every row, so that every fraction can be evaluated; a deployed cascade computes them only for
    the escalated rows, :meth:`Cascade.decide`). ``control=(s1, s2)`` sets thresholds on benign control
    scores instead of on the validation negatives. ``costs`` is ``[stage 1, stage 2]``.
    """
    from probes.train.cascade import Cascade

    s1v, s2v = np.asarray(stage1_val, dtype=np.float64), np.asarray(stage2_val, dtype=np.float64)
    s1t, s2t = np.asarray(stage1_test, dtype=np.float64), np.asarray(stage2_test, dtype=np.float64)
    yv, yt = np.asarray(y_val).astype(np.int64), np.asarray(y_test).astype(np.int64)
    if not (s1t.size == s2t.size == yt.size):
        raise ValueError("cascade_curve: stage1_test, stage2_test and y_test must score the same rows.")
    pos, neg = yt == 1, yt == 0
    if not pos.any() or not neg.any():
        raise ValueError("cascade_curve: the test set needs both classes.")
    costs = list(costs)
    if costs and len(costs) != 2:
        raise ValueError("cascade_curve: costs is [stage 1 cost, stage 2 cost].")
    warnings: list[str] = []
    points: list[CascadePoint] = []
    source = "validation negatives"
    for f in sorted({float(x) for x in fractions}):
        cascade = Cascade(escalation=f, target_fpr=target_fpr, combine=combine).fit(
            s1v, s2v, yv, control=control
        )
        source = cascade.threshold_source_
        final = cascade.scores(s1t, s2t)
        flagged = final > cascade.threshold_
        esc = float(cascade.escalate(s1t).mean())
        tp, fp = int(flagged[pos].sum()), int(flagged[neg].sum())
        points.append(
            CascadePoint(
                target_escalation=f,
                val_escalation=cascade.val_escalation_,
                test_escalation=esc,
                band=(cascade.lo_, cascade.hi_),
                threshold=float(cascade.threshold_),
                recall=tp / int(pos.sum()),
                recall_ci=clopper_pearson(tp, int(pos.sum()), confidence),
                fpr=fp / int(neg.sum()),
                fpr_ci=clopper_pearson(fp, int(neg.sum()), confidence),
                val_recall=cascade.val_recall_,
                seconds_per_decision=_cost_sum(costs, "seconds", esc),
                flops_per_decision=_cost_sum(costs, "flops", esc),
            )
        )
    # Stage 2 alone: every row escalated, its calibrated scores replacing stage 1's (the same map the cascade
    # uses, so the escalation-1 point with combine="replace" is exactly this), thresholded on the negatives.
    alone = Cascade(escalation=1.0, target_fpr=target_fpr, combine="replace").fit(
        s1v, s2v, yv, control=control
    )
    flagged2 = alone.scores(s1t, s2t) > alone.threshold_
    tp2, fp2 = int(flagged2[pos].sum()), int(flagged2[neg].sum())
    for stage, fitted in (("stage 1", alone.stage1_map_), ("stage 2", alone.stage2_map_)):
        if fitted.a_ < 0:
            warnings.append(
                f"{stage}'s scores fall as the positive class rises on validation (Platt slope {fitted.a_:.3g} "
                "< 0): the cascade uses them flipped. Check the probe's sign or the judge's question and answers."
            )
    stage2 = {
        "threshold": float(alone.threshold_),
        "recall": tp2 / int(pos.sum()),
        "recall_ci": clopper_pearson(tp2, int(pos.sum()), confidence),
        "fpr": fp2 / int(neg.sum()),
        "fpr_ci": clopper_pearson(fp2, int(neg.sum()), confidence),
    }
    if int(neg.sum()) < 1.0 / target_fpr:
        warnings.append(
            f"only {int(neg.sum())} test negatives: a test FPR near {target_fpr:g} cannot be resolved "
            "(one false positive moves it by more than the target)."
        )
    return CascadeCurve(
        target_fpr=float(target_fpr),
        combine=combine,
        threshold_source=source,
        points=points,
        stage2_alone=stage2,
        costs=costs,
        n_val=int(s1v.size),
        n_test_pos=int(pos.sum()),
        n_test_neg=int(neg.sum()),
        confidence=confidence,
        warnings=warnings,
    )
