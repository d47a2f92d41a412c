"""evaluate_detector: novel sets against benign, false alarms on benign sets from other sources."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from probes.collection import Activations
from probes.evaluation import DetectorReport, auroc, clopper_pearson, evaluate_detector
from probes.train import LogisticProbe, MahalanobisDetector

D = 10


def _rows(n: int, seed: int, shift: float = 0.0, scale: float = 1.0) -> np.ndarray:
    geo = np.random.default_rng(7)
    mix = geo.normal(size=(D, D)) / np.sqrt(D)
    direction = geo.normal(size=D)
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, D)) * scale) @ mix + shift * direction


@pytest.fixture(scope="module")
def detector() -> MahalanobisDetector:
    return MahalanobisDetector(calibration_fraction=0.3).fit(_rows(3000, 0))


def test_report_numbers(detector) -> None:
    benign = _rows(2000, 1)
    novel = {"far": _rows(300, 2, shift=2.0), "near": _rows(300, 3, shift=0.3)}
    shifted = {"wider": _rows(1500, 4, scale=1.25), "same source": _rows(1500, 5)}
    report = evaluate_detector(detector, benign, novel, shifted, target_fpr=0.01, n_bootstrap=200)
    thr = detector.threshold(0.01)
    assert report.threshold == pytest.approx(thr) and report.n_calibration == 900
    s_b = detector.decision_function(benign)
    k = int((s_b > thr).sum())
    assert report.benign.n_flagged == k and report.benign.ci == pytest.approx(clopper_pearson(k, 2000))
    far, near = report.novel
    assert far.auroc == pytest.approx(
        auroc(np.r_[np.zeros(2000), np.ones(300)], np.r_[s_b, detector.decision_function(novel["far"])])
    )
    assert far.auroc > 0.95 and far.detection.rate > 0.5 > near.detection.rate
    assert far.auroc_ci[0] <= far.auroc <= far.auroc_ci[1]
    wider, same = report.shifted
    # The wider benign traffic breaks the 1% calibration and the report says so; the same source does not.
    assert wider.ci[0] > 0.01 and any("distribution shift" in w and "'wider'" in w for w in report.warnings)
    assert same.ci[0] <= 0.01 and not any("'same source'" in w and "shift" in w for w in report.warnings)
    row = report.summary_row()
    assert row["shifted_fpr_wider"] == wider.rate and row["novel_auroc_far"] == far.auroc
    assert "distribution shift" in str(report)


@pytest.mark.slow  # measured among the slowest on 2 cores; CI runs it with -m slow
def test_json_roundtrip_and_plots(tmp_path, detector) -> None:
    report = evaluate_detector(
        detector,
        _rows(500, 1),
        {"far": _rows(100, 2, shift=2.0)},
        {"wider": _rows(300, 4, scale=1.3)},
        n_bootstrap=50,
        name="mood",
    )
    again = DetectorReport.from_json(report.to_json(tmp_path / "report.json"))
    assert again.to_dict() == report.to_dict()
    assert DetectorReport.from_json(tmp_path / "report.json").novel[0].auroc == report.novel[0].auroc
    paths = report.plots(tmp_path / "plots")
    assert {p.name for p in paths} == {"mood_scores.png", "mood_roc.png", "mood_false_alarms.png"}
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths)
    light = evaluate_detector(
        detector, _rows(200, 1), {"far": _rows(50, 2, shift=2.0)}, keep_scores=False, n_bootstrap=20
    )
    assert light.scores is None and [p.name for p in light.plots(tmp_path / "p2")] == [
        "mahalanobis_false_alarms.png"
    ]


def test_activations_with_sites_groups_and_positive_rows(detector) -> None:
    def acts(X: np.ndarray, labels: np.ndarray) -> Activations:
        n = len(X)
        return Activations(
            features={"layers.3": torch.as_tensor(X, dtype=torch.float32), "layers.1": torch.zeros(n, 4)},
            labels=labels,
            ids=[str(i) for i in range(n)],
            groups=[f"g{i // 2}" for i in range(n)],
        )

    benign = acts(_rows(400, 1), np.zeros(400, dtype=int))
    mixed = np.r_[_rows(100, 6), _rows(100, 7, shift=2.5)]
    contrast = acts(mixed, np.r_[np.zeros(100, dtype=int), np.ones(100, dtype=int)])
    report = evaluate_detector(
        detector, benign, {"all": contrast, "positives": contrast}, layer="layers.3", n_bootstrap=50
    )
    assert report.site == "layers.3" and report.novel[0].n == 200
    only = evaluate_detector(
        detector, benign, {"pos": contrast}, layer="layers.3", novel_rows="positive", n_bootstrap=50
    )
    assert only.novel[0].n == 100 and only.novel[0].auroc > report.novel[0].auroc


def test_bad_calls(detector) -> None:
    X = _rows(100, 0)
    with pytest.raises(TypeError, match="anomaly detector"):
        evaluate_detector(LogisticProbe().fit(X, np.arange(100) % 2), X, {"x": X})
    with pytest.raises(ValueError, match="at least one novel set"):
        evaluate_detector(detector, X, {})
    with pytest.raises(ValueError, match="needs labels"):
        evaluate_detector(detector, X, {"x": X}, novel_rows="positive")
    small = MahalanobisDetector(calibration_fraction=0.05).fit(_rows(400, 1))  # 20 calibration rows
    report = evaluate_detector(small, X, {"x": _rows(50, 2, shift=3.0)}, n_bootstrap=20)
    assert any("needs at least 99 calibration" in w for w in report.warnings)
    assert report.novel[0].detection.n_flagged == 0  # +inf threshold: never flags
