"""Probe bundles: trained probes packaged for deployment as safetensors + a JSON manifest.

A bundle is a folder::

    my_bundle/
        manifest.json          schema version, model fingerprint, one entry per probe, sha256 of the tensors
        probes.safetensors     every probe's learned tensors, namespaced ``<probe name>/<tensor name>``

Loading never runs code (no pickle): probes are rebuilt from ``kind`` + JSON ``params`` + tensors with
:func:`probes.train.base.probe_from_state`. The manifest records the sha256 of the tensors file, so a
corrupted or tampered file is refused at load time instead of silently scoring garbage.

Thresholds and calibration maps live on the decision-function scale of the probe (higher = more of the
positive class), each threshold with the false-positive rate it was calibrated for and on which control set.
A calibration map is a :mod:`probes.evaluation.calibration` calibrator, stored as its own ``to_dict()`` state
(``{"kind": "platt", "a", "b"}`` or ``{"kind": "isotonic", "x_thresholds", "y_thresholds"}``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from probes.errors import BundleError, FingerprintMismatchError
from probes.models.sites import fingerprint_matches, model_fingerprint, parse_site
from probes.train.base import Probe, probe_from_state

if TYPE_CHECKING:  # pragma: no cover
    from probes.evaluation.calibration import Calibrator

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
TENSORS = "probes.safetensors"
_NAME_RE = re.compile(r"^[A-Za-z0-9_.\-]+$")
_NORM_KEYS = ("mean", "scale")


@dataclass(frozen=True)
class Threshold:
    """A decision-score threshold and what it was calibrated for."""

    value: float
    target_fpr: float | None = None
    control_set: str | None = None
    control_fingerprint: str | None = None
    n_control: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "value": self.value,
            "target_fpr": self.target_fpr,
            "control_set": self.control_set,
            "control_fingerprint": self.control_fingerprint,
            "n_control": self.n_control,
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
            unknown = set(data) - {"value", "target_fpr", "control_set", "control_fingerprint", "n_control"}
            if unknown or "value" not in data:
                raise ValueError(
                    f"A threshold mapping needs 'value' and may have target_fpr, control_set, "
                    f"control_fingerprint, n_control; got keys {sorted(spec)}."
                )
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
        if form is None:
            return None
        w, b = (torch.as_tensor(t).detach().float().reshape(-1) for t in form)
        if self.normalization is not None:
            mean = self.normalization["mean"].float().reshape(-1)
            scale = self.normalization["scale"].float().reshape(-1)
            w = w / scale
            b = b - (mean * w).sum()
        return w, b.reshape(())

    def score(self, X: torch.Tensor) -> torch.Tensor:
        """Per-row decision scores of ``(n, d)`` activations (normalisation applied), on ``X``'s device."""
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


