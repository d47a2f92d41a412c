"""Token-level probes and the aggregation math the streaming monitor must reproduce."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from probes.collection.activations import RaggedTokens
from probes.errors import NotFittedError
from probes.train import AttentionProbe, LogisticProbe, TokenProbe, load_probe, save_probe
from probes.train.aggregate import (
    AGGREGATIONS,
    StreamingAggregator,
    aggregate,
    attention_weights,
    ema,
    ema_step,
    rolling_mean,
    running,
    softmax_pool,
)


def ragged(lengths: list[int], d: int, seed: int) -> RaggedTokens:
    g = torch.Generator().manual_seed(seed)
    offsets = torch.zeros(len(lengths) + 1, dtype=torch.long)
    offsets[1:] = torch.cumsum(torch.tensor(lengths), 0)
    return RaggedTokens(torch.randn(int(offsets[-1]), d, generator=g), offsets)


def planted(
    n: int, seed: int, d: int = 16, strength: float = 3.0
) -> tuple[RaggedTokens, np.ndarray, torch.Tensor]:
    """Sequences of 8-30 noise tokens; in positives a run of ~30% of the tokens, ending at the last token,
    is shifted along one direction. Returns the tokens, labels and the (T,) mask of planted tokens."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(8, 31, size=n).tolist()
    X = ragged(lengths, d, seed)
    y = rng.permutation(np.arange(n) % 2)
    direction = torch.zeros(d)
    direction[0] = 1.0
    is_planted = torch.zeros(len(X.values), dtype=torch.bool)
    for i in np.flatnonzero(y):
        start, end = int(X.offsets[i]), int(X.offsets[i + 1])
        k = max(2, int(0.3 * (end - start)))
        is_planted[end - k : end] = True
    values = X.values + 3.0 + is_planted[:, None].float() * strength * direction  # offset: folding matters
    return RaggedTokens(values, X.offsets), y, is_planted


# --- aggregation math ------------------------------------------------------------------------------


def reference_running(s: list[float], how: str, alpha: float, window: int) -> list[float]:
    """The module docstring's definitions, written as plain Python loops."""
    out, best, e = [], -np.inf, None
    for t, v in enumerate(s):
        if how == "mean":
            r = float(np.mean(s[: t + 1]))
        elif how == "last":
            r = v
        elif how == "max":
            r = max(s[: t + 1])
        elif how == "ema":
            e = v if e is None else alpha * v + (1 - alpha) * e
            best = max(best, e)
            r = best
        else:
            m = float(np.mean(s[max(0, t - window + 1) : t + 1]))
            if t >= window - 1:  # partial windows count only until the first full one
                best = max(best, m)
            r = best if t >= window - 1 else m
        out.append(r)
    return out


@pytest.mark.parametrize("how", AGGREGATIONS)
def test_running_and_aggregate_match_their_definitions(how: str) -> None:
    lengths = [1, 2, 5, 9, 17]
    X = ragged(lengths, 1, seed=0)
    s = X.values[:, 0]
    r = running(s, X.offsets, how, alpha=0.3, window=4)
    agg = aggregate(s, X.offsets, how, alpha=0.3, window=4)
    for i in range(len(lengths)):
        seq = s[int(X.offsets[i]) : int(X.offsets[i + 1])].tolist()
        ref = reference_running(seq, how, 0.3, 4)
        got = r[int(X.offsets[i]) : int(X.offsets[i + 1])]
        assert np.allclose(got.numpy(), ref, atol=1e-6)
        assert abs(float(agg[i]) - ref[-1]) < 1e-6


def test_ema_and_rolling_restart_at_each_sequence() -> None:
    s = torch.tensor([10.0, 10.0, 0.0, 0.0, 0.0])
    offsets = torch.tensor([0, 2, 5])
    assert ema(s, offsets, 0.5).tolist() == [10.0, 10.0, 0.0, 0.0, 0.0]
    assert rolling_mean(s, offsets, 8).tolist() == [10.0, 10.0, 0.0, 0.0, 0.0]
    assert ema_step(torch.tensor(4.0), torch.tensor(2.0), 0.25).item() == 0.25 * 2.0 + 0.75 * 4.0
    assert ema_step(None, torch.tensor(2.0), 0.25).item() == 2.0


