"""The ``detectors:`` of a run: anomaly detectors fitted on benign control rows only, and evaluated on what
they never saw.

:func:`fit_detectors` splits the control set by group into a fitting part and a held-out benign part
(``holdout``), fits each detector on the fitting part (it keeps its own ``calibration_fraction`` of those
rows back for its conformal p-values), and :func:`probes.evaluation.evaluate_detector` reports, per novel
set (the test split's positives and the eval sets named ``novel``), AUROC against the held-out benign rows
and the detection rate at the target false-alarm rate, and the false-alarm rate, with its exact interval,
on each ``shifted`` benign set it was not calibrated on. :func:`add_detectors_to_bundle` stores them in the
run's bundle beside the probe, with their conformal thresholds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from probes.config import DetectorConfig
from probes.errors import ConfigError
from probes.pipeline.prepare import _Prepared, _rows_of, _two_class
from probes.pipeline.results import Reporter

if TYPE_CHECKING:  # pragma: no cover
    from probes.collection import Activations
    from probes.evaluation import DetectorReport


@dataclass
class FittedDetector:
    """One detector of a run: its config, the fitted detector, the site it reads and its evaluation."""

    config: DetectorConfig
    detector: Any
    site: str
    target_fpr: float
    report: DetectorReport

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.config.name,
            "kind": self.config.kind,
            "params": dict(self.config.params),
            "site": self.site,
            "fitted_on": "control (benign rows only)",
            "report": self.report.to_dict(include_scores=False),
        }


def resolve_site(layer: Any, chosen: str, prep: _Prepared, what: str) -> str:
    """The canonical site of a config's ``layer`` (``chosen`` = the probe's site); it must be collected."""
    from probes.models.sites import parse_sites

    if layer == "chosen":
        return chosen
    n_layers = int(prep.fingerprint.get("num_layers") or 0)
    try:
        site = parse_sites([layer], n_layers)[0].name
    except ValueError as exc:
        raise ConfigError(f"{what}: {exc}") from exc
    if site not in prep.sites:
        raise ConfigError(
            f"{what}: site {site} was not collected; add it to layers: (collected: {', '.join(prep.sites)})."
        )
    return site


def _groups(acts: Activations) -> list[str]:
    return [g if g is not None else i for g, i in zip(acts.groups, acts.ids, strict=True)]


def fit_detectors(prep: _Prepared, chosen_site: str, reporter: Reporter) -> list[FittedDetector]:
    """Fit and evaluate every detector of ``prep.config`` (see the module docstring)."""
    import numpy as np

    from probes.evaluation import evaluate_detector
    from probes.pipeline.sweep import _probe_params
    from probes.train import make_probe

    config = prep.config
    if not config.detectors:
        return []
    control_ds, control = prep.control_ds, prep.acts.get("control")
    if control_ds is None or control is None:  # (the config refuses detectors without a control set)
        raise ConfigError("detectors: need data.control, the benign rows they are fitted on.")
    out: list[FittedDetector] = []
    for i, det in enumerate(config.detectors):
        what = f"detectors.{i} ({det.name})"
        site = resolve_site(det.layer, chosen_site, prep, f"{what}.layer")
        target_fpr = float(det.target_fpr or config.evaluation.target_fprs[0])
        parts = control_ds.split(
            {"fit": 1.0 - det.holdout, "benign": det.holdout}, seed=config.seed, use_column=False
        )
        fit_acts = _rows_of(control, control_ds, parts["fit"])
        benign_acts = _rows_of(control, control_ds, parts["benign"])
        params = _probe_params(det.kind, det.params, config.seed)
        with reporter.stage(f"Detector {det.name}: {det.kind} at {site} on {len(fit_acts)} benign rows"):
            try:
                detector = make_probe(det.kind, **params).fit(fit_acts[site], groups=_groups(fit_acts))
            except ValueError as exc:  # too few rows for the dimension, bad shrinkage, ...
                raise ConfigError(f"{what}: {exc}") from exc
        novel: dict[str, Activations] = {}
        test = prep.acts["test"]
        novel[f"{prep.train_ds.name} (test positives)"] = test.subset(np.flatnonzero(test.labels == 1))
        names = det.novel if det.novel is not None else [n for n in prep.eval_ds if n not in det.shifted]
        for name in names:
            acts = prep.acts[f"eval.{name}"]
            if det.novel_rows == "positive" and _two_class(prep.eval_ds[name]):
                acts = acts.subset(np.flatnonzero(acts.labels == 1))
            novel[name] = acts
        shifted = {}
        for name in det.shifted:  # benign rows of another source: a two-class set's negatives
            acts = prep.acts[f"eval.{name}"]
            if _two_class(prep.eval_ds[name]):
                acts = acts.subset(np.flatnonzero(acts.labels == 0))
            shifted[name] = acts
        report = evaluate_detector(
            detector,
            benign_acts,
            novel,
            shifted,
            layer=site,
            target_fpr=target_fpr,
            n_bootstrap=config.evaluation.bootstrap,
            seed=config.seed,
            name=det.name,
            benign_name=f"{control_ds.name} (held out)",
        )
        for w in report.warnings:
            reporter.warn(f"detector {det.name}: {w}")
        out.append(FittedDetector(det, detector, site, target_fpr, report))
    return out


def add_detectors_to_bundle(
    bundle_dir: Path, detectors: list[FittedDetector], control_name: str, pooling: str | None = None
) -> Path:
    """Re-save the run's bundle with every detector added (its conformal threshold at its target rate);
    detectors whose calibration part is too small for a finite threshold are stored without one."""
    import math

    from probes.package import ProbeBundle

    if not detectors:
        return bundle_dir
    bundle = ProbeBundle.load(bundle_dir)
    for d in detectors:
        value = d.detector.threshold(d.target_fpr) if d.detector.n_calibration_ else math.inf
        spec = (
            d.detector.threshold_spec(d.target_fpr, control_set=f"{control_name} (detector calibration part)")
            if math.isfinite(value)
            else None
        )
        bundle.add(
            d.detector,
            name=d.config.name,
            layer=d.site,
            threshold=spec,
            pooling=pooling,
            detector=d.config.kind,
        )
    return bundle.save(bundle_dir)


def detector_entries(bundle: Any) -> list[Any]:
    """The bundle's entries that are anomaly detectors."""
    return [e for e in bundle if getattr(e.probe, "is_detector", False)]


