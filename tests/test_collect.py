"""collect: pooling over hand-made masks, the early stop, hook hygiene, the disk cache and crash recovery."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import build_tiny_model
from torch import nn

import probes
from probes.collection import Activations, RaggedTokens, collect
from probes.collection.collect import collect_encoded
from probes.data.card import DatasetCard
from probes.data.dataset import ContrastDataset
from probes.data.types import Encoded, Example, Target
from probes.errors import CacheError, DatasetError, SiteError
from probes.models import block_list

TOL = 1e-5
TEXTS = [
    "Once upon a time there was a little girl named Lily who loved the sea.",
    "Hi.",
    "The dog ran to the big park.",
    "Tom was sad because his toy broke and he cried for a long time.",
    "Yes, said Sue.",
    "She saw birds.",
    "A cat sat on a mat in the sun and slept.",
    "Mom baked a pie.",
    "Ben and Max built a tall tower of blocks, then it fell down with a crash.",
    "Good night.",
]


def make_dataset(n: int = len(TEXTS)) -> ContrastDataset:
    rows = [
        Example(
            id=f"r{i}",
            label=i % 2,
            text=t,
            group=f"g{i // 2}",
            # Some rows read only a span, so pooled targets differ from whole texts.
            target=Target(span=(0, 4)) if i % 3 == 0 else None,
        )
        for i, t in enumerate(TEXTS[:n])
    ]
    return ContrastDataset(rows, DatasetCard(name="collect-tests", label_names=("neg", "pos")))


@pytest.fixture()
def llama() -> tuple[nn.Module, object]:
    model, tokenizer = build_tiny_model("llama")
    # The one-off packing self-check (three tiny forwards per model) runs here, so that tests counting
    # block calls count only the collection's own passes.
    collect_encoded(model, [Encoded((5, 6), (True, True))], [1], "last")
    return model, tokenizer


@contextmanager
def count_block_calls(model: nn.Module) -> Iterator[list[int]]:
    """Completed forward calls per block (and rows through block 0 in counts[-1]); post-hooks, so a block
    that a pre-hook stopped does not count."""
    blocks = block_list(model)
    counts = [0] * (len(blocks) + 1)
    handles = []
    for i, block in enumerate(blocks):

        def hook(_m: nn.Module, args: tuple, kwargs: dict, _out: object, i: int = i) -> None:
            counts[i] += 1
            if i == 0:
                hidden = args[0] if args else kwargs["hidden_states"]
                counts[-1] += hidden.shape[0]

        handles.append(block.register_forward_hook(hook, with_kwargs=True))
    try:
        yield counts
    finally:
        for h in handles:
            h.remove()


@contextmanager
def interrupted_at_pass(model: nn.Module, n: int) -> Iterator[None]:
    """Ctrl-C in the ``n``-th forward pass (a pre-hook on block 0): the body must raise KeyboardInterrupt."""
    calls = {"n": 0}

    def interrupt(*_: object) -> None:
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt

    handle = block_list(model)[0].register_forward_pre_hook(interrupt)
    try:
        with pytest.raises(KeyboardInterrupt):
            yield
    finally:
        handle.remove()


def all_hooks(model: nn.Module) -> dict[str, int]:
    out = {}
    for name, m in model.named_modules():
        out[name] = sum(
            len(d)
            for d in (m._forward_hooks, m._forward_pre_hooks, m._backward_hooks, m._forward_hooks_with_kwargs)
        )
    return out


# ----------------------------------------------------------------------------------------------- pooling
def test_pooling_on_hand_made_masks(llama) -> None:
    model, _ = llama
    g = torch.Generator().manual_seed(1)
    masks = [
        (False, True, True, False, True, False),
        (True,),
        (False, False, False, False, False, False, False, False, True),
        (False, True, False),
    ]
    rows = [Encoded(tuple(torch.randint(3, 500, (len(m),), generator=g).tolist()), m) for m in masks]
    for side in ("left", "right"):
        out = {
            p: collect_encoded(model, rows, [1, 3], p, batch_size=4, padding_side=side)
            for p in ("last", "mean")
        }
        tokens = collect_encoded(model, rows, [1, 3], "tokens", batch_size=4, padding_side=side)
        for i, row in enumerate(rows):
            with torch.inference_mode():
                hs = model(input_ids=torch.tensor([row.input_ids]), output_hidden_states=True).hidden_states
            sel = torch.tensor(row.target_mask)
            for n in (1, 3):
                expected = hs[n][0][sel]
                assert (tokens[f"layers.{n}"][i] - expected).abs().max() <= TOL
                assert (out["last"][f"layers.{n}"][i] - expected[-1]).abs().max() <= TOL
                assert (out["mean"][f"layers.{n}"][i] - expected.mean(0)).abs().max() <= TOL
    assert isinstance(tokens["layers.1"], RaggedTokens)
    assert tokens["layers.1"].lengths.tolist() == [3, 1, 1, 1]


def test_empty_target_is_an_error_for_pooled_but_empty_for_tokens(llama) -> None:
    model, _ = llama
    rows = [Encoded((5, 6, 7), (False, False, False)), Encoded((5, 6), (True, True))]
    with pytest.raises(DatasetError, match="no tokens"):
        collect_encoded(model, rows, [1], "last")
    tokens = collect_encoded(model, rows, [1], "tokens")
    assert tokens["layers.1"].lengths.tolist() == [0, 2]


def test_result_is_typed_in_dataset_order_with_spec(llama) -> None:
    model, tokenizer = llama
    dataset = make_dataset()
    acts = collect(
        model, tokenizer, dataset, ["layers.2", -1, "final_norm"], "mean", batch_size=3, progress=False
    )
    assert isinstance(acts, Activations)
    assert acts.layers == ["layers.2", "layers.4", "final_norm"]
    assert acts[2].shape == (len(dataset), 32) and acts[2].dtype == torch.float32
    assert acts.ids == dataset.ids and list(acts.groups) == list(dataset.groups)
    assert np.array_equal(acts.labels, dataset.labels) and acts.labels.dtype == np.int64
    spec = acts.spec
    for field in ("model", "sites", "pooling", "max_length", "dtype", "dataset", "cache_key"):
        assert field in spec
    assert spec["dataset"] == dataset.fingerprint() and spec["pooling"] == "mean"
    assert spec["model"]["num_layers"] == 4
    # Results are ordinary tensors, usable by autograd (a torch-trained probe), not inference tensors.
    assert not acts[2].is_inference()
    weight = torch.zeros(32, requires_grad=True)
    (acts[2] @ weight).sum().backward()
    assert weight.grad is not None
    # Dataset order is restored: collecting a permuted dataset permutes the rows.
    perm = [3, 0, 7, 1, 9, 2, 8, 4, 6, 5]
    again = collect(
        model, tokenizer, dataset.subset(perm), ["layers.2"], "mean", batch_size=3, progress=False
    )
    assert (again["layers.2"] - acts["layers.2"][perm]).abs().max() <= TOL


def test_public_api_and_site_errors(llama) -> None:
    model, tokenizer = llama
    dataset = make_dataset(4)
    acts = probes.collect(model, tokenizer, dataset, "all", progress=False)
    assert acts.layers == [f"layers.{i}" for i in range(5)]
    with pytest.raises(SiteError, match="out of range"):
        collect(model, tokenizer, dataset, [7], progress=False)
    with pytest.raises(ValueError, match="pooling"):
        collect(model, tokenizer, dataset, [1], "max", progress=False)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="storage dtype"):
        collect(model, tokenizer, dataset, [1], dtype="int8", progress=False)


# ----------------------------------------------------------------------------------------------- early stop
def test_early_stop_skips_later_blocks(llama) -> None:
    model, tokenizer = llama
    dataset = make_dataset(6)
    lm_head_calls = []
    handle = model.lm_head.register_forward_hook(lambda *_: lm_head_calls.append(1))
    try:
        with count_block_calls(model) as calls:
            collect(model, tokenizer, dataset, [1, 2], batch_size=3, progress=False)
        assert calls[:4] == [2, 2, 0, 0]  # 2 batches; blocks 2 and 3 never ran
        with count_block_calls(model) as calls:
            collect(model, tokenizer, dataset, ["layers.0"], batch_size=3, progress=False)
        assert calls[:4] == [0, 0, 0, 0]  # the embedding output stops before block 0 runs
        with count_block_calls(model) as calls:
            collect(model, tokenizer, dataset, ["final_norm"], batch_size=3, progress=False)
        assert calls[:4] == [2, 2, 2, 2]
    finally:
        handle.remove()
    assert lm_head_calls == []  # the base model is called: no logits, even for final_norm


# ----------------------------------------------------------------------------------------------- hook hygiene
def test_hooks_removed_and_mode_restored_even_after_errors(llama) -> None:
    model, tokenizer = llama
    dataset = make_dataset(6)
    model.train()
    before = all_hooks(model)
    collect(model, tokenizer, dataset, [1, "final_norm"], progress=False)
    assert all_hooks(model) == before
    assert model.training and all(m.training for m in model.modules())

    def boom(*_: object) -> None:
        raise RuntimeError("simulated failure inside the forward pass")

    handle = block_list(model)[0].register_forward_hook(boom)
    try:
        with_test_hook = all_hooks(model)
        with pytest.raises(RuntimeError, match="simulated"):
            collect(model, tokenizer, dataset, [2, 3], progress=False)
        assert all_hooks(model) == with_test_hook
    finally:
        handle.remove()
    assert all_hooks(model) == before
    assert model.training


# ----------------------------------------------------------------------------------------------- cache
def test_cache_hit_runs_no_forward_and_layout(llama, tmp_path: Path) -> None:
    model, tokenizer = llama
    dataset = make_dataset()
    first = collect(
        model, tokenizer, dataset, [1, 3], "tokens", batch_size=3, shard_rows=4, cache_dir=tmp_path
    )
    (entry,) = tmp_path.iterdir()
    assert entry.name == first.spec["cache_key"]
    manifest = json.loads((entry / "manifest.json").read_text())
    assert manifest["complete"] and manifest["n_rows"] == len(dataset)
    assert manifest["format"] == "probes-activation-cache/2"
    # A complete entry is compacted into one dataset-order file, listed with its sha256; the shards are gone.
    (data,) = manifest["shards"]
    assert data["file"] == "data.safetensors" and data["rows"] == len(dataset) and len(data["sha256"]) == 64
    assert sorted(p.name for p in entry.glob("*.safetensors")) == ["data.safetensors"]
    assert not list(entry.glob("*.tmp"))  # no temp files left behind
    with count_block_calls(model) as calls:
        second = collect(model, tokenizer, dataset, [1, 3], "tokens", batch_size=3, cache_dir=tmp_path)
    assert sum(calls[:-1]) == 0
    for site in ("layers.1", "layers.3"):
        assert torch.equal(first[site].values, second[site].values)
        assert torch.equal(first[site].offsets, second[site].offsets)
    assert second.spec == first.spec


def test_cache_key_tracks_what_changes_activations(llama, tmp_path: Path) -> None:
    model, tokenizer = llama
    dataset = make_dataset(4)
    with pytest.warns(UserWarning, match="max_length"):  # the data layer warns about cut targets
        truncated = collect(
            model, tokenizer, dataset, [1], "last", max_length=8, cache_dir=tmp_path, progress=False
        )
    keys = {
        collect(model, tokenizer, dataset, [1], "last", cache_dir=tmp_path, progress=False).spec["cache_key"],
        collect(model, tokenizer, dataset, [2], "last", cache_dir=tmp_path, progress=False).spec["cache_key"],
        collect(model, tokenizer, dataset, [1], "mean", cache_dir=tmp_path, progress=False).spec["cache_key"],
        truncated.spec["cache_key"],
        collect(model, tokenizer, dataset, [1], dtype="float16", cache_dir=tmp_path, progress=False).spec[
            "cache_key"
        ],
        collect(model, tokenizer, make_dataset(5), [1], cache_dir=tmp_path, progress=False).spec["cache_key"],
        collect(
            build_tiny_model("llama", seed=1)[0], tokenizer, dataset, [1], cache_dir=tmp_path, progress=False
        ).spec["cache_key"],
    }
    assert len(keys) == 7 and len(list(tmp_path.iterdir())) == 7
    stored = collect(model, tokenizer, dataset, [1], dtype="float16", cache_dir=tmp_path, progress=False)
    assert stored["layers.1"].dtype == torch.float16


@pytest.mark.parametrize("pooling", ["last", "tokens"])
def test_resume_after_crash_recomputes_only_missing_rows(llama, tmp_path: Path, pooling: str) -> None:
    model, tokenizer = llama
    dataset = make_dataset()
    reference = collect(model, tokenizer, dataset, [1, 4], pooling, batch_size=2, progress=False)

    # Crash in the forward pass of the 4th batch: 3 batches (6 rows) are done.
    with interrupted_at_pass(model, 4):
        collect(model, tokenizer, dataset, [1, 4], pooling, batch_size=2, shard_rows=4, cache_dir=tmp_path)
    (entry,) = tmp_path.iterdir()
    manifest = json.loads((entry / "manifest.json").read_text())
    assert not manifest["complete"] and manifest["rows_done"] == 6  # one full shard + the flushed remainder

    with count_block_calls(model) as counts:
        resumed = collect(
            model, tokenizer, dataset, [1, 4], pooling, batch_size=2, shard_rows=4, cache_dir=tmp_path
        )
    assert counts[0] == (len(dataset) - 6) // 2  # forward passes of block 0: only the missing rows' batches
    assert json.loads((entry / "manifest.json").read_text())["complete"]
    for site in ("layers.1", "layers.4"):
        got, want = resumed[site], reference[site]
        if pooling == "tokens":
            assert torch.equal(got.offsets, want.offsets)
            got, want = got.values, want.values
        assert (got - want).abs().max() <= TOL


def test_corrupt_or_mismatched_cache_raises_with_the_fix(llama, tmp_path: Path) -> None:
    model, tokenizer = llama
    dataset = make_dataset(6)
    acts = collect(
        model, tokenizer, dataset, [1], batch_size=2, shard_rows=2, cache_dir=tmp_path, progress=False
    )
    entry = tmp_path / acts.spec["cache_key"]
    data = entry / "data.safetensors"
    original = data.read_bytes()

    data.write_bytes(original[:40])
    with pytest.raises(CacheError, match="truncated.*Delete the folder"):
        collect(model, tokenizer, dataset, [1], cache_dir=tmp_path, progress=False)

    data.unlink()
    with pytest.raises(CacheError, match="missing"):
        collect(model, tokenizer, dataset, [1], cache_dir=tmp_path, progress=False)
    data.write_bytes(original)

    manifest_path = entry / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["n_rows"] = 99
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(CacheError, match="n_rows"):
        collect(model, tokenizer, dataset, [1], cache_dir=tmp_path, progress=False)

    manifest["n_rows"], manifest["format"] = 6, "probes-activation-cache/1"
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(CacheError, match="older probes.*Delete the folder"):
        collect(model, tokenizer, dataset, [1], cache_dir=tmp_path, progress=False)

    manifest_path.write_text("{not json")
    with pytest.raises(CacheError, match="unreadable"):
        collect(model, tokenizer, dataset, [1], cache_dir=tmp_path, progress=False)


@pytest.mark.parametrize("partial", [False, True])
def test_flipped_data_byte_is_refused_naming_the_shard(llama, tmp_path: Path, partial: bool) -> None:
    """One flipped byte in a shard's feature data (header intact) is caught by the sha256 check."""
    model, tokenizer = llama
    dataset = make_dataset(6)
    if partial:  # an interrupted entry: the flipped byte is in a shard a resumed run would read
        with interrupted_at_pass(model, 3):
            collect(model, tokenizer, dataset, [1], batch_size=2, cache_dir=tmp_path, progress=False)
    else:
        collect(model, tokenizer, dataset, [1], batch_size=2, cache_dir=tmp_path, progress=False)
    (entry,) = tmp_path.iterdir()
    (listed,) = json.loads((entry / "manifest.json").read_text())["shards"]
    shard = entry / listed["file"]
    raw = bytearray(shard.read_bytes())
    raw[-3] ^= 0x40  # inside the last feature tensor
    shard.write_bytes(bytes(raw))
    with pytest.raises(CacheError, match=f"{listed['file']} fails its sha256 check.*Delete the folder"):
        collect(model, tokenizer, dataset, [1], batch_size=2, cache_dir=tmp_path, progress=False)


