"""evaluate() end to end on synthetic activations: operating points, fallbacks, warnings, JSON, tables, plots."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from probes.collection.activations import Activations, RaggedTokens
from probes.evaluation import EvalReport, PlattCalibrator, evaluate, text_baseline
from probes.train.base import Probe

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class TinyLogistic(Probe):
    """A minimal probe for these tests (sklearn fit, torch scoring), independent of probes.train."""

    kind = "tiny_logistic"

    def __init__(self, C: float = 1.0) -> None:
        self.C = C

    def fit(self, X: Any, y: Any, groups: Any = None) -> TinyLogistic:
        from sklearn.linear_model import LogisticRegression

        clf = LogisticRegression(C=self.C, max_iter=1000).fit(np.asarray(X, dtype=np.float32), np.asarray(y))
        self.coef_ = torch.tensor(clf.coef_[0], dtype=torch.float32)
        self.intercept_ = torch.tensor(float(clf.intercept_[0]))
        self.n_features_in_ = int(self.coef_.numel())
        return self

    def score_torch(self, X: torch.Tensor) -> torch.Tensor:
        return X.float() @ self.coef_.to(X.device) + self.intercept_.to(X.device)

    def get_params(self) -> dict[str, Any]:
        return {"C": self.C}

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {"coef": self.coef_, "intercept": self.intercept_}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> TinyLogistic:
        self.coef_, self.intercept_ = tensors["coef"], tensors["intercept"]
        self.n_features_in_ = int(self.coef_.numel())
        return self


class TinyTokenMax(Probe):
    """Token-level: a fixed direction, max over tokens. Checks RaggedTokens reach the probe untouched."""

    kind = "tiny_token_max"
    token_level = True

    def fit(self, X: Any, y: Any, groups: Any = None) -> TinyTokenMax:
        assert isinstance(X, RaggedTokens)
        self.n_features_in_ = X.dim
        return self

    def score_torch(self, X: RaggedTokens) -> torch.Tensor:
        per_token = X.values[:, 0]
        return torch.stack(
            [per_token[int(a) : int(b)].max() for a, b in zip(X.offsets[:-1], X.offsets[1:], strict=True)]
        )

    def get_params(self) -> dict[str, Any]:
        return {}

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> TinyTokenMax:
        return self


def gaussian_acts(
    n: int, d: int, seed: int, sep: float = 2.0, layers: int = 1, groups: bool = False
) -> Activations:
    """Positives shifted by ``sep`` along e_0 at every layer (different noise per layer)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n).astype(np.int64)
    feats = {}
    for layer in range(layers):
        X = rng.normal(size=(n, d)).astype(np.float32)
        X[:, 0] += sep * y
        feats[f"layers.{layer}"] = torch.from_numpy(X)
    ids = [f"r{i}" for i in range(n)]
    grp = [f"g{i // 2}" for i in range(n)] if groups else [None] * n
    return Activations(features=feats, labels=y, ids=ids, groups=grp, spec={"pooling": "last"})


def benign_control(n: int, d: int, seed: int, layers: int = 1) -> Activations:
    acts = gaussian_acts(n, d, seed, layers=layers)
    acts.labels = np.zeros(n, dtype=np.int64)
    for key, X in acts.features.items():
        X[:, 0] = torch.from_numpy(np.random.default_rng(seed + 1).normal(size=n).astype(np.float32))
        acts.features[key] = X
    return acts


@pytest.fixture(scope="module")
def fitted() -> tuple[TinyLogistic, Activations, Activations, Activations]:
    train = gaussian_acts(600, 8, 0)
    probe = TinyLogistic().fit(train["layers.0"], train.labels)
    return probe, gaussian_acts(800, 8, 1, groups=True), benign_control(2000, 8, 2), gaussian_acts(600, 8, 3)


