"""``model.device_map`` (accelerate): a dispatched model collects the same values, and the early exit still
stops after the deepest requested block, so offloaded later blocks are never loaded or run.

On CPU, ``device_map="auto"`` places everything on the CPU; the offload case (blocks 3-4, the norm and the head
on "disk", streamed in by accelerate's hooks) runs the same dispatch hooks a multi-GPU split does.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import _require_package

import probes
from probes.collection import collect
from probes.models import block_list, load_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def reference(stories_path: Path):
    _require_package("accelerate", "pip install accelerate")
    model, tokenizer = load_model(stories_path, dtype="float32", device="cpu")
    ds = probes.load_dataset(ROOT / "datasets/story_moods").subset(range(60))
    return model, tokenizer, ds, collect(model, tokenizer, ds, [1, 2], "mean", progress=False)


def test_device_map_auto_loads_and_collects_equal_values(reference, stories_path: Path) -> None:
    _, tokenizer, ds, expected = reference
    model, _ = load_model(stories_path, dtype="float32", device_map="auto")
    got = collect(model, tokenizer, ds, [1, 2], "mean", progress=False)
    assert got.spec["cache_key"] == expected.spec["cache_key"]
    for site in expected.features:
        assert torch.equal(got.features[site], expected.features[site])


def test_offloaded_blocks_after_the_deepest_site_never_run(
    reference, stories_path: Path, tmp_path: Path
) -> None:
    _, tokenizer, ds, expected = reference
    device_map = {
        "model.embed_tokens": "cpu",
        "model.rotary_emb": "cpu",
        "model.norm": "disk",
        "lm_head": "disk",
    }
    device_map |= {f"model.layers.{i}": "cpu" if i < 3 else "disk" for i in range(5)}
    model, _ = load_model(
        stories_path, dtype="float32", device_map=device_map, offload_folder=str(tmp_path / "offload")
    )
    # A first collection may run one-off checks of the whole model (packing's self-check); the claim is
    # about collecting, so count the blocks run by a collection after it.
    collect(model, tokenizer, ds.subset(range(4)), [1, 2], "mean", progress=False)
    calls = [0] * len(block_list(model))
    handles = [
        block.register_forward_pre_hook(lambda _m, _a, i=i: calls.__setitem__(i, calls[i] + 1))
        for i, block in enumerate(block_list(model))
    ]
    try:
        got = collect(model, tokenizer, ds, [1, 2], "mean", progress=False)
    finally:
        for h in handles:
            h.remove()
    for site in expected.features:
        assert torch.equal(got.features[site], expected.features[site])
    assert calls[0] > 0 and calls[1] == calls[0]
    assert calls[2:] == [0, 0, 0]  # layers.2 is the output of block 1: blocks 2.. never run