@pytest.mark.parametrize("how", AGGREGATIONS)
def test_streaming_aggregator_reproduces_batch_numbers(how: str) -> None:
    lengths = [1, 3, 12, 12, 30]
    X = ragged(lengths, 1, seed=1)
    s = X.values[:, 0]
    batch = running(s, X.offsets, how, alpha=0.4, window=5)
    for i in range(len(lengths)):
        agg = StreamingAggregator(how, alpha=0.4, window=5)
        lo, hi = int(X.offsets[i]), int(X.offsets[i + 1])
        streamed = torch.stack([agg.update(s[t : t + 1]) for t in range(lo, hi)]).flatten()
        if how in ("ema", "max", "last"):
            assert torch.equal(streamed, batch[lo:hi])  # same ops in the same order: bit for bit
        else:
            assert torch.allclose(streamed, batch[lo:hi], atol=1e-6, rtol=1e-5)
    # A batch of equal-length streams updated together gives the same numbers.
    same = ragged([12, 12, 12], 1, seed=2)
    s2 = same.values[:, 0]
    agg = StreamingAggregator(how, alpha=0.4, window=5)
    steps = torch.stack([agg.update(s2.view(3, 12)[:, t]) for t in range(12)], dim=1)
    assert torch.allclose(steps.flatten(), running(s2, same.offsets, how, 0.4, 5), atol=1e-6, rtol=1e-5)


def test_softmax_pool_batch_and_streaming_agree() -> None:
    X = ragged([1, 4, 9], 2, seed=3)
    v, a = X.values[:, 0], 3 * X.values[:, 1]
    w = attention_weights(a, X.offsets)
    pooled = softmax_pool(v, a, X.offsets)
    for i in range(3):
        lo, hi = int(X.offsets[i]), int(X.offsets[i + 1])
        assert abs(float(w[lo:hi].sum()) - 1.0) < 1e-6
        ref = float((torch.softmax(a[lo:hi], 0) * v[lo:hi]).sum())
        assert abs(float(pooled[i]) - ref) < 1e-6
        pool = StreamingAggregator("attention", window=None)
        for t in range(lo, hi):
            out = pool.update(v[t : t + 1], a[t : t + 1])
        assert abs(float(out) - ref) < 1e-5


def test_bad_aggregation_settings_raise() -> None:
    X, y, _ = planted(20, seed=0)
    with pytest.raises(ValueError, match="aggregation must be one of"):
        TokenProbe(aggregation="median").fit(X, y)
    with pytest.raises(ValueError, match="alpha"):
        TokenProbe(aggregation="ema", alpha=0.0).fit(X, y)
    with pytest.raises(ValueError, match="window"):
        TokenProbe(aggregation="rolling", window=0).fit(X, y)


# --- token probes ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def planted_data() -> tuple[RaggedTokens, np.ndarray, RaggedTokens, np.ndarray, torch.Tensor]:
    X, y, _ = planted(300, seed=10)
    Xte, yte, mask = planted(300, seed=11)
    return X, y, Xte, yte, mask


@pytest.mark.parametrize("how", AGGREGATIONS)
def test_token_probe_finds_planted_signal_with_each_aggregation(how: str, planted_data) -> None:
    X, y, Xte, yte, mask = planted_data
    probe = TokenProbe(aggregation=how)
    assert probe.fit(X, y) is probe
    assert roc_auc_score(yte, probe.decision_function(Xte)) > 0.95
    # The token scorer itself separates planted from unplanted tokens.
    assert roc_auc_score(mask.numpy(), probe.score_tokens(Xte).numpy()) > 0.9
    w, b = probe.linear_form()
    assert torch.allclose(Xte.values @ w + b, probe.score_tokens(Xte), atol=1e-5)
    # Calibrated folding: threshold 0 of the aggregated log-odds is a sensible decision rule.
    assert (probe.predict(Xte) == yte).mean() > 0.85


