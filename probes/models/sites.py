"""Canonical site names and the one resolver that maps them onto a Hugging Face model.

Site names
----------
``layers.N``
    The residual stream *after* block ``N`` (``1 <= N <= L``); ``layers.0`` is the embedding output (the
    input of block 0, after any positional embedding or scaling the model applies). Negative ``N`` counts
    from the end: ``layers.-1`` is the raw residual after the last block. ``layers.N`` is always the raw
    residual, even for the last block: Hugging Face's ``hidden_states[-1]`` has the final norm applied for
    most decoders and is therefore *not* ``layers.L``.
``final_norm``
    The output of the model's final normalisation (what ``hidden_states[-1]`` holds for Llama, GPT-2, ...).

Architectures whose block list is not found automatically take ``layers_attr="path.to.blocks"`` (and
``norm_attr=`` for ``final_norm``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from probes.errors import SiteError, UnsupportedArchitectureError
from probes.models.site_names import FINAL_NORM, Site, is_site_name, parse_site, parse_sites

__all__ = [
    "FINAL_NORM",
    "Site",
    "block_list",
    "final_norm_module",
    "is_site_name",
    "num_layers",
    "parse_site",
    "parse_sites",
    "residual_hook",
]

# Paths tried in order, relative to the model and then to ``model.base_model``. Covers Llama, Mistral,
# Qwen2/3, Gemma/Gemma2/Gemma3, Phi/Phi3, GPT-2, GPT-J, GPT-NeoX, OPT, BERT/RoBERTa and their wrappers.
BLOCK_PATHS = (
    "model.layers",
    "layers",
    "model.language_model.layers",
    "language_model.layers",
    "transformer.h",
    "h",
    "gpt_neox.layers",
    "model.decoder.layers",
    "decoder.layers",
    "encoder.layer",
    "bert.encoder.layer",
    "roberta.encoder.layer",
)
NORM_PATHS = (
    "model.norm",
    "norm",
    "model.language_model.norm",
    "language_model.norm",
    "transformer.ln_f",
    "ln_f",
    "gpt_neox.final_layer_norm",
    "final_layer_norm",
    "model.decoder.final_layer_norm",
    "decoder.final_layer_norm",
    "model.final_layernorm",
    "final_layernorm",
)


def _get_attr_path(root: nn.Module, path: str) -> Any:
    obj: Any = root
    for part in path.split("."):
        if not hasattr(obj, part):
            return None
        obj = getattr(obj, part)
    return obj


def _roots(model: nn.Module) -> list[nn.Module]:
    roots = [model]
    base = getattr(model, "base_model", None)
    if isinstance(base, nn.Module) and base is not model:
        roots.append(base)
    return roots


def block_list(model: nn.Module, layers_attr: str | None = None) -> nn.ModuleList:
    """The model's list of transformer blocks, in order."""
    if layers_attr is None:
        layers_attr = getattr(model, "_probes_layers_attr", None)
    if layers_attr is not None:
        found = _get_attr_path(model, layers_attr)
        if not isinstance(found, nn.ModuleList):
            raise UnsupportedArchitectureError(
                f"layers_attr={layers_attr!r} does not name an nn.ModuleList on {type(model).__name__}; "
                "pass the dotted path of the model's list of transformer blocks (e.g. 'model.layers')."
            )
        return found
    for root in _roots(model):
        for path in BLOCK_PATHS:
            found = _get_attr_path(root, path)
            if isinstance(found, nn.ModuleList) and len(found) > 0:
                return found
    raise UnsupportedArchitectureError(
        f"Cannot find the transformer blocks of {type(model).__name__}. Pass layers_attr='dotted.path' "
        "(to load_model, collect or Monitor.attach) naming its nn.ModuleList of blocks, e.g. "
        "layers_attr='model.layers'."
    )


def final_norm_module(model: nn.Module, norm_attr: str | None = None) -> nn.Module | None:
    """The final normalisation module, or ``None`` for models without one (e.g. BERT)."""
    if norm_attr is None:
        norm_attr = getattr(model, "_probes_norm_attr", None)
    if norm_attr is not None:
        found = _get_attr_path(model, norm_attr)
        if not isinstance(found, nn.Module):
            raise UnsupportedArchitectureError(f"norm_attr={norm_attr!r} does not name a module.")
        return found
    for root in _roots(model):
        for path in NORM_PATHS:
            found = _get_attr_path(root, path)
            if isinstance(found, nn.Module):
                return found
    return None


def num_layers(model: nn.Module, layers_attr: str | None = None) -> int:
    return len(block_list(model, layers_attr))


def _hidden_from_output(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, (tuple, list)) else output


def _hidden_from_inputs(args: tuple, kwargs: dict) -> torch.Tensor:
    if args and isinstance(args[0], torch.Tensor):
        return args[0]
    hidden = kwargs.get("hidden_states")
    if hidden is None:
        raise SiteError("Could not find the hidden states passed to block 0 (neither first arg nor kwarg).")
    return hidden


@contextmanager
def residual_hook(
    model: nn.Module,
    site: Site,
    fn: Callable[[torch.Tensor], None],
    *,
    layers_attr: str | None = None,
    norm_attr: str | None = None,
) -> Iterator[None]:
    """Call ``fn(hidden)`` with the ``(batch, seq, d)`` residual at ``site`` on every forward pass.

    The hook is removed on exit whatever happens. ``fn`` may raise to abort the forward pass early.
    """
    if site.is_final_norm:
        module = final_norm_module(model, norm_attr)
        if module is None:
            raise SiteError(
                f"{type(model).__name__} has no final norm to read 'final_norm' from; use 'layers.-1' "
                "or pass norm_attr='dotted.path'."
            )
        handle = module.register_forward_hook(lambda _m, _a, out: fn(_hidden_from_output(out)))
    elif site.index == 0:
        block0 = block_list(model, layers_attr)[0]
        handle = block0.register_forward_pre_hook(
            lambda _m, args, kwargs: fn(_hidden_from_inputs(args, kwargs)), with_kwargs=True
        )
    else:
        block = block_list(model, layers_attr)[site.index - 1]
        handle = block.register_forward_hook(lambda _m, _a, out: fn(_hidden_from_output(out)))
    try:
        yield
    finally:
        handle.remove()
