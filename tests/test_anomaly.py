"""Anomaly detectors: benign-only fitting, scores, conformal p-values and their guarantee, persistence,
bundles and the streaming monitor."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from conftest import build_tiny_model

from probes.errors import BundleError, CalibrationWarning, NotFittedError
from probes.evaluation import auroc, conformal_p_values, conformal_threshold, operating_point
from probes.evaluation.thresholds import conformal_n_needed, too_few_calibration_note
from probes.models.sites import num_layers, parse_site, residual_hook
from probes.package import ProbeBundle
from probes.train import (
    KNNDetector,
    LogisticProbe,
    MahalanobisDetector,
    PCAResidualDetector,
    load_probe,
    make_probe,
    save_probe,
)
from probes.train.io import read_probe_file

D = 12


def _benign(n: int, seed: int, d: int = D, scale: float = 1.0) -> np.ndarray:
    """Rows near a low-dimensional subspace (a few shared factors plus small full-rank noise) with a few
    large-offset dimensions, like a residual stream."""
    geo = np.random.default_rng(1234)
    factors = geo.normal(size=(max(1, d // 3), d))
    mix = geo.normal(size=(d, d)) / np.sqrt(d)
    offset = geo.normal(size=d) * 3.0
    offset[:2] *= 30.0
    rng = np.random.default_rng(seed)
    low = rng.normal(size=(n, factors.shape[0])) @ factors
    return scale * (low + 0.3 * rng.normal(size=(n, d)) @ mix) + offset


def _novel(n: int, seed: int, d: int = D) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return _benign(n, seed + 1, d) + rng.normal(size=(1, d)) * 2.0


DETECTORS = {
    "mahalanobis-lw": lambda: MahalanobisDetector(),
    "mahalanobis-oas": lambda: MahalanobisDetector(shrinkage="oas"),
    "mahalanobis-none": lambda: MahalanobisDetector(shrinkage="none"),
    "mahalanobis-fixed": lambda: MahalanobisDetector(shrinkage=0.2, standardize=False),
    "pca-int": lambda: PCAResidualDetector(n_components=4),
    "pca-share": lambda: PCAResidualDetector(n_components=0.8),
    "knn": lambda: KNNDetector(n_neighbors=5),
    "knn-cosine-subset": lambda: KNNDetector(n_neighbors=3, metric="cosine", max_reference=300),
    "knn-faiss": lambda: KNNDetector(backend="faiss"),
}


# --- conformal p-values (probes.evaluation.thresholds) ---------------------------------------------------
@pytest.mark.parametrize("seed", range(5))
def test_p_value_at_most_alpha_iff_score_above_the_conformal_threshold(seed: int) -> None:
    rng = np.random.default_rng(seed)
    # Rounded scores: ties between calibration and new scores must not break the equivalence.
    cal = np.round(rng.normal(size=int(rng.integers(1, 400))), 1)
    new = np.round(rng.normal(size=500) * 1.5, 1)
    p = conformal_p_values(cal, new)
    assert (p > 0).all() and (p <= 1).all()
    for alpha in (0.01, 0.05, 0.1, 0.3):
        assert np.array_equal(p <= alpha, new > conformal_threshold(cal, alpha))


def test_too_few_calibration_note_exactly_when_the_threshold_is_infinite() -> None:
    for alpha in (0.01, 0.05, 0.2, 0.5):
        for n in range(0, conformal_n_needed(alpha) + 3):
            infinite = not np.isfinite(conformal_threshold(np.arange(n, dtype=float), alpha))
            assert (too_few_calibration_note(alpha, n) is not None) == infinite
    # The supervised operating point gives the same text.
    op = operating_point(np.arange(10.0), np.arange(5.0), np.arange(5.0), 0.01)
    assert op.notes == [too_few_calibration_note(0.01, 10)]


# --- the contract ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(DETECTORS))
def test_detectors_rank_novel_rows_above_held_out_benign(name: str) -> None:
    det = DETECTORS[name]().fit(_benign(1500, 0))
    benign, novel = _benign(600, 1), _novel(300, 2)
    s_b, s_n = det.decision_function(benign), det.decision_function(novel)
    assert auroc(np.r_[np.zeros(600), np.ones(300)], np.r_[s_b, s_n]) > 0.9
    assert det.n_fit_ + det.n_calibration_ == 1500 and det.n_calibration_ == 300
    # torch scoring (what a monitor runs) agrees with the host path, p-values too.
    X = torch.as_tensor(benign[:50], dtype=torch.float32)
    np.testing.assert_allclose(det.score_torch(X).numpy(), s_b[:50], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(det.p_values_torch(X).numpy(), det.p_values(benign[:50]), atol=1e-6)
    assert det.flops_per_row() > 0
    # Sign convention: predict flags at alpha, and more novel rows than benign ones.
    assert det.predict(novel).mean() > det.predict(benign).mean()


@pytest.mark.parametrize("name", ["mahalanobis-lw", "pca-int", "knn"])
def test_false_alarm_rate_is_controlled_in_expectation(name: str) -> None:
    """Over many calibration draws the held-out benign FPR at alpha averages at most alpha (+ noise)."""
    alpha, rates = 0.1, []
    repeats = 40 if name.startswith("mahalanobis") else 20  # the guarantee is the rank's, not the score's
    for seed in range(repeats):
        det = DETECTORS[name]().set_params(calibration_fraction=0.5, seed=seed)
        if name.startswith("pca"):
            det.set_params(n_components=2)
        det.fit(_benign(160, seed, d=6))
        rates.append(float((det.p_values(_benign(400, 1000 + seed, d=6)) <= alpha).mean()))
    # Each rate has sd ~0.037 (80 calibration rows, 400 test rows): the mean of 20 has sd ~0.008.
    assert np.mean(rates) <= alpha + 0.03
    assert np.mean(rates) >= alpha - 0.05  # not vacuous: it does flag about alpha of benign rows


def test_held_out_false_alarm_rate_sits_inside_its_binomial_interval() -> None:
    det = MahalanobisDetector().set_params(calibration_fraction=0.4).fit(_benign(5000, 3))
    thr = det.threshold(0.05)
    op = operating_point(det.calibration_scores_.numpy(), det.decision_function(_benign(4000, 4)), [], 0.05)
    assert op.threshold == pytest.approx(thr)
    lo, hi = op.empirical_fpr_ci
    assert lo <= 0.05 <= hi or op.empirical_fpr <= op.fpr_bound


def test_fewer_rows_than_dimensions_without_shrinkage_is_refused() -> None:
    X = _benign(40, 0, d=64)
    with pytest.raises(ValueError, match=r"(?s)shrinkage='ledoit_wolf'.*PCAResidualDetector"):
        MahalanobisDetector(shrinkage="none").fit(X)
    MahalanobisDetector().fit(X)  # shrinkage makes it well-posed
    collinear = np.c_[_benign(500, 1), _benign(500, 1)[:, :1] * 2.0]
    with pytest.raises(ValueError, match="singular"):
        MahalanobisDetector(shrinkage="none").fit(collinear)


def test_bad_inputs_and_hyperparameters_are_refused() -> None:
    X = _benign(200, 0)
    with pytest.raises(ValueError, match="labelled positive"):
        MahalanobisDetector().fit(X, np.r_[np.zeros(199), 1])
    MahalanobisDetector().fit(X, np.zeros(200))  # an all-benign y is fine
    with pytest.raises(ValueError, match="shrinkage"):
        MahalanobisDetector(shrinkage="ledoit").fit(X)
    with pytest.raises(ValueError, match="below min"):
        PCAResidualDetector(n_components=D).fit(X)
    with pytest.raises(ValueError, match="variance share"):
        PCAResidualDetector(n_components=1.5).fit(X)
    with pytest.raises(ValueError, match="n_neighbors"):
        KNNDetector(n_neighbors=0).fit(X)
    with pytest.raises(ValueError, match="calibration_fraction"):
        KNNDetector(calibration_fraction=1.0).fit(X)
    with pytest.raises(ValueError, match="NaN"):
        MahalanobisDetector().fit(np.r_[X, np.full((1, D), np.nan)])
    from probes.collection import RaggedTokens

    ragged = RaggedTokens(torch.randn(10, D), torch.tensor([0, 4, 10]))
    with pytest.raises(ValueError, match="X.values"):
        KNNDetector().fit(ragged)
    det = MahalanobisDetector().fit(X)
    with pytest.raises(ValueError, match="fitted on 12 features"):
        det.decision_function(np.zeros((3, 5)))
    with pytest.raises(AttributeError, match="no class probabilities"):
        det.predict_proba(X)
    with pytest.raises(NotFittedError):
        KNNDetector().decision_function(X)


def test_too_small_a_calibration_set_warns_like_supervised_thresholds() -> None:
    det = MahalanobisDetector(calibration_fraction=0.1).fit(_benign(300, 0))  # 30 calibration rows
    expected = too_few_calibration_note(0.01, 30)
    with pytest.warns(CalibrationWarning) as record:
        assert det.threshold(0.01) == float("inf")
    assert str(record[0].message) == f"MahalanobisDetector: {expected}"
    with pytest.warns(CalibrationWarning):
        assert det.predict(_novel(20, 1)).sum() == 0  # p-values never reach 0.01 with 30 scores
    with pytest.raises(ValueError, match="too few"), warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)
        det.threshold_spec(0.01)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CalibrationWarning)
        assert np.isfinite(det.threshold(0.05))  # 30 >= 1/0.05 - 1: no warning


def test_calibrate_on_another_benign_set() -> None:
    det = KNNDetector(calibration_fraction=0.0).fit(_benign(800, 0))
    assert det.n_calibration_ == 0 and det.n_fit_ == 800
    with pytest.raises(ValueError, match="calibrate"):
        det.p_values(_benign(5, 1))
    shifted = _benign(400, 2, scale=1.3)
    det.calibrate(shifted)
    assert det.n_calibration_ == 400
    assert det.calibration_scores_.numpy() == pytest.approx(np.sort(det.decision_function(shifted)))
    p = det.p_values(_benign(2000, 3, scale=1.3))
    assert abs(float((p <= 0.1).mean()) - 0.1) < 0.04


def test_grouped_calibration_split_keeps_groups_whole() -> None:
    X = _benign(400, 0)
    groups = [f"g{i // 4}" for i in range(400)]
    det = MahalanobisDetector(calibration_fraction=0.25).fit(X, groups=groups)
    assert det.n_calibration_ % 4 == 0 and det.n_calibration_ > 0


def test_sklearn_contract() -> None:
    from sklearn.base import clone

    det = KNNDetector(n_neighbors=3, max_reference=100)
    twin = clone(det)
    assert twin.get_params() == det.get_params() and twin is not det
    assert det.set_params(n_neighbors=4) is det and det.n_neighbors == 4
    with pytest.raises(ValueError, match="no parameter 'k'"):
        det.set_params(k=3)
    assert det.fit(_benign(300, 0)) is det
    assert not hasattr(twin, "reference_")
    assert isinstance(make_probe("mahalanobis", shrinkage="oas"), MahalanobisDetector)
    assert isinstance(make_probe("pca_residual"), PCAResidualDetector)


def test_knn_backends_agree_and_subsets_are_seeded() -> None:
    X = _benign(1200, 0)
    a = KNNDetector(backend="sklearn").fit(X)
    b = KNNDetector(backend="faiss").fit(X)
    Q = _novel(100, 5)
    np.testing.assert_allclose(a.decision_function(Q), b.decision_function(Q), rtol=1e-4)
    s1 = KNNDetector(max_reference=200, seed=1).fit(X)
    s2 = KNNDetector(max_reference=200, seed=1).fit(X)
    assert s1.n_reference_ == 200 and torch.equal(s1.reference_, s2.reference_)
    assert s1.flops_per_row() < a.flops_per_row()


# --- persistence, bundles, devices ------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["mahalanobis-lw", "pca-share", "knn-cosine-subset"])
def test_save_and_load_roundtrip(tmp_path, name: str) -> None:
    det = DETECTORS[name]().fit(_benign(800, 0))
    path = save_probe(det, tmp_path / "det.safetensors")
    again = load_probe(path)
    assert type(again) is type(det) and again.get_params() == det.get_params()
    Q = _novel(50, 3)
    np.testing.assert_array_equal(again.decision_function(Q), det.decision_function(Q))
    np.testing.assert_array_equal(again.p_values(Q), det.p_values(Q))
    metadata, _ = read_probe_file(path)
    assert metadata["kind"] == det.kind


def test_a_tampered_detector_file_is_refused(tmp_path) -> None:
    from safetensors.torch import load_file, save_file

    path = save_probe(MahalanobisDetector().fit(_benign(300, 0)), tmp_path / "det.safetensors")
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    tensors = load_file(path)
    tensors["calibration_scores"] = tensors["calibration_scores"] * 0.5  # lower every threshold
    save_file(tensors, path, metadata=metadata)
    with pytest.raises(BundleError, match="checksum"):
        load_probe(path)


def test_a_bundle_holds_a_detector_beside_a_probe(tmp_path) -> None:
    X = _benign(600, 0)
    det = MahalanobisDetector().fit(X)
    y = (X[:, 3] > np.median(X[:, 3])).astype(int)
    probe = LogisticProbe().fit(X, y)
    fingerprint = {"name": "synthetic", "num_layers": 4, "hidden_size": D}
    bundle = ProbeBundle.from_probe(probe, model=fingerprint, layer=2, name="probe", threshold=0.0)
    bundle.add(det, layer=2, name="anomaly", threshold=det.threshold_spec(0.05))
    loaded = ProbeBundle.load(bundle.save(tmp_path / "b"))
    entry = loaded["anomaly"]
    assert entry.threshold_for(0.05).value == pytest.approx(det.threshold(0.05))
    assert entry.threshold_for(0.05).n_control == det.n_calibration_
    assert entry.score_form() is None and entry.sites == ("layers.2",)
    Q = torch.as_tensor(_novel(20, 1), dtype=torch.float32)
    np.testing.assert_allclose(entry.score(Q).numpy(), det.score_torch(Q).numpy())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", ["mahalanobis-lw", "pca-int", "knn"])
def test_scoring_on_cuda_matches_the_cpu(name: str) -> None:
    det = DETECTORS[name]().fit(_benign(600, 0))
    X = torch.as_tensor(_novel(64, 1), dtype=torch.float32)
    got = det.to("cuda").score_torch(X.cuda())
    assert got.device.type == "cuda"
    np.testing.assert_allclose(got.cpu().numpy(), det.score_torch(X).numpy(), rtol=1e-4, atol=1e-3)
    assert det.p_values_torch(X.cuda()).device.type == "cuda"


# --- the streaming monitor ------------------------------------------------------------------------------
def _hidden(model, layer: int, **inputs) -> torch.Tensor:
    out: list[torch.Tensor] = []
    with torch.no_grad(), residual_hook(model, parse_site(layer, num_layers(model)), out.append):
        model(**inputs)
    return out[0]


@pytest.mark.slow  # measured among the slowest on 2 cores; CI runs it with -m slow
def test_a_monitor_streams_a_detector_and_a_probe_in_one_generation() -> None:
    from probes.monitor import Monitor

    model, tok = build_tiny_model("llama")
    g = torch.Generator().manual_seed(0)
    H = _hidden(model, 2, input_ids=torch.randint(3, 500, (24, 16), generator=g)).reshape(-1, 32)
    det = MahalanobisDetector().fit(H)
    probe = LogisticProbe().fit(H, (H[:, 0] > H[:, 0].median()).long().numpy())
    bundle = ProbeBundle.from_probe(probe, model=model, layer=2, name="probe", threshold=1e9)
    bundle.add(det, layer=2, name="anomaly", threshold=det.threshold_spec(0.05))
    enc = tok(["Once upon a time"], return_tensors="pt")
    monitor = Monitor(bundle, action="flag")
    with torch.no_grad(), monitor.attach(model, tokenizer=tok):
        out = model.generate(**enc, max_new_tokens=10, min_new_tokens=10, do_sample=False)
    df = monitor.trace.to_dataframe()
    assert set(df["probe"]) == {"probe", "anomaly"}
    h = _hidden(model, 2, input_ids=out)[0]
    for name, scorer in (("anomaly", det), ("probe", probe)):
        part = df[df["probe"] == name]
        want = scorer.score_torch(h[torch.as_tensor(part["position"].to_numpy().copy())]).numpy()
        np.testing.assert_allclose(part["score"].to_numpy(), want, rtol=1e-4, atol=1e-3)
