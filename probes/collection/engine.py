"""The forward engine: length-sorted batches, exact padding, hooks at every site, and an early stop.

:func:`run_rows` pads each batch (attention mask, and ``position_ids`` whenever the model takes them, so a
padded row sees the positions it would see alone), runs one forward pass of the base model with a hook on
every requested site, and stops the pass at the deepest site by raising :class:`_StopForward` from its hook.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from probes.collection.pooling import Pooler
from probes.data.types import Encoded
from probes.errors import SiteError
from probes.models.sites import Site, block_list, final_norm_module, residual_hook


class _StopForward(Exception):
    """Raised by the deepest site's hook to end the forward pass; never escapes :func:`run_rows`."""


def input_device(model: nn.Module) -> torch.device:
    # The embedding's device is where inputs must go, also for models split across devices by accelerate.
    get = getattr(model, "get_input_embeddings", None)
    emb = get() if callable(get) else None
    if isinstance(emb, nn.Module):
        param = next(emb.parameters(), None)
        if param is not None:
            return param.device
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _contains(root: nn.Module, module: nn.Module) -> bool:
    return any(m is module for m in root.modules())


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode for the duration (dropout would make activations random), restoring each module's flag."""
    training = [m for m in model.modules() if m.training]
    model.eval()
    try:
        yield
    finally:
        for m in training:
            m.training = True


@dataclass
class _Runner:
    """Which module to call and with which arguments, decided once per collection (not per batch)."""

    module: nn.Module
    pass_position_ids: bool
    extra: dict[str, Any]

    @classmethod
    def build(cls, model: nn.Module, sites: list[Site], layers_attr: str | None) -> _Runner:
        blocks = block_list(model, layers_attr)
        needed: list[nn.Module] = [blocks]
        if any(s.is_final_norm for s in sites):
            norm = final_norm_module(model)
            if norm is not None:
                needed.append(norm)
        # Call the base model (no LM head, so no logits) when it holds every hooked module.
        base = getattr(model, "base_model", None)
        module = model
        if isinstance(base, nn.Module) and base is not model and all(_contains(base, m) for m in needed):
            module = base
        params = inspect.signature(module.forward).parameters
        extra: dict[str, Any] = {}
        if "use_cache" in params:
            extra["use_cache"] = False
        config = getattr(model, "config", None)
        takes_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        # A config that asks for all hidden states or attentions would make every pass collect them.
        for flag in ("output_hidden_states", "output_attentions"):
            if getattr(config, flag, False) and (flag in params or takes_kwargs):
                extra[flag] = False
        return cls(module, "position_ids" in params, extra)

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> None:
        kwargs = dict(self.extra)
        if self.pass_position_ids:
            position_ids = attention_mask.cumsum(-1) - 1
            kwargs["position_ids"] = position_ids.clamp_(min=0)
        self.module(input_ids=input_ids, attention_mask=attention_mask, **kwargs)


def _batches(order: np.ndarray, batch_size: int) -> list[np.ndarray]:
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def _pad_batch(
    rows: Sequence[Encoded], pad_id: int, padding_side: str, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    target = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, row in enumerate(rows):
        n = len(row)
        sl = slice(width - n, width) if padding_side == "left" else slice(0, n)
        input_ids[i, sl] = torch.as_tensor(row.input_ids, dtype=torch.long)
        attention[i, sl] = 1
        target[i, sl] = torch.as_tensor(row.target_mask, dtype=torch.bool)
    return input_ids.to(device), attention.to(device), target.to(device)


def run_rows(
    model: nn.Module,
    encoded: Sequence[Encoded],
    todo: np.ndarray,
    sites: list[Site],
    pooling: str,
    *,
    batch_size: int,
    pad_id: int,
    padding_side: str,
    layers_attr: str | None,
    out_dtype: torch.dtype,
    device: torch.device,
    on_batch: Callable[[torch.Tensor, dict[str, torch.Tensor], torch.Tensor], None],
    progress_bar: Any,
) -> None:
    """Forward the rows ``todo`` in length-sorted batches, calling ``on_batch(rows, features, counts)``."""
    runner = _Runner.build(model, sites, layers_attr)
    pooler = Pooler(pooling, out_dtype)
    deepest = max(sites, key=lambda s: s.index)
    captured: dict[str, torch.Tensor] = {}

    def make_hook(site: Site) -> Callable[[torch.Tensor], None]:
        def hook(hidden: torch.Tensor) -> None:
            captured[site.name] = pooler(hidden)
            if site is deepest:
                raise _StopForward

        return hook

    lengths = np.fromiter((len(encoded[i]) for i in todo), dtype=np.int64, count=len(todo))
    # Longest first and stable, so equal-length rows keep dataset order.
    order = todo[np.argsort(-lengths, kind="stable")]
    with ExitStack() as stack:
        for site in sites:
            stack.enter_context(residual_hook(model, site, make_hook(site), layers_attr=layers_attr))
        for batch in _batches(order, batch_size):
            rows = [encoded[i] for i in batch]
            input_ids, attention, target = _pad_batch(rows, pad_id, padding_side, device)
            pooler.set_batch(target)
            captured.clear()
            with suppress(_StopForward):
                runner(input_ids, attention)
            missing = [s.name for s in sites if s.name not in captured]
            if missing:
                raise SiteError(
                    f"The forward pass never reached site(s) {missing}; the model does not run the modules the "
                    "site resolver picked. Pass layers_attr= (and norm_attr=) naming the blocks it runs."
                )
            counts = target.sum(dim=1).cpu()
            on_batch(torch.as_tensor(batch, dtype=torch.int64), dict(captured), counts)
            progress_bar.update(len(batch))


def resolve_padding_side(padding_side: str | None, tokenizer: Any) -> str:
    side = padding_side or getattr(tokenizer, "padding_side", None) or "right"
    if side not in ("left", "right"):
        raise ValueError(f"padding_side={side!r} is not supported; use 'left' or 'right'.")
    return side


def tokenizer_pad_id(tokenizer: Any) -> int:
    # Any valid id works: padded positions are masked out and never read.
    for attr in ("pad_token_id", "eos_token_id", "unk_token_id"):
        value = getattr(tokenizer, attr, None)
        if isinstance(value, int):
            return value
    return 0
