"""Benchmark activation collection: tokens/s and ratios, all measured in the same run.

    python bench/collect.py            # ~2-3 minutes on 2 quiet CPU cores
    python bench/collect.py --quick    # smoke run: one repeat, 16 mixed-length rows

Part 1 -- one batch of 16 x 128 tokens on two random models with real shapes (gpt2-small: 12 blocks, d=768;
SmolLM2-135M-like Llama: 30 blocks, d=576, 9 heads, 3 KV heads, MLP 1536), reading the middle layer:
    full forward            model(input_ids) with logits: the cost of running the whole model
    output_hidden_states    HF's way to read a layer: a full forward returning every hidden state
    nnsight .stop()         nnsight trace saving the layer, then tracer.stop() (if nnsight is installed)
    probes collect          collect_encoded(..., layers=[mid], pooling="last"): the engine of probes.collect()
Part 2 -- a dataset of mixed lengths (16-512 tokens) through collect in length-sorted batches versus the same
batches in dataset order (unsorted), with the padding each one computes.

Repeats are interleaved across methods (method A, B, C, then again) and the median is reported, so drifting
load from other processes hits every method alike. Ratios are the point; absolute tokens/s depend on the box.
"""

from __future__ import annotations

import argparse
import os
import statistics
from collections.abc import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _common import random_causal_lm, timed  # noqa: E402
from torch import nn  # noqa: E402

from probes.collection.collect import collect_encoded  # noqa: E402
from probes.data.types import Encoded  # noqa: E402
from probes.models import block_list  # noqa: E402

BATCH, SEQ = 16, 128
MIXED_BATCH = 8  # smaller batches for part 2, so a few dozen rows already make several batches


def nnsight_reader(model: nn.Module, mid: int) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None:
    try:
        from nnsight import NNsight
    except ImportError:
        return None
    wrapped = NNsight(model)
    path = "transformer.h" if hasattr(model, "transformer") else "model.layers"

    def run(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        with wrapped.trace(input_ids=input_ids, attention_mask=attention_mask, use_cache=False) as tracer:
            envoy = wrapped
            for part in path.split("."):
                envoy = getattr(envoy, part)
            hidden = envoy[mid - 1].output.save()  # layers.mid = output of block mid-1
            tracer.stop()
        return hidden

    return run


def bench_methods(shape: str, repeats: int) -> list[tuple[str, str, float]]:
    model = random_causal_lm(shape)
    n_layers = len(block_list(model))
    mid = n_layers // 2
    gen = torch.Generator().manual_seed(0)
    input_ids = torch.randint(3, 30000, (BATCH, SEQ), generator=gen)
    attention_mask = torch.ones_like(input_ids)
    rows = [Encoded(tuple(r.tolist()), (True,) * SEQ) for r in input_ids]

    methods: dict[str, Callable[[], object]] = {
        "full forward": lambda: model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False),
        "output_hidden_states": lambda: model(
            input_ids=input_ids, attention_mask=attention_mask, use_cache=False, output_hidden_states=True
        ).hidden_states[mid],
    }
    reader = nnsight_reader(model, mid)
    if reader is not None:
        methods["nnsight .stop()"] = lambda: reader(input_ids, attention_mask)
    methods["probes collect"] = lambda: collect_encoded(model, rows, [mid], "last", batch_size=BATCH)

    times: dict[str, list[float]] = {name: [] for name in methods}
    with torch.inference_mode():
        # Warm-up on two rows: first-call allocations, HF's lazily installed hooks, nnsight's tracing setup.
        small = (input_ids[:2], attention_mask[:2])
        model(input_ids=small[0], attention_mask=small[1], use_cache=False, output_hidden_states=True)
        if reader is not None:
            reader(*small)
        collect_encoded(model, rows[:2], [mid], "last")
        for _ in range(repeats):
            for name, fn in methods.items():
                times[name].append(timed(fn)[1])
    out = [
        (shape, f"{name} (layers.{mid} of {n_layers})", statistics.median(ts)) for name, ts in times.items()
    ]
    if reader is None:
        out.insert(2, (shape, "nnsight .stop()", float("nan")))
    return out


