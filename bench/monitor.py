"""Overhead of a streaming monitor on ``model.generate``, measured in one run.

    python bench/monitor.py            # ~5 minutes on 2 CPU cores
    python bench/monitor.py --quick    # one repeat of 16 tokens: a smoke test

Variants, each generating exactly ``--new-tokens`` tokens greedily (``min_new_tokens`` pins the length):

``plain``     ``model.generate`` alone (the baseline every ratio is relative to)
``linear``    the same call with a :class:`probes.Monitor` attached: one linear probe, EMA smoothing, the
              exact-stop criteria and logits processor (the threshold is out of reach, so every variant
              makes as many steps)
``attention`` one attention-pooled token probe (online softmax per row, two fused columns)
``detector``  one Mahalanobis anomaly detector (Ledoit-Wolf), scored per token with its own ``score_torch``
``3-probes``  three linear probes on two layers
``naive``     ``generate(output_hidden_states=True, return_dict_in_generate=True)``, then scoring every
              step's hidden states afterwards (what one writes without hooks)

Models are random-weight copies built from configs (nothing is downloaded): a GPT-2-small shape
(12 x 768, vocab 50257) and a SmolLM2-135M-like Llama shape (30 x 576, 9 heads / 3 KV heads, vocab 49152).
Timings interleave the variants round by round (alternating their order); the ratio of a variant is the
median over rounds of its time divided by the plain run of the same round (paired, so drifts in the load
of a shared machine cancel), for wall time and for the process's CPU time (one torch thread, so CPU time
is the work the variant does, largely independent of other jobs on the machine); ms per token is shown
for the fastest and the median repeat. Peak RSS: the kernel's high-water
mark is reset before each variant's last repeat (``/proc/self/clear_refs``), so each variant gets its own
peak in the same process; "peak over start" is what the variant adds on top of the loaded model.
Ms per generated token = wall time of the whole call (prefill included) / new tokens.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import os
import statistics
import time
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from _common import random_causal_lm  # noqa: E402

VARIANTS = ("plain", "linear", "attention", "detector", "3-probes", "naive")
SHAPES = ("gpt2-small", "llama-135m")


def build(shape: str):
    # Generation needs special token ids; setting them before the weights are made matches a real checkpoint.
    model = random_causal_lm(shape, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    model.generation_config.pad_token_id = 0
    return model


def make_bundles(model) -> dict[str, Any]:
    """One bundle per monitored variant, random probes with thresholds out of reach (every variant makes
    as many decoding steps as plain generate)."""
    import torch

    from probes.package import ProbeBundle
    from probes.train import AttentionProbe, LogisticProbe, MahalanobisDetector

    d, n_layers = model.config.hidden_size, model.config.num_hidden_layers
    g = torch.Generator().manual_seed(0)

    def probe() -> LogisticProbe:
        coef = torch.randn(d, generator=g) / d**0.5
        return LogisticProbe().load_state_tensors(
            {"coef": coef, "intercept": torch.zeros(1), "mean": torch.zeros(d), "scale": torch.ones(d),
             "C": torch.ones(1, dtype=torch.float64)}
        )  # fmt: skip

    def attention() -> AttentionProbe:
        return AttentionProbe().load_state_tensors(
            {"query": torch.randn(d, generator=g) / d**0.5, "value_coef": torch.randn(d, generator=g) / d**0.5,
             "value_intercept": torch.zeros(1), "mean": torch.zeros(d), "scale": torch.ones(d)}
        )  # fmt: skip

    mid, late = n_layers // 2, n_layers - 2
    benign = torch.randn(4 * d, d, generator=g)  # a Mahalanobis detector: one (d, d) matmul per token
    detector = MahalanobisDetector().fit(benign)
    three = ProbeBundle.from_probe(probe(), model=model, layer=mid, name="a", threshold=1e9)
    three.add(probe(), layer=mid, name="b", threshold=1e9).add(probe(), layer=late, name="c", threshold=1e9)
    return {
        "linear": ProbeBundle.from_probe(probe(), model=model, layer=mid, name="a", threshold=1e9),
        "attention": ProbeBundle.from_probe(attention(), model=model, layer=mid, name="a", threshold=1e9),
        "detector": ProbeBundle.from_probe(detector, model=model, layer=mid, name="a", threshold=1e9),
        "3-probes": three,
    }


def inputs(batch: int, prompt_len: int):
    import torch

    g = torch.Generator().manual_seed(batch)
    ids = torch.randint(3, 1000, (batch, prompt_len), generator=g)
    mask = torch.ones_like(ids)
    for row in range(1, batch):  # left padding of varying length, as in a real batch
        pad = row % 4 * 3
        ids[row, :pad], mask[row, :pad] = 0, 0
    return {"input_ids": ids, "attention_mask": mask}


def run_variant(variant: str, model, bundles, enc, new_tokens: int) -> None:
    import torch

    kw: dict[str, Any] = {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "do_sample": False}
    with torch.inference_mode():
        if variant == "plain":
            model.generate(**enc, **kw)
        elif variant in bundles:
            from probes.monitor import Monitor

            monitor = Monitor(bundles[variant], check_fingerprint=False)
            with monitor.attach(model):
                model.generate(**enc, **monitor.generate_kwargs(), **kw)
            monitor.fired.any()  # the result a caller reads; included in the timing
        else:
            from probes.train.aggregate import ema

            out = model.generate(**enc, output_hidden_states=True, return_dict_in_generate=True, **kw)
            for entry in bundles["3-probes"]:
                layer = entry.layer
                # hidden_states: one tuple per step, each (embeddings, block 1, ..., block L).
                h = torch.cat([step[layer][:, -1:] for step in out.hidden_states[1:]], dim=1)
                w, b = entry.score_form()
                scores = h.float() @ w + b  # (batch, steps)
                offsets = torch.arange(0, scores.numel() + 1, scores.shape[1])
                smoothed = ema(scores.reshape(-1), offsets, 0.3).reshape(scores.shape)
                (smoothed > entry.thresholds[0].value).any(dim=1)


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak_rss() -> int | None:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS; returns the current RSS in KiB.

    Linux >= 4.0 resets VmHWM when "5" is written to /proc/self/clear_refs, which gives each variant its
    own high-water mark inside one process (no model rebuilt per variant)."""
    gc.collect()
    # Hand freed heap back to the OS first, so the mark starts from what is really in use.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        return None
    return _status_kib("VmRSS")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--prompt-len", type=int, default=16)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--threads", type=int, default=1,
        help="torch intra-op threads (1: on a shared 2-core machine OpenMP barriers stall behind other jobs)",
    )  # fmt: skip
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.new_tokens = 1, 16

    import torch

    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {args.new_tokens} new tokens, "
          f"prompt {args.prompt_len} tokens, {args.repeats} interleaved repeats")  # fmt: skip
    rows = []
    for shape in SHAPES:
        model = build(shape)
        bundles = make_bundles(model)
        for batch in (1, 8):
            enc = inputs(batch, args.prompt_len)
            for variant in VARIANTS:  # warm-up: allocator, kernels, lazy imports
                run_variant(variant, model, bundles, enc, 4)
            times: dict[str, list[float]] = {v: [] for v in VARIANTS}
            cpu: dict[str, list[float]] = {v: [] for v in VARIANTS}
            rss: dict[str, tuple[int, int] | None] = {}
            for rep in range(args.repeats):
                last = rep == args.repeats - 1
                # Alternate the order so no variant always runs first (or right after the naive one's heap).
                for variant in VARIANTS if rep % 2 == 0 else VARIANTS[::-1]:
                    start = reset_peak_rss() if last else None
                    t0, c0 = time.perf_counter(), time.process_time()
                    run_variant(variant, model, bundles, enc, args.new_tokens)
                    times[variant].append(time.perf_counter() - t0)
                    cpu[variant].append(time.process_time() - c0)
                    if last:
                        peak = _status_kib("VmHWM")
                        rss[variant] = (start, peak) if start is not None and peak is not None else None
            for variant in VARIANTS:
                n = args.new_tokens
                best = min(times[variant])
                # Other jobs share the CPU: compare each repeat with the plain run of the same round
                # (paired), and report the median of those ratios.
                ratio = statistics.median(t / p for t, p in zip(times[variant], times["plain"], strict=True))
                # CPU time of this (single-threaded) process: what the variant costs, whatever else runs.
                cpu_ratio = statistics.median(t / p for t, p in zip(cpu[variant], cpu["plain"], strict=True))
                rows.append((shape, batch, variant, 1000 * best / n, 1000 * statistics.median(times[variant]) / n,
                             ratio, cpu_ratio, rss[variant]))  # fmt: skip
                print(f"  {shape:11s} batch {batch}  {variant:8s} {1000 * best / n:8.2f} ms/token"
                      f"  wall {ratio:5.3f}x  cpu {cpu_ratio:5.3f}x", flush=True)  # fmt: skip
        del model

    print(
        "\n| model | batch | variant | ms/token (best) | ms/token (median) | wall vs plain | CPU time vs plain | peak RSS MiB | peak over start MiB |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for shape, batch, variant, best, med, ratio, cpu_ratio, mem in rows:
        peak = f"{mem[1] / 1024:.0f}" if mem else "-"
        delta = f"{(mem[1] - mem[0]) / 1024:.1f}" if mem else "-"
        print(
            f"| {shape} | {batch} | {variant} | {best:.2f} | {med:.2f} | {ratio:.3f}x | {cpu_ratio:.3f}x | {peak} | {delta} |"
        )


if __name__ == "__main__":
    main()
