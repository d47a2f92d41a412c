"""One probe of a bundle: the site it reads, its thresholds and calibration, and its manifest record.

Thresholds and calibration maps live on the decision-function scale of the probe (higher = more of the
positive class), each threshold with the false-positive rate it was calibrated for and on which control set.
A calibration map is a :mod:`probes.evaluation.calibration` calibrator, stored as its own ``to_dict()`` state
(``{"kind": "platt", "a", "b"}`` or ``{"kind": "isotonic", "x_thresholds", "y_thresholds"}``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

import torch

from probes.train.base import Probe, probe_from_state

if TYPE_CHECKING:  # pragma: no cover
    from probes.evaluation.calibration import Calibrator

NORM_KEYS = ("mean", "scale")


#: What a threshold controls: ``"text"`` - the false-positive rate of the probe's score on benign control
#: *texts*; ``"generation"`` - the share of benign *generations* a monitor interrupts (the maximum of the
#: smoothed score over every generated token), calibrated on the model's own continuations.
THRESHOLD_KINDS = ("text", "generation")


@dataclass(frozen=True)
class Threshold:
    """A decision-score threshold and what it was calibrated for.

    ``target_fpr`` is the target false-positive rate: per control text for ``kind="text"``, per benign
    generation (the interrupt rate) for ``kind="generation"``. ``record`` holds what a generation-level
    threshold was calibrated under (sampling and monitor settings, the held-out interrupt rate with its
    interval), so a reader can tell whether it applies to their deployment.
    """

    value: float
    target_fpr: float | None = None
    control_set: str | None = None
    control_fingerprint: str | None = None
    n_control: int | None = None
    kind: str = "text"
    record: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.kind not in THRESHOLD_KINDS:
            raise ValueError(f"threshold kind must be one of {THRESHOLD_KINDS}, got {self.kind!r}.")

    def to_json(self) -> dict[str, Any]:
        return {
            "value": self.value,
            "target_fpr": self.target_fpr,
            "control_set": self.control_set,
            "control_fingerprint": self.control_fingerprint,
            "n_control": self.n_control,
            "kind": self.kind,
            "record": self.record,
        }

    @classmethod
    def coerce(cls, spec: Any) -> Threshold:
        """Accept a float, a mapping with ``value`` (or ``threshold``), a Threshold, or an object with
        ``.threshold`` / ``.target_fpr`` attributes such as an evaluation report."""
        if isinstance(spec, Threshold):
            return spec
        if isinstance(spec, (int, float)) and not isinstance(spec, bool):
            return cls(value=_finite(float(spec), "threshold"))
        if isinstance(spec, Mapping):
            data = dict(spec)
            if "value" not in data and "threshold" in data:
                data["value"] = data.pop("threshold")
            allowed = {
                "value",
                "target_fpr",
                "control_set",
                "control_fingerprint",
                "n_control",
                "kind",
                "record",
            }
            unknown = set(data) - allowed
            if unknown or "value" not in data:
                raise ValueError(
                    f"A threshold mapping needs 'value' and may have target_fpr, control_set, "
                    f"control_fingerprint, n_control, kind, record; got keys {sorted(spec)}."
                )
            data["kind"] = data.get("kind") or "text"
            data["value"] = _finite(float(data["value"]), "threshold")
            return cls(**data)
        value = getattr(spec, "threshold", None)
        if value is not None:
            control = getattr(spec, "control_set", None) or getattr(spec, "control_name", None)
            n_control = getattr(spec, "n_control", None)
            return cls(
                value=_finite(float(value), "threshold"),
                target_fpr=_opt_float(getattr(spec, "target_fpr", None)),
                control_set=None if control is None else str(control),
                control_fingerprint=getattr(spec, "control_fingerprint", None),
                n_control=None if n_control is None else int(n_control),
            )
        raise TypeError(
            f"Cannot use {type(spec).__name__} as a threshold: pass a float, a dict with 'value' "
            "(and optionally target_fpr, control_set, n_control) or an evaluation report."
        )


@dataclass(frozen=True)
class BundleEntry:
    """One probe of a bundle and everything needed to deploy it."""

    name: str
    probe: Probe
    site: str  # canonical: "layers.N" or "final_norm"
    pooling: str | None = None
    aggregation: str | None = None
    label_names: tuple[str, str] | None = None
    thresholds: tuple[Threshold, ...] = ()
    calibration: dict[str, Any] | None = None  # a calibrator's to_dict() state
    normalization: dict[str, torch.Tensor] | None = None  # x' = (x - mean) / scale, applied before the probe
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def layer(self) -> int | None:
        return int(self.site.split(".")[1]) if self.site.startswith("layers.") else None

    @property
    def sites(self) -> tuple[str, ...]:
        """Every site the probe reads: ``(site,)``, or a multi-layer probe's ``sites_`` (``site`` is then
        the deepest of them, the one a forward pass must reach)."""
        sites = getattr(self.probe, "sites_", None)
        return tuple(sites) if getattr(self.probe, "multi_site", False) and sites else (self.site,)

    def score_forms(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]] | None:
        """``{site: (w, b)}`` with ``score = sum_s x_s @ w + b`` over :attr:`sites` (raw activation space,
        normalisation folded in), or ``None`` when the probe is not linear in its sites.

        The seam for streaming: a monitor adds each site's ``(w, b)`` as one column of that site's fused
        matmul and sums a probe's columns over its sites; a single-site linear probe is ``{site:
        score_form()}``.
        """
        if getattr(self.probe, "multi_site", False):
            return dict(self.probe.linear_forms())  # type: ignore[attr-defined]
        form = self.score_form()
        return None if form is None else {self.site: form}

    def threshold_for(self, target_fpr: float | None = None) -> Threshold | None:
        """The threshold calibrated for ``target_fpr`` (the first one stored when ``None``)."""
        if target_fpr is None:
            return self.thresholds[0] if self.thresholds else None
        for t in self.thresholds:
            if t.target_fpr is not None and math.isclose(
                t.target_fpr, target_fpr, rel_tol=1e-9, abs_tol=1e-12
            ):
                return t
        have = [t.target_fpr for t in self.thresholds]
        raise ValueError(
            f"Probe {self.name!r} has no threshold calibrated for target_fpr={target_fpr}; it has {have}. "
            "Pass threshold= explicitly or calibrate one on a control set and add it to the bundle."
        )

    def score_form(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(w, b)`` in raw activation space with any normalisation folded in, or ``None`` if nonlinear."""
        form = self.probe.linear_form()
        return None if form is None else self._fold(*form)

    def score_columns(self) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
        """The per-token linear maps a monitor fuses into one matmul, normalisation folded in.

        ``[(w, b)]`` for a linear probe (its decision score); ``[(v, b), (q, 0)]`` - value and attention
        logit - for an attention-pooled probe; ``None`` for a probe that must run its own ``score``.
        """
        attention = getattr(self.probe, "attention_form", None)
        if callable(attention):
            q, v, b = attention()
            forms = [(v, b), (q, torch.zeros(()))]
        else:
            form = self.probe.linear_form()
            if form is None:
                return None
            forms = [form]
        return [self._fold(w, b) for w, b in forms]

    def _fold(self, w: Any, b: Any) -> tuple[torch.Tensor, torch.Tensor]:
        w = torch.as_tensor(w).detach().float().reshape(-1)
        b = torch.as_tensor(b).detach().float().reshape(())
        if self.normalization is not None:
            mean = self.normalization["mean"].float().reshape(-1)
            scale = self.normalization["scale"].float().reshape(-1)
            w = w / scale
            b = b - (mean * w).sum()
        return w, b.reshape(())

    def score(self, X: torch.Tensor) -> torch.Tensor:
        """Per-row decision scores of ``(n, d)`` activations (normalisation applied), on ``X``'s device.

        A multi-layer probe takes ``{site: (n, d)}`` or an ``(n, n_sites, d)`` stack instead."""
        if self.normalization is not None:
            mean = self.normalization["mean"].to(X.device, X.dtype)
            scale = self.normalization["scale"].to(X.device, X.dtype)
            X = (X - mean) / scale
        return self.probe.score_torch(X)

    @cached_property
    def calibrator(self) -> Calibrator | None:
        """The stored calibration rebuilt once with ``Calibrator.from_dict`` (``None`` without one)."""
        return _calibrator(self.calibration)

    def calibrate(self, scores: torch.Tensor) -> torch.Tensor:
        """Map decision scores to probabilities with the stored calibrator (sigmoid if none)."""
        return _calibrated(self.calibrator, scores)


