"""Packing, token budgets, several poolings from one pass, memory-mapped results, NaN rows, time-based flush."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, build_tiny_model
from test_collect_exact import TEXTS, make_dataset, reference_hidden_states
from torch import nn

from probes.collection import collect
from probes.collection.engine import choose_plan, plan_batches, plan_cost
from probes.data.render import encode_dataset
from probes.data.types import Encoded, EncodedRows
from probes.errors import CollectionError
from probes.train import DiffMeansProbe, LogisticProbe, fit_logistic_many

TOL = 1e-5


def _equal(a, b) -> bool:
    if hasattr(a, "offsets"):
        return torch.equal(a.offsets, b.offsets) and (a.values - b.values).abs().max().item() <= TOL
    return (a - b).abs().max().item() <= TOL


def test_token_budget_batches_vary_with_length_and_stay_exact() -> None:
    model, tokenizer = build_tiny_model("llama")
    dataset = make_dataset(TEXTS * 3)
    encoded = encode_dataset(dataset, tokenizer, max_length=512)
    lengths = np.array([len(e) for e in encoded])
    order = np.argsort(-lengths, kind="stable")
    for packed in (False, True):
        batches = plan_batches(order, lengths, 16, 48, packed)
        assert sorted(r for b in batches for s in b for r in s) == list(range(len(encoded)))
        for b in batches:
            width = max(sum(lengths[r] for r in s) for s in b)
            assert len(b) * width <= max(48, width)  # within budget (a longer row goes alone)
        if not packed:
            assert len({len(b) for b in batches}) > 1  # rows per batch vary with length
    for packing in (False, True):
        stats: dict[str, int] = {}
        acts = collect(
            model,
            tokenizer,
            dataset,
            [2],
            "tokens",
            max_tokens=48,
            packing=packing,
            stats=stats,
            progress=False,
        )
        for i, row in enumerate(encoded):
            expected = reference_hidden_states(model, row.input_ids)[2][torch.tensor(row.target_mask)]
            assert (acts["layers.2"][i] - expected).abs().max().item() <= TOL
        assert stats["packed"] == int(packing)
        if packing:  # packed: computed tokens within 5% of the real ones
            assert stats["computed_tokens"] <= 1.05 * stats["real_tokens"]


def test_auto_packing_takes_the_cheaper_plan() -> None:
    # Equal lengths: padded batches compute no padding, while packing makes each row attend over a whole
    # 256-token sequence, so "auto" pads; mixed lengths with cheap attention: packing saves padding.
    equal = np.full(64, 20)
    order = np.argsort(-equal, kind="stable")
    per_key = 1 / (6 * 768)
    batches, packed = choose_plan(order, equal, 8, 2048, "causal", "auto", per_key)
    assert not packed and all(len(s) == 1 for b in batches for s in b)
    assert plan_cost(batches, equal, None, per_key) == pytest.approx(64 * 20 * (1 + 20 * per_key))
    _, forced = choose_plan(order, equal, 8, 2048, "causal", True, per_key)
    assert forced
    # One long row and many short ones in batches of 8 rows: padding triples the work, packing does not.
    mixed = np.array([200] + [10] * 40)
    order = np.argsort(-mixed, kind="stable")
    batches, packed = choose_plan(order, mixed, 8, None, "causal", "auto", 0.0)
    assert packed and any(len(s) > 1 for b in batches for s in b)
    padded = plan_batches(order, mixed, 8, None, False)
    assert plan_cost(batches, mixed, "causal", 0.0) < plan_cost(padded, mixed, None, 0.0) / 2
    # With a token budget, padded batches end before a row 5% shorter than their longest: little padding.
    budget = plan_batches(order, mixed, 8, 2048, False)
    assert [len(b) for b in budget] == [1, 40]
    assert plan_cost(budget, mixed, None, 0.0) == mixed.sum()
    # varlen attends within rows only: cheaper than padding these rows.
    _, packed = choose_plan(order, mixed, 8, None, "varlen", "auto", per_key)
    assert packed
    for mode in (None, "causal"):
        _, packed = choose_plan(order, mixed, 8, 2048, mode, False, 0.0)
        assert not packed


def test_encoded_rows_hold_rows_flat_and_equal_tuples() -> None:
    _, tokenizer = build_tiny_model("llama")
    dataset = make_dataset()
    rows = encode_dataset(dataset, tokenizer, max_length=512)
    flat = encode_dataset(dataset, tokenizer, max_length=512, compact=True)
    assert isinstance(flat, EncodedRows) and len(flat) == len(rows)
    assert list(flat) == rows and flat[-1] == rows[-1]
    assert flat.lengths.tolist() == [len(r) for r in rows]
    pick = [2, 0, 2]
    assert list(flat.take(pick)) == [rows[i] for i in pick]
    assert list(flat[1:3]) == rows[1:3]
    assert list(EncodedRows.from_rows(rows)) == rows
    assert flat.ids.dtype == np.int64 and flat.ids.nbytes == 8 * sum(len(r) for r in rows)
    with pytest.raises(IndexError):
        flat[len(rows)]
    with pytest.raises(ValueError, match="disagree"):
        EncodedRows(flat.ids, flat.mask[:-1], flat.offsets)
    assert isinstance(flat[0], Encoded)


def test_several_poolings_from_one_pass_equal_separate_calls(tmp_path: Path) -> None:
    model, tokenizer = build_tiny_model("gpt2")
    dataset = make_dataset()
    collect(model, tokenizer, dataset, [1], progress=False)  # the one-off packing self-check, not counted
    calls = []
    handle = model.transformer.h[0].register_forward_hook(lambda *_: calls.append(1))
    try:
        both = collect(
            model, tokenizer, dataset, [1, 3], ["mean", "last", "tokens"], batch_size=3, progress=False
        )
        passes = len(calls)
    finally:
        handle.remove()
    assert both.poolings == ["mean", "last", "tokens"] and both.pooling == "mean"
    for pooling in ("mean", "last", "tokens"):
        alone = collect(model, tokenizer, dataset, [1, 3], pooling, batch_size=3, progress=False)
        for site in ("layers.1", "layers.3"):
            assert _equal(both[site, pooling], alone[site])
            assert _equal(both.pooled(pooling)[site], alone[site])
    assert passes == 3  # 7 rows in batches of 3: one pass per batch for all three poolings
    # Cached: one entry, whichever pooling comes first.
    a = collect(model, tokenizer, dataset, [1], ["last", "mean"], cache_dir=tmp_path, progress=False)
    b = collect(model, tokenizer, dataset, [1], ["mean", "last"], cache_dir=tmp_path, progress=False)
    assert len(list(tmp_path.iterdir())) == 1 and a.spec["cache_key"] == b.spec["cache_key"]
    assert _equal(a["layers.1"], both["layers.1", "last"]) and _equal(b["layers.1"], both["layers.1", "mean"])
    sub = b.subset([4, 0])
    assert _equal(sub["layers.1", "last"], both["layers.1", "last"][[4, 0]])


@pytest.mark.parametrize("pooling", ["mean", "tokens"])
def test_cached_result_is_memory_mapped_and_equals_in_ram(tmp_path: Path, pooling: str) -> None:
    model, tokenizer = build_tiny_model("llama")
    dataset = make_dataset()
    in_ram = collect(model, tokenizer, dataset, [2], pooling, batch_size=2, progress=False)
    mapped = collect(
        model, tokenizer, dataset, [2], pooling, batch_size=2, cache_dir=tmp_path, progress=False
    )
    again = collect(model, tokenizer, dataset, [2], pooling, batch_size=2, cache_dir=tmp_path, progress=False)
    for got in (mapped, again):
        assert _equal(got["layers.2"], in_ram["layers.2"])
    data_file = str(tmp_path / mapped.spec["cache_key"] / "data.safetensors")
    maps = Path("/proc/self/maps").read_text()
    assert data_file in maps  # the features are pages of the cache file, not a copy in RAM
    values = again["layers.2"].values if pooling == "tokens" else again["layers.2"]
    values[0, 0] = 123.0  # copy-on-write: the user's tensor changes, the cache does not
    fresh = collect(model, tokenizer, dataset, [2], pooling, batch_size=2, cache_dir=tmp_path, progress=False)
    assert _equal(fresh["layers.2"], in_ram["layers.2"])
    if pooling == "mean":  # probes fit from the mapped tensors directly
        probe = DiffMeansProbe().fit(fresh["layers.2"], fresh.labels)
        ref = DiffMeansProbe().fit(in_ram["layers.2"].clone(), in_ram.labels)
        assert torch.allclose(probe.coef_, ref.coef_, atol=1e-5)


def test_chunked_fits_equal_full_fits() -> None:
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(300, 12, generator=gen) * torch.linspace(0.5, 3.0, 12) + 2.0
    y = (X[:, 0] + 0.5 * torch.randn(300, generator=gen) > 2.0).long().numpy()
    full = fit_logistic_many(X[None], y, C=0.5, chunk_rows=10**6)[0]
    chunked = fit_logistic_many(X[None], y, C=0.5, chunk_rows=7)[0]
    assert torch.allclose(full.coef_, chunked.coef_, atol=1e-4)
    assert abs(float(full.intercept_) - float(chunked.intercept_)) <= 1e-4
    sk = LogisticProbe(C=0.5, backend="sklearn").fit(X, y)
    assert torch.allclose(sk.coef_, chunked.coef_, atol=2e-3)
    # DiffMeans streams in row chunks; compare with the direct formula.
    dm = DiffMeansProbe().fit(X, y)
    X64 = X.double()
    mu1, mu0 = X64[y == 1].mean(0), X64[y == 0].mean(0)
    resid = torch.cat([X64[y == 1] - mu1, X64[y == 0] - mu0])
    w = (mu1 - mu0) / (resid**2).mean()
    assert torch.allclose(dm.coef_.double(), w, atol=1e-5)


def test_logistic_default_backend_is_auto() -> None:
    small = torch.randn(40, 8)
    y = (small[:, 0] > 0).long().numpy()
    assert LogisticProbe().backend == "auto"
    assert LogisticProbe().fit(small, y).backend_ == "sklearn"
    big = torch.randn(3000, 768)
    yb = (big[:, 0] > 0).long().numpy()
    assert LogisticProbe(max_iter=50).fit(big, yb).backend_ == "torch"
    assert LogisticProbe(backend="sklearn", max_iter=50).fit(big, yb).backend_ == "sklearn"


def test_nan_row_is_refused_by_id(tmp_path: Path) -> None:
    model, tokenizer = build_tiny_model("llama")
    dataset = make_dataset()
    encoded = encode_dataset(dataset, tokenizer, max_length=512)
    # A token only row 2 has: its embedding is NaN, so exactly that row's activations are NaN.
    others = {t for i, e in enumerate(encoded) if i != 2 for t in e.input_ids}
    token = next(t for t in encoded[2].input_ids if t not in others)
    with torch.no_grad():
        model.get_input_embeddings().weight[token] = float("nan")
    for packing in (True, False):
        with pytest.raises(CollectionError, match=r"row\(s\) 'row2'\. Nothing was stored"):
            collect(
                model, tokenizer, dataset, [1], "mean", packing=packing, cache_dir=tmp_path, progress=False
            )
    (entry,) = tmp_path.iterdir()
    manifest = json.loads((entry / "manifest.json").read_text())
    assert not manifest["complete"]


class _MaskIgnoringLlama(nn.Module):
    """A base model that takes but ignores the attention mask and position ids (as some custom models do).

    (Dropping only the mask is not enough to break packing on transformers 5: from position ids that restart
    it builds the block-diagonal mask itself, and the self-check rightly accepts that.)"""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.layers = inner.layers

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, use_cache=None):  # type: ignore[no-untyped-def]
        return self.inner(input_ids=input_ids, use_cache=use_cache)


def test_models_where_packing_is_not_exact_fall_back_to_padding(caplog) -> None:
    from transformers import AutoModelForCausalLM, BloomConfig

    torch.manual_seed(0)
    bloom = AutoModelForCausalLM.from_config(
        BloomConfig(vocab_size=512, hidden_size=32, n_layer=2, n_head=4, pad_token_id=0)
    ).eval()
    _, tokenizer = build_tiny_model("llama")
    ignoring = _MaskIgnoringLlama(build_tiny_model("llama")[0].model).eval()
    dataset = make_dataset()
    encoded = encode_dataset(dataset, tokenizer, max_length=512)
    padded_dataset = make_dataset(TEXTS[:1])  # one row per batch: the ignoring model is exact only unpadded
    for model, why in ((bloom, "ALiBi"), (ignoring, "self-check disagreed")):
        dataset = dataset if model is bloom else padded_dataset
        stats: dict[str, int] = {}
        with caplog.at_level("WARNING", logger="probes.collection"):
            acts = collect(
                model,
                tokenizer,
                dataset,
                [1],
                "tokens",
                batch_size=3,
                stats=stats,
                progress=False,
                layers_attr="layers" if model is ignoring else None,
            )
        assert stats["packed"] == 0 and why in caplog.text
        for i, row in enumerate(encoded):
            with torch.inference_mode():
                hs = (
                    model(input_ids=torch.tensor([row.input_ids]), output_hidden_states=True).hidden_states
                    if model is bloom
                    else None
                )
            if hs is not None:
                expected = hs[1][0][torch.tensor(row.target_mask)]
                assert (acts["layers.1"][i] - expected).abs().max().item() <= TOL
        with pytest.raises(ValueError, match="packing=True"):
            collect(
                model,
                tokenizer,
                dataset,
                [1],
                packing=True,
                progress=False,
                layers_attr="layers" if model is ignoring else None,
            )


_CHILD = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {tests!r})
    import torch
    from conftest import build_tiny_model
    from test_collect_exact import make_dataset, TEXTS
    from probes.collection import collect
    from probes.models import block_list
    model, tokenizer = build_tiny_model("llama")
    done = {{"rows": 0}}
    def slow(_m, args, kwargs):
        time.sleep(0.05)  # a slow model: each batch takes a while
    def count(_m, args, kwargs, out):
        print("batch", flush=True)
    block_list(model)[0].register_forward_pre_hook(slow, with_kwargs=True)
    block_list(model)[0].register_forward_hook(count, with_kwargs=True)
    collect(model, tokenizer, make_dataset(TEXTS * 40), [1], "mean", batch_size=1, packing=False,
            cache_dir={cache!r}, flush_seconds=0.5, progress=False)
    """
)


