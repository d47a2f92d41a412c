"""A monitor that cannot score says so and stops: unknown calling conventions, positions that do not add
up, missing sites, non-finite scores and decoding methods that reorder rows each end in a named failure."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from test_monitor import PROMPTS, Tiny

from probes.errors import MonitorError
from probes.monitor import Monitor
from probes.monitor.positions import CACHE_KEYWORDS, cache_keyword, output_cache


@pytest.fixture(scope="module")
def tiny() -> Tiny:
    return Tiny("llama")


class RenamedCache(torch.nn.Module):
    """A model whose forward takes its KV cache under a keyword no transformers release has used, the way
    a future release might rename it again (``past_key_values=`` became ``cache=`` in 5.24)."""

    def __init__(self, inner: torch.nn.Module, box: bool = False) -> None:
        super().__init__()
        self.inner = inner
        self.config = inner.config
        self.box = box

    def forward(self, input_ids, attention_mask=None, kv_state=None, use_cache=True):
        cache = kv_state.value if self.box and kv_state is not None else kv_state
        return self.inner(
            input_ids=input_ids,
            attention_mask=attention_mask,
            use_cache=use_cache,
            **{cache_keyword(self.inner): cache},
        )


class Box:
    """An opaque holder: nothing on it says it is a cache or how long it is."""

    def __init__(self, value) -> None:
        self.value = value


def _loop(model, monitor, ids, n: int, wrap=lambda cache: cache, mask: bool = True) -> list[float]:
    """Greedy hand-written decoding through ``model`` with the cache passed as ``kv_state=``."""
    scores = []
    with torch.no_grad(), monitor.attach(model, layers_attr="inner.model.layers"):
        attn = torch.ones_like(ids)
        out = model(input_ids=ids, attention_mask=attn if mask else None)
        for _ in range(n):
            token = out.logits[:, -1].argmax(-1, keepdim=True)
            attn = torch.cat([attn, torch.ones_like(token)], dim=1)
            out = model(
                input_ids=token, attention_mask=attn if mask else None, kv_state=wrap(output_cache(out))
            )
            scores.append(float(monitor.latest().score[0, 0]))
    return scores


def test_a_cache_under_an_unknown_keyword_is_still_followed(tiny) -> None:
    """A real Cache object under a new name is found (it says how long it is) and checked against the mask."""
    ids = tiny.tok(PROMPTS[:1], return_tensors="pt")["input_ids"]
    monitor = Monitor(tiny.bundle, action="flag", check_fingerprint=False)
    got = _loop(RenamedCache(tiny.model), monitor, ids, 6)
    fed = torch.as_tensor(np.asarray(monitor.trace.rows[0].token_ids[-6:]))[None]
    out = torch.cat([ids, fed], dim=1)
    ref = tiny.reference(out, torch.ones_like(ids))[0, ids.shape[1] :]
    np.testing.assert_allclose(got, ref, atol=1e-4)


def test_an_unreadable_cache_under_an_unknown_keyword_is_refused(tiny) -> None:
    ids = tiny.tok(PROMPTS[:1], return_tensors="pt")["input_ids"]
    model = RenamedCache(tiny.model, box=True)
    # generate-style: the attention mask covers the earlier positions, no cache the monitor can read.
    with pytest.raises(MonitorError, match="no KV cache arrived"):
        _loop(model, Monitor(tiny.bundle, threshold=0.0, check_fingerprint=False), ids, 3, wrap=Box)
    # No mask either: a one-token forward right after a sequence, with nothing saying where it belongs.
    with pytest.raises(MonitorError, match="cannot tell a decoding step"):
        _loop(
            model, Monitor(tiny.bundle, threshold=0.0, check_fingerprint=False), ids, 3, wrap=Box, mask=False
        )
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_a_known_keyword_holding_something_unreadable_is_refused(tiny) -> None:
    ids = tiny.tok(PROMPTS[:1], return_tensors="pt")["input_ids"]
    monitor = Monitor(tiny.bundle, threshold=1e9)
    with torch.no_grad(), monitor.attach(tiny.model), pytest.raises(MonitorError, match="not a KV cache"):
        tiny.model(input_ids=ids, **{CACHE_KEYWORDS[0]: Box(None)})


def test_a_cache_filled_without_the_monitor_is_refused(tiny) -> None:
    ids = tiny.tok(PROMPTS[:1], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = tiny.model(input_ids=ids, use_cache=True)  # prefill without the monitor
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        monitor = Monitor(tiny.bundle, threshold=1e9)
        with monitor.attach(tiny.model), pytest.raises(MonitorError, match="Positions do not add up"):
            tiny.model(input_ids=token, use_cache=True, **{cache_keyword(tiny.model): output_cache(out)})
        assert monitor.errors and isinstance(monitor.errors[0], MonitorError)


@pytest.mark.parametrize(
    "kwargs",
    [{"num_beams": 2}, {"num_beams": 2, "do_sample": True}, {"prompt_lookup_num_tokens": 2}],
    ids=["beam-search", "beam-sample", "assisted"],
)
def test_decoding_methods_that_reorder_rows_are_refused(tiny, kwargs) -> None:
    enc = tiny.encode(PROMPTS)
    monitor = Monitor(tiny.bundle, threshold=1e9)
    with (
        torch.no_grad(),
        monitor.attach(tiny.model),
        pytest.raises(MonitorError, match="reorders or rewinds"),
    ):
        tiny.model.generate(**enc, max_new_tokens=4, **monitor.generate_kwargs(), **kwargs)
    assert "generate" not in tiny.model.__dict__  # the guard is gone after the block


def test_beam_search_set_on_the_generation_config_is_refused(tiny) -> None:
    enc = tiny.encode(PROMPTS[:1])
    config = tiny.model.generation_config
    config.num_beams = 2
    try:
        monitor = Monitor(tiny.bundle, threshold=1e9)
        with torch.no_grad(), monitor.attach(tiny.model), pytest.raises(MonitorError, match="beam search"):
            tiny.model.generate(**enc, max_new_tokens=4, **monitor.generate_kwargs())
    finally:
        config.num_beams = 1


def test_a_site_that_produced_nothing_stops_the_generation(tiny) -> None:
    enc = tiny.encode(PROMPTS)
    monitor = Monitor(tiny.bundle, threshold=1e9)
    layers = tiny.model.model.layers
    with torch.no_grad(), monitor.attach(tiny.model):
        tiny.model.model.layers = layers[:1]  # the probed block no longer runs
        try:
            with pytest.raises(MonitorError, match="produced no activations"):
                tiny.model.generate(**enc, max_new_tokens=4, **monitor.generate_kwargs())
        finally:
            tiny.model.model.layers = layers


@pytest.fixture()
def nan_after_block_one():
    tiny = Tiny("llama")  # its own copy: the weights are poisoned
    with torch.no_grad():
        tiny.model.model.layers[1].mlp.down_proj.weight[0, 0] = float("nan")
    return tiny


def test_nan_scores_fire_stop_the_rows_and_raise(nan_after_block_one) -> None:
    tiny = nan_after_block_one
    enc = tiny.encode(PROMPTS)
    monitor = Monitor(tiny.bundle, threshold=1e9, check_fingerprint=False)  # no finite score could fire
    eos = tiny.model.generation_config.eos_token_id
    # The error is raised when the with block ends, after generate returned with every row stopped.
    with (
        pytest.raises(MonitorError, match="Non-finite probe scores"),
        torch.no_grad(),
        monitor.attach(tiny.model, tokenizer=tiny.tok),
    ):
        out = tiny.model.generate(**enc, max_new_tokens=8, min_new_tokens=8, **monitor.generate_kwargs())
    prompt_len = enc["input_ids"].shape[1]
    assert (out[:, prompt_len + 1] == eos).all()  # every row stopped right after its first (NaN) token
    assert all(row.stopped for row in monitor.trace.rows)
    assert isinstance(monitor.errors[-1], MonitorError)


def test_nan_scores_with_on_error_continue_are_recorded_and_warned_once(nan_after_block_one) -> None:
    tiny = nan_after_block_one
    enc = tiny.encode(PROMPTS)
    monitor = Monitor(tiny.bundle, threshold=1e9, check_fingerprint=False, on_error="continue", action="flag")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with torch.no_grad(), monitor.attach(tiny.model, tokenizer=tiny.tok):
            for _ in range(2):
                tiny.model.generate(**enc, max_new_tokens=4, **monitor.generate_kwargs())
    nonfinite = [w for w in caught if "Non-finite" in str(w.message)]
    assert len(nonfinite) == 1  # warned once, recorded per generation
    assert sum("Non-finite" in str(e) for e in monitor.errors) == 2
    assert all(row.fired_at is not None for row in monitor.trace.rows)  # flagged, never passed as benign


def test_an_error_with_on_error_continue_is_warned_once_and_generation_goes_on(tiny) -> None:
    enc = tiny.encode(PROMPTS)
    monitor = Monitor(tiny.bundle, threshold=1e9, on_error="continue")
    layers = tiny.model.model.layers
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with torch.no_grad(), monitor.attach(tiny.model):
            tiny.model.model.layers = layers[:1]
            try:
                out = tiny.model.generate(
                    **enc, max_new_tokens=4, min_new_tokens=4, **monitor.generate_kwargs()
                )
            finally:
                tiny.model.model.layers = layers
    assert out.shape[1] == enc["input_ids"].shape[1] + 4
    assert len([w for w in caught if "on_error='continue'" in str(w.message)]) == 1
    assert len(monitor.errors) >= 1 and all(isinstance(e, MonitorError) for e in monitor.errors)
