"""`data.control: [a, b]` in a real run: pooled threshold, the transfer matrix in report, table and plot;
`data.max_chars` cuts long rows before tokenizing."""

from __future__ import annotations

import json
import random
import warnings
from pathlib import Path

import pytest
from test_pipeline import ENDINGS, SUBJECTS, _write_jsonl, save_tiny_model, write_tiny_project


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.mark.slow  # measured among the slowest on 2 cores; CI runs it with -m slow
def test_several_control_sets_give_a_threshold_transfer_matrix(tmp_path: Path, tiny_model_dir: Path) -> None:
    from probes.config import load_config
    from probes.pipeline import run, validate_config

    path = write_tiny_project(tmp_path, tiny_model_dir)
    rng = random.Random(3)
    # A second benign source that reads differently (code-like lines), with the same ids as the first file.
    code = [
        {
            "id": f"c{i}",
            "text": f"def f{i}(x): return x * {rng.randint(2, 9)}  # {rng.choice(ENDINGS)}",
            "label": 0,
        }
        for i in range(80)
    ]
    _write_jsonl(tmp_path / "data" / "code.jsonl", code)
    chat = tmp_path / "data" / "control.jsonl"
    overrides = [
        f"data.control=[{chat}, {tmp_path / 'data' / 'code.jsonl'}]",
        "evaluation.plots=true",
        "layers=[2]",
    ]
    lines = validate_config(path, overrides)
    assert any("control sets: control 80, code 80" in line for line in lines)

    cfg = load_config(path, overrides)
    assert list(cfg.data.control_specs) == ["control", "code"]
    result = run(cfg)
    t = result.test
    assert t.control_sets == ["control", "code"] and t.n_control == 160
    (transfer,) = t.threshold_transfer  # one target FPR
    assert transfer.sources == ["control", "code", "pooled"] and transfer.n_holdout == [40, 40]
    assert t.threshold == pytest.approx(transfer.thresholds[-1])  # the run's threshold is the pooled one

    report = json.loads(result.report_path.read_text())
    assert report["test"]["threshold_transfer"][0]["sets"] == ["control", "code"]
    assert result.summary()["threshold_transfer"][0]["sources"][-1] == "pooled"
    from io import StringIO

    from rich.console import Console

    buffer = StringIO()
    Console(file=buffer, width=200).print(result.table())
    assert "Threshold transfer at target FPR 10%" in buffer.getvalue() and "code (n=40)" in buffer.getvalue()
    assert list((result.run_dir / "plots").glob("*threshold_transfer_0.1.png"))
    manifest = json.loads((result.bundle_dir / "manifest.json").read_text())
    assert manifest["probes"][0]["thresholds"][0]["control_set"] == "control + code"
    datasets = json.loads(result.report_path.read_text())["datasets"]["control"]
    assert set(datasets["sets"]) == {"control", "code"}


def test_max_chars_cuts_long_rows_in_a_run(tmp_path: Path, tiny_model_dir: Path) -> None:
    from probes.config import load_config
    from probes.pipeline import run

    path = write_tiny_project(tmp_path, tiny_model_dir)
    rows = [json.loads(line) for line in (tmp_path / "data" / "control.jsonl").read_text().splitlines()]
    rows[0]["text"] = " ".join(f"{SUBJECTS[i % len(SUBJECTS)]} was calm" for i in range(20_000))
    _write_jsonl(tmp_path / "data" / "control.jsonl", rows)
    cfg = load_config(path, ["data.max_chars=400", "layers=[1]"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run(cfg)
    assert any("1 row(s) longer than max_chars=400" in str(w.message) for w in caught)
    assert result.test.n_control == 80
