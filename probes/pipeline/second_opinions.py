"""What a run adds beside its probe: the ``detectors:`` (:mod:`probes.pipeline.detectors`) and the
``stages:`` cascade (:mod:`probes.pipeline.cascade`), as one value the runner hands on -- to the bundle,
``report.json``, the plots, the printed tables and MLflow.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from probes.config import RunConfig
from probes.errors import ConfigError
from probes.pipeline.cascade import CascadeOutcome, run_cascade
from probes.pipeline.detectors import FittedDetector, add_detectors_to_bundle, fit_detectors
from probes.pipeline.prepare import _Prepared
from probes.pipeline.results import Reporter


@dataclass
class SecondOpinions:
    """The run's detectors (fitted and evaluated) and its cascade (``None`` without ``stages:``)."""

    detectors: list[FittedDetector] = field(default_factory=list)
    cascade: CascadeOutcome | None = None

    def __bool__(self) -> bool:
        return bool(self.detectors) or self.cascade is not None

    def report(self) -> dict[str, Any]:
        """The ``report.json`` keys: ``detectors`` (one report each) and ``cascade``."""
        return {
            "detectors": [d.to_dict() for d in self.detectors],
            "cascade": self.cascade.to_dict() if self.cascade is not None else None,
        }

    def add_to_bundle(self, bundle_dir: Path, control_name: str, pooling: str | None) -> Path:
        return add_detectors_to_bundle(bundle_dir, self.detectors, control_name, pooling)

    def plots(self, folder: Path) -> list[Path]:
        """Detector score histograms, novel-set ROC and false alarms per benign set; ``cascade.png``."""
        written: list[Path] = []
        for d in self.detectors:
            written += d.report.plots(folder)
        if self.cascade is not None:
            written.append(self.cascade.curve.plot(folder / "cascade.png"))
        return written

    def tables(self) -> list[Any]:
        """What ``probes run`` prints after the probe's results."""
        out: list[Any] = [d.report for d in self.detectors]
        if self.cascade is not None:
            out.append(self.cascade.curve)
        return out

    def metrics(self) -> dict[str, float]:
        """Finite headline numbers for MLflow: ``detector_<name>_...`` and ``cascade_...``."""
        out: dict[str, float] = {}
        for d in self.detectors:
            key = re.sub(r"[^A-Za-z0-9_]", "_", d.config.name)
            out.update({f"detector_{key}_{k}": v for k, v in d.report.metrics().items()})
        if self.cascade is not None:
            dep = self.cascade.deployed
            for k in ("recall", "fpr", "test_escalation", "seconds_per_decision", "flops_per_decision"):
                if isinstance(dep.get(k), int | float):
                    out[f"cascade_{k}"] = float(dep[k])
        return out


def second_opinions(prep: _Prepared, probe: Any, site: str, reporter: Reporter) -> SecondOpinions:
    """Fit and evaluate the run's detectors and cascade (each a no-op when its section is absent)."""
    return SecondOpinions(fit_detectors(prep, site, reporter), run_cascade(prep, probe, site, reporter))


def validate_second_opinions(config: RunConfig) -> list[str]:
    """``probes validate`` lines for ``detectors:`` and ``stages:``; checks their parameters against the
    probe kinds (ConfigError naming the key) without loading a model."""
    from probes.pipeline.sweep import _probe_params

    lines = []
    for i, det in enumerate(config.detectors):
        try:
            _probe_params(det.kind, det.params, config.seed)
        except ConfigError as exc:
            raise ConfigError(f"detectors.{i} ({det.name}): {exc}") from None
        novel = det.novel if det.novel is not None else [n for n in config.data.eval if n not in det.shifted]
        lines.append(
            f"detector {det.name}: {det.kind} at {det.layer}, fitted on the control set's benign rows; novel: "
            f"test positives{''.join(', ' + n for n in novel)}; shifted benign: {', '.join(det.shifted) or 'none'}"
        )
    st = config.stages
    if st is not None:
        desc = []
        for key in ("stage1", "stage2"):
            stage = getattr(st, key)
            if stage.kind == "probe":
                try:
                    _probe_params(str(stage.probe), stage.params, config.seed)
                except ConfigError as exc:
                    raise ConfigError(f"stages.{key}: {exc}") from None
                desc.append(f"{stage.probe} probe")
            elif stage.kind == "judge":
                desc.append(f"LM judge {stage.model or config.model.name_or_path}")
            else:
                desc.append("the chosen probe")
        lines.append(
            f"cascade {desc[0]} → {desc[1]}, escalating {st.escalation:.0%} of rows (band chosen on validation)"
        )
    return lines
