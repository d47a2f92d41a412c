"""The Ray engine on a local 2-CPU cluster: bit-identical to the local engine, cache entries shared both ways,
a killed worker restarted with nothing lost or duplicated, an interrupted driver resumable, a worker's error
named with its rows.

One Ray session for the module (``ray.init(num_cpus=2)``); at most one actor pool exists at a time, because
two pools of two 1-CPU workers would not fit on two CPUs. Tests run in file order: the CLI and error tests
build and close their own pools, the rest share ``collector``.
"""

from __future__ import annotations

import _thread
import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import STORIES, _require_package, tiny_config

import probes
from probes.collection import collect
from probes.collection.cache import ActivationCache
from probes.collection.ray_engine import ModelSource, RayEngine, plan_blocks
from probes.config import EngineConfig
from probes.data.card import DatasetCard
from probes.data.dataset import ContrastDataset
from probes.data.types import Example, Target
from probes.errors import EngineError

# Slow: starting a Ray cluster and its actors takes most of two minutes on two cores; .ci/run runs these.
pytestmark = pytest.mark.slow

WORDS = [
    "once",
    "upon",
    "a",
    "time",
    "there",
    "was",
    "a",
    "little",
    "girl",
    "named",
    "lily",
    "who",
    "loved",
    "the",
    "big",
    "blue",
    "sea",
    "and",
    "her",
    "dog",
]


def mixed_dataset(n: int, seed: int = 0) -> ContrastDataset:
    """``n`` rows of 2-60 words, some reading only a span (so targets differ from whole rows)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        text = " ".join(rng.choice(WORDS, size=int(rng.integers(2, 60))))
        rows.append(
            Example(
                id=f"r{i}",
                label=i % 2,
                text=text,
                group=f"g{i // 2}",
                target=Target(span=(0, min(6, len(text)))) if i % 5 == 0 else None,
            )
        )
    return ContrastDataset(rows, DatasetCard(name="ray-tests", label_names=("neg", "pos")))


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Workers run ``cpus_per_worker`` (1) torch threads; the local runs compared with them must too. A CPU
    matmul's summation order depends on the thread count, so bit identity holds between runs with the same
    threads (the README says so), not between a 1-thread worker and a 2-thread driver."""
    before, env = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"  # the CLI subprocesses of the local runs
    yield
    torch.set_num_threads(before)
    if env is None:
        os.environ.pop("OMP_NUM_THREADS", None)
    else:
        os.environ["OMP_NUM_THREADS"] = env


@pytest.fixture(scope="module")
def ray_session():
    _require_package("ray", "pip install -e '.[ray]'")
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def stories(stories_path: Path):
    source = ModelSource(str(stories_path))
    model, tokenizer = source.load()
    return source, model, tokenizer


def manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def assert_same(a: probes.Activations, b: probes.Activations) -> None:
    assert a.ids == b.ids and a.spec["cache_key"] == b.spec["cache_key"]
    for site in a.features:
        fa, fb = a.features[site], b.features[site]
        if hasattr(fa, "offsets"):
            assert torch.equal(fa.offsets, fb.offsets)
            fa, fb = fa.values, fb.values
        assert torch.equal(fa, fb), site  # bit for bit, not within a tolerance


def test_blocks_are_whole_batches_of_the_local_plan(stories) -> None:
    from probes.collection.ray_engine import _engine_plan
    from probes.data.render import encode_dataset

    _, _, tokenizer = stories
    encoded = encode_dataset(mixed_dataset(300), tokenizer, max_length=128)
    lengths = np.asarray([len(r) for r in encoded])
    todo = np.arange(300)
    for max_tokens, packed in ((None, False), (300, False), (None, True), (600, True)):
        blocks = plan_blocks(encoded, todo, 4, 700, max_tokens=max_tokens, packed=packed)
        batches = _engine_plan(lengths, todo, 4, max_tokens, packed)
        assert sorted(np.concatenate([b.rows for b in blocks]).tolist()) == list(range(300))
        planned = []
        for block in blocks:  # the blocks' batches, in dataset positions, are the whole plan's, in order
            planned += [[[int(block.rows[k]) for k in seq] for seq in batch] for batch in block.batches]
            assert block.tokens == int(lengths[block.rows].sum())
        assert planned == batches
        assert 1 < len(blocks) < len(batches)


