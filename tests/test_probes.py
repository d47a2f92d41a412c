"""Pooled probes: known-answer accuracy on Gaussians, the sklearn contract, persistence, batched fits."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from probes.errors import BundleError, NotFittedError
from probes.train import (
    DiffMeansProbe,
    LogisticProbe,
    MLPProbe,
    Probe,
    fit_logistic_many,
    load_probe,
    make_probe,
    save_probe,
)
from probes.train._validate import cv_splits, holdout_split


def phi(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def gaussians(
    n: int, cov_sqrt: np.ndarray, delta: np.ndarray, seed: int, offset: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Equal-covariance classes: x = offset + mu_y + cov_sqrt @ z, mu_1 - mu_0 = delta, equal priors."""
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.arange(n) % 2)
    X = rng.normal(size=(n, len(delta))) @ cov_sqrt.T + offset + np.outer(y - 0.5, delta)
    return X.astype(np.float32), y


def population_auroc(w: np.ndarray, delta: np.ndarray, cov: np.ndarray) -> float:
    """Exact AUROC of the score x @ w: P(s+ > s-) with s+ - s- ~ N(w.delta, 2 w'Cov w)."""
    return phi(float(w @ delta) / math.sqrt(2.0 * float(w @ cov @ w)))


def bayes_auroc(delta: np.ndarray, cov: np.ndarray) -> float:
    """Phi(Delta / sqrt 2), Delta the Mahalanobis distance of the means (accuracy would be Phi(Delta / 2))."""
    return phi(math.sqrt(float(delta @ np.linalg.solve(cov, delta))) / math.sqrt(2.0))


def linear_probes() -> dict[str, Callable[[np.ndarray, np.ndarray], Probe]]:
    return {
        "logistic": lambda X, y: LogisticProbe().fit(X, y),
        "logistic-torch": lambda X, y: LogisticProbe(backend="torch").fit(X, y),
        "logistic-cv": lambda X, y: LogisticProbe(cv=3, Cs=(0.01, 1.0)).fit(X, y),
        "diffmeans": lambda X, y: DiffMeansProbe().fit(X, y),
        "diffmeans-std": lambda X, y: DiffMeansProbe(standardize=True).fit(X, y),
        "lda": lambda X, y: DiffMeansProbe(lda=True).fit(X, y),
        "lda-fixed": lambda X, y: DiffMeansProbe(lda=True, shrinkage=0.1).fit(X, y),
        "many": lambda X, y: fit_logistic_many(torch.as_tensor(X)[None], y)[0],
    }


D = 20
RNG = np.random.default_rng(0)
DIRECTION = RNG.normal(size=D)
DIRECTION /= np.linalg.norm(DIRECTION)


@pytest.mark.parametrize("name", list(linear_probes()))
def test_linear_probes_reach_bayes_auroc_isotropic(name: str) -> None:
    cov_sqrt, delta = np.eye(D), 1.5 * DIRECTION
    X, y = gaussians(4000, cov_sqrt, delta, seed=1, offset=3.0)
    probe = linear_probes()[name](X, y)
    w, b = probe.linear_form()
    bayes = bayes_auroc(delta, np.eye(D))
    assert abs(bayes - phi(1.5 / math.sqrt(2))) < 1e-12
    learned = population_auroc(w.double().numpy(), delta, np.eye(D))
    assert bayes - 0.005 < learned <= bayes + 1e-9
    Xte, yte = gaussians(20000, cov_sqrt, delta, seed=2, offset=3.0)
    assert abs(roc_auc_score(yte, probe.decision_function(Xte)) - bayes) < 0.012


def test_lda_and_logistic_reach_bayes_where_diffmeans_cannot() -> None:
    # Anisotropic noise: the mass-mean direction is no longer optimal, Sigma^-1 delta is.
    rng = np.random.default_rng(3)
    Q, _ = np.linalg.qr(rng.normal(size=(D, D)))
    eig = np.geomspace(0.1, 10.0, D)
    cov = Q @ np.diag(eig) @ Q.T
    cov_sqrt = Q @ np.diag(np.sqrt(eig)) @ Q.T
    delta = Q @ (np.r_[1.0, np.zeros(D - 2), 1.5] * np.sqrt(np.r_[eig[0], np.ones(D - 2), eig[-1]]))
    X, y = gaussians(6000, cov_sqrt, delta, seed=4)
    bayes = bayes_auroc(delta, cov)
    for probe in (LogisticProbe().fit(X, y), DiffMeansProbe(lda=True).fit(X, y)):
        assert population_auroc(probe.coef_.double().numpy(), delta, cov) > bayes - 0.005
    mass_mean = DiffMeansProbe().fit(X, y)
    expected = population_auroc(delta, delta, cov)  # the population direction of diff-of-means
    got = population_auroc(mass_mean.coef_.double().numpy(), delta, cov)
    assert abs(got - expected) < 0.005 and got < bayes - 0.03