def test_checksum_is_checked_once_then_recorded(llama, tmp_path: Path, monkeypatch) -> None:
    import probes.collection.cache as cache_mod

    model, tokenizer = llama
    dataset = make_dataset(4)
    first = collect(model, tokenizer, dataset, [1], "mean", cache_dir=tmp_path, progress=False)
    entry = tmp_path / first.spec["cache_key"]
    (entry / "verified.json").unlink()  # forget: the next load must hash the data file once
    hashed: list[str] = []
    real = cache_mod._sha256_file
    monkeypatch.setattr(cache_mod, "_sha256_file", lambda p: hashed.append(p.name) or real(p))
    for _ in range(3):
        again = collect(model, tokenizer, dataset, [1], "mean", cache_dir=tmp_path, progress=False)
    assert hashed == ["data.safetensors"]
    assert torch.equal(again["layers.1"], first["layers.1"])


def test_shards_bound_memory_by_row_count(llama, tmp_path: Path) -> None:
    model, tokenizer = llama
    dataset = make_dataset()
    with interrupted_at_pass(model, len(dataset)):
        collect(
            model, tokenizer, dataset, [2], batch_size=1, shard_rows=3, cache_dir=tmp_path, progress=False
        )
    (entry,) = tmp_path.iterdir()
    manifest = json.loads((entry / "manifest.json").read_text())
    assert [s["rows"] for s in manifest["shards"]] == [3, 3, 3]