def evaluate_bundle_detectors(
    entries: list[Any],
    data: Any,
    data_name: str,
    benign: Activations | None,
    benign_name: str,
    shifted: dict[str, Activations],
    *,
    n_bootstrap: int,
    seed: int,
    reporter: Reporter,
) -> list[DetectorReport]:
    """``probes evaluate`` for a bundle's detectors: ``data`` is the novel set (its positives when it has
    both classes), ``benign`` the benign reference (``--control``), ``shifted`` the second benign sets
    (``--benign``). Each detector is thresholded at its bundle threshold's rate (else 1%)."""
    import numpy as np

    from probes.evaluation import evaluate_detector

    if not entries:
        return []
    if benign is None:
        reporter.warn(
            "the bundle holds detectors but no --control was given: they need benign rows to be evaluated "
            "against (AUROC, false alarms); skipped."
        )
        return []
    labels = np.asarray(data.labels)
    novel = data.subset(np.flatnonzero(labels == 1)) if len(set(labels.tolist())) == 2 else data
    reports = []
    for entry in entries:
        t = entry.threshold_for()
        rate = float(t.target_fpr) if t is not None and t.target_fpr is not None else 0.01
        report = evaluate_detector(
            entry.probe,
            benign,
            {data_name: novel},
            shifted,
            layer=entry.site,
            target_fpr=rate,
            n_bootstrap=n_bootstrap,
            seed=seed,
            name=entry.name,
            benign_name=benign_name,
        )
        for w in report.warnings:
            reporter.warn(f"detector {entry.name}: {w}")
        reports.append(report)
    return reports
