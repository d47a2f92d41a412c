"""Threshold transfer between benign control sets: a threshold set on A, the false-positive rate it gives on B.

The conformal threshold (:func:`~probes.evaluation.thresholds.conformal_threshold`) keeps the FPR at the target
only for traffic *exchangeable* with its control set. With several benign sets (chat, code, another language,
another product surface) that assumption can be tested before deploying: each set is split (seeded, by group)
into a calibration part and a held-out part, a threshold is set on every set's calibration part - and on
all of them pooled, which is what :func:`~probes.evaluation.evaluate` reports and a bundle stores - and each
is applied to every set's held-out part. Row ``A``, column ``B`` is the FPR on B's held-out rows of the
threshold set on A, with its exact (Clopper-Pearson) interval; every column uses the same rows. The diagonal
is the in-distribution check; an off-diagonal cell whose interval lies above the target shows a shift the
threshold does not survive.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from probes.evaluation.metrics import clopper_pearson
from probes.evaluation.thresholds import _from_json_float, _json_float, conformal_threshold

POOLED = "pooled"


@dataclass
class ThresholdTransfer:
    """``fpr[i][j]``: FPR on the held-out part of ``sets[j]`` of the threshold set on ``sources[i]``.

    ``sources`` are the control sets and, last, ``"pooled"`` (every set's calibration part together).
    """

    target_fpr: float
    sets: list[str]
    sources: list[str]
    thresholds: list[float]
    n_cal: list[int]  # per source
    n_holdout: list[int]  # per set (column)
    n_false_positives: list[list[int]]
    fpr: list[list[float]]
    fpr_ci: list[list[tuple[float, float]]]
    confidence: float = 0.95
    warnings: list[str] = field(default_factory=list)

    def cell(self, source: str, target: str) -> tuple[float, tuple[float, float], int]:
        """``(fpr, ci, n held-out)`` of the threshold set on ``source`` applied to ``target``."""
        i, j = self.sources.index(source), self.sets.index(target)
        return self.fpr[i][j], self.fpr_ci[i][j], self.n_holdout[j]

    @property
    def worst(self) -> tuple[str, str, float]:
        """The (source, target, FPR) of the highest FPR off the diagonal (a set's own threshold excluded)."""
        cells = [
            (src, dst, self.fpr[i][j])
            for i, src in enumerate(self.sources)
            for j, dst in enumerate(self.sets)
            if src != dst and math.isfinite(self.fpr[i][j])
        ]
        return max(cells, key=lambda c: c[2]) if cells else ("", "", float("nan"))

    def to_dict(self) -> dict[str, Any]:
        return {
            "target_fpr": self.target_fpr,
            "rows": "threshold set on",
            "columns": "FPR measured on (held-out part)",
            "sets": list(self.sets),
            "sources": list(self.sources),
            "thresholds": [_json_float(v) for v in self.thresholds],
            "n_cal": list(self.n_cal),
            "n_holdout": list(self.n_holdout),
            "n_false_positives": [list(r) for r in self.n_false_positives],
            "fpr": [[_json_float(v) for v in r] for r in self.fpr],
            "fpr_ci": [[[_json_float(v) for v in ci] for ci in r] for r in self.fpr_ci],
            "confidence": self.confidence,
            "warnings": list(self.warnings),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ThresholdTransfer:
        d = {k: v for k, v in data.items() if k not in {"rows", "columns"}}
        d["thresholds"] = [_from_json_float(v) for v in d["thresholds"]]
        d["fpr"] = [[_from_json_float(v) for v in r] for r in d["fpr"]]
        d["fpr_ci"] = [[tuple(_from_json_float(v) for v in ci) for ci in r] for r in d["fpr_ci"]]
        return cls(**d)

    def __rich__(self) -> Any:
        from rich.table import Table

        table = Table(
            title=f"Threshold transfer at target FPR {100 * self.target_fpr:g}% "
            "(rows: threshold set on; columns: FPR on held-out rows)",
            title_justify="left",
        )
        table.add_column("set on \\ FPR on")
        for name, n in zip(self.sets, self.n_holdout, strict=True):
            table.add_column(f"{name} (n={n})", justify="right", no_wrap=True)
        for i, src in enumerate(self.sources):
            cells = []
            for j, dst in enumerate(self.sets):
                lo, hi = self.fpr_ci[i][j]
                text = f"{_pct(self.fpr[i][j])} [{_pct(lo)}, {_pct(hi)}]"
                if lo > self.target_fpr:
                    text = f"[red]{text}[/red]"
                elif src == dst:
                    text = f"[bold]{text}[/bold]"
                cells.append(text)
            table.add_row(src, *cells)
        table.caption = (
            f"{int(100 * self.confidence)}% exact intervals; red: the interval lies above the target, so the "
            "threshold does not transfer to that set"
        )
        return table

    def plot(self, path: str | Path, *, title: str | None = None) -> Path:
        from probes.evaluation.plots import threshold_transfer_heatmap

        return threshold_transfer_heatmap(self, path, title=title)


def _pct(value: float) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{100 * value:.1f}%"


def threshold_transfer(
    cal_scores: Sequence[Any],
    holdout_scores: Sequence[Any],
    names: Sequence[str],
    target_fpr: float,
    *,
    confidence: float = 0.95,
) -> ThresholdTransfer:
    """The transfer matrix of benign scores already split per set into calibration and held-out parts.

    ``cal_scores[k]`` / ``holdout_scores[k]`` are set ``names[k]``'s decision scores. :func:`evaluate` calls
    this with ``control={"a": ..., "b": ...}``; use it directly for scores from anywhere.
    """
    if len(names) < 2:
        raise ValueError("threshold_transfer needs at least two control sets.")
    if not (len(cal_scores) == len(holdout_scores) == len(names)):
        raise ValueError("cal_scores, holdout_scores and names must have one entry per control set.")
    cal = [np.asarray(c, dtype=np.float64).ravel() for c in cal_scores]
    hold = [np.asarray(h, dtype=np.float64).ravel() for h in holdout_scores]
    sources = [*names, POOLED]
    thresholds = [conformal_threshold(c, target_fpr) for c in cal]
    thresholds.append(conformal_threshold(np.concatenate(cal), target_fpr))
    n_cal = [int(c.size) for c in cal] + [int(sum(c.size for c in cal))]
    counts, fprs, cis = [], [], []
    for t in thresholds:
        k = [int(np.sum(h > t)) for h in hold]
        counts.append(k)
        fprs.append([ki / h.size if h.size else float("nan") for ki, h in zip(k, hold, strict=True)])
        cis.append([clopper_pearson(ki, h.size, confidence) for ki, h in zip(k, hold, strict=True)])
    result = ThresholdTransfer(
        target_fpr=float(target_fpr),
        sets=list(names),
        sources=sources,
        thresholds=thresholds,
        n_cal=n_cal,
        n_holdout=[int(h.size) for h in hold],
        n_false_positives=counts,
        fpr=fprs,
        fpr_ci=cis,
        confidence=confidence,
    )
    result.warnings = _shift_warnings(result)
    return result


def _shift_warnings(t: ThresholdTransfer) -> list[str]:
    """One line per cell whose whole interval lies above the target (a shift beyond sampling noise)."""
    out = []
    for i, src in enumerate(t.sources):
        for j, dst in enumerate(t.sets):
            lo, hi = t.fpr_ci[i][j]
            if src == dst or not lo > t.target_fpr:
                continue
            what = "the pooled threshold" if src == POOLED else f"a threshold set on control set {src!r}"
            out.append(
                f"{what} gives FPR {_pct(t.fpr[i][j])} [{_pct(lo)}, {_pct(hi)}] on {dst!r} (target "
                f"{100 * t.target_fpr:g}%, n={t.n_holdout[j]}): the benign sets are not exchangeable, so "
                "the threshold does not transfer. Calibrate on traffic like the deployment's, or set a "
                "threshold per traffic source."
            )
    return out
