"""Probe bundles: trained probes packaged as safetensors + a JSON manifest with the model's fingerprint,
sealed by one digest over manifest and tensors and optionally signed (HMAC secret or ed25519 key)."""

from probes.package.bundle import ProbeBundle
from probes.package.entry import BundleEntry, Threshold, apply_calibration
from probes.package.signing import Ed25519Key, HmacKey

__all__ = ["BundleEntry", "Ed25519Key", "HmacKey", "ProbeBundle", "Threshold", "apply_calibration"]
