"""Benchmark the Ray engine against the local engine: rows/s, scaling, overhead, driver memory.

    python bench/ray_collect.py            # ~5-8 minutes on 2 quiet CPU cores
    python bench/ray_collect.py --quick    # smoke run: 200 rows, a 2-block model, RSS at 200 -> 1,000 rows

Part 1 -- one dataset (2,000 rows, log-uniform 4-128 words, about 6-250 tokens) through one model (GPT-2-small width, d=768, 4
blocks, random weights saved to a temporary folder so Ray workers load it with ``load_model``), reading
``layers.4`` with mean pooling, batch 16, each run into a fresh cache:
    local         probes.collect in this process, 1 torch thread
    ray x1        RayEngine with 1 worker (1 CPU, 1 torch thread)
    ray x2        RayEngine with 2 workers
Times exclude loading the model (and starting the actors, reported beside), include encoding, planning,
forward passes and writing the cache. Scaling efficiency = (ray x2 rows/s) / (ray x1 rows/s) / 2;
Ray-1 overhead = ray x1 seconds / local seconds (target <= 1.10).
Part 2 -- driver peak RSS growth (sampled every 5 ms, over the RSS before the call) while Ray fills a cache
with pooled features of 3 sites of d=768 (a 2-block model, rows of 8-48 tokens), for 2,000 and 20,000 rows:
with the workers writing the shards into the cache folder (``shard_writer: auto`` on one machine) and with
the driver writing them (``shard_writer: driver``, the path for workers that do not see the folder); beside
it the same for the local engine, whose result holds every row's features in RAM.

All runs happen in one process on one local Ray cluster (``ray.init(num_cpus=2)``); ratios are the point.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
STORIES = ROOT.parent / "shared" / "models" / "stories260K"
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
    "small",
    "brown",
    "dog",
    "they",
    "ran",
    "to",
    "the",
    "park",
    "every",
    "day",
    "and",
    "played",
    "in",
    "the",
    "warm",
    "sun",
    "until",
    "it",
    "was",
    "time",
    "to",
    "go",
    "home",
    "for",
    "dinner",
]


def save_model(folder: Path, n_layer: int) -> Path:
    from _common import random_causal_lm
    from transformers import AutoTokenizer

    random_causal_lm("gpt2-small", n_layer=n_layer).save_pretrained(folder)
    AutoTokenizer.from_pretrained(STORIES).save_pretrained(folder)  # ids < 512: valid for any vocab
    return folder


def dataset(n: int, lo: int, hi: int, seed: int = 0):
    import numpy as np

    from probes.data.card import DatasetCard
    from probes.data.dataset import ContrastDataset
    from probes.data.types import Example

    rng = np.random.default_rng(seed)
    words = np.exp(rng.uniform(np.log(lo), np.log(hi), size=n)).astype(int)
    rows = [
        Example(id=f"r{i}", label=i % 2, text=" ".join(rng.choice(WORDS, size=int(k))), group=f"g{i}")
        for i, k in enumerate(words)
    ]
    return ContrastDataset(rows, DatasetCard(name="ray-bench", label_names=("neg", "pos")))


class PeakRSS:
    """Peak resident memory of this process above its level at start, sampled in a thread."""

    def __init__(self) -> None:
        import psutil

        self.proc = psutil.Process()
        self.base = self.proc.memory_info().rss
        self.peak = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.005)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)

    @property
    def growth_mib(self) -> float:
        return (self.peak - self.base) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="200 rows, a 2-block model, RSS at 200 -> 1,000")
    parser.add_argument("--rows", type=int, default=None, help="rows of part 1 (default 2,000)")
    parser.add_argument("--rss-rows", type=int, nargs=2, default=None, help="rows of part 2 (default 2k 20k)")
    parser.add_argument("--part", type=int, choices=(1, 2), default=None, help="run only part 1 or part 2")
    args = parser.parse_args()
    rows = args.rows or (200 if args.quick else 2000)
    rss_rows = args.rss_rows or ([200, 1000] if args.quick else [2000, 20000])
    n_layer = 2 if args.quick else 4

    import gc

    import ray
    import torch

    import probes
    from probes.collection.ray_engine import ModelSource, RayEngine
    from probes.config import EngineConfig

    torch.set_num_threads(1)
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    work = Path(tempfile.mkdtemp(prefix="ray-bench-"))
    folder = save_model(work / "model", n_layer)
    source = ModelSource(str(folder))
    model, tokenizer = source.load()
    ds = dataset(rows, 4, 128)
    site, kwargs = [n_layer], dict(batch_size=16, max_length=512, progress=False)
    print(
        f"torch {torch.__version__}, ray {ray.__version__}, 1 torch thread per engine, {os.cpu_count()} CPUs"
    )
    if args.part in (None, 1):
        print(
            f"part 1: {rows} rows, GPT-2-small width d=768 x {n_layer} blocks (random), layers.{n_layer}, mean\n"
        )

    if args.part in (None, 1):
        probes.collect(model, tokenizer, ds.subset(range(8)), site, "mean", **kwargs)  # warm-up
        start = time.perf_counter()
        local = probes.collect(model, tokenizer, ds, site, "mean", cache_dir=work / "local", **kwargs)
        t_local = time.perf_counter() - start
        results = [("local", t_local, 0.0)]
        for workers in (1, 2):
            engine = EngineConfig(kind="ray", workers=workers, cpus_per_worker=1, block_tokens=16384)
            with RayEngine(source, engine) as rc:
                t0 = time.perf_counter()
                rc.start(model)
                t_start = time.perf_counter() - t0
                rc.fill(
                    model,
                    tokenizer,
                    ds.subset(range(8)),
                    site,
                    "mean",
                    cache_dir=work / f"warm{workers}",
                    **kwargs,
                )
                t0 = time.perf_counter()
                rc.fill(model, tokenizer, ds, site, "mean", cache_dir=work / f"ray{workers}", **kwargs)
                results.append((f"ray x{workers}", time.perf_counter() - t0, t_start))
            got = probes.collect(
                model, tokenizer, ds, site, "mean", cache_dir=work / f"ray{workers}", **kwargs
            )
            key = f"layers.{n_layer}"
            assert torch.equal(got.features[key], local.features[key]), "Ray and local differ"
        print(f"{'engine':<8} {'seconds':>8} {'rows/s':>8} {'actor start s':>14} {'vs local':>9}")
        for name, seconds, t_start in results:
            extra = f"{t_start:>14.1f}" if name != "local" else f"{'-':>14}"
            print(f"{name:<8} {seconds:>8.2f} {rows / seconds:>8.1f} {extra} {seconds / t_local:>8.2f}x")
        t1, t2 = results[1][1], results[2][1]
        print(f"\nray x2 vs ray x1: {t1 / t2:.2f}x (scaling efficiency {t1 / t2 / 2:.0%}; target >= 1.7x)")
        print(f"ray x1 overhead vs local: {t1 / t_local:.2f}x (target <= 1.10x)")
        print("activations: Ray (1 and 2 workers) equal to local bit for bit")

    if args.part == 1:
        ray.shutdown()
        return
    print("\npart 2: driver peak RSS growth, pooled mean of layers 0-2 (d=768), rows of 8-48 tokens")
    with contextlib.suppress(NameError):
        del local
    del model
    gc.collect()
    folder2 = save_model(work / "model2", 2)
    source2 = ModelSource(str(folder2))
    model2, _ = source2.load()
    print(
        f"{'rows':>7} {'tokens':>9} {'ray, workers write':>19} {'ray, driver writes':>19} {'local':>8} "
        f"{'features':>9}   (MiB)"
    )
    engine = EngineConfig(kind="ray", workers=2, cpus_per_worker=1, block_tokens=16384)
    with RayEngine(source2, engine) as rc:
        rc.start(model2)
        # Warm-up of both engines (first-call allocations, lazy imports) before anything is measured.
        warm = dataset(64, 6, 36, seed=1)
        rc.fill(model2, tokenizer, warm, [0, 1, 2], "mean", cache_dir=work / "rss-warm", **kwargs)
        probes.collect(model2, tokenizer, warm, [0, 1, 2], "mean", cache_dir=None, **kwargs)
        for n in rss_rows:
            big = dataset(n, 6, 36, seed=n)
            gc.collect()
            with PeakRSS() as ray_rss:
                summary = rc.fill(
                    model2, tokenizer, big, [0, 1, 2], "mean", cache_dir=work / f"rss{n}", **kwargs
                )
            assert summary.shard_writer == "workers", summary.shard_writer
            rc.engine = engine.model_copy(update={"shard_writer": "driver"})
            gc.collect()
            with PeakRSS() as driver_rss:
                by_driver = rc.fill(
                    model2, tokenizer, big, [0, 1, 2], "mean", cache_dir=work / f"rss{n}-d", **kwargs
                )
            rc.engine = engine
            assert by_driver.shard_writer == "driver", by_driver.shard_writer
            gc.collect()
            with PeakRSS() as local_rss:
                acts = probes.collect(model2, tokenizer, big, [0, 1, 2], "mean", cache_dir=None, **kwargs)
            tokens = summary.tokens
            del acts
            feats = n * 768 * 3 * 4 / 2**20
            print(
                f"{n:>7} {tokens:>9} {ray_rss.growth_mib:>19.1f} {driver_rss.growth_mib:>19.1f} "
                f"{local_rss.growth_mib:>8.1f} {feats:>9.1f}"
            )
    ray.shutdown()


if __name__ == "__main__":
    main()