def test_logistic_accuracy_matches_bayes_accuracy() -> None:
    cov_sqrt, delta = np.eye(D), 1.5 * DIRECTION
    X, y = gaussians(4000, cov_sqrt, delta, seed=5)
    Xte, yte = gaussians(20000, cov_sqrt, delta, seed=6)
    probe = LogisticProbe().fit(X, y)
    assert abs(float((probe.predict(Xte) == yte).mean()) - phi(1.5 / 2)) < 0.012
    proba = probe.predict_proba(Xte)
    assert proba.shape == (20000, 2) and np.allclose(proba.sum(1), 1.0)
    # Logistic probabilities are calibrated here: the mean predicted positive rate matches the base rate.
    assert abs(proba[:, 1].mean() - yte.mean()) < 0.02


def xor_data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    corners = rng.choice([-1.0, 1.0], size=(n, 2))
    X = np.concatenate([corners + 0.3 * rng.normal(size=(n, 2)), rng.normal(size=(n, 8))], axis=1)
    y = (corners[:, 0] * corners[:, 1] > 0).astype(np.int64)
    return X.astype(np.float32), y


def test_mlp_solves_xor_that_linear_probes_cannot() -> None:
    X, y = xor_data(1000, seed=0)
    Xte, yte = xor_data(2000, seed=1)
    linear = LogisticProbe().fit(X, y)
    assert roc_auc_score(yte, linear.decision_function(Xte)) < 0.6
    mlp = MLPProbe(hidden=64, lr=1e-2, max_epochs=30, seed=0).fit(X, y)
    assert roc_auc_score(yte, mlp.decision_function(Xte)) > 0.97
    assert 1 <= mlp.best_epoch_ <= mlp.n_epochs_ <= 30
    again = MLPProbe(hidden=64, lr=1e-2, max_epochs=30, seed=0).fit(X, y)
    assert np.array_equal(mlp.decision_function(Xte), again.decision_function(Xte))  # seeded


# --- the scikit-learn contract ------------------------------------------------------------------

POOLED: dict[str, Callable[[], Probe]] = {
    "logistic": lambda: LogisticProbe(),
    "logistic-torch": lambda: LogisticProbe(backend="torch", cv=2, Cs=(0.1, 1.0)),
    "diffmeans": lambda: DiffMeansProbe(),
    "lda": lambda: DiffMeansProbe(lda=True, standardize=True),
    "mlp": lambda: MLPProbe(hidden=16, lr=1e-2, max_epochs=30),
}


def small_data(seed: int = 0, n: int = 200, d: int = 6) -> tuple[np.ndarray, np.ndarray]:
    return gaussians(n, np.eye(d), np.r_[2.0, np.zeros(d - 1)], seed=seed)


@pytest.mark.parametrize("name", list(POOLED))
def test_contract_fit_returns_self_and_learns_only_underscore_attributes(name: str) -> None:
    X, y = small_data()
    probe = POOLED[name]()
    before_params = dict(probe.get_params())
    before_attrs = set(vars(probe))
    for method in (probe.decision_function, probe.predict_proba, probe.predict):
        with pytest.raises(NotFittedError, match="fit"):
            method(X)
    assert probe.fit(X, y) is probe
    assert probe.get_params() == before_params
    learned = set(vars(probe)) - before_attrs
    assert learned and all(a.endswith("_") or a.startswith("_") for a in learned), learned
    assert probe.n_features_in_ == X.shape[1]
    assert set(np.unique(probe.predict(X))) <= {0, 1}
    assert roc_auc_score(y, probe.decision_function(X)) > 0.8
    rebuilt = type(probe)(**probe.get_params())  # get_params round-trips through __init__
    assert rebuilt.get_params() == before_params


