"""Collected activations equal Hugging Face's hidden states of an unpadded single-row forward.

Every row is compared with its own batch-of-one forward (no padding at all), while ``collect`` runs it in
length-sorted, padded batches of mixed lengths: any mistake in positions, masks, padding side or pooling
shows up as a difference. ``layers.N`` (N < L) must equal ``hidden_states[N]``; ``final_norm`` must equal
``hidden_states[-1]`` for decoders with a final norm; ``layers.L`` is the raw residual.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import TINY_ARCHS, build_tiny_model
from torch import nn

from probes.collection import collect
from probes.data.card import DatasetCard
from probes.data.dataset import ContrastDataset
from probes.data.render import encode_dataset
from probes.data.types import Example
from probes.models import final_norm_module, load_model, num_layers

TOL = 1e-5
# Mixed lengths (1 to ~40 tokens) so that batches of 3 need real padding on either side.
TEXTS = (
    "Once upon a time there was a little girl named Lily.",
    "Hi.",
    "The dog ran to the big park and played with a red ball all day long until the sun went down.",
    "Tom was sad because his toy broke.",
    "Yes",
    "She looked at the sky and saw many birds flying over the tall green trees near the river.",
    "A cat sat.",
)


def make_dataset(texts: tuple[str, ...] = TEXTS) -> ContrastDataset:
    rows = [Example(id=f"row{i}", label=i % 2, text=t) for i, t in enumerate(texts)]
    return ContrastDataset(rows, DatasetCard(name="exactness", label_names=("no", "yes")))


def reference_hidden_states(model: nn.Module, input_ids: tuple[int, ...]) -> tuple[torch.Tensor, ...]:
    with torch.inference_mode():
        out = model(input_ids=torch.tensor([input_ids]), output_hidden_states=True)
    return tuple(h[0] for h in out.hidden_states)


def check_equal_to_hidden_states(
    model: nn.Module,
    tokenizer,
    padding_side: str,
    batch_size: int = 3,
    packing: bool | str = "auto",
    max_tokens: int | None = None,
) -> None:
    dataset = make_dataset()
    n_layers = num_layers(model)
    has_norm = final_norm_module(model) is not None
    sites: list[str | int] = list(range(n_layers + 1)) + (["final_norm"] if has_norm else [])
    acts = collect(
        model,
        tokenizer,
        dataset,
        sites,
        "tokens",
        batch_size=batch_size,
        max_tokens=max_tokens,
        padding_side=padding_side,
        packing=packing,
        progress=False,
    )
    last = collect(
        model,
        tokenizer,
        dataset,
        sites,
        "last",
        batch_size=batch_size,
        max_tokens=max_tokens,
        padding_side=padding_side,
        packing=packing,
        progress=False,
    )
    encoded = encode_dataset(dataset, tokenizer, max_length=512)
    assert len({len(e) for e in encoded}) > 3  # the batches really mix lengths
    for i, row in enumerate(encoded):
        hidden = reference_hidden_states(model, row.input_ids)
        mask = torch.tensor(row.target_mask)
        for n in range(n_layers):
            expected = hidden[n][mask]
            got = acts[f"layers.{n}"][i]
            assert got.shape == expected.shape
            assert (got - expected).abs().max().item() <= TOL, (n, i)
            assert (last[f"layers.{n}"][i] - expected[-1]).abs().max().item() <= TOL, (n, i)
        if has_norm:
            # The final norm rescales by 1/rms, so its values (and float rounding) are larger: the same 1e-5
            # relative to the values' scale (stories260K's reach ~10; a 2-thread AMD CPU differs by 1.05e-5).
            expected = hidden[-1][mask]
            scale = max(1.0, expected.abs().max().item())
            assert (acts["final_norm"][i] - expected).abs().max().item() <= TOL * scale
        else:  # encoders without a final norm: the last entry is the raw residual
            assert (acts[f"layers.{n_layers}"][i] - hidden[-1][mask]).abs().max().item() <= TOL


@pytest.mark.slow  # measured among the slowest on 2 cores; CI runs it with -m slow
@pytest.mark.parametrize("padding_side", ["left", "right"])
@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_tiny_models_equal_hidden_states(arch: str, padding_side: str) -> None:
    """Padded batches (packing off) on both sides."""
    model, tokenizer = build_tiny_model(arch)
    check_equal_to_hidden_states(model, tokenizer, padding_side, packing=False)


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_tiny_models_packed_equal_hidden_states(arch: str) -> None:
    """Packed sequences (packing=True raises if the self-check refuses): every test architecture packs."""
    model, tokenizer = build_tiny_model(arch)
    check_equal_to_hidden_states(model, tokenizer, "right", packing=True)
    check_equal_to_hidden_states(model, tokenizer, "right", batch_size=7, packing=True)
    # Token budgets: long rows first, their gaps filled with the shortest rows (one and two sequences a batch).
    check_equal_to_hidden_states(model, tokenizer, "right", packing=True, max_tokens=64)
    check_equal_to_hidden_states(model, tokenizer, "right", packing=True, max_tokens=128)


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_real_stories260k_equals_hidden_states(stories_path: Path, padding_side: str) -> None:
    model, tokenizer = load_model(stories_path, device="cpu")
    check_equal_to_hidden_states(model, tokenizer, padding_side, packing=False)
    check_equal_to_hidden_states(model, tokenizer, padding_side, packing=True)


@pytest.mark.slow  # measured among the slowest on 2 cores; CI runs it with -m slow
@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_real_minilm_equals_hidden_states(minilm_path: Path, padding_side: str) -> None:
    model, tokenizer = load_model(minilm_path, device="cpu")
    check_equal_to_hidden_states(model, tokenizer, padding_side, packing=False)
    check_equal_to_hidden_states(model, tokenizer, padding_side, packing=True)


def test_last_layer_is_raw_residual_not_normed(stories_path: Path) -> None:
    """For Llama, ``layers.L`` is the last block's output, which differs from HF's normed hidden_states[-1]."""
    model, tokenizer = load_model(stories_path, device="cpu")
    dataset = make_dataset(TEXTS[:3])
    acts = collect(model, tokenizer, dataset, ["layers.-1", "final_norm"], "tokens", progress=False)
    encoded = encode_dataset(dataset, tokenizer, max_length=512)
    for i, row in enumerate(encoded):
        seen: list[torch.Tensor] = []

        def keep(_m: nn.Module, _a: tuple, out: object, seen: list[torch.Tensor] = seen) -> None:
            seen.append(out[0] if isinstance(out, tuple) else out)

        handle = model.model.layers[-1].register_forward_hook(keep)
        try:
            hidden = reference_hidden_states(model, row.input_ids)
        finally:
            handle.remove()
        mask = torch.tensor(row.target_mask)
        raw = acts["layers.5"][i]
        assert (raw - seen[0][0][mask]).abs().max().item() <= TOL
        assert (raw - hidden[-1][mask]).abs().max().item() > 1e-2
        assert (acts["final_norm"][i] - hidden[-1][mask]).abs().max().item() <= TOL


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_models(dtype: torch.dtype) -> None:
    """bf16/fp16 models collect (stored as float32 by default) close to their own unpadded forward."""
    model, tokenizer = build_tiny_model("llama")
    model = model.to(dtype)
    dataset = make_dataset()
    acts = collect(model, tokenizer, dataset, [2], "last", batch_size=3, padding_side="left", progress=False)
    assert acts["layers.2"].dtype == torch.float32
    stored = collect(model, tokenizer, dataset, [2], "last", batch_size=3, dtype="bfloat16", progress=False)
    assert stored["layers.2"].dtype == torch.bfloat16
    encoded = encode_dataset(dataset, tokenizer, max_length=512)
    for i, row in enumerate(encoded):
        expected = reference_hidden_states(model, row.input_ids)[2][torch.tensor(row.target_mask)][-1].float()
        scale = expected.abs().max().item()
        assert (acts["layers.2"][i] - expected).abs().max().item() <= 2e-2 * max(scale, 1.0)
