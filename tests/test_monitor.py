"""Monitor correctness on tiny random models: streamed scores, exact stops, per-row state, hook hygiene."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from conftest import build_tiny_model

from probes.errors import FingerprintMismatchError
from probes.models.sites import num_layers, parse_site, residual_hook
from probes.monitor import FireEvent, Monitor
from probes.package import ProbeBundle
from probes.train import DiffMeansProbe, LogisticProbe, Probe, register_probe
from probes.train.aggregate import ema, rolling_mean

PROMPTS = ["Once upon a time there was a", "Tom saw a dog", "The sun"]
NEW = 14


def _no_hooks(model: torch.nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def _capture(model, layer: int, **inputs) -> torch.Tensor:
    out: list[torch.Tensor] = []
    site = parse_site(layer, num_layers(model))
    with torch.no_grad(), residual_hook(model, site, lambda h: out.append(h.detach())):
        model(**inputs)
    return out[0]


def _fit_probe(model, layer: int, seed: int = 0) -> LogisticProbe:
    """A real LogisticProbe on the model's own activations, labelled by a random direction."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 500, (16, 12), generator=g)
    H = _capture(model, layer, input_ids=ids).reshape(-1, model.config.hidden_size)
    y = (H @ torch.randn(H.shape[1], generator=g)).numpy()
    return LogisticProbe(C=1.0).fit(H, (y > np.median(y)).astype(np.int64))


