"""Cascades (band chosen on validation, stage 2 only where escalated, the recall/escalation curve) and the
LM judge (log P("yes") through the chat template, exact and batch-invariant)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import build_tiny_model

from probes.data.types import Example, Message
from probes.errors import NotFittedError, TokenizerError
from probes.evaluation import CascadeCurve, StageCost, cascade_curve, conformal_threshold
from probes.train import Cascade, LMJudge, LogisticProbe


def _scores(n: int, seed: int, s1: float = 1.0, s2: float = 2.5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stage 1 weakly separates the classes, stage 2 strongly, with independent noise."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    return y * s1 + rng.normal(size=n), y * s2 + rng.normal(size=n), y


@pytest.fixture(scope="module")
def val():
    return _scores(2000, 0)


@pytest.fixture(scope="module")
def test_set():
    return _scores(2000, 1)


# --- the cascade ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("fraction", [0.05, 0.2, 0.5])
def test_band_holds_the_target_share_of_validation_rows(val, fraction: float) -> None:
    cascade = Cascade(escalation=fraction, target_fpr=0.05).fit(*val)
    assert cascade.lo_ <= cascade.hi_
    assert abs(cascade.val_escalation_ - fraction) <= 2 / len(val[0])
    assert np.mean(cascade.escalate(val[0])) == pytest.approx(cascade.val_escalation_)


def test_decide_calls_stage_two_only_for_escalated_rows(val, test_set) -> None:
    cascade = Cascade(escalation=0.1, target_fpr=0.05).fit(*val)
    s1, s2, _ = test_set
    seen: list[np.ndarray] = []

    def stage2(idx: np.ndarray) -> np.ndarray:
        seen.append(idx)
        return s2[idx]

    decision = cascade.decide(s1, stage2)
    assert len(seen) == 1 and np.array_equal(seen[0], np.flatnonzero(decision.escalated))
    assert 0.05 < decision.escalation_fraction < 0.15
    np.testing.assert_allclose(decision.scores, cascade.scores(s1, s2))
    assert np.array_equal(decision.flagged, decision.scores > cascade.threshold_)
    with pytest.raises(ValueError, match="3 scores for"):
        cascade.decide(s1, lambda idx: np.zeros(3))


def test_no_escalation_is_stage_one_and_full_escalation_is_stage_two(val, test_set) -> None:
    s1v, s2v, yv = val
    s1, s2, _ = test_set
    none = Cascade(escalation=0.0, target_fpr=0.05).fit(*val)
    assert not none.escalate(s1).any()
    t1 = conformal_threshold(s1v[yv == 0], 0.05)
    assert np.array_equal(none.scores(s1, s2) > none.threshold_, s1 > t1)
    full = Cascade(escalation=1.0, target_fpr=0.05).fit(*val)
    t2 = conformal_threshold(s2v[yv == 0], 0.05)
    assert full.escalate(s1).all()
    assert np.array_equal(full.scores(s1, s2) > full.threshold_, s2 > t2)


def test_thresholds_from_a_control_set_and_refusals(val) -> None:
    s1v, s2v, yv = val
    rng = np.random.default_rng(5)
    control = (rng.normal(size=500), rng.normal(size=500))
    cascade = Cascade(escalation=0.2, target_fpr=0.05).fit(*val, control=control)
    assert cascade.threshold_source_ == "control"
    with pytest.raises(ValueError, match="too few"):
        Cascade(target_fpr=0.001).fit(s1v[:300], s2v[:300], yv[:300])
    with pytest.raises(ValueError, match="escalation"):
        Cascade(escalation=1.5).fit(*val)
    with pytest.raises(ValueError, match="combine"):
        Cascade(combine="max").fit(*val)
    with pytest.raises(ValueError, match="same rows"):
        Cascade().fit(s1v, s2v[:10], yv)
    with pytest.raises(NotFittedError):
        Cascade().escalate(s1v)


def test_the_curve_rises_from_stage_one_towards_stage_two(tmp_path, val, test_set) -> None:
    costs = [StageCost("probe", seconds=1e-6, flops=1536.0), StageCost("judge", seconds=0.05, flops=1e9)]
    curve = cascade_curve(*val, *test_set, fractions=(0.0, 0.1, 0.3, 1.0), target_fpr=0.05, costs=costs)
    recalls = [p.recall for p in curve.points]
    assert [p.target_escalation for p in curve.points] == [0.0, 0.1, 0.3, 1.0]
    assert recalls[0] < recalls[1] < recalls[2] < recalls[3]
    assert curve.stage1_alone is curve.points[0]
    assert curve.points[-1].recall == pytest.approx(curve.stage2_alone["recall"])
    for p in curve.points:
        assert p.seconds_per_decision == pytest.approx(1e-6 + p.test_escalation * 0.05)
        assert p.fpr_ci[0] <= p.fpr <= p.fpr_ci[1]
    again = CascadeCurve.from_json(curve.to_json(tmp_path / "curve.json"))
    assert again.to_dict() == curve.to_dict()
    assert curve.plot(tmp_path / "curve.png").read_bytes()[:4] == b"\x89PNG"
    assert "stage 2 alone" in str(curve)
    mean = cascade_curve(*val, *test_set, fractions=(1.0,), target_fpr=0.05, combine="mean")
    # Averaging two independent sources of evidence beats the better one alone.
    assert mean.points[0].recall > curve.stage2_alone["recall"]
    (s1v, s2v, yv), (s1t, s2t, yt) = val, test_set
    flipped = cascade_curve(s1v, -s2v, yv, s1t, -s2t, yt, fractions=(1.0,), target_fpr=0.05)
    assert any("stage 2's scores fall" in w for w in flipped.warnings)
    assert flipped.points[0].recall == pytest.approx(curve.stage2_alone["recall"])  # the map flips them back


def test_stage_cost_of_a_probe_is_measured() -> None:
    X = torch.randn(200, 16)
    probe = LogisticProbe().fit(X, (X[:, 0] > 0).long().numpy())
    cost = StageCost.of_probe(probe, X=X)
    assert cost.flops == 32.0 and cost.seconds is not None and cost.seconds > 0


# --- the LM judge -------------------------------------------------------------------------------------
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@pytest.fixture(scope="module")
def chat_model():
    model, tok = build_tiny_model("llama")
    tok.chat_template = CHAT_TEMPLATE
    return model, tok


def _manual_logprob(model, tok, prompt: str, answer: str) -> float:
    """log P(answer | prompt) from one unbatched forward over prompt + answer."""
    bos = tok.bos_token
    special = not (bos and prompt.startswith(bos))
    p = tok(prompt, add_special_tokens=special)["input_ids"]
    full = tok(prompt + answer, add_special_tokens=special)["input_ids"]
    assert full[: len(p)] == p
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([full])).logits[0].float(), -1)
    return float(sum(logp[i - 1, full[i]] for i in range(len(p), len(full))))


def test_judge_scores_are_the_log_probability_of_yes(chat_model) -> None:
    model, tok = chat_model
    judge = LMJudge(model, tok, state="sadness")
    rows = ["Tom was sad.", "The sun was warm and everyone laughed.", "A dog."]
    prompt = judge.prompt(rows[0])
    assert prompt.startswith("<|user|>Here is a text") and prompt.endswith("<|assistant|>")
    got = judge.score(rows)
    want = np.logaddexp(
        _manual_logprob(model, tok, prompt, "Yes"), _manual_logprob(model, tok, prompt, "yes")
    )
    assert got[0] == pytest.approx(want, abs=1e-4)
    one_by_one = np.array([LMJudge(model, tok, state="sadness", batch_size=1).score([r])[0] for r in rows])
    np.testing.assert_allclose(got, one_by_one, atol=1e-4)  # left padding changes nothing
    odds = LMJudge(model, tok, state="sadness", score="logodds").score(rows)
    no = np.logaddexp(_manual_logprob(model, tok, prompt, "No"), _manual_logprob(model, tok, prompt, "no"))
    assert odds[0] == pytest.approx(want - no, abs=1e-4)
    assert judge.flops_per_decision_ > 2 * judge._n_body and judge.tokens_per_decision_ > 10
    assert judge.seconds_per_decision_ > 0


def test_judge_reads_rows_chats_and_a_system_message(chat_model) -> None:
    model, tok = chat_model
    judge = LMJudge(model, tok, system="You are a careful rater.")
    chat = (Message("user", "How are you?"), Message("assistant", "Awful, honestly."))
    example = Example(id="r1", label=1, messages=chat)
    assert judge.row_text(example) == "User: How are you?\n\nAssistant: Awful, honestly."
    assert judge.row_text([{"role": "user", "content": "hi"}]) == "User: hi"
    assert judge.prompt(example).startswith("<|system|>You are a careful rater.</s><|user|>")
    assert np.isfinite(judge.score([example, list(chat), "plain text"])).all()
    with pytest.raises(TypeError, match="scores strings"):
        judge.score([3])


def test_plain_fallback_and_multi_token_answers_on_a_real_model(stories_path) -> None:
    """stories260K has no chat template: the plain 'User: ... Assistant:' format, and 'Yes' is 3 tokens."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(stories_path).eval()
    tok = AutoTokenizer.from_pretrained(stories_path)
    judge = LMJudge(model, tok, state="sadness", batch_size=3)
    prompt = judge.prompt("Tom was sad because his dog ran away.")
    assert prompt.startswith("User: Here is a text:") and prompt.endswith("\n\nAssistant:")
    assert len(judge._answer_tokens(prompt, judge._encode(prompt), "Yes")) > 1
    rows = ["Tom was sad because his dog ran away.", "Lily played in the sun.", "Ben cried."]
    got = judge.score(rows)
    want = np.logaddexp(
        _manual_logprob(model, tok, prompt, " Yes"), _manual_logprob(model, tok, prompt, " yes")
    )
    assert got[0] == pytest.approx(want, abs=1e-4)
    np.testing.assert_allclose(got, LMJudge(model, tok, state="sadness", batch_size=1).score(rows), atol=1e-4)


def test_judge_refuses_what_it_cannot_do(chat_model, stories_path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tok = chat_model
    with pytest.raises(ValueError, match=r"\{text\}"):
        LMJudge(model, tok, question="Is it sad?")
    with pytest.raises(ValueError, match="score must be"):
        LMJudge(model, tok, score="prob")
    with pytest.raises(ValueError, match="max_length"):
        LMJudge(model, tok, max_length=8).score(["a long enough row to pass eight tokens for sure"])
    plain_tok = AutoTokenizer.from_pretrained(stories_path)
    plain = AutoModelForCausalLM.from_pretrained(stories_path)
    with pytest.raises(TokenizerError, match="no chat template"):
        LMJudge(plain, plain_tok, use_chat_template=True)
