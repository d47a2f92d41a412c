"""End to end on real weights: MiniLM on Geometry-of-Truth cities, thresholds on benign Self-Instruct prompts.

Subsampled (200 cities = 400 statements, 300 control prompts, max_length 64) to stay well under a minute.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*cut by max_length")  # a few long control prompts; expected
def test_minilm_cities_with_benign_control(tmp_path: Path, minilm_path: Path, shared_data: Path) -> None:
    from probes import collect, load_dataset, load_model
    from probes.evaluation import EvalReport, conformal_fpr_bound, evaluate, layer_sweep, text_baseline

    statements = load_dataset(
        shared_data / "geometry_of_truth" / "cities.csv", text="statement", group="city"
    )
    rng = np.random.default_rng(0)
    keep = set(rng.choice(sorted(set(statements.groups)), 200, replace=False))
    statements = statements.subset([i for i, g in enumerate(statements.groups) if g in keep])
    splits = statements.split({"train": 0.5, "val": 0.2, "test": 0.3}, seed=0)
    # Pairs (a city's true and false statement) never straddle splits.
    assert not set(splits["train"].groups) & set(splits["test"].groups)

    # The control file is unlabelled benign prompts: label them 0 and load them as a control set.
    rows = [
        json.loads(line)
        for line in (shared_data / "benign_control" / "self_instruct_benign_prompts.jsonl")
        .read_text()
        .splitlines()[:300]
    ]
    control_file = tmp_path / "control.jsonl"
    control_file.write_text(
        "".join(json.dumps({"id": r["id"], "text": r["instruction"], "label": 0}) + "\n" for r in rows)
    )
    control = load_dataset(control_file, kind="control")

    model, tokenizer = load_model(minilm_path, device="cpu", dtype="float32")
    layers = ["layers.3", "layers.4"]  # collection stops after block 4 of 6
    acts = collect(model, tokenizer, statements, layers, pooling="last", max_length=64, progress=False)
    control_acts = collect(model, tokenizer, control, layers, pooling="last", max_length=64, progress=False)
    position = {row_id: i for i, row_id in enumerate(acts.ids)}
    part = {name: acts.subset([position[i] for i in ds.ids]) for name, ds in splits.items()}

    sweep = layer_sweep(
        part["train"], part["val"], probe="logistic", probe_params={"C": 0.1}, n_bootstrap=200
    )
    assert sweep.best_layer in layers

    baseline = text_baseline(
        splits["train"].texts,
        splits["train"].labels,
        splits["test"].texts,
        splits["test"].labels,
        train_groups=splits["train"].groups,
        test_groups=splits["test"].groups,
        n_bootstrap=200,
    )
    report = evaluate(
        sweep.best_probe,
        part["test"],
        control_acts,
        layer=sweep.best_layer,
        target_fpr=(0.05, 0.01),
        calibration=part["val"],
        calibrate="platt",
        text_baseline={"text": baseline},
        n_bootstrap=200,
        name="cities",
    )
    # MiniLM knows some geography: well above chance on held-out cities (about 0.7-0.8 at this size).
    assert report.auroc > 0.6 and report.auroc_ci[0] > 0.5
    # Truth of "X is in Y" is not in the surface text once cities never straddle the split.
    assert baseline.auroc < 0.7

    # Thresholds come from the benign control set, half of it held out to check the FPR.
    assert report.threshold_source == "control" and report.n_control == 300
    op5, op1 = report.operating_points
    assert op5.n_control_cal == 150 and op5.n_control_holdout == 150
    assert math.isfinite(op5.threshold) and math.isfinite(op1.threshold) and op1.threshold >= op5.threshold
    for op in (op5, op1):
        # The guarantee is in expectation: one threshold's true FPR varies with the calibration draw
        # (Beta(n + 1 - k, k)). The held-out FPR must be consistent with that law's 99.9% quantile.
        assert op.empirical_fpr_ci[0] <= conformal_fpr_bound(op.n_control_cal, op.target_fpr, 0.999)
        assert op.fpr_bound > op.target_fpr
        assert op.recall_ci[0] <= op.recall <= op.recall_ci[1]
    assert report.calibrator is not None and report.ece <= report.ece_uncalibrated + 0.05

    loaded = EvalReport.from_json(report.to_json(tmp_path / "report.json"))
    assert loaded == report
    assert len(report.plots(tmp_path / "plots")) == 3
