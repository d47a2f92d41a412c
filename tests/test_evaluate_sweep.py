"""Layer sweep picks the planted layer on validation only; generalisation matrix reads transfer correctly."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from probes.collection.activations import Activations
from probes.evaluation import GeneralizationResult, SweepResult, generalization_matrix, layer_sweep
from probes.train.base import Probe

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class MeanDiff(Probe):
    """Difference of class means (a tiny stand-in for probes.train's DiffMeansProbe)."""

    kind = "test_mean_diff"

    def fit(self, X: Any, y: Any, groups: Any = None) -> MeanDiff:
        X = torch.as_tensor(np.asarray(X, dtype=np.float32))
        y = torch.as_tensor(np.asarray(y))
        mu1, mu0 = X[y == 1].mean(0), X[y == 0].mean(0)
        self.w_ = mu1 - mu0
        self.b_ = -float(self.w_ @ (mu1 + mu0) / 2)
        self.n_features_in_ = X.shape[1]
        return self

    def score_torch(self, X: torch.Tensor) -> torch.Tensor:
        return X.float() @ self.w_ + self.b_

    def get_params(self) -> dict[str, Any]:
        return {}

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {"w": self.w_}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> MeanDiff:
        self.w_ = tensors["w"]
        return self


def layered(n: int, seed: int, strength: dict[int, float], d: int = 16, direction: int = 0) -> Activations:
    """Five layers; layer L carries a mean shift of ``strength[L]`` along e_direction for positives."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n).astype(np.int64)
    feats = {}
    for layer in range(5):
        X = rng.normal(size=(n, d)).astype(np.float32)
        X[:, direction] += strength.get(layer, 0.0) * y
        feats[f"layers.{layer}"] = torch.from_numpy(X)
    return Activations(feats, y, [f"{seed}-{i}" for i in range(n)], [None] * n, {"pooling": "last"})


PLANTED = {1: 0.5, 2: 0.8, 3: 2.5, 4: 1.0}


def test_layer_sweep_picks_planted_layer_on_val(tmp_path: Path) -> None:
    train, val, test = layered(400, 0, PLANTED), layered(300, 1, PLANTED), layered(300, 2, PLANTED)
    control = layered(400, 3, {})
    control.labels[:] = 0
    result = layer_sweep(train, val, probe=MeanDiff, test=test, control=control, n_bootstrap=100)
    assert isinstance(result, SweepResult)
    assert result.best_layer == "layers.3"
    assert [row["layer"] for row in result.table] == [f"layers.{i}" for i in range(5)]
    by_layer = {row["layer"]: row for row in result.table}
    assert by_layer["layers.0"]["val_auroc"] == pytest.approx(0.5, abs=0.1)
    assert by_layer["layers.3"]["val_auroc"] > 0.9 and by_layer["layers.3"]["test_auroc"] > 0.9
    assert set(result.probes) == set(result.reports) == set(by_layer)
    assert result.best_report is not None and result.best_report.layer == "layers.3"
    assert result.best_report.threshold_source == "control"
    json.dumps(result.to_dict())
    png = result.plot(tmp_path / "sweep.png")
    assert png.read_bytes()[:8] == PNG_MAGIC


def test_layer_sweep_never_selects_on_test() -> None:
    # Validation says layer 2, test says layer 3: the sweep must follow validation.
    train = layered(400, 0, {2: 2.0, 3: 2.0})
    val = layered(300, 1, {2: 2.0})
    test = layered(300, 2, {3: 2.0})
    result = layer_sweep(train, val, probe=MeanDiff, test=test, n_bootstrap=50, layers=[1, 2, 3])
    assert result.best_layer == "layers.2"
    rows = {row["layer"]: row for row in result.table}
    assert rows["layers.3"]["test_auroc"] > rows["layers.2"]["test_auroc"]
    assert list(rows) == ["layers.1", "layers.2", "layers.3"]


def test_layer_sweep_without_test_and_with_string_kind_errors() -> None:
    train, val = layered(200, 0, PLANTED), layered(200, 1, PLANTED)
    result = layer_sweep(train, val, probe=MeanDiff, n_bootstrap=20)
    assert result.reports == {} and "test_auroc" not in result.table[0]
    with pytest.raises(ValueError, match="probe_params"):
        layer_sweep(train, val, probe=MeanDiff, probe_params={"C": 1.0})


def test_generalization_matrix(tmp_path: Path) -> None:
    # A and B share the signal direction (e_0); C's signal lives on e_5.
    a = (layered(300, 0, {2: 2.5}), layered(300, 1, {2: 2.5}))
    b = (layered(300, 2, {2: 2.5}), layered(300, 3, {2: 2.5}))
    c = (layered(300, 4, {2: 2.5}, direction=5), layered(300, 5, {2: 2.5}, direction=5))
    result = generalization_matrix({"A": a, "B": b, "C": c}, layer=2, probe=MeanDiff, n_bootstrap=50)
    assert isinstance(result, GeneralizationResult)
    m = np.array(result.auroc)
    assert m.shape == (3, 3) and result.layer == "layers.2"
    assert np.all(np.diag(m) > 0.9)
    assert m[0, 1] > 0.9 and m[1, 0] > 0.9  # A <-> B transfer
    assert abs(m[0, 2] - 0.5) < 0.12 and abs(m[2, 0] - 0.5) < 0.12  # C does not
    lo, hi = result.auroc_ci[0][1]
    assert lo <= m[0, 1] <= hi
    json.dumps(result.to_dict())
    assert result.plot(tmp_path / "gen.png").read_bytes()[:8] == PNG_MAGIC
    from io import StringIO

    from rich.console import Console

    buf = StringIO()
    Console(file=buf, width=100).print(result)
    assert "trained on" in buf.getvalue()


@pytest.mark.parametrize(("kind", "params"), [("logistic", {"C": 0.5}), ("diffmeans", {})])
def test_layer_sweep_with_library_probes(kind: str, params: dict[str, Any]) -> None:
    from probes.train import LogisticProbe

    train, val = layered(400, 0, PLANTED), layered(300, 1, PLANTED)
    result = layer_sweep(train, val, probe=kind, probe_params=params, n_bootstrap=20)
    assert result.best_layer == "layers.3" and result.probe_kind == kind
    if kind == "logistic":
        assert all(isinstance(p, LogisticProbe) for p in result.probes.values())
        # the batched torch fit and a per-layer sklearn fit agree on the selected layer's val AUROC
        single = LogisticProbe(**params).fit(train["layers.3"], train.labels)
        from probes.evaluation import auroc

        val_auc = auroc(val.labels, single.decision_function(val["layers.3"]))
        assert result.table[3]["val_auroc"] == pytest.approx(val_auc, abs=0.01)
    with pytest.raises(ValueError, match="Unknown probe kind"):
        layer_sweep(train, val, probe="no-such-probe")
