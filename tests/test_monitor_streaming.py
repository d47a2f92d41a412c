"""Every token probe streams: the monitor's running score after each generated token equals the probe's
offline score of the same prefix (batch aggregation over one forward of the final text), on a tiny random
model and on the real stories260K, with left-padded batches and rows that the monitor stops early."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import build_tiny_model
from test_monitor import _capture

from probes.collection.activations import RaggedTokens
from probes.monitor import Monitor
from probes.package import ProbeBundle
from probes.train import AttentionProbe, MLPProbe, TokenProbe
from probes.train.aggregate import AGGREGATIONS, StreamingAggregator, attention_running, running

PROMPTS = ["Once upon a time there was a", "Tom saw a dog", "The sun"]
NEW = 12
LAYER = 2

# (name, probe factory) - every aggregation a token-level probe can be trained with.
TOKEN_PROBES = [
    (f"token-{how}", lambda how=how: TokenProbe(aggregation=how, alpha=0.4, window=4)) for how in AGGREGATIONS
]
TOKEN_PROBES += [
    ("attention", lambda: AttentionProbe(max_epochs=3, window=None)),
    ("attention-window", lambda: AttentionProbe(max_epochs=3, window=3)),
]


def _token_data(model, tok, n: int = 24, seed: int = 0) -> tuple[RaggedTokens, np.ndarray]:
    """The model's own token activations at LAYER for random token rows, labelled by a random direction."""
    g = torch.Generator().manual_seed(seed)
    vocab = min(int(model.config.vocab_size), 500)
    lengths = torch.randint(4, 12, (n,), generator=g).tolist()
    values, offsets = [], [0]
    for length in lengths:
        ids = torch.randint(3, vocab, (1, length), generator=g)
        h = _capture(model, LAYER, input_ids=ids)[0]
        values.append(h)
        offsets.append(offsets[-1] + length)
    X = RaggedTokens(torch.cat(values), torch.tensor(offsets))
    direction = torch.randn(X.dim, generator=g)
    score = torch.stack([X[i].mean(0) @ direction for i in range(n)]).numpy()
    return X, (score > np.median(score)).astype(np.int64)


def _fit(factory, X: RaggedTokens, y: np.ndarray, seed: int = 0):
    probe = factory().fit(X, y)
    if isinstance(probe, AttentionProbe):
        # A briefly trained query is near zero (a mean pool); give it real spread so the softmax matters.
        g = torch.Generator().manual_seed(seed + 1)
        probe.query_ = torch.randn(X.dim, generator=g) * (2.0 / X.values.std().item()) / X.dim**0.5
        probe.__dict__.pop("_device_cache", None)
    return probe


def _offline_running(probe, H: torch.Tensor) -> torch.Tensor:
    """The probe's batch running score over the tokens of ``H`` (one sequence)."""
    X = RaggedTokens(H.float(), torch.tensor([0, len(H)]))
    with torch.no_grad():
        if isinstance(probe, AttentionProbe):
            return attention_running(
                probe.score_tokens(X), probe.attention_logits(X), X.offsets, probe.window
            )
        return running(
            probe.score_tokens(X), X.offsets, probe.aggregation, float(probe.alpha), int(probe.window)
        )


def _reference_hidden(model, sequences: torch.Tensor, prompt_mask: torch.Tensor) -> torch.Tensor:
    extra = torch.ones(sequences.shape[0], sequences.shape[1] - prompt_mask.shape[1], dtype=prompt_mask.dtype)
    mask = torch.cat([prompt_mask, extra], dim=1)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    return _capture(model, LAYER, input_ids=sequences, attention_mask=mask, position_ids=pos)