def test_a_shard_from_another_writer_is_listed_only_when_its_hash_and_rows_check(
    llama, tmp_path: Path
) -> None:
    """What a Ray worker writing straight into the cache relies on: ``adopt_shard`` refuses (and deletes) a
    shard with other rows or changed bytes, lists a good one, and completion deletes unlisted orphans."""
    from probes.collection.cache import ActivationCache, ShardBuffer, new_shard_name, write_shard_file

    model, tokenizer = llama
    dataset = make_dataset()
    reference = collect(model, tokenizer, dataset, [1], "mean", batch_size=2, progress=False)
    with interrupted_at_pass(model, 4):
        collect(model, tokenizer, dataset, [1], "mean", batch_size=2, shard_rows=4, cache_dir=tmp_path)
    (entry,) = tmp_path.iterdir()
    cache = ActivationCache(entry, json.loads((entry / "manifest.json").read_text()))
    todo = np.flatnonzero(~cache.done_rows())
    assert len(todo) == 4

    def write(rows: np.ndarray) -> dict:
        buffer = ShardBuffer(cache.keys)
        buffer.add(torch.from_numpy(rows), {"layers.1/mean": reference["layers.1"][rows]}, None)
        return write_shard_file(entry, buffer, key=cache.manifest["key"], name=new_shard_name())

    listed = len(cache.manifest["shards"])
    dims = {"layers.1/mean": int(reference["layers.1"].shape[-1])}
    wrong = write(todo[:3])
    with pytest.raises(CacheError, match="other rows"):
        cache.adopt_shard(wrong, dims, todo)
    assert not (entry / wrong["file"]).exists()
    changed = write(todo)
    data = bytearray((entry / changed["file"]).read_bytes())
    data[-1] ^= 1
    (entry / changed["file"]).write_bytes(bytes(data))
    with pytest.raises(CacheError, match="sha256"):
        cache.adopt_shard(changed, dims, todo)
    assert not (entry / changed["file"]).exists()
    assert len(cache.manifest["shards"]) == listed  # nothing refused was listed

    good = write(todo)
    orphan = write(todo)  # a writer killed before reporting it: never listed
    (entry / ".shard-0000.safetensors.x.tmp").write_bytes(b"half")
    cache.adopt_shard(good, dims, todo)
    done = collect(model, tokenizer, dataset, [1], "mean", batch_size=2, cache_dir=tmp_path, progress=False)
    assert (done["layers.1"] - reference["layers.1"]).abs().max() <= TOL
    assert sorted(p.name for p in entry.iterdir()) == ["data.safetensors", "manifest.json", "verified.json"]
    assert not (entry / orphan["file"]).exists()