@pytest.mark.parametrize("name", list(POOLED))
def test_bad_inputs_raise_clear_value_errors(name: str) -> None:
    X, y = small_data()
    with pytest.raises(ValueError, match="both classes"):
        POOLED[name]().fit(X, np.zeros(len(y), dtype=int))
    bad = X.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        POOLED[name]().fit(bad, y)
    with pytest.raises(ValueError, match="2-D"):
        POOLED[name]().fit(X[:, 0], y)
    with pytest.raises(ValueError, match="labels"):
        POOLED[name]().fit(X, y[:-1])
    with pytest.raises(ValueError, match="Only binary classification"):
        POOLED[name]().fit(X, np.arange(len(y)) % 3)
    # Any two labels work as in scikit-learn (classes_[1] = the positive class); 0/1 is the convention.
    assert list(POOLED[name]().fit(X, y + 1).classes_) == [1, 2]
    fitted = POOLED[name]().fit(X, y)
    with pytest.raises(ValueError, match="fitted on 6 features"):
        fitted.decision_function(X[:, :4])


def test_invalid_hyperparameters_raise_at_fit() -> None:
    X, y = small_data()
    with pytest.raises(ValueError, match="C must be > 0"):
        LogisticProbe(C=0).fit(X, y)
    with pytest.raises(ValueError, match="shrinkage"):
        DiffMeansProbe(lda=True, shrinkage=2.0).fit(X, y)
    with pytest.raises(ValueError, match="val_fraction"):
        MLPProbe(val_fraction=1.5).fit(X, y)


@pytest.mark.parametrize("name", ["logistic", "logistic-torch", "diffmeans", "lda"])
def test_linear_form_reproduces_decision_function(name: str) -> None:
    X, y = gaussians(
        500, np.eye(6), np.r_[2.0, np.zeros(5)], seed=0, offset=50.0
    )  # big mean: folding matters
    probe = POOLED[name]().fit(X, y)
    w, b = probe.linear_form()
    assert w.shape == (6,) and b.shape == ()
    direct = (torch.as_tensor(X) @ w + b).numpy()
    assert np.abs(direct - probe.decision_function(X)).max() <= 1e-5


def test_nonlinear_probe_has_no_linear_form() -> None:
    X, y = small_data()
    assert MLPProbe(hidden=8, max_epochs=2).fit(X, y).linear_form() is None


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("name", list(POOLED))
def test_scoring_low_precision_tensors(name: str, dtype: torch.dtype) -> None:
    X, y = small_data()
    probe = POOLED[name]().fit(X, y)
    ref = probe.decision_function(X)
    got = probe.decision_function(torch.as_tensor(X).to(dtype))
    assert got.dtype == np.float32
    tol = 0.05 if dtype == torch.bfloat16 else 0.01
    assert np.abs(got - ref).max() <= tol * (1.0 + np.abs(ref).max())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", list(POOLED))
def test_scoring_stays_on_the_gpu(name: str) -> None:
    X, y = small_data()
    probe = POOLED[name]().fit(X, y)
    s = probe.score_torch(torch.as_tensor(X, device="cuda"))
    assert s.device.type == "cuda"
    assert np.allclose(s.cpu().numpy(), probe.decision_function(X), atol=1e-4)


# --- persistence ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(POOLED))
def test_save_load_round_trip_gives_identical_scores(name: str, tmp_path: Path) -> None:
    X, y = small_data()
    probe = POOLED[name]().fit(X, y)
    path = save_probe(probe, tmp_path / "sub" / "probe.safetensors")
    assert [p.name for p in path.parent.iterdir()] == ["probe.safetensors"]  # no temp files left
    loaded = load_probe(path)
    assert type(loaded) is type(probe)
    assert loaded.get_params() == {
        k: list(v) if isinstance(v, tuple) else v for k, v in probe.get_params().items()
    }
    assert np.array_equal(loaded.decision_function(X), probe.decision_function(X))


def test_saving_an_unfitted_probe_raises(tmp_path: Path) -> None:
    with pytest.raises(NotFittedError):
        save_probe(LogisticProbe(), tmp_path / "p.safetensors")
    assert not (tmp_path / "p.safetensors").exists()


