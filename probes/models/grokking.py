"""The one-layer transformer of the grokking experiment (a + b mod p), as a Hugging Face causal LM.

Nanda et al. (2023, "Progress measures for grokking via mechanistic interpretability") trained this model
on 30% of the pairs ``(a, b)`` and watched it generalise long after it had memorised them. Its mechanism is
known: the embedding writes cos/sin(2πk·a/p) for a handful of key frequencies ``k``, and the logits are
sums of cos(2πk(a + b - c)/p). That makes it a known-answer test for probes (``tests/test_grokking.py``).

The architecture follows the paper: token and learned position embeddings, one block of attention
(4 heads, no biases) and a ReLU MLP, **no LayerNorm**, an untied unembedding. Input is the three tokens
``a b =``. ``model.norm`` is an identity so the canonical ``final_norm`` site and lenses work unchanged.

The classes register with ``transformers``' Auto classes under ``model_type="probes_grokking"`` when
:func:`register` runs (``probes.load_model`` calls it), so a saved folder loads with ``probes.load_model``.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

import torch
from torch import nn

MODEL_TYPE = "probes_grokking"


class GrokkingBlock(nn.Module):
    """Attention then MLP, each added to the residual stream; no normalisation anywhere."""

    def __init__(self, d_model: int, n_heads: int, d_mlp: int) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"hidden_size={d_model} is not divisible by num_attention_heads={n_heads}.")
        self.n_heads = n_heads
        self.q_proj = nn.Linear(d_model, d_model, bias=False)
        self.k_proj = nn.Linear(d_model, d_model, bias=False)
        self.v_proj = nn.Linear(d_model, d_model, bias=False)
        self.o_proj = nn.Linear(d_model, d_model, bias=False)
        self.mlp_in = nn.Linear(d_model, d_mlp)
        self.mlp_out = nn.Linear(d_mlp, d_model)

    def forward(
        self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        b, t, d = hidden_states.shape
        h = self.n_heads

        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.view(b, t, h, d // h).transpose(1, 2)

        q, k, v = (
            heads(self.q_proj(hidden_states)),
            heads(self.k_proj(hidden_states)),
            heads(self.v_proj(hidden_states)),
        )
        scores = q @ k.transpose(-1, -2) / math.sqrt(d // h)
        allowed = torch.ones(t, t, dtype=torch.bool, device=scores.device).tril()
        if attention_mask is not None:
            allowed = allowed & attention_mask[:, None, None, :].bool()
        scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
        attn = scores.softmax(-1) @ v
        hidden_states = hidden_states + self.o_proj(attn.transpose(1, 2).reshape(b, t, d))
        return hidden_states + self.mlp_out(torch.relu(self.mlp_in(hidden_states)))


@lru_cache(maxsize=1)
def _classes() -> tuple[type, type, type]:
    from transformers import PretrainedConfig, PreTrainedModel
    from transformers.modeling_outputs import BaseModelOutput, CausalLMOutput

    class GrokkingConfig(PretrainedConfig):
        model_type = MODEL_TYPE

        def __init__(
            self,
            modulus: int = 113,
            vocab_size: int = 115,
            hidden_size: int = 128,
            num_attention_heads: int = 4,
            intermediate_size: int = 512,
            num_hidden_layers: int = 1,
            max_position_embeddings: int = 3,
            **kwargs: Any,
        ) -> None:
            self.modulus = modulus
            self.vocab_size = vocab_size
            self.hidden_size = hidden_size
            self.num_attention_heads = num_attention_heads
            self.intermediate_size = intermediate_size
            self.num_hidden_layers = num_hidden_layers
            self.max_position_embeddings = max_position_embeddings
            kwargs.setdefault("tie_word_embeddings", False)
            super().__init__(**kwargs)

    class GrokkingPreTrainedModel(PreTrainedModel):
        config_class = GrokkingConfig
        base_model_prefix = "model"
        _no_split_modules = ["GrokkingBlock"]

        def _init_weights(self, module: nn.Module) -> None:
            # Nanda et al.: every matrix ~ N(0, 1/d_model), biases zero.
            std = 1.0 / math.sqrt(self.config.hidden_size)
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=std)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)

    class GrokkingModel(GrokkingPreTrainedModel):
        def __init__(self, config: GrokkingConfig) -> None:
            super().__init__(config)
            self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
            self.embed_positions = nn.Embedding(config.max_position_embeddings, config.hidden_size)
            self.layers = nn.ModuleList(
                GrokkingBlock(config.hidden_size, config.num_attention_heads, config.intermediate_size)
                for _ in range(config.num_hidden_layers)
            )
            self.norm = nn.Identity()  # no final norm; here so lenses and the final_norm site need no case
            self.post_init()

        def get_input_embeddings(self) -> nn.Module:
            return self.embed_tokens

        def set_input_embeddings(self, value: nn.Module) -> None:
            self.embed_tokens = value

        def forward(
            self,
            input_ids: torch.Tensor,
            attention_mask: torch.Tensor | None = None,
            position_ids: torch.Tensor | None = None,
            **kwargs: Any,
        ) -> BaseModelOutput:
            if position_ids is None:
                position_ids = torch.arange(input_ids.shape[1], device=input_ids.device)[None]
            hidden = self.embed_tokens(input_ids) + self.embed_positions(position_ids)
            for block in self.layers:
                hidden = block(hidden, attention_mask)
            return BaseModelOutput(last_hidden_state=self.norm(hidden))

    class GrokkingForCausalLM(GrokkingPreTrainedModel):
        def __init__(self, config: GrokkingConfig) -> None:
            super().__init__(config)
            self.model = GrokkingModel(config)
            self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
            self.post_init()

        def get_input_embeddings(self) -> nn.Module:
            return self.model.embed_tokens

        def get_output_embeddings(self) -> nn.Module:
            return self.lm_head

        def forward(
            self,
            input_ids: torch.Tensor,
            attention_mask: torch.Tensor | None = None,
            position_ids: torch.Tensor | None = None,
            labels: torch.Tensor | None = None,
            **kwargs: Any,
        ) -> CausalLMOutput:
            hidden = self.model(input_ids, attention_mask, position_ids).last_hidden_state
            logits = self.lm_head(hidden)
            loss = None
            if labels is not None:
                loss = nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten())
            return CausalLMOutput(loss=loss, logits=logits)

    return GrokkingConfig, GrokkingModel, GrokkingForCausalLM


def register() -> None:
    """Make ``model_type="probes_grokking"`` folders loadable by the Auto classes (idempotent)."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    config_cls, model_cls, lm_cls = _classes()
    try:
        AutoConfig.register(MODEL_TYPE, config_cls)
        AutoModel.register(config_cls, model_cls)
        AutoModelForCausalLM.register(config_cls, lm_cls)
    except ValueError:  # already registered (register is called on every load_model)
        pass


def build(**config: Any) -> nn.Module:
    """A freshly initialised ``GrokkingForCausalLM`` (``config`` overrides the defaults of the paper)."""
    config_cls, _, lm_cls = _classes()
    return lm_cls(config_cls(**config))


def make_tokenizer(modulus: int = 113) -> Any:
    """A word-level tokenizer: ``"0"`` … ``"p-1"`` are ids ``0..p-1``, ``"="`` is ``p``, ``"<pad>"`` is ``p+1``.

    Only the pad token is a control token, so the probe may read every position of ``"a b ="``.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {str(i): i for i in range(modulus)}
    vocab["="] = modulus
    vocab["<pad>"] = modulus + 1
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", unk_token="<pad>")
