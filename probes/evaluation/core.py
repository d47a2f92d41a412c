"""``evaluate``: one probe, one held-out test set, a benign control set -> an :class:`EvalReport`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from probes.evaluation.baseline import BaselineResult, confound_check
from probes.evaluation.calibration import (
    brier_score,
    expected_calibration_error,
    make_calibrator,
    reliability_curve,
)
from probes.evaluation.metrics import accuracy, auprc, auroc, group_codes, with_ci
from probes.evaluation.report import EvalReport
from probes.evaluation.thresholds import operating_point
from probes.evaluation.transfer import threshold_transfer

if TYPE_CHECKING:
    from probes.collection.activations import Activations
    from probes.train.base import Probe

#: Below this many groups a grouped bootstrap has too few distinct resamples for its interval to mean much.
MIN_GROUPS = 10

# What `test=`, `control=` and `calibration=` accept.
DataLike = Any  # Activations | (X, y) | (X, y, groups) | X (control only)


@dataclass
class Split:
    """Features of one split at one site, with labels and groups as plain arrays."""

    X: Any  # torch.Tensor | np.ndarray | RaggedTokens
    y: np.ndarray | None
    groups: list[Any] | None
    site: str | None

    def __len__(self) -> int:
        return int(self.X.shape[0]) if hasattr(self.X, "shape") else len(self.X)


def _is_activations(obj: Any) -> bool:
    return hasattr(obj, "features") and hasattr(obj, "labels") and hasattr(obj, "subset")


def resolve_site(acts: Activations, layer: str | int | None, what: str) -> str:
    """The site to read: ``layer`` (int N -> ``layers.N``), or the only collected one."""
    if layer is None:
        if len(acts.features) != 1:
            raise ValueError(
                f"{what} holds activations at {len(acts.features)} sites ({', '.join(acts.features)}); "
                "pass layer= to choose one (e.g. layer='layers.6' or layer=6)."
            )
        return next(iter(acts.features))
    key = f"layers.{layer}" if isinstance(layer, int) else str(layer)
    if key not in acts.features:
        raise KeyError(f"{what} has no activations at site {key!r}; collected: {', '.join(acts.features)}.")
    return key


def as_split(
    data: DataLike, layer: str | int | Sequence[str] | None, what: str, *, labels_required: bool = True
) -> Split:
    """Normalise an ``Activations``, ``(X, y)``, ``(X, y, groups)`` or (control only) bare ``X``.

    ``layer`` may be a list of sites (a multi-layer probe): an ``Activations`` then gives the
    ``(n, n_sites, d)`` stack of those sites, in that order, and ``site`` names them joined by ``+``.
    """
    if _is_activations(data):
        groups = list(data.groups) if data.groups is not None else None
        if groups is not None and all(g is None for g in groups):
            groups = None
        labels = np.asarray(data.labels, dtype=np.int64)
        if isinstance(layer, list | tuple):
            import torch

            sites = [resolve_site(data, one, what) for one in layer]
            stacked = torch.stack([data.features[s] for s in sites], dim=1)
            return Split(stacked, labels, groups, "+".join(sites))
        site = resolve_site(data, layer, what)
        return Split(data.features[site], labels, groups, site)
    if isinstance(data, tuple) and len(data) in (2, 3):
        X, y = data[0], data[1]
        groups = list(data[2]) if len(data) == 3 and data[2] is not None else None
        y_arr = np.asarray(y).astype(np.int64).ravel()
        if len(y_arr) != _n_rows(X):
            raise ValueError(f"{what}: X has {_n_rows(X)} rows but y has {len(y_arr)} labels.")
        return Split(X, y_arr, groups, None)
    if labels_required:
        raise TypeError(
            f"{what} must be an Activations, (X, y) or (X, y, groups); got {type(data).__name__}."
        )
    return Split(data, None, None, None)


def _n_rows(X: Any) -> int:
    return int(X.shape[0]) if hasattr(X, "shape") else len(X)


def take(X: Any, idx: np.ndarray) -> Any:
    """Rows ``idx`` of a tensor, array or :class:`RaggedTokens`."""
    if hasattr(X, "offsets") and hasattr(X, "subset"):
        return X.subset(idx)
    if hasattr(X, "index_select"):  # torch.Tensor
        import torch

        return X[torch.as_tensor(idx, dtype=torch.long, device=X.device)]
    return np.asarray(X)[idx]


def grouped_holdout_split(
    n: int, groups: Sequence[Any] | None, holdout: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of ``n`` rows into (calibration, holdout) indices; groups never straddle the split."""
    if not 0.0 <= holdout < 1.0:
        raise ValueError(f"control_holdout must be in [0, 1), got {holdout}.")
    rng = np.random.default_rng(seed)
    codes = group_codes(groups, n)
    if codes is None:
        codes = np.arange(n)
    unique = rng.permutation(np.unique(codes))
    sizes = np.bincount(codes)[unique]
    # Fill the holdout with whole groups until it reaches its share of rows.
    held_groups = unique[np.cumsum(sizes) <= round(holdout * n)]
    is_held = np.isin(codes, held_groups)
    return np.flatnonzero(~is_held), np.flatnonzero(is_held)