def test_report_numbers_on_planted_gaussians(fitted) -> None:
    probe, test, control, calib = fitted
    report = evaluate(probe, test, control, target_fpr=(0.01, 0.001), n_bootstrap=300, name="planted")
    # Bayes AUROC of a 2-sigma mean shift: Phi(2 / sqrt(2)) = 0.921
    assert report.auroc == pytest.approx(0.921, abs=0.03)
    assert report.auroc_ci[0] < report.auroc < report.auroc_ci[1]
    assert report.n_test == 800 and report.n_pos + report.n_neg == 800 and report.n_groups == 400
    assert report.layer == "layers.0" and report.probe_kind == "tiny_logistic"
    assert report.threshold_source == "control" and report.n_control == 2000
    op1, op2 = report.operating_points
    assert (op1.target_fpr, op2.target_fpr) == (0.01, 0.001)
    assert op1.n_control_cal == op1.n_control_holdout == 1000
    assert op1.threshold == report.threshold and op1.recall == report.recall_at_fpr
    # the conformal threshold holds its FPR on held-out benign control (binomial bound, 99.9% slack)
    assert op1.empirical_fpr_ci[0] <= 0.01
    assert op1.empirical_fpr <= 0.03
    # 1000 calibration rows suffice for 0.1% (needs 999); a stricter target is a higher threshold
    assert math.isfinite(op2.threshold) and op2.threshold >= op1.threshold and op2.recall <= op1.recall
    # recall at a 1% FPR threshold: positives are N(2, 1) on the probe direction -> well below 1, above 0
    assert 0.1 < op1.recall < 0.9
    assert 0 <= report.ece < 0.1 and 0 < report.brier < 0.25


def test_small_control_set_gives_inf_threshold_and_says_so(fitted) -> None:
    probe, test, control, _ = fitted
    report = evaluate(probe, test, control.subset(np.arange(300)), target_fpr=(0.01, 0.001), n_bootstrap=50)
    op = report.operating_points[1]
    assert math.isinf(op.threshold) and op.recall == 0.0
    assert any("needs at least 999" in w for w in report.warnings)
    assert any("too small to confirm" in w for w in report.warnings)


def test_without_control_falls_back_to_test_negatives_and_warns(fitted) -> None:
    probe, test, _, _ = fitted
    report = evaluate(probe, test, target_fpr=0.05, n_bootstrap=50)
    assert report.threshold_source == "test_negatives" and report.n_control == 0
    assert any("no control set" in w for w in report.warnings)
    # pairs (groups of 2 rows) never straddle the cal / holdout split of the negatives
    op = report.operating_points[0]
    assert op.n_control_cal + op.n_control_holdout == report.n_neg


def test_tuple_inputs_and_bare_control(fitted) -> None:
    probe, test, control, _ = fitted
    X, y = test["layers.0"].numpy(), test.labels
    a = evaluate(probe, (X, y), control["layers.0"].numpy(), n_bootstrap=50)
    b = evaluate(probe, test, control, n_bootstrap=50)
    assert a.auroc == pytest.approx(b.auroc)
    assert a.threshold == pytest.approx(b.threshold)
    c = evaluate(probe, (X, y, test.groups), control, n_bootstrap=50)
    assert c.n_groups == 400 and c.auroc_ci == b.auroc_ci


def test_calibration_split_only_and_improves_ece(fitted) -> None:
    probe, test, control, calib = fitted
    # Make the probe badly scaled: x10 scores -> overconfident sigmoid
    probe10 = TinyLogistic().load_state_tensors(
        {"coef": probe.coef_ * 10, "intercept": probe.intercept_ * 10}
    )
    with pytest.raises(ValueError, match="calibration="):
        evaluate(probe10, test, control, calibrate="platt", n_bootstrap=20)
    plain = evaluate(probe10, test, control, n_bootstrap=20)
    for kind in ("platt", "isotonic"):
        report = evaluate(probe10, test, control, calibration=calib, calibrate=kind, n_bootstrap=20)
        assert report.ece < 0.5 * report.ece_uncalibrated
        assert report.ece_uncalibrated == plain.ece
        assert report.calibrator is not None and report.calibrator["kind"] == kind
        # calibration is monotone: ranking metrics and thresholds do not move
        assert report.auroc == plain.auroc and report.threshold == plain.threshold
    # Platt undoes the x10: the fitted slope is about 1/10
    platt = evaluate(probe10, test, control, calibration=calib, calibrate="platt", n_bootstrap=20)
    assert PlattCalibrator.from_dict(platt.calibrator).a_ == pytest.approx(0.1, rel=0.3)