def _check_streamed_equals_offline(model, tok, probe, threshold: float | None) -> int:
    """Generate with the monitor; assert the running score of every scored token equals the offline one.
    Returns how many rows the monitor stopped."""
    tok.padding_side = "left"
    bundle = ProbeBundle.from_probe(probe, model=model, layer=LAYER, name="p")
    monitor = Monitor(bundle, action="flag" if threshold is None else "stop", threshold=threshold)
    enc = dict(tok(PROMPTS, return_tensors="pt", padding=True))
    with torch.no_grad(), monitor.attach(model, tokenizer=tok):
        out = model.generate(
            **enc, max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False, **monitor.generate_kwargs()
        )
    H = _reference_hidden(model, out, enc["attention_mask"])
    prompt_len = enc["input_ids"].shape[1]
    stopped = 0
    for r, row in enumerate(monitor.trace.rows):
        scored = ~np.isnan(row.score[:, 0])
        positions = row.positions[scored]
        assert len(positions) > 0
        assert positions[0] == prompt_len and (np.diff(positions) == 1).all()  # every generated token read
        want = _offline_running(probe, H[r, positions[0] : positions[-1] + 1]).numpy()
        np.testing.assert_allclose(row.running[scored, 0], want, rtol=1e-5, atol=1e-5)
        stopped += int(row.stopped)
        if row.stopped:  # a row stopped early: the monitor's decision is the offline prefix score's
            assert row.fired_at == positions[-1]
            assert want[-1] > threshold and (want[:-1] <= threshold).all()
    return stopped


@pytest.fixture(scope="module")
def tiny():
    model, tok = build_tiny_model("llama")
    X, y = _token_data(model, tok)
    return model, tok, X, y


