"""Benchmark the model fingerprint: milliseconds per fingerprint against one forward pass, in the same run.

    python bench/fingerprint.py            # ~1 minute on 2 CPU cores
    python bench/fingerprint.py --quick    # smoke run: 2 repeats

A fingerprint is taken when a bundle is saved, when a Monitor attaches (``check_model``) and when a collection
computes its cache key: once per run or attach, never per token. It samples 64 elements of every parameter
(``sampled_weight_hashes``) and sums every parameter once (``weights_finite``, the NaN/inf check). The
baseline is one forward pass of the same model on one row of 128 tokens - the cheapest thing a probe ever
asks of the model; the old fingerprint (a hash of block 0's first matrix) is timed beside it. CPU time is
process time with one torch thread; wall time beside it. ``--device cuda`` times it on a GPU.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from _common import random_causal_lm  # noqa: E402

from probes.models import block_list  # noqa: E402
from probes.models.fingerprint import model_fingerprint, sampled_weight_hashes, weights_finite  # noqa: E402


def old_fingerprint(model) -> str:
    """What probes 0.1.0 hashed: block 0's first 2-D weight, cast to bfloat16."""
    import hashlib

    weight = next(p for p in block_list(model)[0].parameters() if p.ndim == 2)
    data = weight.detach().to("cpu", torch.bfloat16).contiguous().view(torch.int16).numpy().tobytes()
    return hashlib.sha256(data).hexdigest()[:16]


def _time(fn, repeats: int, device: str) -> tuple[float, float]:
    """Median (wall ms, CPU ms) over ``repeats`` calls."""
    walls, cpus = [], []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        walls.append(1e3 * (time.perf_counter() - w0))
        cpus.append(1e3 * (time.process_time() - c0))
    return statistics.median(walls), statistics.median(cpus)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    repeats = 2 if args.quick else 7
    print(f"device={args.device} threads={args.threads} repeats={repeats} (medians)")
    print(f"{'model':<22} {'what':<34} {'wall ms':>9} {'cpu ms':>9} {'cpu x fwd':>10}")
    dtypes = (torch.float32, torch.bfloat16) if args.device != "cpu" else (torch.float32,)
    for shape in ("gpt2-small", "smollm2-135m"):
        for dtype in dtypes:  # (bf16 matmuls on a CPU are emulated: no meaningful baseline there)
            model = random_causal_lm(shape).to(args.device, dtype)
            ids = torch.randint(0, 1000, (1, 128), device=args.device)

            def forward(model=model, ids=ids) -> None:
                with torch.inference_mode():
                    model(ids)

            forward()  # warm-up
            model_fingerprint(model)
            base_wall, base_cpu = _time(forward, repeats, args.device)
            name = f"{shape} {str(dtype).removeprefix('torch.')}"
            n_params = sum(p.numel() for p in model.parameters()) / 1e6
            print(
                f"{name:<22} {f'forward, 1 x 128 tokens ({n_params:.0f}M)':<34} {base_wall:9.1f} {base_cpu:9.1f} {1.0:10.3f}"
            )
            for label, fn in (
                ("old: block 0's first matrix", lambda model=model: old_fingerprint(model)),
                ("model_fingerprint (all below)", lambda model=model: model_fingerprint(model)),
                ("  sampled_weight_hashes", lambda model=model: sampled_weight_hashes(model)),
                ("  weights_finite (full pass)", lambda model=model: weights_finite(model)),
            ):
                wall, cpu = _time(fn, repeats, args.device)
                print(f"{name:<22} {label:<34} {wall:9.1f} {cpu:9.1f} {cpu / base_cpu:10.3f}")
            del model


if __name__ == "__main__":
    main()
