"""probes: probe-based monitors of a language model's internal state.

The pipeline is the package layout::

    probes.data        contrast datasets: rows, cards, validation, splits, chat rendering
    probes.models      load_model, canonical site names (layers.N), model fingerprints
    probes.collection  exact, early-stopping activation collection with a resumable disk cache
    probes.train       probes with the scikit-learn contract (linear, mass-mean, MLP, token, attention,
                       multi-layer), anomaly detectors, cascades and LM judges
    probes.evaluation  AUROC with CIs, recall at a control-set FPR, calibration, baselines, plots
    probes.lens        the logit lens and the tuned lens (what each layer would predict)
    probes.package     probe bundles (safetensors + JSON, model fingerprint)
    probes.monitor     streaming monitors that score every generated token and stop generation
    probes.generate    on-policy datasets: the model's own replies to a dataset's prompts
    probes.track       MLflow tracking
    probes.config / probes.pipeline / probes.cli   config-driven runs and the ``probes`` command

Names are imported lazily so that ``import probes`` (and ``probes --help``) stays instant.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from probes._version import __version__

_EXPORTS: dict[str, str] = {
    # data
    "ContrastDataset": "probes.data",
    "Example": "probes.data",
    "Message": "probes.data",
    "Target": "probes.data",
    "load_dataset": "probes.data",
    # models
    "load_model": "probes.models",
    # collect
    "collect": "probes.collection",
    "Activations": "probes.collection",
    "RaggedTokens": "probes.collection",
    # train
    "LogisticProbe": "probes.train",
    "DiffMeansProbe": "probes.train",
    "MLPProbe": "probes.train",
    "TokenProbe": "probes.train",
    "AttentionProbe": "probes.train",
    "StackedProbe": "probes.train",
    "ConcatProbe": "probes.train",
    "MahalanobisDetector": "probes.train",
    "PCAResidualDetector": "probes.train",
    "KNNDetector": "probes.train",
    "Cascade": "probes.train",
    "LMJudge": "probes.train",
    "RidgeProbe": "probes.train",
    "SparseProbe": "probes.train",
    "save_probe": "probes.train",
    "load_probe": "probes.train",
    # evaluate
    "evaluate": "probes.evaluation",
    "EvalReport": "probes.evaluation",
    "layer_sweep": "probes.evaluation",
    "generalization_matrix": "probes.evaluation",
    "text_baseline": "probes.evaluation",
    "length_baseline": "probes.evaluation",
    "evaluate_detector": "probes.evaluation",
    "cascade_curve": "probes.evaluation",
    "evaluate_regression": "probes.evaluation",
    "RegressionReport": "probes.evaluation",
    # lenses
    "logit_lens": "probes.lens",
    "TunedLens": "probes.lens",
    "LensResult": "probes.lens",
    # package / monitor
    "ProbeBundle": "probes.package",
    "Monitor": "probes.monitor",
    "Trace": "probes.monitor",
    # on-policy data
    "generate_dataset": "probes.generate",
    "SamplingSettings": "probes.generate",
    # runs
    "RunConfig": "probes.config",
    "load_config": "probes.config",
    "run": "probes.pipeline",
    "RunResult": "probes.pipeline",
}

__all__ = sorted([*_EXPORTS, "__version__"])


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'probes' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:  # pragma: no cover
    from probes.collection import Activations, RaggedTokens, collect
    from probes.config import RunConfig, load_config
    from probes.data import ContrastDataset, Example, Message, Target, load_dataset
    from probes.evaluation import (
        EvalReport,
        RegressionReport,
        cascade_curve,
        evaluate,
        evaluate_detector,
        evaluate_regression,
        generalization_matrix,
        layer_sweep,
        length_baseline,
        text_baseline,
    )
    from probes.generate import SamplingSettings, generate_dataset
    from probes.lens import LensResult, TunedLens, logit_lens
    from probes.models import load_model
    from probes.monitor import Monitor, Trace
    from probes.package import ProbeBundle
    from probes.pipeline import RunResult, run
    from probes.train import (
        AttentionProbe,
        Cascade,
        ConcatProbe,
        DiffMeansProbe,
        KNNDetector,
        LMJudge,
        LogisticProbe,
        MahalanobisDetector,
        MLPProbe,
        PCAResidualDetector,
        RidgeProbe,
        SparseProbe,
        StackedProbe,
        TokenProbe,
        load_probe,
        save_probe,
    )
