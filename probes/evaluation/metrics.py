"""Ranking and accuracy metrics with bootstrap confidence intervals.

All metrics take ``y`` (0/1, 1 = the state the probe detects) and ``scores`` (higher = more of it). AUROC and
AUPRC are undefined when only one class is present: they return ``nan`` rather than raising, so a bootstrap
resample that happens to draw one class is simply dropped.

Bootstrap intervals are percentile intervals. When ``groups`` are given the *groups* are resampled with
replacement (every row of a drawn group comes along), because rows of one group (a contrast pair, one source
document) are not independent and a row bootstrap would understate the uncertainty.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

Metric = Callable[[np.ndarray, np.ndarray], float]


def _as_arrays(y: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    y_arr = np.asarray(y).astype(np.int64).ravel()
    s_arr = np.asarray(scores, dtype=np.float64).ravel()
    if y_arr.shape != s_arr.shape:
        raise ValueError(f"labels and scores differ in length: {y_arr.shape[0]} vs {s_arr.shape[0]}.")
    if y_arr.size and not np.isin(y_arr, (0, 1)).all():
        raise ValueError("labels must be 0/1 (1 = the state the probe detects).")
    return y_arr, s_arr


def auroc(y: Any, scores: Any) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties); ``nan`` if one class."""
    from scipy.stats import rankdata

    y_arr, s_arr = _as_arrays(y, scores)
    n_pos = int(y_arr.sum())
    n_neg = y_arr.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(s_arr)
    return float((ranks[y_arr == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def auprc(y: Any, scores: Any) -> float:
    """Average precision (step-wise area under the precision-recall curve, as scikit-learn computes it)."""
    y_arr, s_arr = _as_arrays(y, scores)
    n_pos = int(y_arr.sum())
    if n_pos == 0 or n_pos == y_arr.size:
        return float("nan")
    order = np.argsort(-s_arr, kind="mergesort")
    s_sorted, y_sorted = s_arr[order], y_arr[order]
    # One operating point per distinct score: tied rows enter together.
    last_of_tie = np.r_[np.flatnonzero(np.diff(s_sorted)), y_sorted.size - 1]
    tp = np.cumsum(y_sorted)[last_of_tie]
    flagged = last_of_tie + 1
    precision = tp / flagged
    recall = tp / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def accuracy(y: Any, scores: Any, threshold: float = 0.0) -> float:
    """Fraction correct when flagging ``score > threshold`` (0 = the decision function's own boundary)."""
    y_arr, s_arr = _as_arrays(y, scores)
    if y_arr.size == 0:
        return float("nan")
    return float(np.mean((s_arr > threshold).astype(np.int64) == y_arr))


def group_codes(groups: Sequence[Any] | np.ndarray | None, n: int) -> np.ndarray | None:
    """Integer group codes ``(n,)``; ``None`` entries become their own singleton group."""
    if groups is None:
        return None
    items = list(groups)
    if len(items) != n:
        raise ValueError(f"groups has {len(items)} entries but there are {n} rows.")
    keys = [("row", i) if g is None else ("group", str(g)) for i, g in enumerate(items)]
    lookup: dict[tuple[str, Any], int] = {}
    return np.fromiter((lookup.setdefault(k, len(lookup)) for k in keys), dtype=np.int64, count=n)


def bootstrap_indices(
    n: int, groups: Sequence[Any] | np.ndarray | None = None, *, n_bootstrap: int = 1000, seed: int = 0
) -> Iterator[np.ndarray]:
    """Yield ``n_bootstrap`` resampled row-index arrays.

    Without groups, rows are drawn with replacement (``n`` per resample). With groups, as many groups as
    there are are drawn with replacement and every row of each drawn group is included, so resample sizes
    vary with group sizes.
    """
    rng = np.random.default_rng(seed)
    codes = group_codes(groups, n)
    if codes is None:
        for _ in range(n_bootstrap):
            yield rng.integers(0, n, size=n)
        return
    order = np.argsort(codes, kind="mergesort")
    counts = np.bincount(codes)
    starts = np.r_[0, np.cumsum(counts)[:-1]]
    n_groups = counts.size
    for _ in range(n_bootstrap):
        drawn = rng.integers(0, n_groups, size=n_groups)
        sizes = counts[drawn]
        # Row positions in `order` for each drawn group: start of the group + 0..size-1.
        within = np.arange(sizes.sum()) - np.repeat(np.cumsum(sizes) - sizes, sizes)
        yield order[np.repeat(starts[drawn], sizes) + within]


def bootstrap_ci(
    metric: Metric,
    y: Any,
    scores: Any,
    groups: Sequence[Any] | np.ndarray | None = None,
    *,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``metric(y, scores)``; resamples groups when ``groups`` is given.

    Resamples where the metric is undefined (``nan``, e.g. one class drawn) are dropped; if none is
    defined the interval is ``(nan, nan)``.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}.")
    y_arr, s_arr = _as_arrays(y, scores)
    if n_bootstrap <= 0 or y_arr.size == 0:
        return (float("nan"), float("nan"))
    resamples = bootstrap_indices(y_arr.size, groups, n_bootstrap=n_bootstrap, seed=seed)
    fast = _WEIGHTED.get(metric)
    if fast is not None:
        # A resample is the original rows with multiplicities: score it from one sort of the data.
        ranked = _Ranked(y_arr, s_arr)
        values = np.array([fast(ranked, np.bincount(idx, minlength=y_arr.size)) for idx in resamples])
    else:
        values = np.array([metric(y_arr[idx], s_arr[idx]) for idx in resamples])
    values = values[np.isfinite(values)]
    if values.size == 0:
        return (float("nan"), float("nan"))
    tail = 100.0 * (1.0 - confidence) / 2.0
    lo, hi = np.percentile(values, [tail, 100.0 - tail])
    return (float(lo), float(hi))


class _Ranked:
    """Labels and scores sorted once, with tie blocks, for scoring weighted resamples in O(n)."""

    def __init__(self, y: np.ndarray, scores: np.ndarray) -> None:
        self.order = np.argsort(scores, kind="mergesort")
        s_sorted = scores[self.order]
        self.y = y[self.order].astype(np.float64)
        # block id of each sorted row: rows with equal scores share a block (ties count as one threshold)
        self.block = np.r_[0, np.cumsum(np.diff(s_sorted) != 0)]
        self.n_blocks = int(self.block[-1]) + 1 if y.size else 0
        self.correct = (scores > 0.0).astype(np.int64) == y

    def block_sums(self, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        w = weights[self.order].astype(np.float64)
        pos = np.bincount(self.block, w * self.y, minlength=self.n_blocks)
        neg = np.bincount(self.block, w * (1.0 - self.y), minlength=self.n_blocks)
        return pos, neg


def _auroc_weighted(r: _Ranked, weights: np.ndarray) -> float:
    pos, neg = r.block_sums(weights)
    total_pos, total_neg = pos.sum(), neg.sum()
    if total_pos == 0 or total_neg == 0:
        return float("nan")
    neg_below = np.cumsum(neg) - neg
    return float(np.sum(pos * (neg_below + 0.5 * neg)) / (total_pos * total_neg))


def _auprc_weighted(r: _Ranked, weights: np.ndarray) -> float:
    pos, neg = r.block_sums(weights)
    total_pos = pos.sum()
    if total_pos == 0 or neg.sum() == 0:
        return float("nan")
    pos, neg = pos[::-1], neg[::-1]  # highest scores first
    tp = np.cumsum(pos)
    flagged = tp + np.cumsum(neg)
    precision = np.divide(tp, flagged, out=np.zeros_like(tp), where=flagged > 0)
    return float(np.sum(pos / total_pos * precision))


def _accuracy_weighted(r: _Ranked, weights: np.ndarray) -> float:
    total = weights.sum()
    return float(np.dot(weights, r.correct) / total) if total else float("nan")


_WEIGHTED: dict[Callable[..., float], Callable[[_Ranked, np.ndarray], float]] = {}


def with_ci(
    metric: Metric,
    y: Any,
    scores: Any,
    groups: Sequence[Any] | np.ndarray | None = None,
    *,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, tuple[float, float]]:
    """``(metric value, (lo, hi))`` with a (grouped) percentile bootstrap interval."""
    value = metric(*_as_arrays(y, scores))
    ci = bootstrap_ci(metric, y, scores, groups, n_bootstrap=n_bootstrap, confidence=confidence, seed=seed)
    return float(value), ci


_WEIGHTED.update({auroc: _auroc_weighted, auprc: _auprc_weighted, accuracy: _accuracy_weighted})


def clopper_pearson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper-Pearson) binomial interval for a proportion ``k / n``; ``(0, 1)`` when ``n == 0``."""
    from scipy.stats import beta

    if n < 0 or not 0 <= k <= max(n, 0):
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}.")
    if n == 0:
        return (0.0, 1.0)
    a = 1.0 - confidence
    lo = 0.0 if k == 0 else float(beta.ppf(a / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - a / 2, k + 1, n - k))
    return (lo, hi)
