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
Part 3 (issue 13) -- a mixed-length set (--mixed13-rows, default 200, log-uniform 16-512 tokens) on both
shapes, one torch thread, process CPU time beside wall, every ratio from one run: probes collect (auto,
token budget) vs output_hidden_states in file order, vs nnsight in file order and on the same length-sorted
batches (if installed), vs probes' own padded batches; computed/real tokens; mean+last+tokens from one call
vs one pooling. Part 4 -- peak RSS growth of pooling="tokens" (layers.2 of the gpt2-small shape) with a
cache, 1k -> 8k rows of ~20 tokens (--rss-rows), each size in a fresh subprocess.

    python bench/collect.py --threads 1                       # full run (the lead's)
    python bench/collect.py --quick --threads 1               # smoke run: 24 rows, RSS at 200/400 rows
    python bench/collect.py --only13 --threads 1 --shape gpt2-small --no-rss   # one shape of part 3

Repeats are interleaved across methods (method A, B, C, then again) and the median is reported, so drifting
load from other processes hits every method alike. Ratios are the point; absolute tokens/s depend on the box.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
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


def _cpu_wall(fn: Callable[[], object]) -> tuple[float, float]:
    start, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.process_time() - cpu, time.perf_counter() - start


def bench_issue13(shape: str, n_rows: int, repeats: int, hidden_states_once: bool = False) -> None:
    """Part 3: every method on one mixed-length set, interleaved repeats, medians of per-round ratios.

    ``hidden_states_once``: time the (slowest, no-target) output_hidden_states baseline in the first round only.
    """
    model = random_causal_lm(shape)
    mid = len(block_list(model)) // 2
    rng = np.random.default_rng(0)
    lengths = np.exp(rng.uniform(np.log(16), np.log(512), size=n_rows)).astype(int)
    rows = [Encoded(tuple(rng.integers(3, 30000, size=int(n)).tolist()), (True,) * int(n)) for n in lengths]
    real = int(lengths.sum())
    order = np.argsort(-lengths, kind="stable")
    file_batches = [np.arange(i, min(i + MIXED_BATCH, n_rows)) for i in range(0, n_rows, MIXED_BATCH)]
    sorted_batches = [order[i : i + MIXED_BATCH] for i in range(0, n_rows, MIXED_BATCH)]

    def padded(batch: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        width = int(lengths[batch].max())
        ids = torch.zeros(len(batch), width, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for j, r in enumerate(batch):
            ids[j, : lengths[r]] = torch.tensor(rows[r].input_ids)
            mask[j, : lengths[r]] = 1
        return ids, mask

    inputs_file = [padded(b) for b in file_batches]
    inputs_sorted = [padded(b) for b in sorted_batches]
    budget = MIXED_BATCH * 512
    stats: dict[str, int] = {}
    collect_encoded(model, rows, [mid], "last", max_tokens=budget, packing=True, stats=stats)  # packed counts
    auto_stats: dict[str, int] = {}
    collect_encoded(model, rows, [mid], "last", max_tokens=budget, stats=auto_stats)  # warm-up + the choice
    pad_stats: dict[str, int] = {}
    collect_encoded(model, rows[:4], [mid], "last", batch_size=MIXED_BATCH, packing=False, stats=pad_stats)

    def hidden_states_run(
        model: nn.Module, inputs: list[tuple[torch.Tensor, torch.Tensor]], mid: int
    ) -> None:
        # Keep only the layer read: holding every batch's logits (b x s x vocab) would take gigabytes.
        for i, m in inputs:
            out = model(input_ids=i, attention_mask=m, use_cache=False, output_hidden_states=True)
            _ = out.hidden_states[mid]
            del out

    methods: dict[str, Callable[[], object]] = {
        "probes collect (max_tokens, auto)": lambda: collect_encoded(
            model, rows, [mid], "last", max_tokens=budget
        ),
        "probes collect (max_tokens, packed)": lambda: collect_encoded(
            model, rows, [mid], "last", max_tokens=budget, packing=True
        ),
        "probes collect, padded sorted batches": lambda: collect_encoded(
            model, rows, [mid], "last", batch_size=MIXED_BATCH, packing=False
        ),
        "probes mean+last+tokens, one call": lambda: collect_encoded(
            model, rows, [mid], ["mean", "last", "tokens"], max_tokens=budget
        ),
        "output_hidden_states, file order": lambda: hidden_states_run(model, inputs_file, mid),
    }
    reader = nnsight_reader(model, mid)
    if reader is not None:
        methods["nnsight .stop(), file order"] = lambda: [reader(i, m) for i, m in inputs_file]
        methods["nnsight .stop(), same sorted batches"] = lambda: [reader(i, m) for i, m in inputs_sorted]
    cpu: dict[str, list[float]] = {k: [] for k in methods}
    wall: dict[str, list[float]] = {k: [] for k in methods}
    once = {"output_hidden_states, file order"} if hidden_states_once else set()
    with torch.inference_mode():
        for round_ in range(repeats):
            for name, fn in methods.items():
                if round_ and name in once:
                    continue
                c, w = _cpu_wall(fn)
                cpu[name].append(c)
                wall[name].append(w)
    ref = "probes collect (max_tokens, auto)"
    print(f"\n{shape}: {n_rows} rows, {repeats} round(s){' (hidden states: round 1 only)' if once else ''}")
    print(f"  {n_rows} rows, log-uniform 16-512 tokens ({real} tokens), layers.{mid}")
    print(
        f"  computed/real tokens: packed {stats['computed_tokens'] / stats['real_tokens']:.3f}, padded sorted "
        f"{padded_tokens(lengths, sorted_batches) / real:.3f}, file order {padded_tokens(lengths, file_batches) / real:.3f}"
    )
    print(
        f"  probes (max_tokens={budget}, packing='auto') chose {'packed' if auto_stats['packed'] else 'padded'} "
        f"batches: {auto_stats['batches']} passes, computed/real {auto_stats['computed_tokens'] / real:.3f}"
    )
    print(f"  {'method':<40} {'CPU s':>8} {'wall s':>8} {'CPU ratio vs probes':>20}")
    for name in methods:
        ratio = statistics.median(c / p for c, p in zip(cpu[name], cpu[ref], strict=False))
        print(
            f"  {name:<40} {statistics.median(cpu[name]):>8.2f} {statistics.median(wall[name]):>8.2f} "
            f"{ratio:>19.2f}x"
        )
    if reader is None:
        print("  nnsight: not installed (pip install nnsight) - its rows are skipped")


_RSS_CHILD = """
import sys, tempfile
sys.path.insert(0, {bench!r})
import numpy as np, torch
torch.set_num_threads(1)
from _common import random_causal_lm
from probes.collection import collect
from probes.data.card import DatasetCard
from probes.data.dataset import ContrastDataset
from probes.data.types import Example
from transformers import AutoTokenizer
tok = AutoTokenizer.from_pretrained({stories!r})
model = random_causal_lm("gpt2-small", vocab_size=512)
words = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "far"]
rng = np.random.default_rng(0)
rows = [Example(id=f"r{{i}}", label=i % 2, text=" ".join(rng.choice(words, 18))) for i in range({n})]
ds = ContrastDataset(rows, DatasetCard(name="rss", label_names=("a", "b")))
def status(key):
    line = next(x for x in open("/proc/self/status") if x.startswith(key))
    return int(line.split()[1])
before = status("VmRSS")
open("/proc/self/clear_refs", "w").write("5")  # resets the peak (VmHWM) to the current RSS
with tempfile.TemporaryDirectory() as d:
    acts = collect(model, tok, ds, [2], "tokens", cache_dir=d, progress=False, max_tokens=4096)
    print(status("VmHWM") - before, len(acts["layers.2"].values))
"""


def bench_rss(sizes: list[int]) -> None:
    """Part 4: peak RSS growth (MiB) of a cached tokens-pooling collection, each size in a fresh process."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    stories = root.parent / "shared" / "models" / "stories260K"
    print("\npooling='tokens' with a cache, gpt2-small shape (vocab 512), ~20-token rows: peak RSS growth")
    for n in sizes:
        code = _RSS_CHILD.format(bench=str(root / "bench"), stories=str(stories), n=n)
        env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
        )
        growth_kib, tokens = out.stdout.split()[-2:]
        print(f"  {n:>6} rows ({tokens} tokens): {int(growth_kib) / 1024:>7.1f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one repeat and 16 mixed-length rows")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per method (default 3)")
    parser.add_argument(
        "--mixed-rows", type=int, default=None, help="rows of the mixed-length set (default 32)"
    )
    parser.add_argument("--mixed13-rows", type=int, default=None, help="rows of part 3 (default 200)")
    parser.add_argument("--rss-rows", type=int, nargs="*", default=None, help="part 4 sizes (1000 .. 8000)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (issue 13 uses 1)")
    parser.add_argument("--only13", action="store_true", help="run only parts 3 and 4")
    parser.add_argument(
        "--shape", choices=("gpt2-small", "smollm2-135m-like"), default=None, help="part 3 on one shape only"
    )
    parser.add_argument("--no-rss", action="store_true", help="skip part 4")
    parser.add_argument(
        "--hidden-states-once", action="store_true", help="part 3: time output_hidden_states in round 1 only"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = args.repeats or (1 if args.quick else 3)
    rows13 = args.mixed13_rows or (24 if args.quick else 200)
    if args.only13:
        for shape in [args.shape] if args.shape else ["gpt2-small", "smollm2-135m-like"]:
            bench_issue13(shape, rows13, repeats, args.hidden_states_once)
        if not args.no_rss:
            bench_rss(args.rss_rows or ([200, 400] if args.quick else [1000, 2000, 4000, 8000]))
        return
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
    for shape in ("gpt2-small", "smollm2-135m-like"):
        bench_issue13(shape, rows13, repeats)
    bench_rss(args.rss_rows or ([200, 400] if args.quick else [1000, 2000, 4000, 8000]))


if __name__ == "__main__":
    main()