def _control_sets(control: DataLike | Mapping[str, DataLike] | None) -> dict[str, DataLike]:
    """``control`` as ``{name: data}``: one unnamed set is ``{"control": data}``, ``None`` is ``{}``."""
    if control is None:
        return {}
    if isinstance(control, Mapping):
        if not control:
            raise ValueError("control= is an empty mapping; pass None for no control set.")
        return {str(k): v for k, v in control.items()}
    return {"control": control}


def probe_kind(probe: Any) -> str:
    return str(getattr(probe, "kind", type(probe).__name__))


def _baseline_value(value: Any) -> tuple[float | None, tuple[float, float] | None]:
    if value is None:
        return None, None
    if isinstance(value, BaselineResult):
        return value.auroc, tuple(value.auroc_ci)
    if isinstance(value, int | float):
        return float(value), None
    raise TypeError(
        f"a text baseline must be a BaselineResult or an AUROC float, got {type(value).__name__}."
    )


def evaluate(
    probe: Probe,
    test: DataLike,
    control: DataLike | Mapping[str, DataLike] | None = None,
    *,
    layer: str | int | Sequence[str] | None = None,
    target_fpr: float | Sequence[float] = 0.01,
    calibration: DataLike | None = None,
    calibrate: str | None = None,
    control_holdout: float = 0.5,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    text_baseline: BaselineResult | float | Mapping[str, BaselineResult | float | None] | None = None,
    confound_margin: float = 0.05,
    n_bins: int = 10,
    keep_scores: bool = True,
    name: str | None = None,
) -> EvalReport:
    """Evaluate a fitted probe honestly on held-out data.

    - ``test``: labelled held-out data (an ``Activations`` with ``layer=`` choosing the site, ``(X, y)`` or
      ``(X, y, groups)``); AUROC/AUPRC/accuracy come with bootstrap CIs, grouped when groups exist.
    - ``control``: benign traffic (``Activations``, ``X``, ``(X, y)``). It is split (seeded, by group) into a
      calibration part, where the threshold for each ``target_fpr`` is the conformal rank
      (:func:`conformal_threshold`), and a held-out part (``control_holdout`` of it) where the empirical FPR
      is measured with a Clopper-Pearson interval. Several named sets (``{"chat": acts_a, "code": acts_b}``)
      are each split the same way; the threshold is set on their calibration parts pooled, and
      ``report.threshold_transfer`` holds, per target FPR, the matrix of FPRs a threshold set on one set
      gives on another's held-out rows (:mod:`probes.evaluation.transfer`), with a warning for every cell
      whose interval lies above the target. Without a control set the test negatives are used the
      same way, and the report warns that the FPR is then not measured on deployment-like traffic.
    - ``calibration``: labelled data held out from train *and* test on which ``calibrate`` ("platt" or
      "isotonic") is fitted; ECE/Brier are reported on test before and after calibration.
    - ``text_baseline``: a :class:`BaselineResult` (or AUROC) of the text-only baseline on the same split,
      or ``{"text": ..., "span": ...}`` for the full-text and span-only runs; the report warns when either
      comes within ``confound_margin`` of the probe.
    """
    targets = [float(target_fpr)] if isinstance(target_fpr, int | float) else [float(t) for t in target_fpr]
    if not targets:
        raise ValueError("target_fpr must be a float or a non-empty sequence of floats.")
    warnings: list[str] = []

    if layer is None and getattr(probe, "multi_site", False):
        layer = list(probe.sites_)  # type: ignore[attr-defined]
    test_split = as_split(test, layer, "test")
    if getattr(probe, "multi_site", False) and test_split.site is not None:
        read = test_split.site.split("+")
        if read != list(probe.sites_):  # type: ignore[attr-defined]
            raise ValueError(
                f"{type(probe).__name__} reads sites {list(probe.sites_)} (in that order) but layer= gave "  # type: ignore[attr-defined]
                f"{read}; leave layer= out to use the probe's own sites."
            )
    site = test_split.site or (str(layer) if layer is not None else None)
    # Where control and calibration data are read: the test set's site, or every site of a multi-layer probe.
    where = layer if isinstance(layer, list | tuple) else (site if test_split.site else layer)
    y = np.asarray(test_split.y)  # as_split(labels_required=True) guarantees labels
    n_pos, n_neg = int(y.sum()), int(y.size - y.sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(
            f"the test set needs both classes to evaluate a probe (got {n_pos} positive, {n_neg} negative)."
        )
    scores = probe.decision_function(test_split.X).astype(np.float64)
    proba_raw = probe.predict_proba(test_split.X)[:, 1].astype(np.float64)
    groups = test_split.groups
    codes = group_codes(groups, y.size)
    n_groups = int(codes.max() + 1) if codes is not None else int(y.size)

    boot = {"n_bootstrap": n_bootstrap, "confidence": confidence, "seed": seed}
    auroc_v, auroc_ci = with_ci(auroc, y, scores, groups, **boot)
    auprc_v, auprc_ci = with_ci(auprc, y, scores, groups, **boot)
    acc_v, acc_ci = with_ci(accuracy, y, scores, groups, **boot)
    if min(n_pos, n_neg) < 20:
        warnings.append(
            f"only {min(n_pos, n_neg)} test rows in the smaller class: every metric here is very noisy."
        )
    if groups is not None and n_groups < MIN_GROUPS:
        warnings.append(
            f"the test set has only {n_groups} groups: the bootstrap resamples groups, and with fewer than "
            f"{MIN_GROUPS} its confidence intervals are not meaningful. Add groups (more sources) or report "
            "each group's result separately."
        )

    # --- thresholds on benign control traffic -----------------------------------------------------
    controls = _control_sets(control)
    per_set: list[tuple[np.ndarray, np.ndarray]] = []  # (calibration, held-out) scores of each control set
    for cname, cdata in controls.items():
        what = "control" if len(controls) == 1 else f"control set {cname!r}"
        ctrl = as_split(cdata, where, what, labels_required=False)
        cscores = probe.decision_function(ctrl.X).astype(np.float64)
        if ctrl.y is not None and int(ctrl.y.sum()) > 0:
            warnings.append(
                f"the {what} has {int(ctrl.y.sum())} rows labelled positive; control traffic should "
                "be benign — all rows were used as benign."
            )
        c_idx, h_idx = grouped_holdout_split(len(cscores), ctrl.groups, control_holdout, seed)
        per_set.append((cscores[c_idx], cscores[h_idx]))
    if controls:
        # Several sets: the threshold is set on all calibration parts pooled (what deployment's mixture
        # sees); the transfer matrix below shows whether a threshold set on one set holds on another.
        cal_scores = np.concatenate([c for c, _ in per_set])
        hold_scores = np.concatenate([h for _, h in per_set])
        n_control = int(cal_scores.size + hold_scores.size)
        source = "control"
    else:
        control_scores = scores[y == 0]
        neg_groups = [groups[i] for i in np.flatnonzero(y == 0)] if groups is not None else None
        cal_idx, hold_idx = grouped_holdout_split(len(control_scores), neg_groups, control_holdout, seed)
        cal_scores, hold_scores = control_scores[cal_idx], control_scores[hold_idx]
        n_control = 0
        source = "test_negatives"
        warnings.append(
            "no control set given: thresholds were set on (part of) the test negatives, not on benign "
            "deployment-like traffic, so the reported FPR says nothing about false alarms in deployment."
        )
    if hold_scores.size == 0:
        warnings.append("control_holdout=0: the empirical FPR could not be checked on held-out control rows.")
    ops = [
        operating_point(cal_scores, hold_scores, scores[y == 1], t, confidence=confidence, source=source)
        for t in targets
    ]
    for op in ops:
        warnings.extend(op.notes)
        if op.finite and hold_scores.size and op.empirical_fpr_ci[1] > 2 * op.target_fpr:
            warnings.append(
                f"the held-out control ({op.n_control_holdout} rows) is too small to confirm FPR <= "
                f"{op.target_fpr:g}: its {int(100 * confidence)}% upper bound is {op.empirical_fpr_ci[1]:.3g}."
            )
    primary = ops[0]
    transfers = []
    if len(controls) > 1:
        names = list(controls)
        for t in targets:
            transfer = threshold_transfer(
                [c for c, _ in per_set], [h for _, h in per_set], names, t, confidence=confidence
            )
            transfers.append(transfer)
            warnings.extend(transfer.warnings)

    # --- calibration ------------------------------------------------------------------------------
    ece_raw = expected_calibration_error(y, proba_raw, n_bins)
    brier_raw = brier_score(y, proba_raw)
    calibrator_state = None
    proba = proba_raw
    if calibrate is not None:
        if calibration is None:
            raise ValueError(
                f"calibrate={calibrate!r} needs calibration=(X, y) (or an Activations): a labelled split held "
                "out from both train and test. Calibrating on the test set would report optimistic numbers."
            )
        cal_split = as_split(calibration, where, "calibration")
        calibrator = make_calibrator(calibrate).fit(probe.decision_function(cal_split.X), cal_split.y)
        proba = calibrator.transform(scores)
        calibrator_state = calibrator.to_dict()
    ece = expected_calibration_error(y, proba, n_bins)
    brier = brier_score(y, proba)

    # --- text-only baselines ----------------------------------------------------------------------
    if isinstance(text_baseline, Mapping):
        unknown = set(text_baseline) - {"text", "span"}
        if unknown:
            raise ValueError(f"text_baseline keys must be 'text' and/or 'span', got {sorted(unknown)}.")
        tb, tb_ci = _baseline_value(text_baseline.get("text"))
        sb, sb_ci = _baseline_value(text_baseline.get("span"))
    else:
        (tb, tb_ci), (sb, sb_ci) = _baseline_value(text_baseline), (None, None)
    for value, what in ((tb, "text-only"), (sb, "span-only text")):
        msg = confound_check(auroc_v, value, confound_margin, what=what)
        if msg:
            warnings.append(msg)

    kept = None
    if keep_scores:
        kept = {
            "test_scores": scores.tolist(),
            "test_labels": y.astype(int).tolist(),
            "control_cal_scores": cal_scores.tolist(),
            "control_holdout_scores": hold_scores.tolist(),
        }
    return EvalReport(
        name=name,
        probe_kind=probe_kind(probe),
        layer=site,
        n_test=int(y.size),
        n_pos=n_pos,
        n_neg=n_neg,
        n_groups=n_groups,
        auroc=auroc_v,
        auroc_ci=auroc_ci,
        auprc=auprc_v,
        auprc_ci=auprc_ci,
        accuracy=acc_v,
        accuracy_ci=acc_ci,
        target_fpr=primary.target_fpr,
        threshold=primary.threshold,
        recall_at_fpr=primary.recall,
        recall_ci=primary.recall_ci,
        empirical_fpr=primary.empirical_fpr,
        empirical_fpr_ci=primary.empirical_fpr_ci,
        operating_points=ops,
        threshold_source=source,
        n_control=n_control,
        control_sets=list(controls) or None,
        threshold_transfer=transfers,
        ece=ece,
        brier=brier,
        reliability=reliability_curve(y, proba, n_bins),
        ece_uncalibrated=ece_raw,
        brier_uncalibrated=brier_raw,
        calibrate=calibrate,
        calibrator=calibrator_state,
        text_baseline_auroc=tb,
        text_baseline_auroc_ci=tb_ci,
        text_baseline_span_auroc=sb,
        text_baseline_span_auroc_ci=sb_ci,
        n_bootstrap=n_bootstrap,
        confidence=confidence,
        seed=seed,
        warnings=warnings,
        scores=kept,
    )
