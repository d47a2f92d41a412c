"""The logit lens: what the model would predict if it stopped after each layer.

:func:`logit_lens` runs **one** forward pass through the collection engine (:func:`probes.collection.engine.run_rows`,
hooks on every residual site ``layers.0 .. layers.L``, stopped after the last block so the model's own head
never runs), then applies the model's shared final norm and unembedding to every layer's residual. The
deepest layer's lens is the model's own output distribution; ``kl_to_final`` says how far each earlier layer
is from it. A :class:`~probes.lens.tuned.TunedLens` passed as ``translators=`` first maps each layer's
residual with its fitted affine translator (the tuned lens).

Models whose logits are not ``lm_head(final_norm(h))`` (Gemma 2/3's final soft-capping, say) get the lens of
that plain map: the standard logit lens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from probes.errors import UnsupportedArchitectureError


@dataclass
class LensResult:
    """The lens of one text: per layer (``layers``), per position (``tokens``), the top-k next tokens."""

    tokens: list[str]  # the input tokens, one per position
    input_ids: list[int]
    layers: list[str]  # "layers.0" .. "layers.L"
    top_ids: np.ndarray  # (n_layers, n_positions, k) int64
    top_tokens: list[list[list[str]]]  # [layer][position][rank]
    top_probs: np.ndarray  # (n_layers, n_positions, k) float32
    kl_to_final: np.ndarray  # (n_layers, n_positions) nats: KL(final || layer)
    lens: str = "logit"  # "logit" or "tuned"
    logits: torch.Tensor | None = field(default=None, repr=False)  # (n_layers, n_positions, vocab) if asked

    def table(self, max_positions: int = 16) -> str:
        """A plain-text table: a row per layer, a column per position, the top-1 token and its probability."""
        n_pos = min(len(self.tokens), max_positions)
        width = 12
        head = "layer".ljust(10) + "".join(_cell(t, width) for t in self.tokens[:n_pos]) + "KL→final"
        lines = [
            f"{self.lens} lens: top-1 next token and its probability per layer (rows) and input token (columns)"
        ]
        lines += [head, "-" * len(head)]
        for li, name in enumerate(self.layers):
            cells = "".join(
                _cell(f"{self.top_tokens[li][p][0]} {self.top_probs[li, p, 0]:.2f}", width)
                for p in range(n_pos)
            )
            lines.append(name.ljust(10) + cells + f"{float(self.kl_to_final[li].mean()):.3f}")
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return {
            "lens": self.lens,
            "tokens": self.tokens,
            "input_ids": self.input_ids,
            "layers": self.layers,
            "top_ids": self.top_ids.tolist(),
            "top_tokens": self.top_tokens,
            "top_probs": np.round(self.top_probs.astype(np.float64), 6).tolist(),
            "kl_to_final": np.round(self.kl_to_final.astype(np.float64), 6).tolist(),
        }


def _cell(text: str, width: int) -> str:
    text = text.replace("\n", "\\n")
    return (text[: width - 1] + "…" if len(text) > width else text).ljust(width + 1)


def lm_head_of(model: nn.Module) -> nn.Module:
    """The unembedding (``get_output_embeddings()``), or a one-line error for models without one."""
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    if not isinstance(head, nn.Module):
        name = getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__
        raise UnsupportedArchitectureError(
            f"{name} ({type(model).__name__}) has no LM head to read a lens through: a lens needs a causal LM "
            "that unembeds its last residual into next-token logits, not an encoder."
        )
    return head


def unembed(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """``lm_head(final_norm(hidden))`` in float32: the model's own map from the last residual to logits."""
    from probes.models.sites import final_norm_module

    norm = final_norm_module(model)
    head = lm_head_of(model)
    param = next(head.parameters())
    x = hidden.to(device=param.device, dtype=param.dtype)
    if norm is not None:
        x = norm(x)
    return head(x).float()


def _token_strings(tokenizer: Any, ids: Sequence[int], cache: dict[int, str] | None = None) -> list[str]:
    # Each distinct id is decoded once: a lens asks for layers x positions x k tokens, mostly repeats.
    cache = {} if cache is None else cache
    out = []
    for i in ids:
        i = int(i)
        if i not in cache:
            cache[i] = tokenizer.decode([i])
        out.append(cache[i])
    return out