def test_confound_warning_from_text_baselines(fitted) -> None:
    probe, test, control, _ = fitted
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(500)]

    def texts(labels: np.ndarray) -> list[str]:
        return [" ".join(rng.choice(words, 10)) + (" giveaway" if label else "") for label in labels]

    train_y = rng.integers(0, 2, 400)
    confounded = text_baseline(texts(train_y), train_y, texts(test.labels), test.labels, n_bootstrap=50)
    report = evaluate(probe, test, control, text_baseline={"text": confounded, "span": 0.55}, n_bootstrap=50)
    assert report.text_baseline_auroc == confounded.auroc > report.auroc
    assert report.text_baseline_span_auroc == 0.55
    warns = [w for w in report.warnings if "confounded" in w]
    assert len(warns) == 1 and "text-only" in warns[0]
    clean = evaluate(probe, test, control, text_baseline=0.6, n_bootstrap=50)
    assert not any("confounded" in w for w in clean.warnings)


def test_length_baseline_is_recorded_and_warns_about_position(fitted) -> None:
    from probes.evaluation import length_baseline

    probe, test, control, _ = fitted
    report = evaluate(probe, test, control, n_bootstrap=50)
    assert report.length_baseline_auroc is None and "length_baseline_auroc" in report.summary_row()
    # Row lengths that follow the label exactly: the length baseline matches the probe, so it must warn.
    X = np.column_stack([3 + 20 * test.labels, np.full(len(test), 7), 10 + 20 * test.labels])
    confounded = length_baseline(X, test.labels, X, test.labels, n_bootstrap=50)
    report.add_length_baseline(confounded)
    assert report.length_baseline_auroc == confounded.auroc == 1.0
    assert report.length_baseline_auroc_ci == tuple(confounded.auroc_ci)
    assert any("position or length" in w for w in report.warnings)
    assert report.metrics()["length_baseline_auroc"] == 1.0
    assert "length baseline AUROC" in str(report)
    assert EvalReport.from_json(report.to_json()) == report
    clean = evaluate(probe, test, control, n_bootstrap=50)
    clean.add_length_baseline(0.55)
    assert clean.length_baseline_auroc == 0.55 and clean.length_baseline_auroc_ci is None
    assert not any("position or length" in w for w in clean.warnings)
    with pytest.raises(TypeError, match="BaselineResult"):
        clean.add_length_baseline("0.5")


def test_token_level_probe_gets_ragged_tokens() -> None:
    rng = np.random.default_rng(0)
    n = 200
    y = rng.integers(0, 2, n)
    lengths = rng.integers(3, 9, n)
    values = torch.from_numpy(rng.normal(size=(int(lengths.sum()), 4)).astype(np.float32))
    offsets = torch.zeros(n + 1, dtype=torch.long)
    offsets[1:] = torch.cumsum(torch.from_numpy(lengths), 0)
    for i in np.flatnonzero(y):  # a spike on one token of each positive
        values[int(offsets[i]) + 1, 0] += 4.0
    acts = Activations(
        {"layers.2": RaggedTokens(values, offsets)},
        y.astype(np.int64),
        [str(i) for i in range(n)],
        [None] * n,
    )
    probe = TinyTokenMax().fit(acts["layers.2"], y)
    report = evaluate(
        probe,
        acts.subset(np.arange(100)),
        acts.subset(np.flatnonzero(y[100:] == 0) + 100),
        target_fpr=0.1,
        n_bootstrap=50,
    )
    assert report.auroc > 0.9 and report.layer == "layers.2"


