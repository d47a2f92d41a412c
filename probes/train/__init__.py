"""Probes with the scikit-learn contract, scored in torch on any device.

=====================  ==============================================================================
``LogisticProbe``      L2 logistic regression on standardised activations (C by grouped CV if asked)
``fit_logistic_many``  one batched torch L-BFGS fit of a logistic probe per layer (layer sweeps)
``DiffMeansProbe``     mass-mean direction; ``lda=True`` for the shrunk-covariance (LDA) variant
``MLPProbe``           one hidden layer, early stopping on a validation split, seeded
``TokenProbe``         per-token linear scorer + ``mean``/``max``/``last``/``ema``/``rolling`` aggregation
``AttentionProbe``     learned softmax attention over a sequence's tokens, per-token scores
``save_probe``         one ``.safetensors`` file (tensors + JSON metadata); ``load_probe`` reads it back
=====================  ==============================================================================

Sign convention: label 1 is the state the probe detects; a higher score means more of it.
"""

from __future__ import annotations

from typing import Any

from probes.train.base import Probe, probe_from_state, register_probe
from probes.train.io import load_probe, save_probe
from probes.train.linear import DiffMeansProbe, LogisticProbe, fit_logistic_many
from probes.train.mlp import MLPProbe
from probes.train.token import AttentionProbe, TokenProbe

__all__ = [
    "AttentionProbe",
    "DiffMeansProbe",
    "LogisticProbe",
    "MLPProbe",
    "PROBE_KINDS",
    "Probe",
    "TokenProbe",
    "fit_logistic_many",
    "load_probe",
    "make_probe",
    "probe_from_state",
    "register_probe",
    "save_probe",
]

#: Names accepted by :func:`make_probe` (and run configs); ``lda`` is ``DiffMeansProbe(lda=True)``.
PROBE_KINDS: dict[str, tuple[type[Probe], dict[str, Any]]] = {
    "logistic": (LogisticProbe, {}),
    "diffmeans": (DiffMeansProbe, {}),
    "lda": (DiffMeansProbe, {"lda": True}),
    "mlp": (MLPProbe, {}),
    "token": (TokenProbe, {}),
    "attention": (AttentionProbe, {}),
}


def make_probe(kind: str, **params: Any) -> Probe:
    """An unfitted probe from a kind name and hyperparameters, e.g. ``make_probe("logistic", C=0.1)``."""
    if kind not in PROBE_KINDS:
        raise ValueError(f"Unknown probe kind {kind!r}; choose one of: {', '.join(PROBE_KINDS)}.")
    cls, preset = PROBE_KINDS[kind]
    valid = list(cls().get_params())
    unknown = [k for k in params if k not in valid]
    if unknown:
        raise ValueError(
            f"Probe kind {kind!r} ({cls.__name__}) has no parameter {', '.join(map(repr, unknown))}; "
            f"valid parameters: {', '.join(valid)}."
        )
    return cls(**{**preset, **params})