def apply_calibration(
    calibration: Calibrator | Mapping[str, Any] | None, scores: torch.Tensor
) -> torch.Tensor:
    """Probabilities of decision ``scores`` on their device: a fitted calibrator from
    :mod:`probes.evaluation.calibration` or its ``to_dict()`` state (Platt: ``sigmoid(a * s + b)``;
    isotonic: piecewise-linear, clipped), or ``sigmoid(s)`` when ``calibration`` is ``None``."""
    return _calibrated(_calibrator(calibration), scores)


def _calibrator(calibration: Calibrator | Mapping[str, Any] | None) -> Calibrator | None:
    """A fitted calibrator from a calibrator or its ``to_dict()`` state; ``ValueError`` names a bad one."""
    from probes.evaluation.calibration import Calibrator

    if calibration is None or isinstance(calibration, Calibrator):
        return calibration
    if not isinstance(calibration, Mapping):
        raise TypeError(
            f"calibration must be a fitted calibrator or its to_dict() state, got {type(calibration).__name__}."
        )
    return Calibrator.from_dict(dict(calibration))


def _calibrated(calibrator: Calibrator | None, scores: torch.Tensor) -> torch.Tensor:
    if calibrator is None:
        return torch.sigmoid(scores.float())
    return calibrator.transform_torch(scores)