def test_tampered_truncated_or_foreign_files_raise_bundle_error(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    X, y = small_data()
    path = save_probe(LogisticProbe().fit(X, y), tmp_path / "p.safetensors")
    raw = bytearray(path.read_bytes())
    tampered = tmp_path / "tampered.safetensors"
    raw_t = bytearray(raw)
    raw_t[-3] ^= 0x40  # flip a bit inside the last tensor's data
    tampered.write_bytes(bytes(raw_t))
    with pytest.raises(BundleError, match="checksum"):
        load_probe(tampered)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(bytes(raw[: len(raw) // 2]))
    with pytest.raises(BundleError, match="corrupted or truncated"):
        load_probe(truncated)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(3)}, str(foreign))
    with pytest.raises(BundleError, match="metadata"):
        load_probe(foreign)
    with pytest.raises(BundleError, match="No probe file"):
        load_probe(tmp_path / "missing.safetensors")


# --- cross-validation and batched fits ------------------------------------------------------------


def test_grouped_cv_never_splits_a_group() -> None:
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(60), 4)  # e.g. the two sides of contrast pairs share a group
    y = np.tile([0, 1, 0, 1], 60)
    folds = cv_splits(y, groups, n_splits=5, seed=0)
    seen = np.concatenate([va for _, va in folds])
    assert sorted(seen.tolist()) == list(range(len(y)))
    for tr, va in folds:
        assert not set(groups[tr]) & set(groups[va])
        assert set(y[va]) == {0, 1}
    tr, va = holdout_split(y, groups, 0.25, seed=1)
    assert len(va) and not set(groups[tr]) & set(groups[va])
    X = rng.normal(size=(len(y), 5)).astype(np.float32) + y[:, None] * 0.8
    probe = LogisticProbe(cv=4, Cs=(0.001, 0.1, 10.0)).fit(X, y, groups=groups.astype(str))
    assert float(probe.C_) in (0.001, 0.1, 10.0) and probe.cv_scores_.shape == (3,)
    with pytest.raises(ValueError, match="distinct groups"):
        LogisticProbe(cv=5).fit(X, y, groups=np.arange(len(y)) % 3)


def test_batched_many_layer_fit_matches_separate_sklearn_fits() -> None:
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(7)
    n, d, layers = 3000, 32, 4
    y = rng.permutation(np.arange(n) % 2)
    direction = rng.normal(size=d)
    Xs = []
    for layer in range(layers):  # signal grows with depth; offsets and scales differ per layer
        scales = rng.uniform(0.5, 4.0, size=d)
        X = (
            rng.normal(size=(n, d)) * scales
            + rng.normal(size=d) * 10
            + np.outer(y, direction) * 0.15 * (layer + 1)
        )
        Xs.append(X.astype(np.float32))
    stack = torch.as_tensor(np.stack(Xs))
    probes = fit_logistic_many(stack[:, :2000], y[:2000], C=1.0)
    for layer, probe in enumerate(probes):
        X = Xs[layer]
        mean, std = X[:2000].mean(0), X[:2000].std(0)
        ref = LogisticRegression(C=1.0, max_iter=1000).fit((X[:2000] - mean) / std, y[:2000])
        ref_scores = ((X[2000:] - mean) / std) @ ref.coef_[0] + ref.intercept_[0]
        auc_ref = roc_auc_score(y[2000:], ref_scores)
        auc = roc_auc_score(y[2000:], probe.decision_function(X[2000:]))
        assert abs(auc - auc_ref) < 0.01
        assert np.corrcoef(probe.coef_.numpy(), ref.coef_[0] / std)[0, 1] > 0.99
        assert probe.n_iter_ < 1000
    plain = fit_logistic_many(stack[:, :2000], y[:2000], C=1.0, precondition=False)
    for a, b in zip(probes, plain, strict=True):  # the preconditioner changes the path, not the optimum
        assert np.corrcoef(a.coef_.numpy(), b.coef_.numpy())[0, 1] > 0.999
        assert a.n_iter_ < b.n_iter_
    aucs = [roc_auc_score(y[2000:], p.decision_function(x[2000:])) for p, x in zip(probes, Xs, strict=True)]
    assert aucs == sorted(aucs)  # more signal, better probe: layers were not mixed up


def test_make_probe_factory() -> None:
    assert isinstance(make_probe("logistic", C=0.5), LogisticProbe)
    lda = make_probe("lda", shrinkage=0.2)
    assert isinstance(lda, DiffMeansProbe) and lda.lda and lda.shrinkage == 0.2
    assert make_probe("token", aggregation="ema").aggregation == "ema"
    with pytest.raises(ValueError, match="Unknown probe kind 'svm'"):
        make_probe("svm")
    with pytest.raises(ValueError, match="no parameter 'hidden'"):
        make_probe("logistic", hidden=3)
