"""Benchmark the logit lens against one plain forward pass, and tuned-lens training throughput.

    python bench/lens.py            # a few minutes on 2 quiet CPU cores
    python bench/lens.py --quick    # smoke run: stories260K and a small random GPT-2, one repeat

For each model, one batch of ``--batch`` texts of ``--seq`` tokens:
    plain forward        model(input_ids): every block and the LM head once (the logits of the last layer)
    lens forward part    the lens's pass alone: hooks on every residual site, stopped after the last block
    logit lens (all)     probes.logit_lens over every layer: the pass + the shared final norm and unembedding
                         applied to every layer's residual + top-k + KL to the final layer
    naive lens           output_hidden_states=True, then norm + lm_head per layer (what one writes by hand)
The lens has to unembed L + 1 residuals where the plain forward unembeds one, so its cost over the plain
forward grows with vocab x d / (per-block cost): the report gives both the forward-part ratio and the full one.
Tuned lens: tokens/s of TunedLens.fit's optimisation (every layer's translator in one batched step).
Repeats are interleaved and the median is reported.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from _common import random_causal_lm, timed  # noqa: E402

import probes  # noqa: E402
from probes.lens import residuals  # noqa: E402

STORIES = Path(__file__).resolve().parents[2] / "shared" / "models" / "stories260K"


def texts_of(tokenizer, n: int, seq: int) -> list[str]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 500, (n, seq), generator=g)  # ids every tokenizer here knows (stories vocab 512)
    out = [tokenizer.decode(row.tolist()) for row in ids]
    return out


def bench_model(name: str, model, tokenizer, batch: int, seq: int, repeats: int) -> dict:
    texts = texts_of(tokenizer, batch, seq)
    enc = tokenizer(texts, return_tensors="pt", padding=True)
    n_tokens = int(enc["attention_mask"].sum())
    norm = probes.models.final_norm_module(model)
    head = model.get_output_embeddings()

    def plain():
        with torch.inference_mode():
            return model(**enc).logits

    def forward_part():
        return residuals(model, tokenizer, texts, batch_size=batch)

    def lens():
        return probes.logit_lens(model, tokenizer, texts, batch_size=batch)

    def naive():
        with torch.inference_mode():
            hs = model(**enc, output_hidden_states=True).hidden_states
            return [head(norm(h)).log_softmax(-1).topk(5, dim=-1) for h in hs]

    methods = {
        "plain forward": plain,
        "lens forward part": forward_part,
        "logit lens (all)": lens,
        "naive lens": naive,
    }
    times: dict[str, list[float]] = {k: [] for k in methods}
    for fn in methods.values():  # warm-up
        fn()
    for _ in range(repeats):
        for key, fn in methods.items():
            times[key].append(timed(fn)[1])
    med = {k: statistics.median(v) for k, v in times.items()}
    base = med["plain forward"]
    n_layers = probes.models.num_layers(model)
    print(
        f"\n{name}: {n_layers} blocks, d={model.config.hidden_size}, vocab={head.out_features}, {batch} x {seq} tokens"
    )
    for key, t in med.items():
        print(f"  {key:<20} {t * 1000:8.1f} ms   {t / base:5.2f}x plain   {n_tokens / t:9.0f} tok/s")
    return med


def bench_tuned(model, tokenizer, steps: int, batch_tokens: int) -> None:
    ds = probes.load_dataset(Path(__file__).resolve().parents[1] / "datasets" / "story_moods")
    texts = [ex.text for ex in ds.examples if ex.text]
    lens = probes.TunedLens(steps=steps, batch_tokens=batch_tokens, lr=3e-3).fit(model, tokenizer, texts)
    t = lens.training_
    print(
        f"\ntuned lens on stories260K: {t['n_texts']} texts, {t['n_tokens']} tokens collected in {t['collect_s']:.1f}s; "
        f"{t['steps']} steps x {batch_tokens} tokens in {t['fit_s']:.1f}s = {t['tokens_per_s']:.0f} tokens/s"
    )
    print(f"  mean KL to final per layer, logit lens: {[round(x, 3) for x in t['kl_logit_lens']]}")
    print(f"  mean KL to final per layer, tuned lens: {[round(x, 3) for x in t['kl_tuned_lens']]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: small models, one repeat")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not STORIES.exists():
        sys.exit(f"{STORIES} is missing: the benchmark reads the real stories260K beside the repository.")
    stories, tokenizer = probes.load_model(STORIES, dtype="float32", device="cpu", progress=False)
    if args.quick:
        args.batch, args.seq, args.repeats = 4, 32, 1
        models = {"stories260K": stories, "random gpt2 (4 blocks, d=64)": _small_gpt2()}
    else:
        models = {
            "stories260K": stories,
            "random gpt2-small": random_causal_lm("gpt2-small"),
            "random SmolLM2-135M-like": random_causal_lm("smollm2"),
        }
    for name, model in models.items():
        bench_model(name, model, tokenizer, args.batch, args.seq, args.repeats)
    bench_tuned(stories, tokenizer, steps=20 if args.quick else 300, batch_tokens=512 if args.quick else 2048)


def _small_gpt2():
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    config = AutoConfig.for_model("gpt2", n_embd=64, n_layer=4, n_head=4, vocab_size=512, n_positions=256)
    return AutoModelForCausalLM.from_config(config).eval()


if __name__ == "__main__":
    main()