# --- the entry's record in the manifest and in the tensors file ------------------------------------
def entry_tensors(entry: BundleEntry) -> dict[str, torch.Tensor]:
    out = {
        f"{entry.name}/state/{k}": v.detach().cpu().contiguous()
        for k, v in entry.probe.state_tensors().items()
    }
    if entry.normalization is not None:
        out.update({f"{entry.name}/norm/{k}": v.contiguous() for k, v in entry.normalization.items()})
    return out


def entry_json(entry: BundleEntry) -> dict[str, Any]:
    state_names = sorted(entry.probe.state_tensors())
    return {
        "name": entry.name,
        "kind": entry.probe.kind,
        "params": entry.probe.get_params(),
        "state_tensors": {k: f"{entry.name}/state/{k}" for k in state_names},
        "site": entry.site,
        "layer": entry.layer,
        "pooling": entry.pooling,
        "aggregation": entry.aggregation,
        "label_names": list(entry.label_names) if entry.label_names is not None else None,
        "thresholds": [t.to_json() for t in entry.thresholds],
        "score_scale": "decision_function",
        "calibration": entry.calibration,
        "normalization": (
            {k: f"{entry.name}/norm/{k}" for k in NORM_KEYS} if entry.normalization is not None else None
        ),
        "metadata": entry.metadata,
    }


def entry_from_json(spec: dict[str, Any], tensors: dict[str, torch.Tensor]) -> BundleEntry:
    name = spec["name"]
    missing = [key for key in spec["state_tensors"].values() if key not in tensors]
    if missing:
        raise ValueError(f"probe {name!r} refers to tensors missing from the safetensors file: {missing}")
    state = {local: tensors[key] for local, key in spec["state_tensors"].items()}
    try:
        probe = probe_from_state(spec["kind"], spec["params"], state)
    except KeyError as exc:
        raise ValueError(f"probe {name!r}: {exc.args[0] if exc.args else exc}") from exc
    norm = None
    if spec.get("normalization"):
        norm = {k: tensors[v] for k, v in spec["normalization"].items()}
    labels = spec.get("label_names")
    return BundleEntry(
        name=name,
        probe=probe,
        site=str(spec["site"]),
        pooling=spec.get("pooling"),
        aggregation=spec.get("aggregation"),
        label_names=tuple(labels) if labels is not None else None,  # type: ignore[arg-type]
        thresholds=tuple(Threshold.coerce(t) for t in spec.get("thresholds", [])),
        calibration=calibration_state(spec.get("calibration")),
        normalization=norm,
        metadata=dict(spec.get("metadata") or {}),
    )


def calibration_state(calibration: Calibrator | Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The calibrator's ``to_dict()`` state, checked by rebuilding it (a bad map fails here, not mid-stream)."""
    calibrator = _calibrator(calibration)
    return None if calibrator is None else calibrator.to_dict()


def _finite(value: float, what: str) -> float:
    if not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number, got {value}.")
    return value


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)