class ProbeBundle:
    """Several trained probes of one model, with thresholds, calibration and the model's fingerprint.

    >>> bundle = ProbeBundle.from_probe(probe, model=model, layer=3, threshold=1.2, name="sad")
    >>> bundle.add(other_probe, layer=5, name="angry")  # several probes, layers and states in one bundle
    >>> bundle.save("bundles/mood"); ProbeBundle.load("bundles/mood")
    """

    def __init__(
        self,
        entries: Sequence[BundleEntry] = (),
        model_fingerprint: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self.model_fingerprint = dict(model_fingerprint) if model_fingerprint is not None else None
        self.metadata: dict[str, Any] = dict(metadata or {})
        self._entries: dict[str, BundleEntry] = {}
        for entry in entries:
            self._insert(entry)

    # --- construction ---------------------------------------------------------------------------
    @classmethod
    def from_probe(
        cls,
        probe: Probe,
        *,
        model: nn.Module | Mapping[str, Any] | None,
        layer: int | str,
        threshold: Any = None,
        name: str = "probe",
        label_names: Sequence[str] | None = None,
        pooling: str | None = None,
        aggregation: str | None = None,
        calibration: Calibrator | Mapping[str, Any] | None = None,
        normalization: Mapping[str, torch.Tensor] | None = None,
        **meta: Any,
    ) -> ProbeBundle:
        """A bundle holding one fitted ``probe`` that reads ``layer`` of ``model``.

        ``model`` is the model (its fingerprint is taken) or an already computed fingerprint dict;
        ``threshold`` is a float, a ``{"value", "target_fpr", "control_set", "n_control"}`` dict, a list
        of those, or an evaluation report with ``.threshold``/``.target_fpr``. ``calibration`` is a fitted
        :mod:`probes.evaluation.calibration` calibrator or its ``to_dict()`` state (e.g. an evaluation
        report's ``.calibrator``). ``**meta`` is free metadata stored with the probe.
        """
        if isinstance(model, nn.Module):
            fingerprint: dict[str, Any] | None = model_fingerprint(model)
        elif model is None:
            fingerprint = None
        else:
            fingerprint = dict(model)
        bundle = cls(model_fingerprint=fingerprint)
        bundle.add(
            probe,
            layer=layer,
            threshold=threshold,
            name=name,
            label_names=label_names,
            pooling=pooling,
            aggregation=aggregation,
            calibration=calibration,
            normalization=normalization,
            **meta,
        )
        return bundle

    def add(
        self,
        probe: Probe,
        *,
        layer: int | str,
        name: str,
        threshold: Any = None,
        label_names: Sequence[str] | None = None,
        pooling: str | None = None,
        aggregation: str | None = None,
        calibration: Calibrator | Mapping[str, Any] | None = None,
        normalization: Mapping[str, torch.Tensor] | None = None,
        **meta: Any,
    ) -> ProbeBundle:
        """Add another fitted probe (any layer, any state); returns ``self``."""
        if not isinstance(probe, Probe):
            raise TypeError(f"Expected a fitted probes Probe, got {type(probe).__name__}.")
        probe._check_fitted()
        n_layers = (self.model_fingerprint or {}).get("num_layers")
        if n_layers:
            site = parse_site(layer, int(n_layers)).name
        else:
            # Without a model we cannot resolve negative indices: insist on a canonical, absolute site.
            site = f"layers.{layer}" if isinstance(layer, int) else str(layer)
            if isinstance(layer, int) and layer < 0:
                raise ValueError("A negative layer needs model= (to know the layer count); pass layers.N.")
            parse_site(site, 10**6)
        if threshold is None:
            thresholds: tuple[Threshold, ...] = ()
        elif isinstance(threshold, (list, tuple)):
            thresholds = tuple(Threshold.coerce(t) for t in threshold)
        else:
            thresholds = (Threshold.coerce(threshold),)
        norm = None
        if normalization is not None:
            if set(normalization) != set(_NORM_KEYS):
                raise ValueError(f"normalization must have exactly the keys {_NORM_KEYS}.")
            norm = {
                k: torch.as_tensor(v).detach().float().cpu().reshape(-1) for k, v in normalization.items()
            }
        entry = BundleEntry(
            name=name,
            probe=probe,
            site=site,
            pooling=pooling if pooling is not None else getattr(probe, "pooling", None),
            aggregation=aggregation if aggregation is not None else getattr(probe, "aggregation", None),
            label_names=tuple(label_names) if label_names is not None else None,  # type: ignore[arg-type]
            thresholds=thresholds,
            calibration=_calibration_state(calibration),
            normalization=norm,
            metadata=dict(meta),
        )
        if entry.label_names is not None and len(entry.label_names) != 2:
            raise ValueError("label_names must be (negative, positive).")
        self._insert(entry)
        return self

    def _insert(self, entry: BundleEntry) -> None:
        if not _NAME_RE.match(entry.name):
            raise ValueError(
                f"Probe name {entry.name!r} must match {_NAME_RE.pattern} (it namespaces tensors)."
            )
        if entry.name in self._entries:
            raise ValueError(f"This bundle already has a probe named {entry.name!r}; pass a different name=.")
        self._entries[entry.name] = entry

    def with_thresholds(self, **thresholds: Any) -> ProbeBundle:
        """A copy with the thresholds of the named probes replaced (``bundle.with_thresholds(sad=1.5)``)."""
        entries = []
        for entry in self:
            if entry.name in thresholds:
                spec = thresholds[entry.name]
                specs = spec if isinstance(spec, (list, tuple)) else [spec]
                entry = replace(entry, thresholds=tuple(Threshold.coerce(s) for s in specs))
            entries.append(entry)
        return ProbeBundle(entries, self.model_fingerprint, self.metadata)

    # --- access ---------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[BundleEntry]:
        return iter(self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def __getitem__(self, name: str) -> BundleEntry:
        if name not in self._entries:
            raise KeyError(f"No probe named {name!r} in this bundle; it has {', '.join(self._entries)}.")
        return self._entries[name]

    @property
    def names(self) -> list[str]:
        return list(self._entries)

    @property
    def probes(self) -> dict[str, Probe]:
        return {name: e.probe for name, e in self._entries.items()}

    def __repr__(self) -> str:
        model = (self.model_fingerprint or {}).get("name", "?")
        inner = ", ".join(f"{e.name}@{e.site}" for e in self)
        return f"ProbeBundle(model={model!r}, probes=[{inner}])"

    def check_model(self, model: nn.Module, layers_attr: str | None = None) -> None:
        """Raise :class:`FingerprintMismatchError` if ``model`` is not the model the probes were trained on."""
        if self.model_fingerprint is None:
            return
        actual = model_fingerprint(model, layers_attr)
        diff = fingerprint_matches(self.model_fingerprint, actual)
        if diff:
            details = "; ".join(
                f"{k}: bundle {self.model_fingerprint.get(k)!r} vs model {actual.get(k)!r}" for k in diff
            )
            raise FingerprintMismatchError(
                f"This bundle was made on {self.model_fingerprint.get('name')!r} but the model given differs "
                f"({details}). Load the model the bundle was trained on, or pass check_fingerprint=False "
                "(CLI: --no-check-fingerprint) if you know the weights are compatible."
            )

    # --- persistence ----------------------------------------------------------------------------
    def manifest(self, tensors_sha256: str | None = None) -> dict[str, Any]:
        import probes

        return {
            "schema_version": SCHEMA_VERSION,
            "format": "probes.bundle",
            "probes_version": probes.__version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "tensors_file": TENSORS,
            "tensors_sha256": tensors_sha256,
            "model": self.model_fingerprint,
            "metadata": self.metadata,
            "probes": [_entry_json(e) for e in self],
        }

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the bundle folder atomically (a temp folder beside it, then a rename); returns the path."""
        from safetensors.torch import save_file

        if len(self) == 0:
            raise ValueError("Cannot save an empty bundle: add a probe first.")
        target = Path(path)
        if target.exists() and (
            not target.is_dir() or (any(target.iterdir()) and not (target / MANIFEST).exists())
        ):
            raise BundleError(
                f"{target} exists and is not a probe bundle; refusing to overwrite it. Choose another folder."
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        try:
            tensors: dict[str, torch.Tensor] = {}
            for entry in self:
                for key, value in _entry_tensors(entry).items():
                    tensors[key] = value
            save_file(tensors, str(tmp / TENSORS), metadata={"format": "probes.bundle"})
            digest = _sha256(tmp / TENSORS)
            (tmp / MANIFEST).write_text(
                json.dumps(self.manifest(digest), indent=2, default=_json_default) + "\n"
            )
            if target.exists():
                old = target.with_name(f".{target.name}.old-{os.getpid()}")
                os.replace(target, old)
                os.replace(tmp, target)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return target

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ProbeBundle:
        """Read a bundle folder; refuses missing, corrupted, tampered or unknown-schema files."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        root = Path(path)
        manifest_path = root / MANIFEST
        if not root.is_dir():
            raise BundleError(
                f"{root} is not a folder; a probe bundle is a folder written by ProbeBundle.save."
            )
        if not manifest_path.exists():
            raise BundleError(f"{manifest_path} is missing; re-export the bundle with ProbeBundle.save(...).")
        try:
            manifest = json.loads(manifest_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BundleError(
                f"{manifest_path} is not valid JSON ({exc}); the file is corrupted - re-export the bundle."
            ) from exc
        if not isinstance(manifest, dict) or manifest.get("format") != "probes.bundle":
            raise BundleError(f"{manifest_path} is not a probes bundle manifest (format != 'probes.bundle').")
        version = manifest.get("schema_version")
        if version != SCHEMA_VERSION:
            raise BundleError(
                f"{manifest_path} has schema_version={version!r}; this probes version reads schema "
                f"{SCHEMA_VERSION}. Upgrade probes (pip install -U residual-probes) or re-export the bundle."
            )
        tensors_path = root / str(manifest.get("tensors_file", TENSORS))
        if not tensors_path.exists():
            raise BundleError(f"{tensors_path} is missing; copy the whole bundle folder or re-export it.")
        digest = _sha256(tensors_path)
        if digest != manifest.get("tensors_sha256"):
            raise BundleError(
                f"{tensors_path} does not match the sha256 recorded in {manifest_path} (corrupted or tampered "
                "with). Do not use it: re-download or re-export the bundle."
            )
        try:
            tensors = load_file(str(tensors_path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise BundleError(
                f"{tensors_path} cannot be read as safetensors ({exc}); re-export the bundle."
            ) from exc
        try:
            entries = [_entry_from_json(spec, tensors) for spec in manifest["probes"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(
                f"{manifest_path} has an invalid probe entry ({type(exc).__name__}: {exc}); re-export the bundle."
            ) from exc
        return cls(entries, manifest.get("model"), manifest.get("metadata") or {})


# --- (de)serialisation helpers -------------------------------------------------------------------
def _entry_tensors(entry: BundleEntry) -> dict[str, torch.Tensor]:
    out = {
        f"{entry.name}/state/{k}": v.detach().cpu().contiguous()
        for k, v in entry.probe.state_tensors().items()
    }
    if entry.normalization is not None:
        out.update({f"{entry.name}/norm/{k}": v.contiguous() for k, v in entry.normalization.items()})
    return out


def _entry_json(entry: BundleEntry) -> dict[str, Any]:
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
            {k: f"{entry.name}/norm/{k}" for k in _NORM_KEYS} if entry.normalization is not None else None
        ),
        "metadata": entry.metadata,
    }


def _entry_from_json(spec: dict[str, Any], tensors: dict[str, torch.Tensor]) -> BundleEntry:
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
        calibration=_calibration_state(spec.get("calibration")),
        normalization=norm,
        metadata=dict(spec.get("metadata") or {}),
    )


def _calibration_state(calibration: Calibrator | Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The calibrator's ``to_dict()`` state, checked by rebuilding it (a bad map fails here, not mid-stream)."""
    calibrator = _calibrator(calibration)
    return None if calibrator is None else calibrator.to_dict()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _json_default(value: Any) -> Any:
    # numpy scalars/arrays and tensors sneak into metadata; store them as plain JSON values.
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"Bundle metadata value of type {type(value).__name__} is not JSON-serialisable.")


def _finite(value: float, what: str) -> float:
    if not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number, got {value}.")
    return value


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)