def padded_tokens(lengths: np.ndarray, batches: list[np.ndarray]) -> int:
    return int(sum(len(b) * lengths[b].max() for b in batches))


def bench_mixed(n_rows: int) -> list[tuple[str, float, int, int]]:
    model = random_causal_lm("gpt2-small")
    mid = len(block_list(model)) // 2
    rng = np.random.default_rng(0)
    lengths = rng.integers(16, 513, size=n_rows)
    rows = [Encoded(tuple(rng.integers(3, 30000, size=int(n)).tolist()), (True,) * int(n)) for n in lengths]
    real = int(lengths.sum())
    order = np.argsort(-lengths, kind="stable")
    sorted_batches = [order[i : i + MIXED_BATCH] for i in range(0, n_rows, MIXED_BATCH)]
    unsorted_batches = [np.arange(i, min(i + MIXED_BATCH, n_rows)) for i in range(0, n_rows, MIXED_BATCH)]

    def unsorted() -> None:
        # The same engine fed one dataset-order batch at a time: no sorting across batches.
        for batch in unsorted_batches:
            collect_encoded(model, [rows[i] for i in batch], [mid], "last", batch_size=MIXED_BATCH)

    with torch.inference_mode():
        collect_encoded(model, rows[:2], [mid], "last")  # warm-up
        _, t_unsorted = timed(unsorted)
        _, t_sorted = timed(lambda: collect_encoded(model, rows, [mid], "last", batch_size=MIXED_BATCH))
    return [
        ("dataset order (unsorted)", t_unsorted, real, padded_tokens(lengths, unsorted_batches)),
        ("length-sorted (collect)", t_sorted, real, padded_tokens(lengths, sorted_batches)),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one repeat and 16 mixed-length rows")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per method (default 3)")
    parser.add_argument(
        "--mixed-rows", type=int, default=None, help="rows of the mixed-length set (default 32)"
    )
    args = parser.parse_args()
    repeats = args.repeats or (1 if args.quick else 3)
    mixed_rows = args.mixed_rows or (16 if args.quick else 32)

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, device cpu, fp32, batch {BATCH} x {SEQ}"
    )
    print(f"median of {repeats} interleaved repeat(s) after one warm-up\n")
    tokens = BATCH * SEQ
    header = (
        f"{'model':<18} {'method':<42} {'s/batch':>8} {'tokens/s':>9} {'x full':>7} {'vs hidden_states':>17}"
    )
    print(header)
    print("-" * len(header))
    for shape in ("gpt2-small", "smollm2-135m-like"):
        results = bench_methods(shape, repeats)
        full = results[0][2]
        hidden = results[1][2]
        for model_name, method, seconds in results:
            if np.isnan(seconds):
                print(f"{model_name:<18} {method:<42} {'skipped (nnsight not installed)':>44}")
                continue
            print(
                f"{model_name:<18} {method:<42} {seconds:>8.3f} {tokens / seconds:>9.0f} "
                f"{seconds / full:>7.2f} {hidden / seconds:>16.2f}x"
            )
    print(f"\nmixed lengths: {mixed_rows} rows of 16-512 tokens, gpt2-small, layers.6, batch {MIXED_BATCH}")
    header = f"{'batching':<26} {'seconds':>8} {'real tok/s':>11} {'computed tokens':>16} {'padding':>8} {'speedup':>8}"
    print(header)
    print("-" * len(header))
    mixed = bench_mixed(mixed_rows)
    base = mixed[0][1]
    for name, seconds, real, computed in mixed:
        print(
            f"{name:<26} {seconds:>8.2f} {real / seconds:>11.0f} {computed:>16} "
            f"{(computed - real) / computed:>8.1%} {base / seconds:>7.2f}x"
        )


if __name__ == "__main__":
    main()
