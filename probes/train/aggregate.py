"""How per-token scores become one score per sequence, batch and streaming, in plain torch.

Token scores arrive flat: ``scores`` is ``(T,)`` and ``offsets`` ``(n + 1,)`` marks sequence ``i`` as
``scores[offsets[i]:offsets[i + 1]]`` (the :class:`~probes.collection.activations.RaggedTokens` layout).
Every aggregation is defined by its *running* value ``r_t`` after token ``t`` of a sequence
(``t = 0, 1, ...``); the sequence score is the running value at the last token. A streaming monitor
computes ``r_t`` token by token with :class:`StreamingAggregator` and must reproduce these numbers:

==========  ===================================================================================
``mean``    ``r_t = (s_0 + ... + s_t) / (t + 1)`` (accumulated in float64)
``max``     ``r_t = max(s_0, ..., s_t)``
``last``    ``r_t = s_t``
``ema``     ``e_0 = s_0``;  ``e_t = alpha * s_t + (1 - alpha) * e_{t-1}`` (:func:`ema_step`);
            ``r_t = max(e_0, ..., e_t)``
``rolling`` ``m_t = mean(s_{max(0, t-w+1)}, ..., s_t)`` -- the mean of the last ``w`` tokens, or of
            all tokens so far while fewer than ``w`` have arrived;
            ``r_t = m_t`` while ``t < w - 1`` (no full window yet), then
            ``r_t = max(m_{w-1}, ..., m_t)`` -- the max over *full* windows only, so a sequence
            shorter than ``w`` scores its mean and one noisy early token cannot set the max
==========  ===================================================================================

The batch functions loop over token *positions* (vectorised across sequences) with the same
:func:`ema_step` a monitor calls, so ``ema`` matches the streaming recurrence bit for bit in the same
dtype; ``mean`` and ``rolling`` agree with streaming to float rounding (|diff| <= 1e-5 relative).

Attention pooling (:class:`~probes.train.token.AttentionProbe`) is a softmax-weighted mean of per-token
values: ``score = sum_t softmax(a)_t * v_t`` over the tokens of the sequence; :func:`softmax_pool` is the
batch form and :class:`StreamingSoftmaxPool` the online form (running max, normaliser and weighted sum).
"""

from __future__ import annotations

from typing import Literal

import torch

Aggregation = Literal["mean", "max", "last", "ema", "rolling"]
AGGREGATIONS: tuple[str, ...] = ("mean", "max", "last", "ema", "rolling")


def check_aggregation(how: str, alpha: float, window: int) -> None:
    """Raise ``ValueError`` naming the fix when the aggregation settings are invalid."""
    if how not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {', '.join(AGGREGATIONS)}; got {how!r}.")
    if how == "ema" and not 0.0 < float(alpha) <= 1.0:
        raise ValueError(f"ema needs 0 < alpha <= 1 (weight of the newest token); got alpha={alpha}.")
    if how == "rolling" and (int(window) != window or int(window) < 1):
        raise ValueError(f"rolling needs an integer window >= 1 (tokens); got window={window}.")


def segment_ids(offsets: torch.Tensor, device: torch.device | None = None) -> torch.Tensor:
    """``(T,)`` index of the sequence each flat token belongs to."""
    offsets = offsets.to(device) if device is not None else offsets
    lengths = offsets[1:] - offsets[:-1]
    return torch.repeat_interleave(torch.arange(len(lengths), device=offsets.device), lengths)


