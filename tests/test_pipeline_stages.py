"""The pipeline's shared stages: ``probes train`` and ``probes run`` set thresholds with one function, so the
same config gives the same bundle thresholds; both record what happened to tracking in ``tracking.json``."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from test_pipeline import save_tiny_model, write_tiny_project


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny-llama-stages"))


def test_train_and_run_write_identical_bundle_thresholds(tmp_path: Path, tiny_model_dir: Path) -> None:
    from probes.config import load_config
    from probes.package import ProbeBundle
    from probes.pipeline import run, train_stage

    overrides = ["layers=[1, 3]", "evaluation.target_fprs=[0.05, 0.1]", "evaluation.bootstrap=20"]
    cfg = load_config(write_tiny_project(tmp_path, tiny_model_dir), overrides)
    trained = train_stage(cfg)
    ran = run(cfg)
    assert trained.layer == ran.layer
    a = next(iter(ProbeBundle.load(trained.bundle_dir))).thresholds
    b = next(iter(ProbeBundle.load(ran.bundle_dir))).thresholds
    assert len(a) == 2 and [dataclasses.asdict(t) for t in a] == [dataclasses.asdict(t) for t in b]
    # ... and they are the thresholds the run's report checked on its held-out control rows.
    assert [t.value for t in b] == pytest.approx([op.threshold for op in ran.test.operating_points])
    for result in (trained, ran):
        outcome = json.loads((result.run_dir / "tracking.json").read_text())
        assert outcome["tracked"] is False and "tracking.enabled is false" in outcome["message"]


def test_every_table_prints_held_out_fpr_with_its_exact_interval_and_n() -> None:
    from probes.evaluation.metrics import clopper_pearson
    from probes.pipeline.results import fpr_cell

    # 5 false positives in 500 held-out rows: 1.0%, compatible with up to 2.3% (the example)
    lo, hi = clopper_pearson(5, 500)
    assert fpr_cell(0.01, (lo, hi), 500) == "1.0% [0.3%, 2.3%] n=500"
    assert fpr_cell(float("nan"), None, 0) == "-"


def test_run_table_shows_the_interval(tmp_path: Path, tiny_model_dir: Path) -> None:
    import re

    from rich.console import Console

    from probes.config import load_config
    from probes.pipeline import run

    cfg = load_config(write_tiny_project(tmp_path, tiny_model_dir), ["layers=[2]", "evaluation.bootstrap=20"])
    result = run(cfg)
    console = Console(width=200, record=True)
    console.print(result.table())
    text = console.export_text()
    assert "FPR held-out, exact 95% CI" in text
    op = result.test.operating_points[0]
    n = op.n_control_holdout
    assert re.search(rf"\d+\.\d% \[\d+\.\d%, \d+\.\d%\] n={n}", text), text