@pytest.mark.parametrize("chunk_bytes", [1, 5000, 2**30])
def test_compaction_in_row_chunks_writes_every_row_in_place(
    llama, tmp_path: Path, monkeypatch, chunk_bytes
) -> None:
    """Compaction writes each shard in chunks of rows (so RSS stays flat); with one row per chunk, a few
    rows, or the whole shard, the data file holds every row and token where it belongs."""
    import probes.collection.cache as cache_mod

    monkeypatch.setattr(cache_mod, "COMPACT_CHUNK_BYTES", chunk_bytes)
    model, tokenizer = llama
    dataset = make_dataset()
    args = (model, tokenizer, dataset, [1, 3], ["mean", "tokens"])
    memory = collect(*args, batch_size=3, progress=False)
    cached = collect(*args, batch_size=3, shard_rows=4, cache_dir=tmp_path, progress=False)
    (entry,) = tmp_path.iterdir()
    assert json.loads((entry / "manifest.json").read_text())["shards"][0]["file"] == "data.safetensors"
    for site in ("layers.1", "layers.3"):
        assert torch.equal(cached.pooled("mean")[site], memory.pooled("mean")[site])
        got, want = cached.pooled("tokens")[site], memory.pooled("tokens")[site]
        assert torch.equal(got.offsets, want.offsets) and torch.equal(got.values, want.values)
