"""Model loading, canonical site names and model fingerprints.

Everything is imported on first use: ``probes.models.packages`` (read by configs) must not pull in torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "FINAL_NORM": "probes.models.sites",
    "Site": "probes.models.sites",
    "block_list": "probes.models.sites",
    "final_norm_module": "probes.models.sites",
    "fingerprint_matches": "probes.models.fingerprint",
    "model_fingerprint": "probes.models.fingerprint",
    "num_layers": "probes.models.sites",
    "parse_site": "probes.models.sites",
    "parse_sites": "probes.models.sites",
    "residual_hook": "probes.models.sites",
    "load_model": "probes.models.load",
    "KNOWN_PACKAGES": "probes.models.packages",
    "resolve_package": "probes.models.packages",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'probes.models' has no attribute {name!r}")
