"""Pieces the benchmark scripts share: the random-weight model shapes they time and a timer.

Imported as ``from _common import ...`` (``python bench/<x>.py`` puts ``bench/`` on the path). torch and
transformers are imported inside the functions so that ``--help`` stays instant.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def random_causal_lm(shape: str, **config_attrs: Any) -> Any:
    """A seeded random-weight causal LM in eval mode; nothing is downloaded.

    ``shape`` is ``"gpt2-small"`` (12 blocks, d=768, vocab 50257); any other name gives a SmolLM2-135M-like
    Llama (30 blocks, d=576, 9 heads / 3 KV heads, MLP 1536, vocab 49152). ``config_attrs`` are set on the
    config before the weights are made (e.g. ``pad_token_id``, which gives Llama's embedding a padding row).
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    if shape == "gpt2-small":
        config = AutoConfig.for_model(
            "gpt2", n_embd=768, n_layer=12, n_head=12, vocab_size=50257, n_positions=1024
        )
    else:
        config = AutoConfig.for_model(
            "llama",
            hidden_size=576,
            num_hidden_layers=30,
            num_attention_heads=9,
            num_key_value_heads=3,
            intermediate_size=1536,
            vocab_size=49152,
            max_position_embeddings=2048,
            tie_word_embeddings=True,
        )
    for key, value in config_attrs.items():
        setattr(config, key, value)
    return AutoModelForCausalLM.from_config(config).eval()


def timed(fn: Callable[[], T]) -> tuple[T, float]:
    """``(fn(), wall seconds)``."""
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def timed_both(fn: Callable[[], T]) -> tuple[T, float, float]:
    """``(fn(), wall seconds, process CPU seconds)``: CPU time is the fairer number on a shared machine."""
    start, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - start, time.process_time() - cpu
