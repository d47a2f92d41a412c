"""Generation-level thresholds on the real stories260K: ``probes calibrate`` samples benign continuations,
stores a conformal threshold for a target interrupt rate, and the monitor then interrupts exactly the
generations whose statistic exceeds it."""

from __future__ import annotations

import json
import math
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from conftest import STORIES
from test_monitor_stories import DATASETS, stories_bundle
from typer.testing import CliRunner

from probes import load_dataset
from probes.monitor import Monitor
from probes.monitor.calibrate import calibrate_generation, generation_statistic, prompt_text
from probes.monitor.cli import EXIT_OK, EXIT_USAGE, register
from probes.package import ProbeBundle


def _control():
    ds = load_dataset(DATASETS / "story_moods")
    return ds.filter(lambda ex: ex.conditions.get("part") == "control")


def test_generation_statistic_is_what_the_monitor_must_exceed() -> None:
    s = np.array([0.1, 2.0, 0.5, 1.5, 1.4, 0.0])
    assert generation_statistic(s, 1) == 2.0
    assert generation_statistic(s, 2) == 1.4  # the best run of two: (1.5, 1.4)
    assert generation_statistic(s, 3) == 0.5
    assert generation_statistic(s[:2], 3) == -math.inf  # too short to ever fire
    assert generation_statistic(np.array([0.1, np.nan]), 1) == math.inf  # NaN fires
    # Exceeding the statistic is exactly what makes a patience-k monitor fire.
    for k in (1, 2, 3):
        stat = generation_statistic(s, k)
        for thr in (stat - 1e-9, stat):
            run, fired = 0, False
            for v in s:
                run = run + 1 if v > thr else 0
                fired |= run >= k
            assert fired == (stat > thr)


@pytest.mark.slow  # measured among the slowest on 2 cores; CI runs it with -m slow
@pytest.mark.parametrize("patience", [1, 2])
def test_greedy_calibration_predicts_exactly_which_generations_the_monitor_interrupts(patience: int) -> None:
    folder, model, tok = stories_bundle()
    bundle = ProbeBundle.load(folder)
    control = _control().subset(list(range(24)))
    result = calibrate_generation(
        bundle, model, tok, control, target_rates=[0.2], n=24, max_new_tokens=12, do_sample=False,
        smoothing="ema", patience=patience, batch_size=5, progress=False,
    )  # fmt: skip
    (cal,) = result.probes
    assert cal.n_calibration + cal.n_holdout == 24 and cal.n_holdout > 0
    assert math.isfinite(cal.threshold)
    assert cal.holdout_interrupted == int((cal.holdout_stats > cal.threshold).sum())
    lo, hi = cal.holdout_interval
    assert lo <= cal.holdout_rate <= hi
    # Run the calibrated bundle as a deployed monitor on the held-out prompts, one at a time (greedy, so
    # the same text): it interrupts exactly the generations whose statistic is above the threshold.
    calibrated = result.apply(bundle)
    monitor = Monitor(calibrated, smoothing="ema", patience=patience)
    assert monitor.threshold_kinds == ["generation"] and monitor.thresholds == [cal.threshold]
    held = [i for i in range(24) if result.holdout[i]]
    stats = cal.holdout_stats
    for k, i in enumerate(held):
        enc = tok(result.prompts[i], return_tensors="pt")
        with torch.no_grad(), monitor.attach(model, tokenizer=tok):
            model.generate(**enc, max_new_tokens=12, do_sample=False, **monitor.generate_kwargs())
        if abs(stats[k] - cal.threshold) > 1e-4:  # away from a float tie
            assert monitor.trace.rows[0].stopped == bool(stats[k] > cal.threshold)


def test_calibrated_bundle_round_trips_with_its_record(tmp_path: Path) -> None:
    folder, model, tok = stories_bundle()
    bundle = ProbeBundle.load(folder)
    result = calibrate_generation(
        bundle, model, tok, _control(), target_rates=[0.1, 0.25], n=20, max_new_tokens=8, seed=3,
        progress=False,
    )  # fmt: skip
    out = tmp_path / "calibrated"
    result.apply(bundle).save(out)
    loaded = ProbeBundle.load(out)["sad"]
    kinds = [t.kind for t in loaded.thresholds]
    assert kinds.count("text") == 1 and kinds.count("generation") == 2
    gen = [t for t in loaded.thresholds if t.kind == "generation"]
    assert {t.target_fpr for t in gen} == {0.1, 0.25}
    record = gen[0].record
    assert record["sampling"]["do_sample"] is True and record["sampling"]["seed"] == 3
    assert record["monitor"]["smoothing"] == "ema" and record["monitor"]["patience"] == 1
    assert record["holdout"]["n"] == result.probes[0].n_holdout
    # The monitor picks the generation-level threshold for the rate asked, and warns when its own settings
    # differ from the ones the threshold was calibrated under.
    assert Monitor(ProbeBundle.load(out), target_fpr=0.25).thresholds == [gen[1].value]
    with pytest.warns(RuntimeWarning, match="calibrated under other monitor settings"):
        Monitor(ProbeBundle.load(out), smoothing="rolling")
    # Recalibrating a rate replaces its threshold instead of stacking another.
    again = calibrate_generation(
        ProbeBundle.load(out),
        model,
        tok,
        _control(),
        target_rates=[0.1],
        n=20,
        max_new_tokens=8,
        progress=False,
    )
    kinds = [t.kind for t in again.apply(ProbeBundle.load(out))["sad"].thresholds]
    assert kinds.count("generation") == 2


def test_prompts_from_chat_rows_end_at_the_turn_to_answer() -> None:
    from transformers import AutoTokenizer

    control = load_dataset(DATASETS / "benign_control")
    row = control.examples[0]
    tok = AutoTokenizer.from_pretrained(STORIES)  # no chat template: the documented plain fallback
    text = prompt_text(row, tok)
    assert text.endswith("Assistant: ") and row.messages[0].content in text
    assert row.messages[-1].content not in text  # the reply to be generated is not in the prompt


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    app = typer.Typer()
    register(app)

    @app.callback()
    def main() -> None:
        pass

    return app


def test_cli_writes_generation_thresholds_and_a_report(app: typer.Typer, tmp_path: Path) -> None:
    folder, _, _ = stories_bundle()
    bundle = tmp_path / "bundle"
    shutil.copytree(folder, bundle)
    args = [
        "calibrate", str(bundle), "--model", str(STORIES), "--prompts", str(DATASETS / "story_moods"),
        "--where", "part=control", "--n", "16", "--max-new-tokens", "8", "--target-rate", "0.2", "--device", "cpu",
    ]  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        result = CliRunner().invoke(app, args, env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert result.exit_code == EXIT_OK, result.output
    assert "held-out rate" in result.output
    kinds = [t.kind for t in ProbeBundle.load(bundle)["sad"].thresholds]
    assert "generation" in kinds
    report = json.loads((tmp_path / "bundle.calibration" / "report.json").read_text())
    assert report["probes"][0]["n_holdout"] + report["probes"][0]["n_calibration"] == 16
    assert (tmp_path / "bundle.calibration" / "generation_maxima.png").stat().st_size > 1000

    bad = CliRunner().invoke(app, [*args[:6], "--where", "part=nothing", "--n", "4"])
    assert bad.exit_code == EXIT_USAGE and "no row has conditions" in bad.output
    missing = CliRunner().invoke(app, ["calibrate", str(tmp_path / "nope"), *args[2:]])
    assert missing.exit_code == EXIT_USAGE
