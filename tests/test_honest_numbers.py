"""Honest numbers: [UNK] is content, ECE ignores row order, few groups warn, thresholds are checked across
several benign control sets (the transfer matrix in the report, its table and its plot)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from probes.data import Example, Target, encode
from probes.evaluation import (
    EvalReport,
    ThresholdTransfer,
    evaluate,
    expected_calibration_error,
    reliability_curve,
    threshold_transfer,
)
from probes.train import LogisticProbe


# --- [UNK] tokens are content ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def minilm_tokenizer(minilm_path: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_path)


def test_unknown_tokens_inside_the_content_are_read(minilm_tokenizer) -> None:
    tok = minilm_tokenizer
    row = Example(id="tweet", label=1, text="I just love Mondays 🙄 so much 😂")
    enc = encode(row, tok)
    unk = [i for i, t in enumerate(enc.input_ids) if t == tok.unk_token_id]
    assert len(unk) == 2  # each emoji is one [UNK] under MiniLM's WordPiece vocabulary
    assert all(enc.target_mask[i] for i in unk)  # ... and it is content, read by the probe
    assert not enc.target_mask[0] and not enc.target_mask[-1]  # [CLS] and [SEP] never are
    assert sum(enc.target_mask) == len(enc) - 2
    # A span that covers only the emoji reads exactly its [UNK] token.
    text = row.text
    at = text.index("🙄")
    only = encode(Example(id="e", label=1, text=text, target=Target(span=(at, at + 1))), tok)
    assert [t for t, m in zip(only.input_ids, only.target_mask, strict=True) if m] == [tok.unk_token_id]


def test_control_tokens_stay_out_even_when_unk_is_one_of_them() -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from probes.data.render import excluded_token_ids

    eot = "<|endoftext|>"  # GPT-2's unk, BOS and EOS are one token: it is control, not content
    core = Tokenizer(models.WordLevel({eot: 0, "hello": 1, "world": 2}, unk_token=eot))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    gpt2_like = PreTrainedTokenizerFast(tokenizer_object=core, unk_token=eot, bos_token=eot, eos_token=eot)
    assert excluded_token_ids(gpt2_like) == {0}
    enc = encode(Example(id="a", label=0, text=f"hello {eot} world"), gpt2_like)
    assert enc.input_ids == (1, 0, 2) and enc.target_mask == (True, False, True)


def test_pooling_reads_the_unk_tokens(minilm_path: Path) -> None:
    from probes.collection import collect
    from probes.data.card import DatasetCard
    from probes.data.dataset import ContrastDataset
    from probes.models import load_model

    model, tok = load_model(minilm_path, device="cpu")
    rows = [
        Example(id="a", label=1, text="great, another meeting 😂 🙄"),
        Example(id="b", label=0, text="great, another meeting"),
    ]
    ds = ContrastDataset(rows, DatasetCard(name="emoji", label_names=("sincere", "sarcastic")), "mem")
    acts = collect(model, tok, ds, layers=["layers.6"], pooling="tokens", progress=False)
    lengths = acts["layers.6"].lengths.tolist()
    assert lengths[0] == lengths[1] + 2  # the two emoji ([UNK]) are pooled with the words


# --- ECE: ties in one bin --------------------------------------------------------------------------------
def test_ece_does_not_depend_on_row_order_when_probabilities_tie() -> None:
    rng = np.random.default_rng(0)
    # Isotonic-like output: seven distinct probabilities held by 500 rows.
    levels = np.array([0.02, 0.1, 0.25, 0.4, 0.6, 0.8, 0.97])
    p = levels[rng.integers(0, levels.size, 500)]
    y = (rng.random(500) < p).astype(int)
    values = set()
    curves = set()
    for _ in range(200):
        order = rng.permutation(500)
        values.add(expected_calibration_error(y[order], p[order], n_bins=10))
        curves.add(tuple(reliability_curve(y[order], p[order], n_bins=10)["counts"]))
    assert len(values) == 1 and len(curves) == 1
    (counts,) = curves
    assert sum(counts) == 500 and len(counts) <= levels.size  # no tie was split across bins
    # Without ties, bins are the usual equal-mass ones.
    q = rng.random(500)
    assert reliability_curve(y, q, n_bins=10)["counts"] == [50] * 10


# --- few groups ------------------------------------------------------------------------------------------
def _data(n: int, d: int = 8, seed: int = 0, shift: float = 0.0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g)
    y = (X[:, 0] + 0.5 * torch.randn(n, generator=g) > 0).long().numpy()
    X[:, 1] += shift
    return X, y


def test_a_test_split_with_few_groups_warns_that_its_ci_is_meaningless() -> None:
    X, y = _data(400)
    probe = LogisticProbe().fit(X, y)
    hotels = [f"hotel{i % 4}" for i in range(200)]
    report = evaluate(probe, (X[:200], y[:200], hotels), control=X[200:])
    assert any("only 4 groups" in w and "not meaningful" in w for w in report.warnings)
    many = [f"g{i % 40}" for i in range(200)]
    report = evaluate(probe, (X[:200], y[:200], many), control=X[200:])
    assert not any("groups" in w for w in report.warnings)


# --- several control sets --------------------------------------------------------------------------------
@pytest.mark.slow  # measured among the slowest on 2 cores; CI runs it with -m slow
def test_threshold_transfer_matrix_shows_a_shifted_control_set(tmp_path: Path) -> None:
    X, y = _data(600)
    probe = LogisticProbe().fit(X[:300], y[:300])
    w = torch.as_tensor(probe.linear_form()[0]).float().reshape(-1)
    chat, _ = _data(2000, seed=1)
    code, _ = _data(2000, seed=2)
    code += 0.8 * w / w.norm()  # benign, but it scores higher: another traffic source
    report = evaluate(
        probe, (X[300:], y[300:]), control={"chat": chat, "code": code}, target_fpr=[0.05, 0.01], seed=3
    )
    assert report.control_sets == ["chat", "code"] and report.n_control == 4000
    assert len(report.threshold_transfer) == 2
    t = report.threshold_transfer[0]
    assert (
        t.sets == ["chat", "code"] and t.sources == ["chat", "code", "pooled"] and t.n_holdout == [1000, 1000]
    )
    fpr, (lo, hi), n = t.cell("chat", "code")
    assert lo > 0.05 and n == 1000  # a threshold set on chat does not hold on code
    assert t.cell("code", "chat")[0] < 0.05  # ... the other way round it is conservative
    for name in t.sets:  # on its own held-out rows each set's threshold keeps the target (binomial bound)
        fpr, (lo, hi), _ = t.cell(name, name)
        assert lo <= 0.05 <= hi or fpr <= 0.05
    assert t.worst[:2] == ("chat", "code")
    assert any("set on control set 'chat' gives FPR" in w and "'code'" in w for w in report.warnings)
    # The report's own threshold is the pooled one, measured on both held-out parts.
    assert report.threshold == pytest.approx(t.thresholds[t.sources.index("pooled")])
    assert report.operating_points[0].n_control_holdout == 2000

    # JSON round trip, the table, the plot.
    again = EvalReport.from_json(report.to_json())
    assert again.threshold_transfer[0].to_dict() == t.to_dict()
    text = str(report)
    assert "Threshold transfer at target FPR 5%" in text and "pooled" in text and "code (n=1000)" in text
    assert "transfer_fpr_max_at_0.05" in report.metrics()
    written = report.plots(tmp_path)
    heat = [p for p in written if "threshold_transfer_0.05" in p.name]
    assert heat and heat[0].stat().st_size > 10_000


def test_exchangeable_control_sets_raise_no_transfer_warning() -> None:
    X, y = _data(600)
    probe = LogisticProbe().fit(X[:300], y[:300])
    a, _ = _data(1500, seed=5)
    b, _ = _data(1500, seed=6)
    report = evaluate(probe, (X[300:], y[300:]), control={"a": a, "b": b}, target_fpr=0.05)
    assert not any("does not transfer" in w for w in report.warnings)
    single = evaluate(probe, (X[300:], y[300:]), control=a, target_fpr=0.05)
    assert single.threshold_transfer == [] and single.control_sets == ["control"]


def test_threshold_transfer_on_raw_scores() -> None:
    rng = np.random.default_rng(0)
    t = threshold_transfer(
        [rng.normal(0, 1, 999), rng.normal(1, 1, 999)], [rng.normal(0, 1, 500), rng.normal(1, 1, 500)],
        ["a", "b"], 0.01,
    )  # fmt: skip
    assert isinstance(t, ThresholdTransfer) and t.n_cal == [999, 999, 1998]
    assert t.cell("a", "b")[1][0] > 0.01 and t.fpr_ci[0][1][0] > 0.01
    with pytest.raises(ValueError, match="at least two"):
        threshold_transfer([[0.0]], [[0.0]], ["a"], 0.01)
