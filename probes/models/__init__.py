"""Model loading, canonical site names and model fingerprints."""

from probes.models.fingerprint import fingerprint_matches, model_fingerprint
from probes.models.sites import (
    FINAL_NORM,
    Site,
    block_list,
    final_norm_module,
    num_layers,
    parse_site,
    parse_sites,
    residual_hook,
)

__all__ = [
    "FINAL_NORM",
    "Site",
    "block_list",
    "final_norm_module",
    "fingerprint_matches",
    "load_model",
    "model_fingerprint",
    "num_layers",
    "parse_site",
    "parse_sites",
    "residual_hook",
]


def __getattr__(name: str):  # load_model pulls in transformers: keep it lazy
    if name == "load_model":
        from probes.models.load import load_model

        return load_model
    raise AttributeError(name)
