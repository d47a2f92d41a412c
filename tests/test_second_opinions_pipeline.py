"""``detectors:`` and ``stages:`` in a run config: validation, a run on stories260K, and ``probes evaluate``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import STORIES
from test_cli import invoke

from probes.cli import EXIT_BAD_INPUT, EXIT_OK
from probes.config import config_from_dict, load_config
from probes.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def _config(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    return {
        "name": "so",
        "model": str(STORIES),
        "data": {
            "train": {"path": "datasets/story_moods", "where": {"part": ["contrast"]}},
            "control": {"path": "datasets/story_moods", "where": {"part": ["control"]}},
            "eval": {
                "deceptive": {"path": "datasets/honesty_instructed_pairs", "limit": 60},
                "requests": {"path": "datasets/benign_control", "limit": 60},
            },
            "max_length": 256,
        },
        "layers": [2, 3, 4],
        "pooling": "mean",
        "probe": {"kind": "logistic", "params": {"C": 0.1}},
        "evaluation": {
            "target_fprs": [0.05],
            "bootstrap": 20,
            "text_baselines": False,
            "length_baseline": False,
        },
        "cache_dir": str(tmp_path / "cache"),
        "output_dir": str(tmp_path / "runs"),
        "tracking": {"enabled": False},
        **extra,
    }


def _write(tmp_path: Path, raw: dict[str, Any]) -> Path:
    import yaml

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"probe": {"kind": "knn"}}, "list it under detectors"),
        ({"detectors": [{"name": "d", "kind": "knn", "shifted": ["nope"]}]}, "detectors.0.shifted: ['nope']"),
        ({"detectors": [{"name": "d", "kind": "lof"}]}, "detectors.0.kind"),
        ({"stages": {"stage2": {"kind": "probe"}}}, "kind: probe needs probe"),
        ({"stages": {"stage2": {"kind": "probe", "probe": "knn"}}}, "put it in detectors"),
        ({"stages": {"stage2": {"kind": "probe", "probe": "stacked", "model": "x"}}}, "only a judge stage"),
        ({"stages": {"stage2": {"kind": "judge", "modle": "x"}}}, "did you mean 'model'"),
        (
            {"stages": {"stage2": {"kind": "judge"}, "curve": [1.5]}},
            "escalation fractions must lie in [0, 1]",
        ),
        ({"stages": {"stage2": {"kind": "judge"}}, "pooling": "tokens"}, "stages: read pooled activations"),
    ],
)
def test_bad_detector_and_stage_sections_are_config_errors(tmp_path: Path, extra, message) -> None:
    with pytest.raises(ConfigError) as err:
        config_from_dict(_config(tmp_path, **extra))
    assert message in str(err.value)


def test_a_detector_without_a_control_set_is_refused(tmp_path: Path) -> None:
    raw = _config(tmp_path, detectors=[{"name": "d", "kind": "mahalanobis"}])
    del raw["data"]["control"]
    with pytest.raises(ConfigError, match="fitted on benign rows only; set data.control"):
        config_from_dict(raw)


def test_a_missing_judge_model_fails_validate_and_run_before_any_collection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)
    raw = _config(tmp_path, stages={"stage2": {"kind": "judge", "model": "models/no-such-judge/here"}})
    path = _write(tmp_path, raw)
    result = invoke("validate", str(path))
    assert result.exit_code == EXIT_BAD_INPUT
    assert "stages.stage2.model" in result.output and "no such file or folder" in result.output
    result = invoke("run", str(path), "--no-track")
    assert result.exit_code == EXIT_BAD_INPUT and "stages.stage2.model" in result.output
    assert not (tmp_path / "cache").exists() and not (tmp_path / "runs").exists()
    # The same through the Python API (no path checks at construction): refused before collection.
    from probes.pipeline import run

    with pytest.raises(ConfigError, match=r"stages\.stage2\.model"):
        run(config_from_dict(raw))
    assert not (tmp_path / "cache").exists()
    # A folder with no model in it, and a Hub id while offline, are as missing.
    empty = tmp_path / "empty"
    empty.mkdir()
    for name, why in ((str(empty), "holds no model"), ("someone/uncached-judge-model", "not in the local")):
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        raw["stages"]["stage2"]["model"] = name
        with pytest.raises(ConfigError, match=why):
            load_config(_write(tmp_path, raw))
    raw["stages"]["stage2"]["model"] = str(STORIES)  # a real model folder is fine
    assert load_config(_write(tmp_path, raw)).stages.stage2.model == str(STORIES)


@pytest.mark.slow
def test_a_run_with_detectors_and_a_judge_cascade_on_stories260k(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from probes.package import ProbeBundle
    from probes.pipeline import run

    monkeypatch.chdir(ROOT)
    raw = _config(
        tmp_path,
        detectors=[
            {"name": "maha", "kind": "mahalanobis", "params": {"calibration_fraction": 0.4}, "shifted": ["requests"]},
            {"name": "near", "kind": "knn", "layer": 4, "params": {"n_neighbors": 3, "calibration_fraction": 0.4},
             "novel": ["deceptive"], "shifted": ["requests"]},
        ],
        stages={
            "stage2": {"kind": "judge", "model": str(STORIES), "state": "sadness", "yes": ["Yes"], "no": ["No"],
                       "batch_size": 16},
            "escalation": 0.25,
            "curve": [0.0, 0.5, 1.0],
            "target_fpr": 0.1,
        },
    )  # fmt: skip
    result = run(config_from_dict(raw))
    report = json.loads((result.run_dir / "report.json").read_text())

    # Detectors: fitted on 70% of the 100 calm control stories only; the other 30 are the held-out benign set.
    maha, near = report["detectors"]
    assert maha["site"] == result.layer and near["site"] == "layers.4"
    r = maha["report"]
    assert r["n_fit"] + r["n_calibration"] == 70 and r["benign"]["n"] == 30
    assert [n["name"] for n in r["novel"]] == ["story_moods (test positives)", "deceptive"]
    assert [n["name"] for n in near["report"]["novel"]] == ["story_moods (test positives)", "deceptive"]
    deceptive = r["novel"][1]
    assert deceptive["n"] == 30 and deceptive["auroc"] > 0.9  # chats are far from children's stories
    (shifted,) = r["shifted"]
    assert shifted["name"] == "requests" and shifted["n"] == 60 and len(shifted["ci"]) == 2
    assert shifted["ci"][0] <= shifted["rate"] <= shifted["ci"][1]
    # ... stored in the bundle beside the probe, with their conformal thresholds.
    bundle = ProbeBundle.load(result.bundle_dir)
    assert [e.name for e in bundle][1:] == ["maha", "near"]
    assert bundle["maha"].threshold_for(0.05).value == pytest.approx(r["threshold"])
    # The run's bundle (probe + detectors) monitors generations: calibrated per generation (max over tokens)
    # on benign continuations, the detector's held-out interrupt rate is inside its interval at the target.
    import probes
    from probes.monitor.calibrate import calibrate_generation

    model, tok = probes.load_model(str(STORIES))
    calm = probes.load_dataset("datasets/story_moods").filter(lambda e: e.conditions["part"] == "control")
    cal = calibrate_generation(
        bundle, model, tok, calm, target_rates=[0.2], n=80, max_new_tokens=16, batch_size=16, progress=False
    )
    maha_cal = {c.probe: c for c in cal.probes}["maha"]
    lo, hi = maha_cal.holdout_interval
    assert maha_cal.n_holdout >= 30 and lo <= 0.2 <= hi

    # Cascade: the escalated share on validation hits each target; stage 2 costs far more per decision.
    cascade = report["cascade"]
    points = cascade["curve"]["points"]
    assert [p["target_escalation"] for p in points] == [0.0, 0.25, 0.5, 1.0]
    n_val = cascade["curve"]["n_val"]
    for p in points:
        assert abs(p["val_escalation"] - p["target_escalation"]) <= 1.5 / n_val + 0.02
    stage1, stage2 = cascade["curve"]["costs"]
    assert stage2["flops"] > 100 * stage1["flops"] and stage2["seconds"] > stage1["seconds"] > 0
    assert points[1]["flops_per_decision"] < points[2]["flops_per_decision"] < points[3]["flops_per_decision"]
    deployed = cascade["deployed"]
    assert deployed["stage2_calls"] == round(deployed["test_escalation"] * deployed["rows"])
    assert "LM judge" in cascade["stages"][1]
    assert (result.run_dir / "plots" / "cascade.png").stat().st_size > 0
    assert any(p.name.startswith("maha") for p in (result.run_dir / "plots").iterdir())

    # probes evaluate: the bundle's detectors on a set they never saw, with a second benign set.
    out = invoke(
        "evaluate", str(result.run_dir), "--data", "datasets/story_moods",
        "--control", "datasets/benign_control", "--benign", "datasets/true_false_statements", "--limit", "60",
    )  # fmt: skip
    assert out.exit_code == EXIT_OK, out.output
    assert "maha · mahalanobis" in out.output and "benign, shifted: true_false_statements" in out.output
    evaluation = json.loads(next((result.run_dir / "evaluations").glob("*.json")).read_text())
    det = {d["name"]: d for d in evaluation["detectors"]}
    assert set(det) == {"maha", "near"}
    (novel,) = det["maha"]["novel"]
    # The stories' sad turns are *less* unusual than benign chats to a detector fitted on calm stories.
    assert novel["name"] == "story_moods" and novel["n"] == 21 and novel["auroc"] < 0.5
    assert det["maha"]["benign"]["name"] == "benign_control" and det["maha"]["benign"]["n"] == 60
    assert det["maha"]["shifted"][0]["name"] == "true_false_statements"

    # probes train puts the detectors in its bundle too (the activations are cached).
    from probes.pipeline import train_stage

    trained = ProbeBundle.load(train_stage(config_from_dict(raw)).bundle_dir)
    assert [e.name for e in trained][1:] == ["maha", "near"]
    assert trained["near"].threshold_for(0.05).value == pytest.approx(near["report"]["threshold"])

    # Stage 2 a multi-layer probe instead (the activations are cached): fitted on train, read at every site.
    raw = {**raw, "detectors": [], "evaluation": {**raw["evaluation"], "plots": False}}
    raw["stages"] = {"stage2": {"kind": "probe", "probe": "stacked", "params": {"C": 0.1, "cv": 3}},
                     "escalation": 0.25, "curve": [0.0, 1.0], "target_fpr": 0.1}  # fmt: skip
    again = run(config_from_dict(raw))
    cascade = again.second_opinions.cascade
    assert cascade.stages[1] == "stacked probe @ layers.2+layers.3+layers.4"
    assert cascade.curve.costs[1].flops == 3 * stage1["flops"]  # one linear map per site, three sites
    assert [p.target_escalation for p in cascade.curve.points] == [0.0, 0.25, 1.0]
