"""The scikit-learn contract, for real: ``check_estimator``, ``clone``, ``Pipeline``, ``GridSearchCV`` and
``cross_val_score`` on the probes and the anomaly detectors."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.base import clone, is_classifier
from sklearn.model_selection import GridSearchCV, GroupKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import check_estimator

from probes.errors import NotFittedError
from probes.train import (
    DiffMeansProbe,
    KNNDetector,
    LogisticProbe,
    MahalanobisDetector,
    MLPProbe,
    PCAResidualDetector,
)

CLASSIFIERS = [
    LogisticProbe(),
    pytest.param(LogisticProbe(cv=3, Cs=(0.1, 1.0)), marks=pytest.mark.slow),  # ~20 s on 2 cores
    DiffMeansProbe(),
    DiffMeansProbe(lda=True),
    pytest.param(MLPProbe(hidden=32, max_epochs=60), marks=pytest.mark.slow),  # ~30 s on 2 cores
]

# A detector refuses 0/1 labels with positives in them on purpose: it must never learn the states it should
# flag (``fit(X[y == 0])``). Any other ``y`` is ignored as scikit-learn's unsupervised estimators ignore it.
# These checks fit on binary 0/1 blobs, so they hit that refusal; nothing else about them fails.
_REFUSES_POSITIVE_LABELS = "fits on 0/1 labels with positives; a detector refuses them by design"
DETECTOR_SKIPS = {
    name: _REFUSES_POSITIVE_LABELS
    for name in (
        "check_pipeline_consistency",
        "check_estimators_nan_inf",
        "check_estimators_pickle",
        "check_fit_idempotent",
        "check_fit_check_is_fitted",
        "check_n_features_in",
    )
}
# PCAResidualDetector(n_components=0.9) keeps every dimension of scikit-learn's 2-4 feature test data and
# refuses (nothing left to score), so it is checked with an integer number of components.
DETECTORS = [MahalanobisDetector(), PCAResidualDetector(n_components=1), KNNDetector()]


def _failures(estimator, expected=None) -> list[str]:  # noqa: ANN001
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = check_estimator(estimator, on_fail=None, expected_failed_checks=expected)
    assert len(results) > 30  # the checks really ran
    return [f"{r['check_name']}: {str(r['exception'])[:300]}" for r in results if r["status"] == "failed"]


@pytest.mark.parametrize("probe", CLASSIFIERS, ids=lambda p: type(p).__name__)
def test_probes_pass_check_estimator(probe) -> None:  # noqa: ANN001
    assert _failures(probe) == []


@pytest.mark.parametrize("detector", DETECTORS, ids=lambda p: type(p).__name__)
def test_detectors_pass_check_estimator_except_refusing_positive_labels(detector) -> None:  # noqa: ANN001
    assert _failures(detector, DETECTOR_SKIPS) == []
    # ... and the refusal is what the skipped checks hit, nothing else:
    X = np.random.default_rng(0).normal(size=(40, 3))
    with pytest.raises(ValueError, match="labelled positive"):
        clone(detector).fit(X, np.arange(40) % 2)
    fitted = clone(detector).fit(X, np.zeros(40))
    assert np.array_equal(fitted.decision_function(X), clone(detector).fit(X).decision_function(X))


def _data(n: int = 240, d: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    X = rng.normal(size=(n, d)) * np.linspace(0.5, 20.0, d) + np.outer(y, np.r_[1.5, np.zeros(d - 1)])
    groups = np.arange(n) // 2  # pairs
    return X, y, groups


def test_clone_get_params_set_params() -> None:
    probe = LogisticProbe(C=0.3, cv=None)
    copy = clone(probe)
    assert copy is not probe and copy.get_params() == probe.get_params()
    assert probe.get_params(deep=True) == probe.get_params(deep=False)
    assert probe.set_params(C=2.0) is probe and probe.C == 2.0
    with pytest.raises(ValueError, match="no parameter"):
        probe.set_params(bogus=1)
    assert is_classifier(probe) and not is_classifier(KNNDetector())
    with pytest.raises(NotFittedError):  # the package's error ...
        probe.decision_function(np.zeros((2, 3)))
    from sklearn.exceptions import NotFittedError as SkNotFittedError

    with pytest.raises(SkNotFittedError):  # ... is also scikit-learn's
        probe.predict(np.zeros((2, 3)))
    X, y, _ = _data()
    fitted = probe.fit(X, y)
    assert not hasattr(clone(fitted), "coef_")  # clone drops learned state
    assert list(fitted.classes_) == [0, 1]


def test_pipeline_with_standard_scaler() -> None:
    X, y, _ = _data()
    for probe in (LogisticProbe(), DiffMeansProbe(lda=True), MLPProbe(hidden=16, max_epochs=30)):
        pipe = make_pipeline(StandardScaler(), probe).fit(X[:160], y[:160])
        assert pipe.score(X[160:], y[160:]) > 0.6
        assert pipe.predict_proba(X[160:]).shape == (80, 2)
        assert pipe.decision_function(X[160:]).shape == (80,)


def test_grid_search_and_cross_val_score_with_groups() -> None:
    X, y, groups = _data()
    search = GridSearchCV(LogisticProbe(), {"C": [0.001, 1.0]}, scoring="roc_auc", cv=GroupKFold(4))
    search.fit(X, y, groups=groups)
    assert search.best_params_["C"] in (0.001, 1.0)
    assert search.best_score_ > 0.6
    assert isinstance(search.best_estimator_, LogisticProbe)
    scores = cross_val_score(
        DiffMeansProbe(standardize=True), X, y, groups=groups, cv=GroupKFold(4), scoring="roc_auc"
    )
    assert scores.shape == (4,) and scores.mean() > 0.6
    det_scores = cross_val_score(KNNDetector(), X[y == 0], cv=3, scoring=lambda est, X, y=None: 1.0)
    assert det_scores.shape == (3,)


def test_string_labels_classes_and_positive_class() -> None:
    X, y, _ = _data()
    names = np.array(["sarcastic", "sincere"])[y]  # y == 1 -> "sincere"; sorted: [sarcastic, sincere]
    probe = LogisticProbe().fit(X, names)
    assert list(probe.classes_) == ["sarcastic", "sincere"]
    # classes_[1] ("sincere") is the positive class, as in LogisticRegression: a higher score means more of it.
    assert set(probe.predict(X)) <= {"sarcastic", "sincere"}
    assert probe.decision_function(X[y == 1]).mean() > probe.decision_function(X[y == 0]).mean()
    with pytest.raises(ValueError, match="0/1 labels only"):
        probe.check_saveable()  # what save_probe and ProbeBundle.add call first
    same = LogisticProbe().fit(X, y)
    assert np.allclose(probe.decision_function(X), same.decision_function(X), atol=1e-5)
    with pytest.raises(ValueError, match="Only binary classification"):
        LogisticProbe().fit(X, np.arange(len(X)) % 3)


def test_one_probe_registry_configs_and_files_agree() -> None:
    """``lda`` is one registry entry: a config names it, make_probe builds it, and a saved one loads."""
    import probes
    from probes._version import __version__
    from probes.pipeline.sweep import _probe_params
    from probes.train import PROBE_KINDS, PROBE_REGISTRY, make_probe, probe_from_state
    from probes.train.base import PROBE_TYPES

    assert probes.__version__ == __version__
    from probes.config.stages import DETECTOR_KINDS as CONFIG_DETECTORS
    from probes.train import DETECTOR_KINDS

    assert set(CONFIG_DETECTORS) == set(DETECTOR_KINDS)  # the torch-free copy configs use agrees
    assert set(PROBE_KINDS) <= set(PROBE_REGISTRY) and "lda" in PROBE_KINDS
    assert PROBE_TYPES["lda"] is DiffMeansProbe and set(PROBE_TYPES) == set(PROBE_REGISTRY)
    params = _probe_params("lda", {"shrinkage": 0.1}, seed=0)  # the config check accepts it
    probe = make_probe("lda", **params)
    assert isinstance(probe, DiffMeansProbe) and probe.lda
    X, y, _ = _data()
    probe.fit(X, y)
    back = probe_from_state("lda", {"shrinkage": 0.1}, probe.state_tensors())
    assert back.lda and np.allclose(back.decision_function(X), probe.decision_function(X))
    assert list(back.classes_) == [0, 1]