@pytest.mark.parametrize(("name", "factory"), TOKEN_PROBES, ids=[n for n, _ in TOKEN_PROBES])
def test_token_probe_streams_its_offline_score_on_a_tiny_model(tiny, name: str, factory) -> None:
    model, tok, X, y = tiny
    probe = _fit(factory, X, y)
    _check_streamed_equals_offline(model, tok, probe, threshold=None)
    # Stop some rows early: a threshold inside the range of the final scores.
    monitor = Monitor(ProbeBundle.from_probe(probe, model=model, layer=LAYER, name="p"), action="flag")
    enc = dict(tok(PROMPTS, return_tensors="pt", padding=True))
    with torch.no_grad(), monitor.attach(model, tokenizer=tok):
        model.generate(
            **enc, max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False, **monitor.generate_kwargs()
        )
    finals = [row.running[~np.isnan(row.score[:, 0]), 0] for row in monitor.trace.rows]
    if probe.__class__ is TokenProbe and probe.aggregation in ("max", "ema", "rolling"):
        # Running maxima only rise (rolling: once a full window has arrived).
        start = int(probe.window) - 1 if probe.aggregation == "rolling" else 0
        assert all((np.diff(f[start:]) >= -1e-6).all() for f in finals)
    # A threshold crossed mid-generation by some row (patience 1 fires on the pre-max value, which first
    # crosses exactly when the running score does).
    mids = np.unique([f[len(f) // 2] for f in finals])
    thr = float((mids[0] + mids[1]) / 2) if len(mids) > 1 else float(mids[0]) - 1e-3  # never a tie
    if any((f[1:] > thr).any() and f[0] <= thr for f in finals):
        assert _check_streamed_equals_offline(model, tok, probe, threshold=thr) >= 1


def test_attention_probes_stream_on_real_stories260k(stories_path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(stories_path).eval()
    tok = AutoTokenizer.from_pretrained(stories_path)
    if tok.pad_token is None:
        tok.pad_token = tok.unk_token or tok.eos_token
    X, y = _token_data(model, tok, n=20, seed=3)
    for name, factory in TOKEN_PROBES:
        if name in ("attention", "attention-window", "token-rolling", "token-mean"):
            _check_streamed_equals_offline(model, tok, _fit(factory, X, y, seed=4), threshold=None)


def test_mlp_probe_streams_per_position(tiny) -> None:
    """A probe trained on pooled vectors scores each generated token with its own nonlinear scorer."""
    model, tok, X, y = tiny
    pooled = torch.stack([X[i].mean(0) for i in range(len(X))])
    probe = MLPProbe(hidden=8, max_epochs=5).fit(pooled, y)
    tok.padding_side = "left"
    monitor = Monitor(
        ProbeBundle.from_probe(probe, model=model, layer=LAYER, name="mlp"), action="flag", smoothing="none"
    )
    enc = dict(tok(PROMPTS, return_tensors="pt", padding=True))
    with torch.no_grad(), monitor.attach(model, tokenizer=tok):
        out = model.generate(
            **enc, max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False, **monitor.generate_kwargs()
        )
    H = _reference_hidden(model, out, enc["attention_mask"])
    for r, row in enumerate(monitor.trace.rows):
        scored = ~np.isnan(row.score[:, 0])
        want = probe.score_torch(H[r, row.positions[scored]]).detach().numpy()
        np.testing.assert_allclose(row.score[scored, 0], want, atol=1e-5)
        np.testing.assert_allclose(row.smoothed[scored, 0], want, atol=1e-5)


def test_streaming_aggregator_masks_padding_rows() -> None:
    """Rows whose token is padding keep their state; their later values equal an unpadded stream's."""
    g = torch.Generator().manual_seed(0)
    s, a = torch.randn(2, 9, generator=g), torch.randn(2, 9, generator=g)
    valid = torch.ones(2, 9, dtype=torch.bool)
    valid[1, :3] = False  # row 1 is left-padded by three tokens
    for how, window in [*((h, 4) for h in AGGREGATIONS), ("attention", None), ("attention", 3)]:
        agg = StreamingAggregator(how, alpha=0.4, window=window)
        both = [agg.update(s[:, t], a[:, t], valid[:, t]) for t in range(9)]
        alone = StreamingAggregator(how, alpha=0.4, window=window)
        ref = [alone.update(s[1:, t], a[1:, t]) for t in range(3, 9)]
        got = torch.stack([b[1] for b in both[3:]])
        assert torch.allclose(got, torch.stack(ref)[:, 0], atol=1e-6), how


def test_one_monitor_streams_multi_layer_attention_linear_and_detector_probes_together(tiny) -> None:
    """A bundle mixing a multi-layer probe (sites 1-3), an attention probe, a linear probe and an anomaly
    detector runs in one pass; each probe's per-token score equals its offline score of that token."""
    from probes.train import LogisticProbe, MahalanobisDetector, StackedProbe

    model, tok, X, y = tiny
    sites = ["layers.1", "layers.2", "layers.3"]
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(3, 500, (40, 6), generator=g)
    per_site = {s: _capture(model, int(s.split(".")[1]), input_ids=ids).reshape(-1, X.dim) for s in sites}
    labels = (per_site["layers.2"] @ torch.randn(X.dim, generator=g) > 0).long().numpy()
    stacked = StackedProbe().fit(per_site, labels, groups=np.arange(len(labels)) // 6)
    linear = LogisticProbe().fit(per_site["layers.3"], labels)
    detector = MahalanobisDetector().fit(per_site["layers.1"])
    attention = _fit(TOKEN_PROBES[-2][1], X, y)

    bundle = ProbeBundle.from_probe(stacked, model=model, name="multi", threshold=1e9)
    bundle.add(attention, layer=LAYER, name="attn", threshold=1e9)
    bundle.add(linear, layer=3, name="lin", threshold=1e9)
    bundle.add(detector, layer=1, name="novel", threshold=1e9)
    tok.padding_side = "left"
    monitor = Monitor(bundle, smoothing="none")
    enc = dict(tok(PROMPTS, return_tensors="pt", padding=True))
    with torch.no_grad(), monitor.attach(model, tokenizer=tok):
        out = model.generate(
            **enc, max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False, **monitor.generate_kwargs()
        )
    extra = torch.ones(out.shape[0], out.shape[1] - enc["attention_mask"].shape[1], dtype=torch.long)
    mask = torch.cat([enc["attention_mask"], extra], dim=1)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    H = {
        s: _capture(model, int(s.split(".")[1]), input_ids=out, attention_mask=mask, position_ids=pos)
        for s in sites
    }
    names = monitor.probe_names
    for r, row in enumerate(monitor.trace.rows):
        scored = ~np.isnan(row.score).all(axis=1)
        at = row.positions[scored]
        hs = {s: H[s][r, at] for s in sites}
        want = {
            "multi": stacked.score_torch(hs).numpy(),
            "lin": linear.score_torch(hs["layers.3"]).numpy(),
            "novel": detector.score_torch(hs["layers.1"]).numpy(),
            "attn": _offline_running(attention, hs["layers.2"]).numpy(),
        }
        for name, ref in want.items():
            got = row.running[scored, names.index(name)]
            np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4, err_msg=name)
