"""Regression probes (ridge, sparse), their evaluation, and datasets with numeric target values."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import probes
from probes.errors import DatasetError, NotFittedError


def _data(n: int = 400, d: int = 40, seed: int = 0, noise: float = 0.1):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) * rng.uniform(0.5, 3.0, size=d) + rng.normal(size=d)
    w = np.zeros(d)
    w[[3, 17, 29]] = [2.0, -1.0, 0.5]
    y = X @ w + 4.0 + noise * rng.normal(size=n)
    return X.astype(np.float32), y


def test_ridge_reads_a_linear_quantity_and_round_trips(tmp_path: Path) -> None:
    X, y = _data()
    probe = probes.RidgeProbe(alpha=1.0).fit(X[:300], y[:300])
    assert probe.score(X[300:], y[300:]) > 0.98
    # score_torch is the predicted value, in float32 on the input's device
    pred = probe.score_torch(torch.as_tensor(X[300:]))
    np.testing.assert_allclose(pred.numpy(), probe.predict(X[300:]), rtol=1e-5)
    path = probes.save_probe(probe, tmp_path / "ridge.safetensors")
    loaded = probes.load_probe(path)
    assert type(loaded) is probes.RidgeProbe
    np.testing.assert_allclose(loaded.predict(X), probe.predict(X), rtol=1e-6)
    with pytest.raises(TypeError, match="regression probe"):
        probe.predict_proba(X)
    with pytest.raises(NotFittedError):
        probes.RidgeProbe().predict(X)


def test_ridge_cv_picks_alpha_grouped() -> None:
    X, y = _data(noise=2.0)
    groups = np.arange(len(y)) // 4
    probe = probes.RidgeProbe(cv=4, alphas=[1e-3, 1.0, 1e4]).fit(X, y, groups=groups)
    assert float(probe.alpha_) in (1e-3, 1.0)  # a huge penalty flattens the fit
    assert probe.cv_scores_.shape == (3,)


@pytest.mark.parametrize("k", [1, 3])
def test_sparse_probe_finds_the_coordinates_that_carry_the_signal(k: int) -> None:
    X, y = _data()
    probe = probes.SparseProbe(k=k).fit(X[:300], y[:300])
    assert probe.n_nonzero_ == k
    assert set(probe.support_.tolist()) <= {3, 17, 29}
    if k == 3:
        assert probe.support_.tolist()[0] == 3  # the largest standardised weight first
        assert probe.score(X[300:], y[300:]) > 0.98  # refitted on the support: not shrunk
    assert int(probe.path_nonzero_.max()) >= 3


def test_sparse_probe_alpha_by_cv_and_fixed() -> None:
    X, y = _data()
    cv = probes.SparseProbe(cv=3).fit(X, y)
    assert cv.score(X, y) > 0.98
    assert cv.n_nonzero_ < X.shape[1]
    fixed = probes.SparseProbe(alpha=0.5).fit(X, y)
    assert fixed.n_nonzero_ <= cv.n_nonzero_
    with pytest.raises(ValueError, match="not both"):
        probes.SparseProbe(k=2, alpha=0.1).fit(X, y)


def test_regression_probe_rejects_bad_targets() -> None:
    X, y = _data(n=20)
    with pytest.raises(ValueError, match="NaN or inf"):
        probes.RidgeProbe().fit(X, np.where(np.arange(20) == 3, np.nan, y))
    with pytest.raises(ValueError, match="constant"):
        probes.RidgeProbe().fit(X, np.ones(20))
    with pytest.raises(ValueError, match="numeric"):
        probes.SparseProbe(k=1).fit(X, np.array(["a"] * 20, dtype=object))


def test_evaluate_regression_cis_and_sparsity(tmp_path: Path) -> None:
    X, y = _data(n=600, noise=1.0)
    groups = np.arange(600) // 3
    probe = probes.SparseProbe(k=3).fit(X[:300], y[:300])
    report = probes.evaluate_regression(probe, X[300:], y[300:], groups=groups[300:], n_bootstrap=300)
    assert report.r2_ci[0] <= report.r2 <= report.r2_ci[1]
    assert report.pearson_ci[0] <= report.pearson_r <= report.pearson_ci[1]
    assert 0.6 < report.r2 < 0.99
    assert report.n_coordinates == 3 and report.n_features == 40 and report.n_groups == 100
    assert "3 of 40 coordinates carry the signal" in str(report)
    # the true R² of the noisy target: within the interval
    assert report.pearson_r == pytest.approx(np.corrcoef(probe.predict(X[300:]), y[300:])[0, 1])
    [plot] = report.plots(tmp_path)
    assert plot.stat().st_size > 1000
    data = json.loads(report.to_json())
    assert data["n_coordinates"] == 3 and len(data["y_pred"]) == 300


def _write(folder: Path, rows: list[dict], kind: str = "regress") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    card = {
        "name": "lengths",
        "description": "d",
        "label_names": ["no", "yes"],
        "source": "tests",
        "license": "CC0-1.0",
        "how_made": "by hand",
        "kind": kind,
    }
    (folder / "card.yaml").write_text(yaml.safe_dump(card))
    (folder / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_regression_dataset_values(tmp_path: Path) -> None:
    rows = [{"id": str(i), "text": "x" * (i + 1), "target_value": i + 0.5} for i in range(6)]
    ds = probes.load_dataset(_write(tmp_path / "a", rows))
    assert ds.value_names == ["value"]
    np.testing.assert_allclose(ds.target_values(), np.arange(6) + 0.5)
    named = [
        {"id": str(i), "text": "w" * (i + 1), "target_value": {"chars": i, "width": 2 * i}, "label": i % 2}
        for i in range(4)
    ]
    ds2 = probes.load_dataset(_write(tmp_path / "b", named, kind="contrast"))  # values beside labels
    np.testing.assert_allclose(ds2.target_values("width"), [0, 2, 4, 6])
    assert ds2.labels.tolist() == [0, 1, 0, 1]
    with pytest.raises(DatasetError, match="pick one by name"):
        ds2.target_values()
    # a dataset without values keeps the fingerprint it had (values are not in the canonical row)
    plain = [{"id": "p", "text": "a", "label": 0}, {"id": "q", "text": "b", "label": 1}]
    from probes.data.dataset import _canonical_row

    row = _canonical_row(probes.load_dataset(_write(tmp_path / "c", plain, "contrast")).examples[0])
    assert '"values"' not in row


def test_regression_dataset_bad_values_name_file_line_and_field(tmp_path: Path) -> None:
    rows = [
        {"id": "0", "text": "a", "target_value": 1.0},
        {"id": "1", "text": "b", "target_value": "many"},
        {"id": "2", "text": "c"},
        {"id": "3", "text": "d", "target_value": {"chars": "x"}},
    ]
    with pytest.raises(DatasetError) as err:
        probes.load_dataset(_write(tmp_path / "bad", rows))
    msg = str(err.value)
    assert "data.jsonl, line 2:" in msg and "'target_value': 'many' is not a finite number" in msg
    assert "data.jsonl, line 3:" in msg and "missing field 'target_value'" in msg
    assert "data.jsonl, line 4:" in msg and "'target_value.chars'" in msg


def test_regress_pipeline_end_to_end(stories_path: Path, tmp_path: Path) -> None:
    """task: regress on the real stories260K: how many words a story opening has, read at its last token."""
    rng = np.random.default_rng(0)
    words = ["the", "dog", "ran", "to", "a", "big", "red", "ball", "and", "sat", "down", "happy"]
    rows = []
    for i in range(120):
        n = int(rng.integers(2, 25))
        rows.append(
            {
                "id": str(i),
                "text": " ".join(rng.choice(words, n)),
                "group": str(i // 2),
                "target_value": {"words": n},
            }
        )
    data = _write(tmp_path / "counts", rows)
    config = tmp_path / "count.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "name": "count",
                "task": "regress",
                "target_value": "words",
                "model": {"name_or_path": str(stories_path), "dtype": "float32", "device": "cpu"},
                "data": {"train": {"path": str(data)}, "max_length": 64},
                "layers": [1, 5],
                "pooling": "last",
                "probe": {"kind": "ridge", "params": {"cv": 3}},
                "evaluation": {"bootstrap": 100},
                "cache_dir": None,
                "output_dir": str(tmp_path / "runs"),
                "tracking": {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
            }
        )
    )
    result = probes.run(probes.load_config(config))
    assert result.layer in ("layers.1", "layers.5") and result.target == "words"
    assert result.test.r2 > 0.5, str(result.test)  # position is linearly readable from the residual
    assert (result.run_dir / "plots" / "predicted_vs_true.png").is_file()
    assert json.loads((result.run_dir / "report.json").read_text())["test"]["n"] == result.test.n
    assert isinstance(probes.load_probe(result.probe_path), probes.RidgeProbe)
    assert result.tracking.tracked, result.tracking.message
    assert "R²" in result.table()
    bad = tmp_path / "bad.yaml"
    bad.write_text(config.read_text().replace("kind: ridge", "kind: logistic"))
    with pytest.raises(probes.errors.ConfigError, match="regression probe"):
        probes.run(probes.load_config(bad))


def test_regress_config_validates_without_a_model(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from probes.cli import app

    rows = [{"id": str(i), "text": "a " * (i + 1), "target_value": {"n": i}} for i in range(30)]
    data = _write(tmp_path / "n", rows)
    cfg = {
        "task": "regress",
        "target_value": "n",
        "model": {"name_or_path": "nowhere/at-all"},
        "data": {"train": {"path": str(data)}},
        "probe": {"kind": "sparse", "params": {"k": 3}},
    }
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(cfg))
    result = CliRunner().invoke(app, ["validate", str(good)])
    assert result.exit_code == 0, result.output
    assert "target_value 'n'" in result.output and "splits: train" in result.output
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**cfg, "target_value": "width"}))
    result = CliRunner().invoke(app, ["validate", str(bad)])
    assert result.exit_code == 2 and "one of the dataset's values ['n']" in result.output
