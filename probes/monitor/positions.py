"""Which positions of a forward call are new, read from what the caller passed and checked against the
monitor's own count, so that a release of ``transformers`` that renames an argument fails loudly.

``generate`` has passed the KV cache as ``past_key_values=`` (transformers <= 5.23) and as ``cache=``
(5.24 and later); hand-written loops may pass either. The cache's length says how many positions came
before this call; a 2-D ``attention_mask`` that is wider than the new ``input_ids`` says the same thing
independently. :func:`locate` reads every signal present, refuses when they disagree or when a
continuation arrives with no cache it can read, and the monitor checks the result against the number of
positions it has itself seen (:meth:`probes.monitor.monitor.Monitor`).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from probes.errors import MonitorError

#: Keywords under which supported transformers releases pass the KV cache to ``forward``, newest first.
CACHE_KEYWORDS = ("cache", "past_key_values")


@dataclass(frozen=True)
class Located:
    """What the arguments of one forward call say about its positions."""

    past: int  # positions already in the KV cache before this call
    evidence: str | None  # which argument said so (None: nothing did, a fresh sequence)


def cache_length(value: Any) -> int | None:
    """Positions held by a KV cache object, or ``None`` if ``value`` is not a cache this can read.

    ``transformers.Cache`` objects (and anything with ``get_seq_length()``) report it themselves; the
    legacy tuple-of-``(key, value)`` format stores it as the key tensor's sequence dimension.
    """
    get = getattr(value, "get_seq_length", None)
    if callable(get):
        return int(get())
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], (tuple, list)) and value[0]:
        first = value[0][0]
        if isinstance(first, torch.Tensor) and first.ndim >= 2:
            return int(first.shape[-2])
    return None


def find_cache(kwargs: Mapping[str, Any]) -> tuple[str | None, int | None]:
    """``(keyword, length)`` of the KV cache among a forward call's keyword arguments.

    The known keywords come first; after them any argument that behaves like a ``transformers.Cache``
    (has ``get_seq_length()``) is accepted under whatever name a newer release gives it. A known keyword
    holding something that is not a readable cache is refused rather than ignored.
    """
    for key in CACHE_KEYWORDS:
        value = kwargs.get(key)
        if value is None:
            continue
        n = cache_length(value)
        if n is None:
            raise MonitorError(
                f"The model received {key}= of type {type(value).__name__}, which is not a KV cache the "
                "monitor can read (no get_seq_length()), so it cannot tell which positions are new. "
                "Pass a transformers Cache object."
            )
        return key, n
    for key, value in kwargs.items():
        if value is None or isinstance(value, (torch.Tensor, bool, int, float, str)) or key in CACHE_KEYWORDS:
            continue
        if callable(getattr(value, "get_seq_length", None)):
            return key, int(value.get_seq_length())
    return None, None


def locate(kwargs: Mapping[str, Any], seq: int) -> Located:
    """How many positions precede the ``seq`` new ones of this call, from the cache and the mask.

    Raises :class:`MonitorError` when the cache and the attention mask disagree, or when the mask says
    the call continues a sequence but no cache the monitor can read arrived (the calling convention of a
    release this monitor does not know).
    """
    key, past = find_cache(kwargs)
    mask = kwargs.get("attention_mask")
    mask_past = int(mask.shape[-1]) - seq if isinstance(mask, torch.Tensor) and mask.ndim == 2 else None
    if past is None:
        position = kwargs.get("cache_position")
        if isinstance(position, torch.Tensor) and position.numel():
            key, past = "cache_position", int(position.reshape(-1)[0])  # older releases only; rare path
    if past is not None:
        if mask_past is not None and mask_past > 0 and mask_past != past:
            raise MonitorError(
                f"Positions do not add up: {key}= says {past} positions precede this call, but the attention "
                f"mask covers {mask_past} before its {seq} new ones. The monitor cannot tell which tokens "
                "are new; refusing to score."
            )
        return Located(past, key)
    if mask_past is not None and mask_past > 0:
        raise MonitorError(
            f"The attention mask covers {mask_past} positions before the {seq} new ones, but no KV cache "
            f"arrived as {' or '.join(f'{k}=' for k in CACHE_KEYWORDS)} (nor any argument with "
            "get_seq_length()): this transformers release passes the cache in a way the monitor does not "
            "know, so it cannot tell which positions are new. Refusing rather than scoring the wrong tokens; "
            "use a supported transformers release (see the README) or pass the cache as cache=."
        )
    return Located(0, None)


def cache_keyword(model: nn.Module) -> str:
    """The keyword this model's ``forward`` takes its KV cache under (``cache`` or ``past_key_values``)."""
    params = inspect.signature(model.forward).parameters
    for key in CACHE_KEYWORDS:
        if key in params:
            return key
    raise MonitorError(
        f"{type(model).__name__}.forward takes neither {' nor '.join(f'{k}=' for k in CACHE_KEYWORDS)}: "
        "the monitor's decoding loop does not know how to pass this model its KV cache."
    )


def output_cache(output: Any) -> Any:
    """The KV cache a forward returned (``output.cache`` in 5.24+, ``output.past_key_values`` before)."""
    for key in CACHE_KEYWORDS:
        value = getattr(output, key, None)
        if value is not None:
            return value
    raise MonitorError(
        f"The model's output ({type(output).__name__}) carries no KV cache as .cache or .past_key_values: "
        "call it with use_cache=True."
    )
