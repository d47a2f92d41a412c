"""The logit lens and tuned lens against an independent computation (hidden_states -> norm -> lm_head)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import build_tiny_model
from typer.testing import CliRunner

import probes
from probes.cli import app
from probes.errors import FingerprintMismatchError, UnsupportedArchitectureError

ROOT = Path(__file__).resolve().parents[1]
TEXTS = [
    "Once upon a time, there was a little girl named Lily. She",
    "Tom had a big red ball.",
    "The sun was hot and the dog was sleepy",
]


def independent_lens(model, tokenizer, text: str) -> torch.Tensor:
    """``(L + 1, T, V)`` logits: ``output_hidden_states`` through the final norm and head, by hand."""
    enc = tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        out = model(**enc, output_hidden_states=True)
        hs = out.hidden_states
        norm = probes.models.final_norm_module(model)
        head = model.get_output_embeddings()
        # hidden_states[-1] already has the final norm applied (GPT-2, Llama); the model's logits are its lens
        rows = [head(norm(h[0])) for h in hs[:-1]] + [out.logits[0]]
    return torch.stack(rows)


@pytest.fixture(scope="module")
def stories(stories_path: Path):
    return probes.load_model(stories_path, dtype="float32", device="cpu", progress=False)


@pytest.fixture(scope="module")
def tiny_gpt2():
    return build_tiny_model("gpt2")


@pytest.mark.parametrize("which", ["stories", "tiny_gpt2"])
def test_logit_lens_equals_independent_computation(which: str, request: pytest.FixtureRequest) -> None:
    model, tokenizer = request.getfixturevalue(which)
    results = probes.logit_lens(model, tokenizer, TEXTS, k=3, return_logits=True, batch_size=2)
    n_layers = probes.models.num_layers(model) + 1
    for text, res in zip(TEXTS, results, strict=True):
        ref = independent_lens(model, tokenizer, text)
        assert res.logits.shape == ref.shape and len(res.layers) == n_layers
        # Padded in a batch: still exact to float rounding (logits reach ~10, so 1e-5 relative as well).
        torch.testing.assert_close(res.logits, ref, atol=1e-5, rtol=1e-5)
        logp = ref.log_softmax(-1)
        top_p, top_i = logp.exp().topk(3, dim=-1)
        np.testing.assert_array_equal(res.top_ids, top_i.numpy())
        np.testing.assert_allclose(res.top_probs, top_p.numpy(), atol=1e-5)
        kl = (logp[-1].exp() * (logp[-1] - logp)).sum(-1)
        np.testing.assert_allclose(
            res.kl_to_final, kl.clamp_min(0).numpy(), atol=1e-5, rtol=1e-5
        )  # KL reaches ~40 nats
        assert np.all(res.kl_to_final[-1] < 1e-6)
        assert res.tokens == [tokenizer.decode([i]) for i in tokenizer(text)["input_ids"]]


def test_logit_lens_leaves_the_model_as_it_was(stories) -> None:
    model, tokenizer = stories
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    single = probes.logit_lens(model, tokenizer, TEXTS[1])
    assert isinstance(single, probes.LensResult)
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()) == hooks
    assert "layers.0" in single.table() and "KL→final" in single.table()


def test_lens_on_an_encoder_is_a_one_line_error(minilm_path: Path) -> None:
    model, tokenizer = probes.load_model(minilm_path, progress=False)
    with pytest.raises(UnsupportedArchitectureError) as err:
        probes.logit_lens(model, tokenizer, "hello")
    assert "no LM head" in str(err.value) and "\n" not in str(err.value)


def test_tuned_lens_fits_beats_the_logit_lens_and_round_trips(stories, tiny_gpt2, tmp_path: Path) -> None:
    model, tokenizer = stories
    ds = probes.load_dataset(ROOT / "datasets" / "story_moods")
    texts = [ex.text for ex in ds.examples if ex.text][:240]
    assert len(texts) == 240
    lens = probes.TunedLens(steps=150, lr=3e-3, batch_tokens=512).fit(model, tokenizer, texts[:200])
    held_out = texts[200:]
    plain = np.stack([r.kl_to_final.mean(1) for r in probes.logit_lens(model, tokenizer, held_out)]).mean(0)
    tuned = np.stack([r.kl_to_final.mean(1) for r in lens.lens(model, tokenizer, held_out)]).mean(0)
    # every layer below the last is closer to the final distribution through its translator, on new texts
    assert np.all(tuned[:-1] < plain[:-1]), (plain, tuned)
    assert tuned[-1] < 1e-6
    assert lens.training_["tokens_per_s"] > 0 and lens.training_["n_texts"] == 200
    path = lens.save(tmp_path / "tuned.safetensors")
    loaded = probes.TunedLens.load(path, model)
    h = torch.randn(len(lens.training_["kl_tuned_lens"]) + 1, 4, model.config.hidden_size)
    torch.testing.assert_close(loaded.translate(h), lens.translate(h))
    other, _ = tiny_gpt2
    with pytest.raises(FingerprintMismatchError, match="fitted on"):
        probes.TunedLens.load(path, other)
    with pytest.raises(FingerprintMismatchError):
        probes.logit_lens(other, tokenizer, "Tom", translators=loaded)


def test_lens_cli_prints_and_plots(stories_path: Path, minilm_path: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    help_ = runner.invoke(app, ["lens", "--help"])
    assert help_.exit_code == 0 and "--prompt" in help_.output
    out = tmp_path / "lens"
    result = runner.invoke(app, ["lens", str(stories_path), "--prompt", TEXTS[0], "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "layers.5" in result.output and "KL→final" in result.output
    assert (out / "lens.png").stat().st_size > 5000
    assert "<table>" in (out / "lens.html").read_text()
    bad = runner.invoke(app, ["lens", str(minilm_path), "--prompt", "hi", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "no LM head" in bad.output
