"""Known-answer tests on the grokked modular-addition model shipped in models/grokking_113.

The mechanism of a one-layer transformer that has grokked a + b mod 113 is known (Nanda et al. 2023): the
embedding writes cos/sin(2πk·a/113) for a few key frequencies k and the logits are sums of
cos(2πk(a + b - c)/113). With the public API only, the framework must find that — and must not find
frequencies the model does not use.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import probes
from probes.evaluation import excluded_loss, fourier_targets, frequency_norms, key_frequencies

ROOT = Path(__file__).resolve().parents[1]
MODEL = Path(os.environ.get("PROBES_GROKKING_MODEL", ROOT / "models" / "grokking_113"))
P = 113


@pytest.fixture(scope="module")
def grokked():
    model, tokenizer = probes.load_model(MODEL, device="cpu", progress=False)
    return model, tokenizer


@pytest.fixture(scope="module")
def keys(grokked) -> list[int]:
    model, _ = grokked
    W_E = model.get_input_embeddings().weight[:P]
    return key_frequencies(W_E, P)


@pytest.fixture(scope="module")
def embedding_acts(grokked, keys, tmp_path_factory: pytest.TempPathFactory):
    """layers.0 at the token ``a`` of ``"a b ="``, one row per a, with cos/sin of every frequency as targets."""
    model, tokenizer = grokked
    rng = np.random.default_rng(0)
    targets = fourier_targets(np.arange(P), P, range(1, (P - 1) // 2 + 1))
    folder = tmp_path_factory.mktemp("fourier")
    rows = []
    for a in range(P):
        text = f"{a} {int(rng.integers(P))} ="
        values = {name: float(v[a]) for name, v in targets.items()}
        rows.append(
            {
                "id": str(a),
                "text": text,
                "group": str(a),
                "target": {"span": [0, len(str(a))]},
                "target_value": values,
            }
        )
    (folder / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = probes.load_dataset(folder / "data.jsonl", kind="regress")
    return probes.collect(model, tokenizer, data, layers=["layers.0"], pooling="last", progress=False)


def test_checkpoint_is_the_grokked_model(grokked) -> None:
    model, tokenizer = grokked
    record = json.loads((MODEL / "training.json").read_text())
    assert record["final"]["test_acc"] > 0.99
    a, b = torch.meshgrid(torch.arange(P), torch.arange(P), indexing="ij")
    ids = torch.stack([a.flatten(), b.flatten(), torch.full((P * P,), P)], 1)
    with torch.no_grad():
        pred = model(input_ids=ids).logits[:, -1, :P].argmax(-1)
    assert (pred == (a.flatten() + b.flatten()) % P).float().mean() > 0.99  # every pair, train and test
    assert tokenizer("3 5 =")["input_ids"] == [3, 5, P]
    assert sum(p.numel() for p in model.parameters()) * 4 < 5e6  # a few MB, committed


def test_fourier_analysis_finds_a_few_key_frequencies(grokked, keys) -> None:
    model, _ = grokked
    norms = frequency_norms(model.get_input_embeddings().weight[:P], P)
    assert 2 <= len(keys) <= 8  # of 56 frequencies
    share = (norms[np.asarray(keys) - 1] ** 2).sum() / (norms**2).sum()
    assert share > 0.7  # the embedding is sparse in the Fourier basis


def embedding_weights(acts) -> np.ndarray:
    """W_E + W_pos[0] by input a: the layers.0 activations at token a, sorted by a (rows are one per a)."""
    order = np.argsort([int(i) for i in acts.ids])
    return acts["layers.0"].numpy()[order]


def _split(acts) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(1).permutation(len(acts))
    return order[:80], order[80:]


@pytest.mark.slow
def test_sparse_probes_read_key_frequencies_and_not_others(embedding_acts, keys) -> None:
    tr, te = _split(embedding_acts)
    train, test = embedding_acts.subset(tr), embedding_acts.subset(te)
    X = train["layers.0"]
    # Frequencies the model does not use: embedding norm under twice the median (a few leftovers of the
    # memorising solution, still being cleaned up by weight decay, sit between the two groups).
    W_E = embedding_weights(embedding_acts)
    norms = frequency_norms(W_E, P)
    unused = [int(k) + 1 for k in np.flatnonzero(norms < 2 * np.median(norms))][::10]
    assert len(unused) >= 4
    for k in keys:
        for fn in ("cos", "sin"):
            probe = probes.SparseProbe(cv=5, eps=1e-2, n_alphas=40).fit(
                X, train.values[f"{fn}{k}"], groups=train.groups
            )
            report = probes.evaluate_regression(
                probe, test, layer="layers.0", target=f"{fn}{k}", n_bootstrap=200
            )
            assert report.r2 >= 0.9, (k, fn, str(report))
            assert report.n_coordinates < X.shape[1]
    for k in unused:
        for fn in ("cos", "sin"):
            probe = probes.SparseProbe(cv=5, eps=1e-2, n_alphas=40).fit(
                X, train.values[f"{fn}{k}"], groups=train.groups
            )
            report = probes.evaluate_regression(
                probe, test, layer="layers.0", target=f"{fn}{k}", n_bootstrap=200
            )
            assert report.r2 <= 0.1, (k, fn, str(report))


def test_probe_outputs_trace_the_circle(embedding_acts, keys, tmp_path: Path) -> None:
    tr, te = _split(embedding_acts)
    train, test = embedding_acts.subset(tr), embedding_acts.subset(te)
    k = keys[0]
    cos = probes.SparseProbe(cv=5, eps=1e-2, n_alphas=40).fit(
        train["layers.0"], train.values[f"cos{k}"], groups=train.groups
    )
    sin = probes.SparseProbe(cv=5, eps=1e-2, n_alphas=40).fit(
        train["layers.0"], train.values[f"sin{k}"], groups=train.groups
    )
    x, y = cos.predict(test["layers.0"]), sin.predict(test["layers.0"])
    radius = np.hypot(x, y)
    assert np.all(np.abs(radius - 1) < 0.35)  # on the unit circle, for a it never saw
    angle = np.angle(x + 1j * y)
    a = np.array([int(i) for i in test.ids])
    err = np.angle(np.exp(1j * (angle - 2 * np.pi * k * a / P)))
    assert np.abs(err).max() < 0.5  # at the angle 2πk·a/113


def test_excluded_loss_rises_for_key_frequencies_only(grokked, keys) -> None:
    model, _ = grokked
    a, b = torch.meshgrid(torch.arange(P), torch.arange(P), indexing="ij")
    a, b = a.flatten(), b.flatten()
    ids = torch.stack([a, b, torch.full_like(a, P)], 1)
    with torch.no_grad():
        logits = model(input_ids=ids).logits[:, -1, :P]
    base = excluded_loss(logits, a, b, P, [])
    assert base < 0.1
    key_loss = excluded_loss(logits, a, b, P, keys)
    others = [k for k in range(1, 57) if k not in keys][: len(keys)]
    other_loss = excluded_loss(logits, a, b, P, others)
    assert key_loss > 2.0 and key_loss > 1000 * base  # removing the key frequencies breaks the model
    assert other_loss < base + 0.01  # removing as many other frequencies changes ~nothing
    single = {k: excluded_loss(logits, a, b, P, [k]) for k in range(1, 57)}
    matter = {k for k, loss in single.items() if loss > base + 0.05}
    assert matter <= set(keys) and len(matter) >= 2  # only key frequencies matter one at a time
