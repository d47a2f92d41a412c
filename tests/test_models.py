"""load_model on the real offline checkpoints, and the site resolver across the tiny architectures."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import TINY_ARCHS, build_tiny_model
from torch import nn

from probes.errors import SiteError, UnsupportedArchitectureError
from probes.models import (
    block_list,
    final_norm_module,
    fingerprint_matches,
    load_model,
    model_fingerprint,
    parse_site,
    parse_sites,
)
from probes.models.load import resolve_device, resolve_dtype


def test_load_stories_is_causal_eval_fp32(stories_path: Path) -> None:
    model, tokenizer = load_model(stories_path, device="cpu")
    assert type(model).__name__ == "LlamaForCausalLM"
    assert not model.training
    assert next(model.parameters()).dtype == torch.float32
    assert model._probes_source["name"] == str(stories_path.resolve())
    assert model._probes_source["revision"] is None
    assert tokenizer.pad_token is not None
    assert len(block_list(model)) == 5


def test_load_minilm_is_encoder(minilm_path: Path) -> None:
    model, tokenizer = load_model(minilm_path, device="cpu")
    assert type(model).__name__ == "BertModel"
    assert final_norm_module(model) is None
    assert len(block_list(model)) == 6
    ids = tokenizer("hello world", return_tensors="pt")
    with torch.inference_mode():
        out = model(**ids)
    assert out.last_hidden_state.shape[-1] == 384


def test_dtype_and_kind_overrides(stories_path: Path) -> None:
    model, _ = load_model(stories_path, dtype="bfloat16", device="cpu")
    assert next(model.parameters()).dtype == torch.bfloat16
    encoder, _ = load_model(stories_path, kind="encoder", device="cpu")
    assert type(encoder).__name__ == "LlamaModel"  # AutoModel: no LM head


def test_fingerprint_is_dtype_independent_and_weight_sensitive(stories_path: Path) -> None:
    fp32, _ = load_model(stories_path, dtype="float32", device="cpu")
    bf16, _ = load_model(stories_path, dtype="bfloat16", device="cpu")
    assert fingerprint_matches(model_fingerprint(fp32), model_fingerprint(bf16)) == []
    tiny, _ = build_tiny_model("llama")
    assert "weight_hash" in fingerprint_matches(model_fingerprint(fp32), model_fingerprint(tiny))


def test_bad_arguments_raise_with_the_fix(stories_path: Path) -> None:
    with pytest.raises(ValueError, match="float32"):
        load_model(stories_path, dtype="float8")
    with pytest.raises(ValueError, match="causal"):
        load_model(stories_path, kind="seq2seq")  # type: ignore[arg-type]
    with pytest.raises(UnsupportedArchitectureError, match="layers_attr"):
        load_model(stories_path, layers_attr="model.nope")
    assert resolve_dtype("auto") == "auto"
    assert resolve_device("cpu") == torch.device("cpu")


def test_layers_attr_is_stored_and_used(stories_path: Path) -> None:
    model, _ = load_model(stories_path, layers_attr="model.layers", norm_attr="model.norm", device="cpu")
    assert model._probes_layers_attr == "model.layers"
    assert block_list(model) is model.model.layers
    assert final_norm_module(model) is model.model.norm


def test_pad_token_added_when_missing(stories_path: Path, tmp_path: Path) -> None:
    folder = tmp_path / "nopad"
    shutil.copytree(stories_path, folder)
    cfg_path = folder / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.pop("pad_token", None)
    cfg_path.chmod(0o644)
    cfg_path.write_text(json.dumps(cfg))
    _, tokenizer = load_model(folder, device="cpu")
    assert tokenizer.pad_token == tokenizer.eos_token == "</s>"


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_site_resolver_finds_blocks_and_norm(arch: str) -> None:
    model, _ = build_tiny_model(arch)
    blocks = block_list(model)
    assert isinstance(blocks, nn.ModuleList) and len(blocks) == 4
    norm = final_norm_module(model)
    assert (norm is None) == (arch == "bert")
    sites = parse_sites("all", len(blocks))
    assert [s.name for s in sites] == [f"layers.{i}" for i in range(5)]
    assert parse_site(-1, 4).name == "layers.4"
    assert parse_site("final_norm", 4).is_final_norm


def test_unknown_architecture_error_names_the_override() -> None:
    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stack = nn.ModuleList([nn.Linear(4, 4) for _ in range(2)])

    odd = Odd()
    with pytest.raises(UnsupportedArchitectureError, match="layers_attr"):
        block_list(odd)
    assert block_list(odd, "stack") is odd.stack
    with pytest.raises(SiteError, match="out of range"):
        parse_site("layers.3", 2)