def to_padded(
    scores: torch.Tensor, offsets: torch.Tensor, fill: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(n, max_len)`` right-padded scores and the bool mask of real tokens."""
    offsets = offsets.to(scores.device)
    lengths = offsets[1:] - offsets[:-1]
    max_len = int(lengths.max()) if len(lengths) else 0
    mask = torch.arange(max_len, device=scores.device)[None, :] < lengths[:, None]
    out = scores.new_full((len(lengths), max_len), fill)
    out[mask] = scores
    return out, mask


def ema_step(prev: torch.Tensor | None, s: torch.Tensor, alpha: float) -> torch.Tensor:
    """One step of the exponential moving average: ``alpha * s + (1 - alpha) * prev`` (``s`` if no prev)."""
    if prev is None:
        return s
    return alpha * s + (1.0 - alpha) * prev


def ema(scores: torch.Tensor, offsets: torch.Tensor, alpha: float) -> torch.Tensor:
    """``(T,)`` exponential moving average of each sequence's scores (restarting at every sequence)."""
    padded, mask = to_padded(scores, offsets)
    out = torch.empty_like(padded)
    prev: torch.Tensor | None = None
    for t in range(padded.shape[1]):
        prev = ema_step(prev, padded[:, t], alpha)
        out[:, t] = prev
    return out[mask]


def rolling_mean(scores: torch.Tensor, offsets: torch.Tensor, window: int) -> torch.Tensor:
    """``(T,)`` mean of the last ``window`` scores of each sequence (all scores so far while fewer)."""
    padded, mask = to_padded(scores, offsets)
    w = int(window)
    left = torch.nn.functional.pad(padded, (w - 1, 0))  # zeros before the first token add nothing
    sums = left.unfold(1, w, 1).sum(-1)
    counts = torch.clamp(torch.arange(1, padded.shape[1] + 1, device=scores.device), max=w)
    return (sums / counts.to(scores.dtype))[mask]


def running(
    scores: torch.Tensor, offsets: torch.Tensor, how: str, alpha: float = 0.5, window: int = 8
) -> torch.Tensor:
    """``(T,)`` running aggregate ``r_t`` after each token (what a streaming monitor sees)."""
    check_aggregation(how, alpha, window)
    offsets = offsets.to(scores.device)
    if how == "last":
        return scores
    if how == "mean":
        padded, mask = to_padded(scores.double(), offsets)
        counts = torch.arange(1, padded.shape[1] + 1, device=scores.device, dtype=torch.float64)
        return (padded.cumsum(1) / counts)[mask].to(scores.dtype)
    if how == "max":
        base = scores
    elif how == "ema":
        base = ema(scores, offsets, alpha)
    else:
        means, mask = to_padded(rolling_mean(scores, offsets, window), offsets)
        partial = torch.arange(means.shape[1], device=scores.device)[None, :] < int(window) - 1
        best = torch.where(partial, torch.full_like(means, float("-inf")), means).cummax(1).values
        return torch.where(partial, means, best)[mask]
    padded, mask = to_padded(base, offsets, fill=float("-inf"))
    return padded.cummax(1).values[mask]


def aggregate(
    scores: torch.Tensor, offsets: torch.Tensor, how: str, alpha: float = 0.5, window: int = 8
) -> torch.Tensor:
    """``(n,)`` one score per sequence: the running aggregate at its last token."""
    offsets = offsets.to(scores.device)
    return running(scores, offsets, how, alpha, window)[offsets[1:] - 1]


def attention_weights(logits: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """``(T,)`` softmax of the attention logits within each sequence (each sequence sums to 1)."""
    offsets = offsets.to(logits.device)
    seg = segment_ids(offsets)
    n = len(offsets) - 1
    # Per-sequence max for stability; detached because it cancels out of the softmax.
    seq_max = torch.full((n,), float("-inf"), device=logits.device, dtype=logits.dtype)
    seq_max = seq_max.scatter_reduce(0, seg, logits.detach(), reduce="amax")
    e = torch.exp(logits - seq_max[seg])
    z = torch.zeros(n, device=logits.device, dtype=logits.dtype).index_add(0, seg, e)
    return e / z[seg]


def softmax_pool(values: torch.Tensor, logits: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """``(n,)`` attention-pooled score ``sum_t softmax(logits)_t * values_t`` of each sequence."""
    offsets = offsets.to(values.device)
    seg = segment_ids(offsets)
    w = attention_weights(logits, offsets)
    return torch.zeros(len(offsets) - 1, device=values.device, dtype=values.dtype).index_add(
        0, seg, w * values
    )


class StreamingAggregator:
    """Token-by-token running aggregate of a batch of ``B`` streams (one score per stream per step).

    ``update(s)`` takes the ``(B,)`` scores of the newest token of each stream and returns the running
    aggregate ``r_t`` defined in the module docstring; ``reset()`` starts new sequences.
    """

    def __init__(self, how: str, alpha: float = 0.5, window: int = 8) -> None:
        check_aggregation(how, alpha, window)
        self.how, self.alpha, self.window = how, float(alpha), int(window)
        self.reset()

    def reset(self) -> None:
        self.count = 0
        self._sum: torch.Tensor | None = None
        self._ema: torch.Tensor | None = None
        self._buf: torch.Tensor | None = None
        self._best: torch.Tensor | None = None

    def update(self, s: torch.Tensor) -> torch.Tensor:
        self.count += 1
        if self.how == "last":
            return s
        if self.how == "mean":
            self._sum = s.double() if self._sum is None else self._sum + s.double()
            return (self._sum / self.count).to(s.dtype)
        if self.how == "max":
            current = s
        elif self.how == "ema":
            self._ema = ema_step(self._ema, s, self.alpha)
            current = self._ema
        else:
            if self._buf is None:
                self._buf = s.new_zeros((*s.shape, self.window))
            # Same element order as the batch unfold window: oldest ... newest.
            self._buf = torch.cat([self._buf[..., 1:], s[..., None]], dim=-1)
            current = self._buf.sum(-1) / float(min(self.count, self.window))
            if self.count < self.window:  # no full window yet: the mean so far, not a max
                return current
        self._best = current if self._best is None else torch.maximum(self._best, current)
        return self._best


class StreamingSoftmaxPool:
    """Online attention pooling: ``update(v, a)`` returns ``sum softmax(a) * v`` over the tokens so far."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._max: torch.Tensor | None = None
        self._z: torch.Tensor | None = None
        self._num: torch.Tensor | None = None

    def update(self, v: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        if self._max is None:
            self._max, self._z, self._num = a, torch.ones_like(a), v.clone()
        elif self._z is not None and self._num is not None:
            new_max = torch.maximum(self._max, a)
            scale, e = torch.exp(self._max - new_max), torch.exp(a - new_max)
            self._z = self._z * scale + e
            self._num = self._num * scale + e * v
            self._max = new_max
        return self._num / self._z