def test_token_probe_torch_backend_matches_sklearn(planted_data) -> None:
    X, y, Xte, yte, _ = planted_data
    a = TokenProbe(aggregation="max").fit(X, y)
    b = TokenProbe(aggregation="max", backend="torch").fit(X, y)
    assert np.corrcoef(a.coef_.numpy(), b.coef_.numpy())[0, 1] > 0.99
    assert (
        abs(roc_auc_score(yte, a.decision_function(Xte)) - roc_auc_score(yte, b.decision_function(Xte)))
        < 0.01
    )


def test_attention_probe_attends_to_planted_tokens(planted_data) -> None:
    X, y, Xte, yte, mask = planted_data
    probe = AttentionProbe(seed=0).fit(X, y)
    assert roc_auc_score(yte, probe.decision_function(Xte)) > 0.95
    weights = probe.attention_weights(Xte)
    seg_mass = torch.zeros(len(Xte)).index_add(
        0, torch.repeat_interleave(torch.arange(len(Xte)), Xte.lengths), weights * mask.float()
    )
    planted_share = (
        torch.zeros(len(Xte)).index_add(
            0, torch.repeat_interleave(torch.arange(len(Xte)), Xte.lengths), mask.float()
        )
        / Xte.lengths.float()
    )
    pos = torch.as_tensor(yte == 1)
    # ~30% of a positive sequence's tokens are planted; the learned query puts most of the weight there.
    assert float(planted_share[pos].mean()) < 0.35
    assert float(seg_mass[pos].mean()) > 0.6
    assert roc_auc_score(mask.numpy(), probe.score_tokens(Xte).numpy()) > 0.9
    again = AttentionProbe(seed=0).fit(X, y)
    assert np.array_equal(probe.decision_function(Xte), again.decision_function(Xte))  # seeded


@pytest.mark.parametrize(
    "make", [lambda: TokenProbe(aggregation="ema"), lambda: AttentionProbe(max_epochs=5)]
)
def test_token_probe_contract_and_round_trip(make, planted_data, tmp_path: Path) -> None:
    X, y, Xte, _, _ = planted_data
    probe = make()
    params, attrs = dict(probe.get_params()), set(vars(probe))
    with pytest.raises(NotFittedError):
        probe.decision_function(Xte)
    with pytest.raises(ValueError, match="RaggedTokens"):
        probe.fit(X.values[:300], y)
    with pytest.raises(ValueError, match="both classes"):
        probe.fit(X, np.zeros_like(y))
    with pytest.raises(ValueError, match="labels"):
        probe.fit(X, y[:-1])
    bad = RaggedTokens(X.values.clone(), X.offsets)
    bad.values[5, 0] = float("inf")
    with pytest.raises(ValueError, match="NaN or infinite"):
        probe.fit(bad, y)
    probe.fit(X, y)
    assert probe.get_params() == params
    learned = set(vars(probe)) - attrs
    assert learned and all(a.endswith("_") or a.startswith("_") for a in learned)
    assert probe.token_level
    with pytest.raises(ValueError, match="RaggedTokens"):
        probe.decision_function(Xte.values[:10])
    with pytest.raises(ValueError, match="features"):
        probe.decision_function(RaggedTokens(Xte.values[:, :4], Xte.offsets))
    loaded = load_probe(save_probe(probe, tmp_path / "t.safetensors"))
    assert np.array_equal(loaded.decision_function(Xte), probe.decision_function(Xte))
    assert torch.equal(loaded.score_tokens(Xte), probe.score_tokens(Xte))
    low = RaggedTokens(Xte.values.to(torch.bfloat16), Xte.offsets)
    assert np.abs(probe.decision_function(low) - probe.decision_function(Xte)).max() < 0.1 * (
        1 + np.abs(probe.decision_function(Xte)).max()
    )


def test_pooled_probe_rejects_token_activations(planted_data) -> None:
    X, y, _, _, _ = planted_data
    with pytest.raises(ValueError, match="TokenProbe"):
        LogisticProbe().fit(X, y)
