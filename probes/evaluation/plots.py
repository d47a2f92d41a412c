"""Headless PNG plots of evaluation results.

Figures are built with ``matplotlib.figure.Figure`` directly (rendered by Agg), never through pyplot, so
plotting neither needs a display nor changes the backend or open figures of a notebook that calls it.
matplotlib is imported inside each function. Each function writes one PNG and returns its path.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

_COLORS = {"pos": "#d62728", "neg": "#1f77b4", "control": "#7f7f7f", "val": "#1f77b4", "test": "#ff7f0e"}


def _figure(**kwargs: Any) -> Any:
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def _save(fig: Any, path: str | Path) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=120, format="png")
    return out


#: Public names for other subpackages' plots (lens, regression): a matplotlib Figure without pyplot's global
#: state, and saving it as a PNG (folders made, layout tightened).
new_figure = _figure
save_figure = _save


def roc_curve_plot(
    y: Sequence[int] | np.ndarray,
    scores: Sequence[float] | np.ndarray,
    path: str | Path,
    *,
    operating_points: Sequence[tuple[float, float]] = (),
    title: str = "ROC",
) -> Path:
    """ROC curve of ``scores`` with each ``(target_fpr, threshold)`` marked where it lands on the test set.

    The marker sits at the *test* FPR/recall of the threshold (set on control data), so a gap between the
    marker's x and the target shows how far test negatives are from the control traffic.
    """
    from sklearn.metrics import roc_curve

    from probes.evaluation.metrics import auroc

    y_arr, s_arr = np.asarray(y), np.asarray(scores, dtype=np.float64)
    fpr, tpr, _ = roc_curve(y_arr, s_arr)
    n_neg = int((y_arr == 0).sum())
    # Monitors live at FPRs of 1% and below, which a linear axis squeezes into its first pixel: the right
    # panel repeats the curve on a log FPR axis down to one test negative.
    fig = _figure(figsize=(10, 4.8))
    ax_lin, ax_log = fig.subplots(1, 2)
    # Zero-FPR points are drawn at half a test negative so they stay on the log axis.
    floor = min([1.0 / max(n_neg, 1)] + [t for t, _ in operating_points])
    markers = ["o", "s", "^", "D", "v"]
    for ax, log in ((ax_lin, False), (ax_log, True)):
        x_curve = np.maximum(fpr, floor / 2) if log else fpr
        ax.plot(x_curve, tpr, color="black", lw=1.5, label=f"probe (AUROC {auroc(y_arr, s_arr):.3f})")
        diag = np.logspace(np.log10(floor / 2), 0, 50) if log else np.array([0.0, 1.0])
        ax.plot(diag, diag, ls=":", color="grey", lw=1, label="chance")
        for i, (target, threshold) in enumerate(operating_points):
            flagged = s_arr > threshold
            x, r = flagged[y_arr == 0].mean(), flagged[y_arr == 1].mean()
            color = f"C{i}"
            ax.plot(
                [max(x, floor / 2) if log else x],
                [r],
                marker=markers[i % len(markers)],
                ms=8,
                ls="none",
                color=color,
                label=f"threshold @ target FPR {100 * target:g}%: recall {100 * r:.1f}%",
            )
            if log:
                ax.axvline(target, color=color, ls="--", lw=0.8)
        ax.set_ylim(0.0, 1.01)
        ax.grid(alpha=0.3)
        ax.set_ylabel("recall (true-positive rate)")
        if log:
            ax.set_xscale("log")
            ax.set_xlim(floor / 2, 1.0)
            ax.set(xlabel="false-positive rate (log; dashed: targets)", title="low-FPR region")
        else:
            ax.set_xlim(-0.01, 1.0)
            ax.set(xlabel="false-positive rate (test negatives)", title=title)
            ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def reliability_diagram(
    reliability: Mapping[str, Sequence[float]], path: str | Path, *, title: str = "Reliability"
) -> Path:
    """Observed frequency vs mean predicted probability per equal-mass bin, with bin counts below."""
    pred = np.asarray(reliability["mean_predicted"], dtype=np.float64)
    obs = np.asarray(reliability["observed_frequency"], dtype=np.float64)
    counts = np.asarray(reliability["counts"], dtype=np.int64)
    fig = _figure(figsize=(5, 6))
    ax, axc = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], ls=":", color="grey", lw=1, label="perfect calibration")
    ax.plot(pred, obs, marker="o", color="black", label="probe")
    ax.set(ylabel="observed frequency of positives", title=title)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    lower = np.asarray(reliability.get("bin_lower", pred), dtype=np.float64)
    upper = np.asarray(reliability.get("bin_upper", pred), dtype=np.float64)
    widths = np.maximum(upper - lower, 0.01)
    axc.bar(lower, counts, width=widths, align="edge", color="#9ecae1", edgecolor="black", lw=0.5)
    if counts.size and counts.min() == counts.max():
        axc.set_title(f"equal-mass bins: {int(counts[0])} rows each", fontsize=9)
    else:
        axc.set_title("equal-mass bins (rows per bin annotated)", fontsize=9)
        for x, c in zip(pred, counts, strict=True):
            axc.annotate(str(int(c)), (x, c), ha="center", va="bottom", fontsize=7)
    axc.set(xlabel="mean predicted probability", ylabel="rows per bin")
    axc.set_ylim(0, max(1, int(counts.max(initial=1))) * 1.3)
    return _save(fig, path)


def score_histograms(
    y: Sequence[int] | np.ndarray,
    scores: Sequence[float] | np.ndarray,
    path: str | Path,
    *,
    control_scores: Sequence[float] | np.ndarray | None = None,
    thresholds: Sequence[tuple[float, float]] = (),
    title: str = "Scores",
) -> Path:
    """Density histograms of positive, negative and control scores with each threshold as a vertical line."""
    y_arr, s_arr = np.asarray(y), np.asarray(scores, dtype=np.float64)
    groups = [
        (s_arr[y_arr == 1], "test positives", _COLORS["pos"]),
        (s_arr[y_arr == 0], "test negatives", _COLORS["neg"]),
    ]
    if control_scores is not None and len(control_scores):
        groups.append((np.asarray(control_scores, dtype=np.float64), "benign control", _COLORS["control"]))
    everything = np.concatenate([g[0] for g in groups])
    bins = np.histogram_bin_edges(everything, bins=40)
    fig = _figure(figsize=(7, 4))
    ax = fig.subplots()
    for values, label, color in groups:
        ax.hist(values, bins=bins, density=True, alpha=0.45, color=color, label=f"{label} (n={values.size})")
    styles = ["--", "-.", ":", (0, (5, 1))]
    for i, (target, threshold) in enumerate(thresholds):
        if math.isfinite(threshold):
            ax.axvline(
                threshold,
                color="black",
                ls=styles[i % len(styles)],
                lw=1.2,
                label=f"threshold @ FPR {100 * target:g}%",
            )
    ax.set(xlabel="probe score (decision function)", ylabel="density", title=title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def layer_sweep_plot(
    table: Sequence[Mapping[str, Any]],
    path: str | Path,
    *,
    best_layer: str | None = None,
    title: str = "Layer sweep",
) -> Path:
    """Validation (and test, when present) AUROC per layer; the layer picked on validation is marked."""
    layers = [str(row["layer"]) for row in table]
    x = np.arange(len(layers))
    fig = _figure(figsize=(max(5, 0.45 * len(layers) + 2), 4))
    ax = fig.subplots()
    val = np.array([row.get("val_auroc", np.nan) for row in table], dtype=np.float64)
    ax.plot(x, val, marker="o", color=_COLORS["val"], label="validation AUROC")
    test = np.array(
        [row.get("test_auroc", np.nan) if row.get("test_auroc") is not None else np.nan for row in table],
        dtype=np.float64,
    )
    if np.isfinite(test).any():
        lo = np.array([row.get("test_auroc_lo", np.nan) or np.nan for row in table], dtype=np.float64)
        hi = np.array([row.get("test_auroc_hi", np.nan) or np.nan for row in table], dtype=np.float64)
        ax.plot(x, test, marker="s", color=_COLORS["test"], label="test AUROC")
        if np.isfinite(lo).any():
            ax.fill_between(x, lo, hi, color=_COLORS["test"], alpha=0.2, label="test 95% CI")
    if best_layer is not None and best_layer in layers:
        ax.axvline(
            layers.index(best_layer), color="black", ls="--", lw=1, label=f"picked on val: {best_layer}"
        )
    ax.set_xticks(x, [name.replace("layers.", "") for name in layers])
    ax.set(xlabel="layer", ylabel="AUROC", title=title)
    finite = np.concatenate([val[np.isfinite(val)], test[np.isfinite(test)]])
    ax.set_ylim(min(0.45, float(finite.min()) - 0.02) if finite.size else 0.45, 1.01)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def generalization_heatmap(
    matrix: Sequence[Sequence[float]],
    names: Sequence[str],
    path: str | Path,
    *,
    title: str = "Generalisation (AUROC)",
) -> Path:
    """Rows: dataset trained on; columns: dataset evaluated on; cells annotated with AUROC."""
    m = np.asarray(matrix, dtype=np.float64)
    size = max(4.0, 0.9 * len(names) + 2.5)
    fig = _figure(figsize=(size, size * 0.85))
    ax = fig.subplots()
    # Diverging around chance: below-0.5 cells (a probe that transfers *inverted*) stand out in red.
    im = ax.imshow(m, vmin=0.0, vmax=1.0, cmap="RdYlGn")
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            value = m[i, j]
            text = "-" if not np.isfinite(value) else f"{value:.2f}"
            ax.text(j, i, text, ha="center", va="center", color="black", fontsize=9)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set(xlabel="evaluated on", ylabel="trained on", title=title)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="AUROC")
    return _save(fig, path)


def threshold_transfer_heatmap(transfer: Any, path: str | Path, *, title: str | None = None) -> Path:
    """Rows: the set a threshold was set on (and ``pooled``); columns: the set whose held-out FPR it gives.

    Colour is the FPR as a multiple of the target on a log scale centred at 1 (green at or under the target,
    red above); each cell shows the FPR, its exact interval and the false-positive count. Cells whose whole
    interval lies above the target are outlined.
    """
    from matplotlib.colors import LogNorm
    from matplotlib.patches import Rectangle

    target = float(transfer.target_fpr)
    m = np.asarray(transfer.fpr, dtype=np.float64)
    ratio = np.clip(np.where(np.isfinite(m), m, np.nan) / target, 1 / 8, 8)
    ratio = np.where(ratio > 0, ratio, 1 / 8)
    rows, cols = list(transfer.sources), list(transfer.sets)
    fig = _figure(figsize=(max(4.5, 1.9 * len(cols) + 2.5), max(3.2, 0.9 * len(rows) + 1.8)))
    ax = fig.subplots()
    im = ax.imshow(ratio, norm=LogNorm(vmin=1 / 8, vmax=8), cmap="RdYlGn_r", aspect="auto")
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            lo, hi = transfer.fpr_ci[i][j]
            text = (
                "-" if not np.isfinite(m[i, j]) else f"{100 * m[i, j]:.1f}%\n[{100 * lo:.1f}, {100 * hi:.1f}]"
            )
            text += f"\n{transfer.n_false_positives[i][j]}/{transfer.n_holdout[j]}"
            ax.text(j, i, text, ha="center", va="center", color="black", fontsize=8)
            if lo > target:
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, lw=2.5, ec="black"))
    ax.set_xticks(range(len(cols)), [f"{c}\n(n={n})" for c, n in zip(cols, transfer.n_holdout, strict=True)])
    ax.set_yticks(range(len(rows)), rows)
    ax.set(
        xlabel="FPR measured on (held-out rows)",
        ylabel="threshold set on",
        title=title or f"Threshold transfer · target FPR {100 * target:g}%",
    )
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="FPR / target")
    return _save(fig, path)


def anomaly_score_histograms(
    sets: Mapping[str, Sequence[float]],
    path: str | Path,
    *,
    threshold: float | None = None,
    title: str = "Anomaly scores",
) -> Path:
    """Density histograms of anomaly scores per set (benign, shifted benign, novel) with the threshold.

    Anomaly scores are non-negative and heavy-tailed (a novel set can sit orders of magnitude above benign
    rows), so the axis is logarithmic when every score is positive.
    """
    arrays = {k: np.asarray(v, dtype=np.float64) for k, v in sets.items() if len(v)}
    everything = np.concatenate(list(arrays.values())) if arrays else np.zeros(1)
    log = bool(everything.size) and float(everything.min()) > 0
    if log:
        bins = np.logspace(np.log10(everything.min()), np.log10(everything.max() * 1.0001), 50)
    else:
        bins = np.histogram_bin_edges(everything, bins=50)
    fig = _figure(figsize=(8, 4.5))
    ax = fig.subplots()
    for i, (label, values) in enumerate(arrays.items()):
        color = _COLORS["control"] if label.startswith("benign calibration") else f"C{i}"
        ax.hist(
            values,
            bins=bins,
            density=True,
            histtype="stepfilled" if i < 2 else "step",
            alpha=0.4 if i < 2 else 0.9,
            lw=1.5,
            color=color,
            label=f"{label} (n={values.size})",
        )
    if threshold is not None and math.isfinite(threshold):
        ax.axvline(threshold, color="black", ls="--", lw=1.2, label="calibrated threshold")
    if log:
        ax.set_xscale("log")
    ax.set(xlabel="anomaly score (higher = less like benign)", ylabel="density", title=title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def novel_roc_plot(
    benign_scores: Sequence[float],
    novel_scores: Mapping[str, Sequence[float]],
    path: str | Path,
    *,
    threshold: float | None = None,
    title: str = "Novel vs benign",
) -> Path:
    """ROC of every novel set against the benign rows on a log false-alarm axis, each marked where the
    calibrated threshold lands."""
    from sklearn.metrics import roc_curve

    from probes.evaluation.metrics import auroc

    b = np.asarray(benign_scores, dtype=np.float64)
    floor = 1.0 / max(b.size, 1)
    fig = _figure(figsize=(6.5, 4.8))
    ax = fig.subplots()
    for i, (name, values) in enumerate(novel_scores.items()):
        s = np.asarray(values, dtype=np.float64)
        y = np.r_[np.zeros(b.size), np.ones(s.size)]
        scores = np.r_[b, s]
        fpr, tpr, _ = roc_curve(y, scores)
        ax.plot(
            np.maximum(fpr, floor / 2),
            tpr,
            color=f"C{i}",
            lw=1.5,
            label=f"{name} (AUROC {auroc(y, scores):.3f})",
        )
        if threshold is not None and math.isfinite(threshold):
            x, r = float((b > threshold).mean()), float((s > threshold).mean())
            ax.plot([max(x, floor / 2)], [r], marker="o", ms=7, color=f"C{i}", ls="none")
    diag = np.logspace(np.log10(floor / 2), 0, 50)
    ax.plot(diag, diag, ls=":", color="grey", lw=1, label="chance")
    ax.set_xscale("log")
    ax.set_xlim(floor / 2, 1.0)
    ax.set_ylim(0.0, 1.01)
    ax.set(
        xlabel="false-alarm rate on benign (log; dots: calibrated threshold)",
        ylabel="detection rate",
        title=title,
    )
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def false_alarm_plot(
    rates: Sequence[tuple[str, float, tuple[float, float], int]],
    path: str | Path,
    *,
    target_fpr: float,
    title: str = "False alarms",
) -> Path:
    """False-alarm rate of each benign set ``(name, rate, (lo, hi), n)`` with its exact interval against the
    target: a shifted set whose interval sits above the line breaks the calibration."""
    fig = _figure(figsize=(max(5.0, 1.4 * len(rates) + 2.5), 4))
    ax = fig.subplots()
    x = np.arange(len(rates))
    for i, (_, rate, (lo, hi), _) in enumerate(rates):
        color = "#d62728" if lo > target_fpr else "#1f77b4"
        ax.errorbar([i], [rate], yerr=[[rate - lo], [hi - rate]], fmt="o", color=color, capsize=5, ms=7)
    ax.axhline(target_fpr, color="black", ls="--", lw=1, label=f"target {100 * target_fpr:g}%")
    ax.set_xticks(x, [f"{name}\n(n={n})" for name, _, _, n in rates], fontsize=8)
    ax.set(ylabel="false-alarm rate (95% exact CI)", title=title)
    ax.set_ylim(0.0, max(0.05, min(1.0, 1.15 * max(hi for _, _, (_, hi), _ in rates))))
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)


def cascade_plot(curve: Any, path: str | Path) -> Path:
    """Left: recall at the target FPR (exact CI band) versus the share of rows escalated to stage 2, with
    stage 1 and stage 2 alone as references. Right (when the stages' costs are known): the same recall
    versus expected compute per decision, on a log axis."""
    points = sorted(curve.points, key=lambda p: p.test_escalation)
    x = np.array([p.test_escalation for p in points])
    r = np.array([p.recall for p in points])
    lo = np.array([p.recall_ci[0] for p in points])
    hi = np.array([p.recall_ci[1] for p in points])
    cost = np.array([np.nan if p.seconds_per_decision is None else p.seconds_per_decision for p in points])
    flops = np.array([np.nan if p.flops_per_decision is None else p.flops_per_decision for p in points])
    second = cost if np.isfinite(cost).all() and cost.size else flops
    unit = "seconds" if second is cost else "FLOPs"
    panels = 2 if second.size and np.isfinite(second).all() and (second > 0).all() else 1
    fig = _figure(figsize=(6 * panels, 4.5))
    axes = fig.subplots(1, panels)
    axes = [axes] if panels == 1 else list(axes)
    stage1 = curve.stage1_alone
    s2 = curve.stage2_alone
    target = f"{100 * curve.target_fpr:g}%"
    for i, ax in enumerate(axes):
        xs = x if i == 0 else second
        ax.fill_between(xs, lo, hi, color="#1f77b4", alpha=0.2, label="95% exact CI")
        ax.plot(xs, r, marker="o", color="#1f77b4", label="cascade")
        if stage1 is not None:
            ax.axhline(
                stage1.recall,
                color="#7f7f7f",
                ls=":",
                lw=1.2,
                label=f"stage 1 alone ({100 * stage1.recall:.1f}%)",
            )
        ax.axhline(
            s2["recall"], color="#d62728", ls="--", lw=1.2, label=f"stage 2 alone ({100 * s2['recall']:.1f}%)"
        )
        ax.set_ylim(0.0, 1.01)
        ax.grid(alpha=0.3)
        ax.set_ylabel(f"recall at FPR {target} (threshold from {curve.threshold_source})")
        if i == 0:
            ax.set(xlabel="share of rows escalated to stage 2 (test)", title="Cascade: recall vs escalation")
            ax.set_xlim(-0.02, 1.02)
            ax.legend(fontsize=8, loc="lower right")
        else:
            ax.set_xscale("log")
            ax.set(xlabel=f"expected compute per decision ({unit}, log)", title="Cascade: recall vs compute")
    return _save(fig, path)