def residuals(
    model: nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    batch_size: int = 8,
    layers_attr: str | None = None,
    add_special_tokens: bool = True,
    max_length: int | None = None,
) -> tuple[list[list[int]], list[torch.Tensor]]:
    """Token ids and the ``(n_layers, n_tokens, d)`` residuals ``layers.0 .. layers.L`` of each text.

    One early-stopped pass per batch through the collection engine, exact under padding.
    """
    from probes.collection.engine import (
        eval_mode,
        input_device,
        resolve_padding_side,
        run_rows,
        tokenizer_pad_id,
    )
    from probes.collection.pooling import feature_key
    from probes.data.types import Encoded
    from probes.models.sites import num_layers, parse_sites

    ids_list: list[list[int]] = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"]
        if max_length is not None:
            ids = ids[:max_length]
        if not ids:
            raise ValueError(f"the text {text[:40]!r} encodes to zero tokens; give the lens some text.")
        ids_list.append(list(ids))
    encoded = [Encoded(tuple(ids), (True,) * len(ids)) for ids in ids_list]
    sites = parse_sites("all", num_layers(model, layers_attr))
    out: list[torch.Tensor | None] = [None] * len(texts)

    def on_batch(rows: torch.Tensor, features: dict[str, torch.Tensor], counts: torch.Tensor) -> None:
        stacked = torch.stack(
            [features[feature_key(s.name, "tokens")] for s in sites]
        )  # (n_layers, tokens of the batch, d)
        start = 0
        for row, count in zip(rows.tolist(), counts.tolist(), strict=True):
            out[row] = stacked[:, start : start + count]
            start += count

    class _NoBar:
        def update(self, _n: int) -> None: ...

    with eval_mode(model), torch.inference_mode():
        run_rows(
            model,
            encoded,
            np.arange(len(encoded)),
            sites,
            ["tokens"],
            batch_size=batch_size,
            pad_id=tokenizer_pad_id(tokenizer),
            padding_side=resolve_padding_side(None, tokenizer),
            layers_attr=layers_attr,
            out_dtype=torch.float32,
            device=input_device(model),
            on_batch=on_batch,
            progress_bar=_NoBar(),
        )
    return ids_list, [r for r in out if r is not None]


def logit_lens(
    model: nn.Module,
    tokenizer: Any,
    text: str | Sequence[str],
    *,
    k: int = 5,
    translators: Any = None,
    return_logits: bool = False,
    batch_size: int = 8,
    layers_attr: str | None = None,
    add_special_tokens: bool = True,
    max_length: int | None = None,
) -> LensResult | list[LensResult]:
    """Per layer and position, the top-``k`` next tokens and probabilities, and the KL to the final layer.

    ``text`` is one string (returns one :class:`LensResult`) or a list (returns a list). ``translators`` is
    a fitted :class:`~probes.lens.tuned.TunedLens` (the tuned lens); ``return_logits`` keeps the full
    ``(n_layers, n_positions, vocab)`` logits on the result (memory: layers x tokens x vocab floats).
    """
    lm_head_of(model)  # fail before the forward pass for an encoder
    if translators is not None:
        translators.check_model(model)
    single = isinstance(text, str)
    texts = [text] if single else list(text)
    ids_list, resid = residuals(
        model,
        tokenizer,
        texts,
        batch_size=batch_size,
        layers_attr=layers_attr,
        add_special_tokens=add_special_tokens,
        max_length=max_length,
    )
    n_layers = resid[0].shape[0]
    names = [f"layers.{i}" for i in range(n_layers)]
    results = []
    decoded: dict[int, str] = {}
    with torch.inference_mode():
        for ids, h in zip(ids_list, resid, strict=True):
            if translators is not None:
                h = translators.translate(h)
            logits_all, kls, tops_p, tops_i = [], [], [], []
            final = unembed(model, h[-1:]).log_softmax(-1)[0]
            T, V = h.shape[1], final.shape[-1]
            # Layers in chunks of ~32M logits: one batched norm + unembedding each, bounded memory.
            step = max(1, (1 << 25) // max(T * V, 1))
            for lo in range(0, n_layers, step):
                logits = unembed(model, h[lo : lo + step])  # (chunk, T, V)
                logp = logits.log_softmax(-1)
                kls.append((final.exp() * (final - logp)).sum(-1).clamp_min(0.0))
                p, i = logp.exp().topk(min(k, V), dim=-1)
                tops_p.append(p)
                tops_i.append(i)
                if return_logits:
                    logits_all.append(logits.cpu())
            kl = torch.cat(kls)
            top_p, top_i = torch.cat(tops_p), torch.cat(tops_i)
            top_ids = top_i.cpu().numpy()
            flat = _token_strings(tokenizer, top_ids.reshape(-1).tolist(), decoded)
            kk = top_ids.shape[-1]
            top_tokens = [
                [flat[(li * T + p) * kk : (li * T + p + 1) * kk] for p in range(T)] for li in range(n_layers)
            ]
            results.append(
                LensResult(
                    tokens=_token_strings(tokenizer, ids, decoded),
                    input_ids=list(ids),
                    layers=names,
                    top_ids=top_ids,
                    top_tokens=top_tokens,
                    top_probs=top_p.cpu().numpy().astype(np.float32),
                    kl_to_final=kl.cpu().numpy().astype(np.float32),
                    lens="tuned" if translators is not None else "logit",
                    logits=torch.cat(logits_all) if return_logits else None,
                )
            )
    return results[0] if single else results
