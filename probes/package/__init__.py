"""Probe bundles: trained probes packaged as safetensors + a JSON manifest with the model's fingerprint."""

from probes.package.bundle import ProbeBundle
from probes.package.entry import BundleEntry, Threshold, apply_calibration

__all__ = ["BundleEntry", "ProbeBundle", "Threshold", "apply_calibration"]