def test_kill_9_loses_at_most_the_flush_interval(tmp_path: Path) -> None:
    """Time-based flush: a collection killed with SIGKILL keeps all but the last ~flush_seconds of work."""
    cache = tmp_path / "cache"
    script = tmp_path / "child.py"
    script.write_text(_CHILD.format(tests=str(ROOT / "tests"), cache=str(cache)))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, env=env, text=True)
    batches = 0
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            batches += line.startswith("batch")
            if batches == 60:  # ~3 s of work at >= 50 ms per row
                break
        killed_at = time.monotonic()
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert batches == 60
    (entry,) = cache.iterdir()
    manifest = json.loads((entry / "manifest.json").read_text())
    assert not manifest["complete"] and len(manifest["shards"]) >= 2  # flushed by time, several times
    lost = batches - manifest["rows_done"]
    assert 0 <= lost <= 20, lost  # 0.5 s of flush interval is ~10 rows at 50 ms each; allow for slow CI
    assert time.monotonic() - killed_at < 30
    model, tokenizer = build_tiny_model("llama")
    dataset = make_dataset(TEXTS * 40)
    resumed = collect(
        model, tokenizer, dataset, [1], "mean", batch_size=1, packing=False, cache_dir=cache, progress=False
    )
    reference = collect(model, tokenizer, dataset, [1], "mean", batch_size=1, progress=False)
    assert _equal(resumed["layers.1"], reference["layers.1"])
