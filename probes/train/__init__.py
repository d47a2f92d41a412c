"""Probes with the scikit-learn contract, scored in torch on any device.

=====================  ==============================================================================
``LogisticProbe``      L2 logistic regression on standardised activations (C by grouped CV if asked)
``fit_logistic_many``  one batched torch L-BFGS fit of a logistic probe per layer (layer sweeps)
``DiffMeansProbe``     mass-mean direction; ``lda=True`` for the shrunk-covariance (LDA) variant
``MLPProbe``           one hidden layer, early stopping on a validation split, seeded
``TokenProbe``         per-token linear scorer + ``mean``/``max``/``last``/``ema``/``rolling`` aggregation
``AttentionProbe``     learned softmax attention over a sequence's tokens, per-token scores
``StackedProbe``       logistic probes on several sites combined by a logistic over their scores
``ConcatProbe``        one logistic over several sites concatenated (both linear in every site)
``MahalanobisDetector`` anomaly detector fitted on benign rows: shrunk-covariance Mahalanobis distance
``PCAResidualDetector`` anomaly detector: energy outside the top-k principal subspace of benign rows
``KNNDetector``        anomaly detector: distance to the k-th nearest benign row (sklearn or faiss)
``Cascade``            escalation band + threshold of a probe -> judge cascade, chosen on validation
``LMJudge``            a chat LM asked a yes/no question, scored by log P("yes")
``RidgeProbe``         L2 linear regression of a continuous target (R² by grouped CV if asked)
``SparseProbe``        L1 (Lasso) regression: fixed alpha, CV alpha, or at most k coordinates off the path
``save_probe``         one ``.safetensors`` file (tensors + JSON metadata); ``load_probe`` reads it back
=====================  ==============================================================================

Sign convention: label 1 is the state the probe detects; a higher score means more of it. For anomaly
detectors (no labels): a higher score means less like the benign rows they were fitted on.
"""

from __future__ import annotations

from typing import Any

from probes.train.anomaly import AnomalyDetector, KNNDetector, MahalanobisDetector, PCAResidualDetector
from probes.train.base import PROBE_REGISTRY, ClassifierProbe, Probe, probe_from_state, register_probe
from probes.train.cascade import Cascade, CascadeDecision
from probes.train.io import load_probe, save_probe
from probes.train.judge import LMJudge
from probes.train.linear import DiffMeansProbe, LogisticProbe, fit_logistic_many
from probes.train.mlp import MLPProbe
from probes.train.multilayer import ConcatProbe, MultiSiteProbe, StackedProbe
from probes.train.regression import RegressionProbe, RidgeProbe, SparseProbe
from probes.train.token import AttentionProbe, TokenProbe

__all__ = [
    "DETECTOR_KINDS",
    "MULTI_SITE_KINDS",
    "AnomalyDetector",
    "AttentionProbe",
    "Cascade",
    "CascadeDecision",
    "ClassifierProbe",
    "ConcatProbe",
    "DiffMeansProbe",
    "KNNDetector",
    "LMJudge",
    "LogisticProbe",
    "MLPProbe",
    "MahalanobisDetector",
    "MultiSiteProbe",
    "PCAResidualDetector",
    "PROBE_KINDS",
    "PROBE_REGISTRY",
    "Probe",
    "REGRESSION_KINDS",
    "RegressionProbe",
    "RidgeProbe",
    "SparseProbe",
    "StackedProbe",
    "TokenProbe",
    "fit_logistic_many",
    "load_probe",
    "make_probe",
    "probe_from_state",
    "register_probe",
    "save_probe",
]

register_probe(DiffMeansProbe, kind="lda", lda=True)


def _kinds(select: Any) -> dict[str, tuple[type[Probe], dict[str, Any]]]:
    return {k: (cls, dict(preset)) for k, (cls, preset) in PROBE_REGISTRY.items() if select(cls)}


def _is_detector(cls: type) -> bool:
    return bool(getattr(cls, "is_detector", False))


def _is_multi_site(cls: type) -> bool:
    return bool(getattr(cls, "multi_site", False))


def _is_regression(cls: type) -> bool:
    return issubclass(cls, RegressionProbe)


#: Views of the one registry (:data:`probes.train.base.PROBE_REGISTRY`) by what the probes read.
#: Supervised probes of one site; ``lda`` is ``DiffMeansProbe(lda=True)``.
PROBE_KINDS = _kinds(lambda c: not (_is_detector(c) or _is_multi_site(c) or _is_regression(c)))
#: Regression probes (``task: regress``): fitted on a numeric target, scored as the predicted value.
REGRESSION_KINDS = _kinds(_is_regression)
#: Anomaly detectors: fitted on benign rows only (``fit(X)``), scored as conformal p-values.
DETECTOR_KINDS = _kinds(_is_detector)
#: Probes that read several sites (``fit`` takes an Activations, ``{site: X}`` or an ``(n, sites, d)`` stack).
MULTI_SITE_KINDS = _kinds(_is_multi_site)


def make_probe(kind: str, **params: Any) -> Probe:
    """An unfitted probe from a kind name and hyperparameters, e.g. ``make_probe("logistic", C=0.1)``.

    Kinds: :data:`PROBE_KINDS` (supervised, one site), :data:`MULTI_SITE_KINDS` and :data:`DETECTOR_KINDS`.
    """
    if kind not in PROBE_REGISTRY:
        raise ValueError(f"Unknown probe kind {kind!r}; choose one of: {', '.join(PROBE_REGISTRY)}.")
    cls, preset = PROBE_REGISTRY[kind]
    valid = list(cls().get_params())
    unknown = [k for k in params if k not in valid]
    if unknown:
        raise ValueError(
            f"Probe kind {kind!r} ({cls.__name__}) has no parameter {', '.join(map(repr, unknown))}; "
            f"valid parameters: {', '.join(valid)}."
        )
    return cls(**{**preset, **params})