class Tiny:
    def __init__(self, arch: str) -> None:
        self.model, self.tok = build_tiny_model(arch)
        self.tok.padding_side = "left"
        self.layer = 2
        self.probe = _fit_probe(self.model, self.layer)
        self.bundle = ProbeBundle.from_probe(self.probe, model=self.model, layer=self.layer, name="p")

    def encode(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        return dict(self.tok(prompts, return_tensors="pt", padding=True))

    def generate(
        self, enc, monitor: Monitor | None = None, criteria_only: bool = False, **kw
    ) -> torch.Tensor:
        """Greedy by default; ``criteria_only`` passes the stopping criteria without the logits processor."""
        kw = {"max_new_tokens": NEW, "min_new_tokens": NEW, "do_sample": False, **kw}
        with torch.no_grad():
            if monitor is None:
                return self.model.generate(**enc, **kw)
            with monitor.attach(self.model, tokenizer=self.tok):
                hooks = (
                    {"stopping_criteria": monitor.stopping_criteria()}
                    if criteria_only
                    else monitor.generate_kwargs()
                )
                return self.model.generate(**enc, **hooks, **kw)

    def reference(
        self, sequences: torch.Tensor, prompt_mask: torch.Tensor, probe=None, layer=None
    ) -> np.ndarray:
        """(B, T) scores of one batched forward over the final text (positions as generate numbers them)."""
        extra = torch.ones(
            sequences.shape[0], sequences.shape[1] - prompt_mask.shape[1], dtype=prompt_mask.dtype
        )
        mask = torch.cat([prompt_mask, extra], dim=1)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        h = _capture(
            self.model, layer or self.layer, input_ids=sequences, attention_mask=mask, position_ids=pos
        )
        probe = probe or self.probe
        return probe.score_torch(h.reshape(-1, h.shape[-1])).reshape(h.shape[:2]).numpy()


@pytest.fixture(scope="module")
def llama() -> Tiny:
    return Tiny("llama")


def _smooth(x: np.ndarray, how: str, alpha: float = 0.3, window: int = 8) -> np.ndarray:
    t = torch.as_tensor(x, dtype=torch.float32)
    offsets = torch.tensor([0, len(t)])
    if how == "ema":
        return ema(t, offsets, alpha).numpy()
    if how == "rolling":
        return rolling_mean(t, offsets, window).numpy()
    return t.numpy()


def _first_fire(smoothed: np.ndarray, thr: float, patience: int) -> int | None:
    run = 0
    for i, s in enumerate(smoothed):
        run = run + 1 if s > thr else 0
        if run >= patience:
            return i
    return None


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("prompts", [PROMPTS[:1], PROMPTS], ids=["batch1", "left-padded-batch3"])
@pytest.mark.parametrize("score_prompt", [False, True])
def test_streamed_scores_equal_one_batched_forward(arch: str, prompts: list[str], score_prompt: bool) -> None:
    tiny = Tiny(arch) if arch != "llama" else _LLAMA()
    enc = tiny.encode(prompts)
    monitor = Monitor(tiny.bundle, action="flag", score_prompt=score_prompt)
    out = tiny.generate(enc, monitor)
    ref = tiny.reference(out, enc["attention_mask"])
    df = monitor.trace.to_dataframe()
    assert len(df) > 0
    got = df["score"].to_numpy()
    want = ref[df["row"].to_numpy(), df["position"].to_numpy()]
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    prompt_len = enc["input_ids"].shape[1]
    for r in range(len(prompts)):
        rows = df[df["row"] == r]
        n_pad = int((enc["attention_mask"][r] == 0).sum())
        first = n_pad if score_prompt else prompt_len
        # Every real token the model read is scored exactly once; pads and the never-fed last token are not.
        assert rows["position"].tolist() == list(range(first, out.shape[1] - 1))
        assert (out[r].numpy()[rows["position"].to_numpy()] == rows["token_id"].to_numpy()).all()
        np.testing.assert_allclose(
            rows["smoothed"], _smooth(ref[r, first : out.shape[1] - 1], "ema"), atol=1e-4
        )


_cache: dict[str, Tiny] = {}


def _LLAMA() -> Tiny:  # noqa: N802 - module-level cache shared by parametrised tests
    if "llama" not in _cache:
        _cache["llama"] = Tiny("llama")
    return _cache["llama"]


@pytest.mark.parametrize(("smoothing", "patience"), [("ema", 1), ("ema", 3), ("rolling", 2), ("none", 1)])
def test_generation_stops_exactly_where_the_smoothed_score_crosses(smoothing: str, patience: int) -> None:
    tiny = _LLAMA()
    enc = tiny.encode(PROMPTS)
    plain = tiny.generate(enc)
    prompt_len = enc["input_ids"].shape[1]
    ref = tiny.reference(plain, enc["attention_mask"])[:, prompt_len:-1]
    smoothed = np.stack([_smooth(r, smoothing, window=4) for r in ref])
    thr = float(np.quantile(smoothed, 0.75))
    expected = [_first_fire(s, thr, patience) for s in smoothed]
    assert any(e is not None and e + 2 < NEW for e in expected), "test data should stop some row early"
    pad, eos = tiny.tok.pad_token_id, tiny.model.generation_config.eos_token_id

    for criteria_only in (False, True):
        monitor = Monitor(tiny.bundle, smoothing=smoothing, window=4, patience=patience, threshold=thr)
        out = tiny.generate(enc, monitor, criteria_only=criteria_only)
        for r, e in enumerate(expected):
            if e is None:
                assert torch.equal(out[r], plain[r])
                assert monitor.trace.fired_at[r] is None
                continue
            end = prompt_len + e + 1  # just past the firing token
            assert monitor.trace.fired_at[r] == prompt_len + e
            assert monitor.trace.rows[r].stopped
            if criteria_only:  # the stopping criterion alone: the token sampled in the same step lands
                assert torch.equal(out[r, : end + 1], plain[r, : end + 1])
                assert (out[r, end + 1 :] == pad).all()
            else:  # with the logits processor: the firing token is the last one generated, then EOS
                assert torch.equal(out[r, :end], plain[r, :end])
                assert int(out[r, end]) == eos
                assert (out[r, end + 1 :] == pad).all()
                row = monitor.trace.rows[r]
                assert row.positions[-1] == end and row.token_ids[-1] == eos
                assert np.isnan(row.score[-1]).all() and not row.firing[-1].any()  # the forced EOS
                assert (row.smoothed[-2] > thr).any()  # the firing token, scored


def test_exact_stop_with_sampling() -> None:
    tiny = _LLAMA()
    enc = tiny.encode(PROMPTS)
    prompt_len = enc["input_ids"].shape[1]
    torch.manual_seed(3)
    sampled = tiny.generate(enc, do_sample=True)
    ref = tiny.reference(sampled, enc["attention_mask"])[:, prompt_len:-1]
    thr = float(np.quantile(np.stack([_smooth(r, "ema") for r in ref]), 0.7))
    eos, pad = tiny.model.generation_config.eos_token_id, tiny.tok.pad_token_id

    monitor = Monitor(tiny.bundle, threshold=thr)
    torch.manual_seed(11)
    out = tiny.generate(enc, monitor, do_sample=True)
    full = tiny.reference(out, enc["attention_mask"])
    n_stopped = 0
    for r in range(len(PROMPTS)):
        fired_at = monitor.trace.fired_at[r]
        gen = out[r, prompt_len:]
        if fired_at is None:
            assert (gen != eos).all()  # min_new_tokens: nothing else ends a row
            continue
        n_stopped += 1
        k = fired_at - prompt_len
        # Exact: the reference smoothing of what was sampled first crosses at the last generated token.
        assert _first_fire(_smooth(full[r, prompt_len : fired_at + 1], "ema"), thr, 1) == k
        if k + 1 < NEW:
            assert int(gen[k + 1]) == eos and (gen[k + 2 :] == pad).all()
    assert n_stopped >= 1, "the threshold should stop at least one sampled row"


def test_exact_stop_with_a_text_iterator_streamer() -> None:
    from transformers import TextIteratorStreamer

    tiny = _LLAMA()
    enc = tiny.encode(PROMPTS[:1])
    prompt_len = enc["input_ids"].shape[1]
    plain = tiny.generate(enc)
    ref = tiny.reference(plain, enc["attention_mask"])[0, prompt_len:-1]
    smoothed = _smooth(ref, "ema")
    thr = float(np.quantile(smoothed, 0.6))
    k = _first_fire(smoothed, thr, 1)
    assert k is not None and k + 2 < NEW

    monitor = Monitor(tiny.bundle, threshold=thr)
    streamer = TextIteratorStreamer(tiny.tok, skip_prompt=True, skip_special_tokens=False, timeout=60)
    result: dict[str, torch.Tensor] = {}

    def run() -> None:
        try:
            result["out"] = tiny.generate(enc, monitor, streamer=streamer)
        finally:
            streamer.end()  # an error in generate must not leave the reading side waiting

    thread = threading.Thread(target=run)
    thread.start()
    text = "".join(streamer)
    thread.join()
    out = result["out"][0]
    end = prompt_len + k + 1
    assert torch.equal(out[:end], plain[0, :end])
    assert int(out[end]) == tiny.model.generation_config.eos_token_id
    # The streamer saw the generated tokens up to the forced EOS (generate stops streaming finished rows).
    streamed = tiny.tok.decode(out[prompt_len : end + 1], skip_special_tokens=False)
    assert text == streamed
    assert monitor.trace.fired_at[0] == end - 1
    assert _no_hooks(tiny.model)


def test_generate_kwargs_and_the_end_token() -> None:
    tiny = _LLAMA()
    monitor = Monitor(tiny.bundle, threshold=-1e9)  # fires on the first generated token
    kwargs = monitor.generate_kwargs()
    assert set(kwargs) == {"stopping_criteria", "logits_processor"}
    with monitor.attach(tiny.model, tokenizer=tiny.tok):
        assert monitor._end_id == tiny.model.generation_config.eos_token_id
    # No EOS: the pad token ends a stopped row; neither: a clear error before anything is generated.
    model, tok = build_tiny_model("llama")
    model.generation_config.eos_token_id = None
    model.config.eos_token_id = None
    with monitor.attach(model, tokenizer=tok):
        assert monitor._end_id == model.generation_config.pad_token_id
        out = model.generate(
            input_ids=torch.tensor([[1, 5, 6]]), max_new_tokens=4, **monitor.generate_kwargs()
        )
    assert out.shape[1] == 5 and int(out[0, 4]) == model.generation_config.pad_token_id
    model.generation_config.pad_token_id = None
    model.config.pad_token_id = None
    tok.pad_token = None
    with (
        pytest.raises(ValueError, match="no end-of-sequence or pad token"),
        monitor.attach(model, tokenizer=None),
    ):
        monitor.logits_processor()
    assert _no_hooks(model)


def test_a_row_that_fires_does_not_change_the_other_rows() -> None:
    tiny = _LLAMA()
    enc = tiny.encode(PROMPTS)
    plain = tiny.generate(enc)
    prompt_len = enc["input_ids"].shape[1]
    ref = tiny.reference(plain, enc["attention_mask"])[:, prompt_len:-1]
    peaks = np.sort([_smooth(r, "ema").max() for r in ref])
    thr = float((peaks[-1] + peaks[-2]) / 2)  # exactly one row (the one with the highest peak) fires
    monitor = Monitor(tiny.bundle, threshold=thr)
    out = tiny.generate(enc, monitor)
    fired = [r for r, f in enumerate(monitor.trace.fired_at) if f is not None]
    assert len(fired) == 1
    stopped = fired[0]
    assert (out[stopped] == tiny.tok.pad_token_id).any(), "the firing row must have been cut short"
    for r in range(len(PROMPTS)):
        if r != stopped:
            assert torch.equal(out[r], plain[r])
    # ... and the same rows generated alone (no batch neighbour at all) agree too.
    for r in range(len(PROMPTS)):
        if r != stopped:
            alone = tiny.generate(tiny.encode([PROMPTS[r]]))
            n = alone.shape[1] - NEW
            assert torch.equal(out[r, -NEW:], alone[0, n:])


def test_hooks_are_removed_after_an_exception_inside_generation() -> None:
    tiny = _LLAMA()
    enc = tiny.encode(PROMPTS)

    def explode(event: FireEvent) -> bool:
        raise RuntimeError("alerting backend down")

    monitor = Monitor(tiny.bundle, threshold=-1e9, action=explode)
    with pytest.raises(RuntimeError, match="alerting backend down"):
        tiny.generate(enc, monitor)
    assert _no_hooks(tiny.model)

    class Boom(Exception):
        pass

    def bad_criterion(input_ids, scores, **kwargs):
        raise Boom

    monitor = Monitor(tiny.bundle, threshold=0.0)
    with pytest.raises(Boom), monitor.attach(tiny.model):
        tiny.model.generate(
            **enc, max_new_tokens=3, stopping_criteria=[*monitor.stopping_criteria(), bad_criterion]
        )
    assert _no_hooks(tiny.model)
    # The monitor is reusable afterwards.
    out = tiny.generate(enc, Monitor(tiny.bundle, action="flag"))
    assert out.shape[1] == enc["input_ids"].shape[1] + NEW


@register_probe
class _FailingProbe(Probe):
    """A nonlinear probe whose scoring backend fails: the error path of a monitor needs an error."""

    kind = "test-failing"

    def fit(self, X, y, groups=None):
        self.n_features_in_ = int(X.shape[1])
        return self

    def score_torch(self, X):
        raise RuntimeError("scoring backend failed")

    def get_params(self):
        return {}

    def state_tensors(self):
        return {"n": torch.tensor([self.n_features_in_])}

    def load_state_tensors(self, tensors):
        self.n_features_in_ = int(tensors["n"][0])
        return self


def test_on_error_continue_fails_open_and_stop_fails_closed() -> None:
    tiny = _LLAMA()
    enc = tiny.encode(PROMPTS[:1])
    plain = tiny.generate(enc)
    bundle = ProbeBundle.from_probe(
        _FailingProbe().fit(torch.zeros(2, 32), [0, 1]), model=tiny.model, layer=2, name="f"
    )
    for on_error in ("stop", "continue"):
        monitor = Monitor(bundle, threshold=0.0, on_error=on_error)
        if on_error == "stop":
            with pytest.raises(RuntimeError):
                tiny.generate(enc, monitor)
        else:
            with pytest.warns(RuntimeWarning, match="on_error='continue'"):
                out = tiny.generate(enc, monitor)
            assert torch.equal(out, plain) and len(monitor.errors) == 1
        assert _no_hooks(tiny.model)


def test_fingerprint_mismatch_raises_and_can_be_opted_out() -> None:
    tiny = _LLAMA()
    other, _ = build_tiny_model("llama", seed=3)
    monitor = Monitor(tiny.bundle, action="flag")
    with (
        pytest.raises(FingerprintMismatchError, match=r"weight_hash.*check_fingerprint=False"),
        monitor.attach(other),
    ):
        pass
    assert _no_hooks(other)
    with Monitor(tiny.bundle, action="flag", check_fingerprint=False).attach(other):
        other(input_ids=torch.tensor([[1, 5, 6]]))
    assert _no_hooks(other)


def test_flag_and_callable_actions() -> None:
    tiny = _LLAMA()
    enc = tiny.encode(PROMPTS)
    plain = tiny.generate(enc)
    flag = Monitor(tiny.bundle, threshold=-1e9, action="flag")
    assert torch.equal(tiny.generate(enc, flag), plain)  # flags everything, stops nothing
    assert all(f is not None for f in flag.trace.fired_at)

    events: list[FireEvent] = []
    stop_row_1 = Monitor(tiny.bundle, threshold=-1e9, action=lambda e: events.append(e) or e.row == 1)
    out = tiny.generate(enc, stop_row_1)
    assert sorted(e.row for e in events) == [0, 1, 2]  # one event per row
    assert all(e.probe == "p" and e.threshold == -1e9 for e in events)
    assert torch.equal(out[0], plain[0]) and torch.equal(out[2], plain[2])
    # The callable stopped row 1 at its first generated token: EOS right after it, then padding.
    prompt_len = enc["input_ids"].shape[1]
    assert int(out[1, prompt_len + 1]) == tiny.model.generation_config.eos_token_id
    assert (out[1, prompt_len + 2 :] == tiny.tok.pad_token_id).all()


def test_sampling_with_a_text_iterator_streamer() -> None:
    from transformers import TextIteratorStreamer

    tiny = _LLAMA()
    enc = tiny.encode(PROMPTS[:1])
    monitor = Monitor(tiny.bundle, action="flag")
    streamer = TextIteratorStreamer(tiny.tok, skip_prompt=True, skip_special_tokens=True)
    result: dict[str, torch.Tensor] = {}

    def run() -> None:
        torch.manual_seed(7)
        result["out"] = tiny.generate(enc, monitor, do_sample=True, streamer=streamer)

    with monitor.attach(tiny.model, tokenizer=tiny.tok):
        pass  # attach/detach cycle before the threaded run must leave nothing behind
    thread = threading.Thread(target=run)
    thread.start()
    text = "".join(streamer)
    thread.join()
    out = result["out"]
    prompt_len = enc["input_ids"].shape[1]
    assert text == tiny.tok.decode(out[0, prompt_len:], skip_special_tokens=True)
    df = monitor.trace.to_dataframe()
    ref = tiny.reference(out, enc["attention_mask"])
    np.testing.assert_allclose(df["score"], ref[0, df["position"].to_numpy()], atol=1e-4)
    assert _no_hooks(tiny.model)


def test_stream_helper_yields_scores_and_ends_at_the_firing_token() -> None:
    tiny = _LLAMA()
    prompt = PROMPTS[0]
    flag = Monitor(tiny.bundle, action="flag")
    events = list(flag.stream(tiny.model, tiny.tok, prompt, max_new_tokens=NEW))
    assert len(events) == NEW and _no_hooks(tiny.model)
    ids = tiny.tok(prompt, return_tensors="pt")["input_ids"]
    full = torch.cat([ids, torch.tensor([[e.token_id for e in events]])], dim=1)
    ref = tiny.reference(full, torch.ones_like(ids))[0, ids.shape[1] :]
    np.testing.assert_allclose([e.score["p"] for e in events], ref, atol=1e-4)
    # The greedy hand-written loop produces what generate produces.
    assert [e.token_id for e in events] == tiny.generate(tiny.encode([prompt]))[0, ids.shape[1] :].tolist()

    smoothed = _smooth(ref, "ema")
    thr = float(np.quantile(smoothed, 0.6))
    expected = _first_fire(smoothed, thr, 1)
    stopper = Monitor(tiny.bundle, threshold=thr)
    got = list(stopper.stream(tiny.model, tiny.tok, prompt, max_new_tokens=NEW))
    assert len(got) == expected + 1  # no lag: the last token yielded is the one that fired
    assert got[-1].fired and not any(e.fired for e in got[:-1])
    assert got[-1].smoothed["p"] > thr
    # Leaving the generator early still removes the hooks.
    gen = flag.stream(tiny.model, tiny.tok, prompt, max_new_tokens=NEW)
    next(gen)
    gen.close()
    assert _no_hooks(tiny.model)


def test_several_probes_and_layers_in_one_bundle() -> None:
    tiny = _LLAMA()
    second = _fit_probe(tiny.model, 3, seed=1)
    X = torch.randn(64, 32)
    third = DiffMeansProbe().fit(X, (X[:, 0] > 0).long().numpy())
    bundle = ProbeBundle.from_probe(tiny.probe, model=tiny.model, layer=2, name="a", threshold=1e9)
    bundle.add(second, layer=3, name="b", threshold=1e9).add(third, layer=2, name="c", threshold=1e9)
    enc = tiny.encode(PROMPTS)
    monitor = Monitor(bundle)
    out = tiny.generate(enc, monitor)
    df = monitor.trace.to_dataframe()
    assert set(df["probe"]) == {"a", "b", "c"}
    for name, probe, layer in (("a", tiny.probe, 2), ("b", second, 3), ("c", third, 2)):
        part = df[df["probe"] == name]
        ref = tiny.reference(out, enc["attention_mask"], probe=probe, layer=layer)
        np.testing.assert_allclose(part["score"], ref[part["row"], part["position"]], atol=1e-4)


def test_generate_without_kv_cache_scores_only_new_tokens() -> None:
    tiny = _LLAMA()
    enc = tiny.encode(PROMPTS)
    monitor = Monitor(tiny.bundle, action="flag")
    out = tiny.generate(enc, monitor, use_cache=False, max_new_tokens=5, min_new_tokens=5)
    df = monitor.trace.to_dataframe()
    ref = tiny.reference(out, enc["attention_mask"])
    assert len(df) == len(PROMPTS) * 4
    np.testing.assert_allclose(df["score"], ref[df["row"], df["position"]], atol=1e-4)


def test_trace_views() -> None:
    tiny = _LLAMA()
    enc = tiny.encode(PROMPTS)
    plain = tiny.generate(enc)
    ref = tiny.reference(plain, enc["attention_mask"])[:, enc["input_ids"].shape[1] : -1]
    thr = float(np.quantile(_smooth(ref[0], "ema"), 0.5))
    monitor = Monitor(tiny.bundle, threshold=thr)
    tiny.generate(enc, monitor)
    trace = monitor.trace
    df = trace.to_dataframe()
    assert {"row", "position", "token", "score", "smoothed", "fired", "probe"} <= set(df.columns)
    assert df["token"].map(type).eq(str).all()
    html = trace.to_html()
    assert html.startswith("<!doctype html>") and "threshold" in html and "&#9940; stopped" in html
    assert "<script" not in html and "http" not in html  # self-contained
    row = trace.rows[1]  # a random model writes invalid UTF-8: compare the prompt part of the text
    n = int(row.prompt.sum())
    pieces = trace._token_strings(row.token_ids, tiny.tok)
    assert "".join(pieces[:n]) == tiny.tok.decode(row.token_ids[:n].tolist())


def test_monitor_argument_validation() -> None:
    tiny = _LLAMA()
    with pytest.raises(ValueError, match="no threshold"):
        Monitor(tiny.bundle)  # action="stop" needs a threshold
    with pytest.raises(ValueError, match="smoothing"):
        Monitor(tiny.bundle, smoothing="median", threshold=0.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="target_fpr"):
        Monitor(tiny.bundle, target_fpr=0.01)
    calibrated = ProbeBundle.from_probe(
        tiny.probe, model=tiny.model, layer=2, name="p", threshold=[{"value": 2.0, "target_fpr": 0.01}, 1.0]
    )
    assert Monitor(calibrated, target_fpr=0.01).thresholds == [2.0]
    assert Monitor(calibrated).thresholds == [2.0]
    assert Monitor(calibrated, threshold={"p": 0.5}).thresholds == [0.5]


def test_score_prompt_screens_the_input() -> None:
    tiny = _LLAMA()
    enc = tiny.encode(PROMPTS)
    monitor = Monitor(tiny.bundle, threshold=-1e9, score_prompt=True)  # everything is above threshold
    out = tiny.generate(enc, monitor)
    prompt_len = enc["input_ids"].shape[1]
    for r, fired_at in enumerate(monitor.trace.fired_at):
        first_real = int((enc["attention_mask"][r] == 0).sum())
        assert fired_at == first_real  # fires on the first real prompt token, never on padding
    # Stopped in the prefill: the one token generated is the forced EOS.
    assert out.shape[1] == prompt_len + 1
    assert (out[:, -1] == tiny.model.generation_config.eos_token_id).all()


def test_hand_written_loop_reads_latest_scores() -> None:
    tiny = _LLAMA()
    ids = tiny.tok(PROMPTS[0], return_tensors="pt")["input_ids"]
    monitor = Monitor(tiny.bundle, action="flag")
    tokens, scores = [], []
    with torch.no_grad(), monitor.attach(tiny.model):
        out = tiny.model(input_ids=ids, use_cache=True)
        assert monitor.latest() is None  # the prompt is not scored by default
        for _ in range(5):
            token = out.logits[:, -1].argmax(-1, keepdim=True)
            out = tiny.model(input_ids=token, past_key_values=out.past_key_values, use_cache=True)
            step = monitor.latest()
            tokens.append(int(token))
            scores.append(float(step.score[0, 0]))
            assert step.position == ids.shape[1] + len(tokens) - 1
    full = torch.cat([ids, torch.tensor([tokens])], dim=1)
    ref = tiny.reference(full, torch.ones_like(ids))[0, ids.shape[1] :]
    np.testing.assert_allclose(scores, ref, atol=1e-4)
    assert _no_hooks(tiny.model)


def test_a_finished_row_never_fires_on_the_padding_generate_feeds_it() -> None:
    """After a row reads its EOS, generate feeds it padding: a probe that fires on the pad token must not
    fire that row (nor call the action) — the trace and ``monitor.fired`` agree."""
    model, tok = build_tiny_model("llama")
    tok.padding_side = "left"
    pad = 5  # a real token (Llama zeroes the embedding of its own pad id), used by generate for finished rows
    model.generation_config.pad_token_id = pad
    emb = model.get_input_embeddings().weight.detach()
    X = torch.cat([emb[pad][None].repeat(20, 1), emb[6:200]])
    y = np.r_[np.ones(20), np.zeros(194)].astype(np.int64)
    probe = LogisticProbe(C=100.0).fit(X, y)  # layers.0 = embeddings: fires on the pad token only
    others = probe.decision_function(torch.cat([emb[1:pad], emb[pad + 1 : 500]]))
    assert probe.decision_function(emb[pad][None])[0] > others.max() + 1.0

    enc = dict(tok(PROMPTS[:2], return_tensors="pt", padding=True))
    with torch.no_grad():
        plain = model.generate(**enc, max_new_tokens=12, do_sample=False)
    start = enc["input_ids"].shape[1]
    eos = int(plain[0, start + 2])  # row 0 ends after its third token
    assert eos not in plain[1, start:].tolist() and eos != pad
    model.generation_config.eos_token_id = eos

    events: list[FireEvent] = []
    bundle = ProbeBundle.from_probe(
        probe, model=model, layer=0, name="pad", threshold=float(others.max()) + 0.5
    )
    monitor = Monitor(bundle, smoothing="none", action=events.append)
    with torch.no_grad(), monitor.attach(model, tokenizer=tok):
        out = model.generate(**enc, max_new_tokens=12, do_sample=False, **monitor.generate_kwargs())
    assert (out[0, start + 3 :] == pad).all() and out.shape[1] == start + 12  # row 0 was padded for 9 steps
    assert events == [] and not monitor.fired.any()
    assert [row.fired_at for row in monitor.trace.rows] == [None, None]
