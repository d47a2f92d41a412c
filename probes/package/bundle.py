"""Probe bundles: trained probes packaged for deployment as safetensors + a JSON manifest.

A bundle is a folder (mode 0755, files 0644, so a serving account can read what a training account wrote)::

    my_bundle/
        manifest.json          schema version, model fingerprint, one entry per probe, sha256 of the tensors,
                               and the integrity record: one digest over all of it (optionally signed)
        probes.safetensors     every probe's learned tensors, namespaced ``<probe name>/<tensor name>``

Loading never runs code (no pickle): probes are rebuilt from ``kind`` + JSON ``params`` + tensors with
:func:`probes.train.base.probe_from_state`. One digest covers the canonical manifest and the tensors, so any
edit (a threshold, a site, the calibration, the fingerprint, a weight) or corruption is refused at load time
with a :class:`~probes.errors.BundleError` naming what changed (:mod:`probes.package.integrity`); with a key
configured, saves are signed and loads verified (:mod:`probes.package.signing`).

The probes themselves are :class:`~probes.package.entry.BundleEntry` records; the folder's reading and
writing lives in :mod:`probes.package.storage`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from probes.errors import BundleError, FingerprintMismatchError
from probes.models.fingerprint import (
    differing_parts,
    fingerprint_matches,
    model_fingerprint,
    nonfinite_parameters,
)
from probes.models.sites import parse_site
from probes.package.entry import (
    NORM_KEYS,
    BundleEntry,
    Threshold,
    calibration_state,
    entry_from_json,
    entry_json,
    entry_tensors,
)
from probes.package.signing import BundleKey, signing_key_from_env, verify_key_from_env
from probes.package.storage import MANIFEST, SCHEMA_VERSION, TENSORS, read_folder, write_folder
from probes.train.base import Probe

if TYPE_CHECKING:  # pragma: no cover
    from probes.evaluation.calibration import Calibrator

_NAME_RE = re.compile(r"^[A-Za-z0-9_.\-]+$")


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
        #: The signature record of a loaded bundle (``{"scheme", "key_id", "value"}``), ``None`` if unsigned.
        self.signature: dict[str, Any] | None = None
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
        layer: int | str | None = None,
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
        name: str,
        layer: int | str | None = None,
        threshold: Any = None,
        label_names: Sequence[str] | None = None,
        pooling: str | None = None,
        aggregation: str | None = None,
        calibration: Calibrator | Mapping[str, Any] | None = None,
        normalization: Mapping[str, torch.Tensor] | None = None,
        **meta: Any,
    ) -> ProbeBundle:
        """Add another fitted probe (any layer, any state); returns ``self``.

        ``layer`` is the site the probe reads; a multi-layer probe (``StackedProbe``, ``ConcatProbe``) reads
        the sites it was fitted on, so ``layer`` is left out (the entry's ``site`` is the deepest of them).
        """
        if not isinstance(probe, Probe):
            raise TypeError(f"Expected a fitted probes Probe, got {type(probe).__name__}.")
        probe.check_saveable()
        if getattr(probe, "multi_site", False):
            site = self._multi_site(probe, layer, normalization)
        elif layer is None:
            raise ValueError(f"Probe {name!r}: pass layer= (the site it reads, e.g. layer=6 or 'layers.6').")
        else:
            site = self._site(layer)
        if threshold is None:
            thresholds: tuple[Threshold, ...] = ()
        elif isinstance(threshold, (list, tuple)):
            thresholds = tuple(Threshold.coerce(t) for t in threshold)
        else:
            thresholds = (Threshold.coerce(threshold),)
        norm = None
        if normalization is not None:
            if set(normalization) != set(NORM_KEYS):
                raise ValueError(f"normalization must have exactly the keys {NORM_KEYS}.")
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
            calibration=calibration_state(calibration),
            normalization=norm,
            metadata=dict(meta),
        )
        if entry.label_names is not None and len(entry.label_names) != 2:
            raise ValueError("label_names must be (negative, positive).")
        self._insert(entry)
        return self

    def _site(self, layer: int | str) -> str:
        n_layers = (self.model_fingerprint or {}).get("num_layers")
        if n_layers:
            return parse_site(layer, int(n_layers)).name
        # Without a model we cannot resolve negative indices: insist on a canonical, absolute site.
        site = f"layers.{layer}" if isinstance(layer, int) else str(layer)
        if isinstance(layer, int) and layer < 0:
            raise ValueError("A negative layer needs model= (to know the layer count); pass layers.N.")
        parse_site(site, 10**6)
        return site

    def _multi_site(self, probe: Probe, layer: int | str | None, normalization: Any) -> str:
        """The deepest of a multi-layer probe's sites, each checked to be canonical for this model."""
        sites = list(probe.sites_)  # type: ignore[attr-defined]
        if layer is not None:
            raise ValueError(
                f"{type(probe).__name__} reads the sites it was fitted on ({', '.join(sites)}); leave out layer=."
            )
        if normalization is not None:
            raise ValueError(
                f"{type(probe).__name__} standardises each site itself; leave out normalization=."
            )
        n_layers = int((self.model_fingerprint or {}).get("num_layers") or 10**6)
        resolved = [parse_site(s, n_layers) for s in sites]
        odd = [s for s, r in zip(sites, resolved, strict=True) if r.name != s]
        if odd:
            raise ValueError(
                f"{type(probe).__name__} was fitted on non-canonical site names {odd}; refit it with canonical "
                "names (layers.N with N >= 0, or final_norm) so the bundle means the same on any model."
            )
        return max(resolved, key=lambda r: r.index).name

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
        """Raise :class:`FingerprintMismatchError` if ``model`` is not the model the probes were trained on.

        The message names what differs: sizes, the weight parts (``block.5``, ``embeddings``, ...) whose
        sampled hash changed (a fine-tune), or the parameters holding NaN/inf.
        """
        if self.model_fingerprint is None:
            return
        actual = model_fingerprint(model, layers_attr)
        diff = fingerprint_matches(self.model_fingerprint, actual)
        if not diff:
            return
        details = []
        for k in diff:
            line = f"{k}: bundle {self.model_fingerprint.get(k)!r} vs model {actual.get(k)!r}"
            if k == "weight_hash":
                parts = differing_parts(self.model_fingerprint, actual)
                line += f" (weights differ in {', '.join(parts)})" if parts else ""
            elif k == "weights_finite" and not actual.get(k):
                line += f" (NaN/inf in {', '.join(nonfinite_parameters(model))})"
            elif k == "fingerprint_version":
                line += " (the bundle's fingerprint was taken by another probes version; re-export it)"
            details.append(line)
        raise FingerprintMismatchError(
            f"This bundle was made on {self.model_fingerprint.get('name')!r} but the model given differs "
            f"({'; '.join(details)}). Load the model the bundle was trained on, or pass check_fingerprint=False "
            "(CLI: --no-check-fingerprint) if you know the weights are compatible."
        )

    # --- persistence ----------------------------------------------------------------------------
    def manifest(self, tensors_sha256: str | None = None) -> dict[str, Any]:
        from probes._version import __version__

        return {
            "schema_version": SCHEMA_VERSION,
            "format": "probes.bundle",
            "probes_version": __version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "tensors_file": TENSORS,
            "tensors_sha256": tensors_sha256,
            "model": self.model_fingerprint,
            "metadata": self.metadata,
            "probes": [entry_json(e) for e in self],
        }

    def save(self, path: str | os.PathLike[str], *, signing_key: BundleKey | None = None) -> Path:
        """Write the bundle folder atomically (a temp folder beside it, then a rename); returns the path.

        The manifest is sealed with a fresh digest (so re-saving after adding a threshold gives a valid
        bundle) and signed with ``signing_key``, else with the key configured in the environment
        (``$PROBES_BUNDLE_HMAC_KEY`` or ``$PROBES_BUNDLE_SIGNING_KEY``, see :mod:`probes.package.signing`).
        """
        if len(self) == 0:
            raise ValueError("Cannot save an empty bundle: add a probe first.")
        tensors: dict[str, torch.Tensor] = {}
        for entry in self:
            tensors.update(entry_tensors(entry))
        key = signing_key if signing_key is not None else signing_key_from_env()
        return write_folder(Path(path), tensors, self.manifest, key)

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, verify_key: BundleKey | None = None) -> ProbeBundle:
        """Read a bundle folder; refuses missing, corrupted, edited, unsigned-when-required or unknown-schema
        files with a :class:`BundleError` naming what is wrong.

        ``verify_key`` (else the key configured in the environment: ``$PROBES_BUNDLE_PUBLIC_KEY``,
        ``$PROBES_BUNDLE_HMAC_KEY`` or ``$PROBES_BUNDLE_SIGNING_KEY``) makes a valid signature by that key
        mandatory; without one the digest is still checked.
        """
        manifest_path = Path(path) / MANIFEST
        key = verify_key if verify_key is not None else verify_key_from_env()
        manifest, tensors = read_folder(Path(path), key)
        try:
            entries = [entry_from_json(spec, tensors) for spec in manifest["probes"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(
                f"{manifest_path} has an invalid probe entry ({type(exc).__name__}: {exc}); re-export the bundle."
            ) from exc
        bundle = cls(entries, manifest.get("model"), manifest.get("metadata") or {})
        bundle.signature = manifest["integrity"].get("signature")
        return bundle