def test_cli_collect_engine_ray_equals_local_and_shares_the_cache(
    ray_session, stories, stories_path: Path, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from probes.cli import app

    config = tmp_path / "cfg.yaml"
    config.write_text(
        f"model: {{name_or_path: {stories_path}, dtype: float32, device: cpu}}\n"
        "data: {train: datasets/story_moods, max_length: 64}\n"
        "layers: [2, 4]\npooling: mean\nbatch_size: 8\n"
        f"cache_dir: {tmp_path / 'ray'}\n"
        "engine: {workers: 2, block_tokens: 1500}\n"
        "tracking: {enabled: false}\n"
    )
    root = Path(__file__).resolve().parents[1]
    cwd = os.getcwd()
    os.chdir(root)
    try:
        result = CliRunner().invoke(app, ["collect", str(config), "--engine", "ray"])
        assert result.exit_code == 0, result.output
        (entry,) = (tmp_path / "ray").iterdir()
        written = manifest(entry)
        assert written["complete"]
        # The local engine finds the Ray entry complete: a cache hit, nothing recomputed.
        result = CliRunner().invoke(app, ["collect", str(config)])
        assert result.exit_code == 0, result.output
        assert manifest(entry) == written
    finally:
        os.chdir(cwd)
    _, model, tokenizer = stories
    ds = probes.load_dataset(root / "datasets/story_moods")
    kwargs = dict(batch_size=8, max_length=64, progress=False)
    from_ray = collect(model, tokenizer, ds, [2, 4], "mean", cache_dir=tmp_path / "ray", **kwargs)
    local = collect(model, tokenizer, ds, [2, 4], "mean", cache_dir=tmp_path / "local", **kwargs)
    assert_same(from_ray, local)


def test_worker_exception_names_the_block_rows_and_keeps_the_entry(ray_session, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # A GPT-2 with 24 positions: rows longer than that fail inside the model, on the worker.
    folder = tmp_path / "gpt2-24"
    torch.manual_seed(0)
    cfg = tiny_config("gpt2")
    cfg.n_positions = 24
    AutoModelForCausalLM.from_config(cfg).save_pretrained(folder)
    AutoTokenizer.from_pretrained(STORIES).save_pretrained(folder)
    source = ModelSource(str(folder))
    model, tokenizer = source.load()
    ds = mixed_dataset(40)
    with (
        RayEngine(source, EngineConfig(kind="ray", workers=1, block_tokens=100)) as rc,
        pytest.raises(EngineError) as info,
    ):
        rc.fill(model, tokenizer, ds, [1], "last", cache_dir=tmp_path / "cache", batch_size=4, progress=False)
    message = str(info.value)
    assert "IndexError" in message or "index" in message.lower()
    # The first block holds the longest rows: the message names them.
    lengths = {ex.id: len(tokenizer(ex.text)["input_ids"]) for ex in ds}
    named = [i for i in lengths if f"'{i}'" in message]
    assert named and all(lengths[i] > 24 for i in named)
    (entry,) = (tmp_path / "cache").iterdir()
    assert not manifest(entry)["complete"]  # a valid, resumable entry


@pytest.fixture(scope="module")
def collector(ray_session, stories):
    source, _, _ = stories
    with RayEngine(source, EngineConfig(kind="ray", workers=2, block_tokens=300)) as rc:
        yield rc


def test_tokens_pooling_bit_identical_both_ways(collector: RayEngine, stories, tmp_path: Path) -> None:
    _, model, tokenizer = stories
    ds = mixed_dataset(120, seed=1)
    args = (model, tokenizer, ds, [1, 3, "final_norm"], "tokens")
    summary = collector.fill(*args, cache_dir=tmp_path / "a", batch_size=4, max_length=128, progress=False)
    assert summary.rows_computed == 120 and summary.blocks > 2 and len(summary.worker_pids) == 2
    local = collect(*args, cache_dir=tmp_path / "b", batch_size=4, max_length=128, progress=False)
    assert_same(collect(*args, cache_dir=tmp_path / "a", batch_size=4, max_length=128, progress=False), local)
    # A local entry is a cache hit for the Ray engine: nothing is sent to a worker.
    again = collector.fill(*args, cache_dir=tmp_path / "b", batch_size=4, max_length=128, progress=False)
    assert again.rows_computed == 0 and again.blocks == 0


def test_workers_and_driver_write_the_same_entry(collector: RayEngine, stories, tmp_path: Path) -> None:
    _, model, tokenizer = stories
    ds = mixed_dataset(80, seed=4)
    args = (model, tokenizer, ds, [2, "final_norm"], ["mean", "tokens"])
    kwargs = dict(batch_size=4, max_length=128, progress=False)
    by_workers = collector.fill(*args, cache_dir=tmp_path / "w", **kwargs)
    engine = collector.engine
    collector.engine = engine.model_copy(update={"shard_writer": "driver"})
    try:
        by_driver = collector.fill(*args, cache_dir=tmp_path / "d", **kwargs)
    finally:
        collector.engine = engine
    assert (by_workers.shard_writer, by_driver.shard_writer) == ("workers", "driver")
    assert by_workers.blocks == by_driver.blocks > 1
    written = [manifest(f)["shards"] for f in (by_workers.folder, by_driver.folder)]
    assert written[0] == written[1]  # one compacted data file, the same sha256 and size


def test_killed_worker_is_restarted_and_nothing_is_lost_or_duplicated(
    collector: RayEngine, stories, tmp_path: Path
) -> None:
    _, model, tokenizer = stories
    ds = mixed_dataset(600, seed=2)
    before = collector.start(model)
    cache = tmp_path / "cache"
    out: dict = {}

    def run() -> None:
        try:
            out["summary"] = collector.fill(
                model,
                tokenizer,
                ds,
                [2],
                "mean",
                cache_dir=cache,
                batch_size=8,
                max_length=128,
                progress=False,
            )
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            out["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (
        list(cache.glob("*/shard-*.safetensors")) if cache.exists() else []
    ):
        time.sleep(0.01)
    os.kill(before[0], signal.SIGKILL)
    thread.join(timeout=170)
    assert "error" not in out, out.get("error")
    summary = out["summary"]
    assert summary.worker_pids - set(before), "no block ran on a restarted worker"
    assert before[0] not in collector.worker_pids()
    assert summary.shard_writer == "workers"  # on one machine every worker sees the cache folder
    (entry,) = cache.iterdir()
    m = manifest(entry)
    assert m["complete"] and m["rows_done"] == 600
    # A shard the killed worker wrote but never reported is deleted when the entry completes.
    assert sorted(p.name for p in entry.iterdir()) == ["data.safetensors", "manifest.json", "verified.json"]
    opened = ActivationCache(entry, m)
    rows = np.concatenate([r.numpy() for r, _, _ in opened.iter_shards()])  # validates: no duplicates
    assert np.array_equal(np.sort(rows), np.arange(600))
    local = collect(
        model,
        tokenizer,
        ds,
        [2],
        "mean",
        cache_dir=tmp_path / "local",
        batch_size=8,
        max_length=128,
        progress=False,
    )
    assert_same(
        collect(
            model, tokenizer, ds, [2], "mean", cache_dir=cache, batch_size=8, max_length=128, progress=False
        ),
        local,
    )


def test_interrupted_driver_leaves_a_resumable_entry(collector: RayEngine, stories, tmp_path: Path) -> None:
    _, model, tokenizer = stories
    ds = mixed_dataset(600, seed=3)
    cache = tmp_path / "cache"
    kwargs = dict(cache_dir=cache, batch_size=8, max_length=128, progress=False)

    def interrupt_after_first_shard() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            listed = [m for m in cache.glob("*/manifest.json") if json.loads(m.read_text())["shards"]]
            if listed:
                _thread.interrupt_main()  # what Ctrl-C does to the driver
                return
            time.sleep(0.005)

    watcher = threading.Thread(target=interrupt_after_first_shard)
    watcher.start()
    with pytest.raises(KeyboardInterrupt):
        collector.fill(model, tokenizer, ds, [3], "last", **kwargs)
    watcher.join()
    (entry,) = cache.iterdir()
    m = manifest(entry)
    assert not m["complete"] and 0 < m["rows_done"] < 600
    resumed = collector.fill(model, tokenizer, ds, [3], "last", **kwargs)
    assert resumed.rows_computed == 600 - m["rows_done"]
    assert manifest(entry)["complete"]
    got = collect(model, tokenizer, ds, [3], "last", **kwargs)
    local = collect(model, tokenizer, ds, [3], "last", **{**kwargs, "cache_dir": tmp_path / "local"})
    # Resumed rows ran in other batches than a fresh local run, so equal within float tolerance here.
    torch.testing.assert_close(got.features["layers.3"], local.features["layers.3"], rtol=0, atol=1e-5)


def test_generate_on_the_pool_writes_the_replies_a_local_run_writes(
    collector: RayEngine, stories, tmp_path: Path
) -> None:
    from probes.generate import SamplingSettings, generate_dataset

    _, model, tokenizer = stories
    root = Path(__file__).resolve().parents[1]
    prompts = probes.load_dataset(root / "datasets/honesty_instructed_pairs").subset(list(range(12)))
    sampling = SamplingSettings(n=2, temperature=0.8, max_new_tokens=10, seed=5)
    kwargs = dict(sampling=sampling, batch_size=5, progress=False)
    generate_dataset(model, tokenizer, prompts, tmp_path / "ray", engine=collector, **kwargs)
    generate_dataset(model, tokenizer, prompts, tmp_path / "local", **kwargs)
    # Same batches, same per-batch seeds, sampled on another process: the same bytes.
    assert (tmp_path / "ray" / "data.jsonl").read_bytes() == (tmp_path / "local" / "data.jsonl").read_bytes()
