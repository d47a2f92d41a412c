"""Multi-layer probes and a probe -> LM-judge cascade on a real pretrained model (stories260K, offline)."""

from __future__ import annotations

import numpy as np
import pytest

import probes
from probes.evaluation import StageCost, cascade_curve, conformal_threshold, evaluate
from probes.package import ProbeBundle
from probes.train import LMJudge, LogisticProbe, StackedProbe

SITES = ["layers.2", "layers.3", "layers.4"]


@pytest.fixture(scope="module")
def stories(stories_path):
    model, tok = probes.load_model(str(stories_path))
    ds = probes.load_dataset("datasets/story_moods")
    contrast = ds.filter(lambda r: r.conditions.get("part") == "contrast")
    control = ds.filter(lambda r: r.conditions.get("part") == "control")
    parts = {**contrast.split({"train": 0.5, "val": 0.25, "test": 0.25}, seed=0), "control": control}
    acts = {
        k: probes.collect(model, tok, v, layers=SITES, pooling="mean", max_length=64)
        for k, v in parts.items()
    }
    return model, tok, parts, acts


def test_a_stacked_probe_reads_three_layers_of_a_real_model(tmp_path, stories) -> None:
    model, _, _, acts = stories
    probe = StackedProbe(cv=3, C=0.1).fit(acts["train"], acts["train"].labels, groups=acts["train"].groups)
    report = evaluate(probe, acts["test"], control=acts["control"], target_fpr=0.05, n_bootstrap=100)
    assert report.layer == "+".join(SITES) and report.auroc > 0.9
    bundle = ProbeBundle.from_probe(probe, model=model, name="sad", threshold=report.threshold)
    entry = ProbeBundle.load(bundle.save(tmp_path / "bundle"))["sad"]
    assert entry.site == "layers.4" and entry.sites == tuple(SITES)
    X = acts["test"].features
    summed = sum((X[s] @ w + b) for s, (w, b) in entry.score_forms().items())
    np.testing.assert_allclose(summed.numpy(), probe.decision_function(acts["test"]), rtol=1e-5, atol=1e-4)


def test_a_probe_then_lm_judge_cascade_on_a_real_model(tmp_path, stories) -> None:
    model, tok, parts, acts = stories
    stage1 = LogisticProbe(C=0.1).fit(acts["train"]["layers.2"], acts["train"].labels)
    s1 = {k: stage1.decision_function(acts[k]["layers.2"]) for k in ("val", "test")}
    # One spelling each: two teacher-forced sequences per row ("Yes" and "No" are 3 tokens each here).
    judge = LMJudge(model, tok, state="sadness", score="logodds", yes=("Yes",), no=("No",), batch_size=32)
    s2 = {k: judge.score(list(parts[k])) for k in ("val", "test")}
    assert all(np.isfinite(v).all() for v in s2.values())
    costs = [StageCost.of_probe(stage1, X=acts["test"]["layers.2"]), StageCost.of_judge(judge)]
    assert costs[1].flops > 1000 * costs[0].flops and costs[1].seconds > 0
    y = {k: acts[k].labels for k in ("val", "test")}
    curve = cascade_curve(
        s1["val"], s2["val"], y["val"], s1["test"], s2["test"], y["test"],
        fractions=(0.0, 0.25, 1.0), target_fpr=0.05, costs=costs,
    )  # fmt: skip
    t1 = conformal_threshold(s1["val"][y["val"] == 0], 0.05)
    assert curve.points[0].recall == pytest.approx(float(np.mean(s1["test"][y["test"] == 1] > t1)))
    assert curve.points[-1].recall == pytest.approx(curve.stage2_alone["recall"])
    assert abs(curve.points[1].val_escalation - 0.25) < 0.05
    assert curve.points[1].flops_per_decision < curve.points[2].flops_per_decision
    assert curve.plot(tmp_path / "cascade.png").exists()


def test_a_detector_and_a_probe_monitor_generations_at_a_calibrated_interrupt_rate(stories) -> None:
    """The issue's bar: a bundle with a detector and a probe monitors generations, and the detector's
    interrupt rate on held-out benign generations sits inside its binomial interval at the target."""
    from probes.monitor import Monitor
    from probes.monitor.calibrate import calibrate_generation
    from probes.train import MahalanobisDetector

    model, tok, parts, acts = stories
    tokens = probes.collect(
        model, tok, parts["control"], layers=["layers.3"], pooling="tokens", max_length=64
    )
    detector = MahalanobisDetector().fit(tokens["layers.3"].values)  # every token of calm stories is a row
    probe = LogisticProbe(C=0.1).fit(acts["train"]["layers.3"], acts["train"].labels)
    bundle = ProbeBundle.from_probe(probe, model=model, layer=3, name="sad", threshold=0.0)
    bundle.add(detector, layer=3, name="unusual", threshold=detector.threshold_spec(0.05))
    result = calibrate_generation(
        bundle, model, tok, parts["control"], target_rates=[0.2], n=80, max_new_tokens=16, batch_size=10,
        seed=0, progress=False,
    )  # fmt: skip
    cal = {c.probe: c for c in result.probes}["unusual"]
    lo, hi = cal.holdout_interval
    assert cal.n_holdout >= 30 and lo <= 0.2 <= hi
    # The calibrated bundle runs both as one monitor.
    monitor = Monitor(result.apply(bundle), action="flag")
    enc = tok(["Once upon a time"], return_tensors="pt")
    with monitor.attach(model, tokenizer=tok):
        model.generate(**enc, max_new_tokens=8, min_new_tokens=8, do_sample=False)
    assert set(monitor.trace.to_dataframe()["probe"]) == {"sad", "unusual"}