def test_json_round_trip_table_and_summary(fitted, tmp_path: Path) -> None:
    probe, test, control, _ = fitted
    report = evaluate(
        probe,
        test,
        control.subset(np.arange(400)),
        target_fpr=(0.01, 0.001),
        n_bootstrap=50,
        name="rt",
        text_baseline=0.7,
    )
    path = tmp_path / "report.json"
    text = report.to_json(path)
    json.loads(text)  # strict JSON: no NaN / Infinity tokens
    assert "Infinity" not in text and "NaN" not in text
    loaded = EvalReport.from_json(path)
    assert loaded == report
    assert EvalReport.from_json(text) == report
    assert math.isinf(loaded.operating_points[1].threshold)
    small = json.loads(report.to_json(include_scores=False))
    assert small["scores"] is None
    row = report.summary_row()
    assert row["auroc"] == report.auroc and row["recall_at_fpr_0.01"] == report.recall_at_fpr
    assert "threshold_at_fpr_0.001" in row
    metrics = report.metrics()
    assert all(isinstance(v, float) and math.isfinite(v) for v in metrics.values())
    assert "threshold_at_fpr_0.001" not in metrics  # +inf is left out
    table = str(report)
    assert "AUROC" in table and "recall @ FPR 1.00%" in table and "text-only baseline" in table


@pytest.mark.slow  # measured among the slowest on 2 cores; CI runs it with -m slow
def test_plots_are_valid_pngs(fitted, tmp_path: Path) -> None:
    probe, test, control, calib = fitted
    report = evaluate(
        probe,
        test,
        control,
        target_fpr=(0.01, 0.001),
        calibration=calib,
        calibrate="isotonic",
        n_bootstrap=50,
        name="plots",
    )
    paths = report.plots(tmp_path)
    assert {p.name for p in paths} == {
        "plots_layers.0_roc.png",
        "plots_layers.0_scores.png",
        "plots_layers.0_reliability.png",
    }
    for p in paths:
        assert p.read_bytes()[:8] == PNG_MAGIC and p.stat().st_size > 5000
    # the JSON alone is enough to redraw them
    again = EvalReport.from_json(report.to_json()).plots(tmp_path / "again")
    assert len(again) == 3


def test_bad_inputs_say_what_to_do(fitted) -> None:
    probe, test, control, _ = fitted
    two = gaussian_acts(50, 8, 9, layers=2)
    with pytest.raises(ValueError, match="pass layer="):
        evaluate(probe, two, n_bootstrap=10)
    with pytest.raises(KeyError, match="layers.7"):
        evaluate(probe, test, layer=7, n_bootstrap=10)
    only_pos = test.subset(np.flatnonzero(test.labels == 1))
    with pytest.raises(ValueError, match="both classes"):
        evaluate(probe, only_pos, control, n_bootstrap=10)
    with pytest.raises(ValueError, match="target_fpr"):
        evaluate(probe, test, control, target_fpr=1.5, n_bootstrap=10)


def test_library_probes_through_evaluate(fitted) -> None:
    from probes.train import LogisticProbe, TokenProbe

    _, test, control, _ = fitted
    train = gaussian_acts(600, 8, 0)
    dense = evaluate(LogisticProbe().fit(train["layers.0"], train.labels), test, control, n_bootstrap=50)
    assert dense.auroc == pytest.approx(0.921, abs=0.03) and dense.probe_kind == "logistic"

    # Token-level: one spiking token among noise per positive sequence; max aggregation finds it.
    rng = np.random.default_rng(1)

    def ragged(n: int) -> Activations:
        y = rng.integers(0, 2, n).astype(np.int64)
        lengths = torch.from_numpy(rng.integers(4, 10, n))
        offsets = torch.zeros(n + 1, dtype=torch.long)
        offsets[1:] = torch.cumsum(lengths, 0)
        values = torch.from_numpy(rng.normal(size=(int(offsets[-1]), 6)).astype(np.float32))
        for i in np.flatnonzero(y):
            values[int(offsets[i]) + 2, 0] += 3.0
        return Activations(
            {"layers.1": RaggedTokens(values, offsets)}, y, [str(i) for i in range(n)], [None] * n
        )

    tr, te = ragged(300), ragged(300)
    probe = TokenProbe(aggregation="max").fit(tr["layers.1"], tr.labels)
    report = evaluate(probe, te, target_fpr=0.1, n_bootstrap=50)
    assert report.auroc > 0.85 and report.probe_kind == probe.kind


def test_probes_evaluate_is_callable_after_submodule_import(fitted) -> None:
    import probes
    import probes.evaluation  # the subpackage has its own name, so the function `probes.evaluate` survives

    probe, test, control, _ = fitted
    assert isinstance(probes.evaluate(probe, test, control, n_bootstrap=10), EvalReport)
