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
values ``v_t`` with attention logits ``a_t``:

====================  =========================================================================
``attention``         ``r_t = sum_{i<=t} softmax(a_0..a_t)_i * v_i`` (the pool of the prefix)
``attention`` + ``w`` ``p_t`` = the pool over the last ``w`` tokens; ``r_t = p_t`` while ``t < w - 1``,
                      then ``max(p_{w-1}, ..., p_t)`` (MultiMax-style: max over windows of pools)
====================  =========================================================================

:func:`softmax_pool` / :func:`attention_pool` are the batch forms; :class:`StreamingAggregator` computes
every running score above token by token (online softmax: running max, normaliser and weighted sum), and
also the smoothing a monitor applies to the per-token score of a pooled probe (:meth:`~StreamingAggregator.smoother`).
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


def windowed_softmax_running(
    values: torch.Tensor, logits: torch.Tensor, offsets: torch.Tensor, window: int
) -> torch.Tensor:
    """``(T,)`` running score of windowed attention pooling (MultiMax-style).

    ``p_t = sum softmax(a)_i * v_i`` over the last ``window`` tokens ``i`` of the sequence (all tokens so far
    while fewer have arrived); ``r_t = p_t`` while ``t < window - 1``, then ``r_t = max(p_{w-1}, ..., p_t)``:
    the max over *full* windows, the same convention as ``rolling``. Differentiable (used in training).
    """
    w = int(window)
    offsets = offsets.to(values.device)
    v, mask = to_padded(values, offsets)
    low = torch.finfo(logits.dtype).min  # finite: a window of padding gets uniform weights, never NaN
    a, _ = to_padded(logits, offsets, fill=low)
    v = torch.nn.functional.pad(v, (w - 1, 0))
    a = torch.nn.functional.pad(a, (w - 1, 0), value=low)
    weights = torch.softmax(a.unfold(1, w, 1), dim=-1)  # (n, L, w): the window ending at each token
    pooled = (weights * v.unfold(1, w, 1)).sum(-1)
    partial = torch.arange(pooled.shape[1], device=values.device)[None, :] < w - 1
    best = torch.where(partial, torch.full_like(pooled, float("-inf")), pooled).cummax(1).values
    return torch.where(partial, pooled, best)[mask]


def attention_running(
    values: torch.Tensor, logits: torch.Tensor, offsets: torch.Tensor, window: int | None = None
) -> torch.Tensor:
    """``(T,)`` running attention-pooled score after each token: the softmax pool of the prefix
    (``window=None``) or :func:`windowed_softmax_running`. What a streaming monitor reproduces."""
    if window is not None:
        return windowed_softmax_running(values, logits, offsets, int(window))
    offsets = offsets.to(values.device)
    v, mask = to_padded(values.double(), offsets)
    a, _ = to_padded(logits.double(), offsets, fill=float("-inf"))
    # exp(a_i - max_t a_t) per sequence, accumulated in float64 so early tokens far below the maximum
    # do not underflow to an empty prefix.
    e = torch.exp(a - a.max(dim=1, keepdim=True).values)
    pooled = (e * v).cumsum(1) / e.cumsum(1)
    return pooled[mask].to(values.dtype)


def attention_pool(
    values: torch.Tensor, logits: torch.Tensor, offsets: torch.Tensor, window: int | None = None
) -> torch.Tensor:
    """``(n,)`` one attention-pooled score per sequence: the running score at its last token."""
    if window is None:
        return softmax_pool(values, logits, offsets)
    offsets = offsets.to(values.device)
    return windowed_softmax_running(values, logits, offsets, int(window))[offsets[1:] - 1]


#: How each streamed score is built: a base running value and whether the score is its running maximum
#: (taken over full windows only for the windowed bases).
_STREAM_FORMS: dict[str, tuple[str, bool]] = {
    "mean": ("mean", False),
    "max": ("last", True),
    "last": ("last", False),
    "ema": ("ema", True),
    "rolling": ("rolling", True),
    "attention": ("softmax", False),
    "attention_window": ("window_softmax", True),
}
#: A monitor's smoothing of the per-token score of a *pooled* probe (one trained on one vector per text):
#: the smoothed value itself, no running maximum.
SMOOTHINGS: tuple[str, ...] = ("ema", "rolling", "none")
_SMOOTH_FORMS: dict[str, tuple[str, bool]] = {
    "ema": ("ema", False),
    "rolling": ("rolling", False),
    "none": ("last", False),
}


class StreamingAggregator:
    """Token-by-token running score of ``B`` streams and ``k`` probes at once, with per-row masks.

    ``update(s)`` takes the newest token's scores ``(B,)`` or ``(B, k)`` (attention kinds also take the
    attention ``logits`` of the same shape) and returns the running score ``r_t`` defined in the module
    docstring, equal to the batch functions (:func:`running`, :func:`attention_running`) over the same
    prefix. ``valid`` (``(B,)`` bool) leaves the rows where it is False untouched (left padding of a
    prompt); their returned value is their previous one. State is O(1) per row and probe (O(window) for
    the windowed kinds); every operation is a tensor op on the scores' device, no host synchronisation.

    ``how`` is a sequence aggregation (:data:`AGGREGATIONS`, ``"attention"``) or, with
    :meth:`smoother`, a monitor's smoothing of a pooled probe's per-token score (:data:`SMOOTHINGS`).
    """

    def __init__(self, how: str, alpha: float = 0.5, window: int | None = 8) -> None:
        if how == "attention":
            form = _STREAM_FORMS["attention" if window is None else "attention_window"]
            if window is not None and int(window) < 1:
                raise ValueError(f"attention window must be >= 1 token or None; got {window}.")
        else:
            check_aggregation(how, alpha, 8 if window is None else window)
            form = _STREAM_FORMS[how]
        self._init(how, form, alpha, window)

    @classmethod
    def smoother(cls, how: str, alpha: float = 0.5, window: int = 8) -> StreamingAggregator:
        """A monitor's smoothing of per-token scores: ``ema`` (``s_t``), ``rolling`` (mean of the last
        ``window``), ``none`` - the smoothed value itself, with no running maximum."""
        if how not in _SMOOTH_FORMS:
            raise ValueError(f"smoothing must be one of {', '.join(SMOOTHINGS)}; got {how!r}.")
        check_aggregation("ema" if how == "ema" else "rolling", alpha, window)
        self = cls.__new__(cls)
        self._init(how, _SMOOTH_FORMS[how], alpha, window)
        return self

    def _init(self, how: str, form: tuple[str, bool], alpha: float, window: int | None) -> None:
        self.how, self.alpha = how, float(alpha)
        self.window = None if window is None else int(window)
        self.base, self.peak = form
        self.needs_logits = self.base in ("softmax", "window_softmax")
        windowed = self.base in ("rolling", "window_softmax")
        self._warm = int(self.window) if windowed and self.window is not None else 1
        self.reset()

    @property
    def spec(self) -> tuple[str, str, bool, float, int | None]:
        """What makes two aggregators interchangeable (the monitor batches probes that share it)."""
        return (self.base, self.how, self.peak, self.alpha, self.window)

    def reset(self) -> None:
        """Start new sequences (the next update may have another batch size)."""
        self.count: torch.Tensor | None = None  # (B, 1) tokens seen per row
        self._state: dict[str, torch.Tensor] = {}
        self._out: torch.Tensor | None = None
        self.base_value: torch.Tensor | None = None
        self._all_started = False  # host-side: every row has seen a token, so no first-token special case

    def update(
        self, s: torch.Tensor, logits: torch.Tensor | None = None, valid: torch.Tensor | None = None
    ) -> torch.Tensor:
        flat = s.ndim == 1
        x = s[:, None] if flat else s
        a = None
        if self.needs_logits:
            if logits is None:
                raise ValueError(f"{self.how} pooling needs the attention logits of each token.")
            a = logits[:, None] if flat else logits
        v = None if valid is None else valid.reshape(-1, 1).to(torch.bool)
        if self.count is None:
            self._start(x)
        assert self.count is not None
        count = self.count + 1 if v is None else self.count + v
        m = self._base(x, a, v, count)
        # The aggregation's current value before any running maximum (the EMA itself, the window's mean or
        # pool): what a monitor compares with its threshold token by token, and shows.
        self.base_value = m[:, 0] if flat else m
        if self.peak:
            m = self._peak(m, v, count)
        out = m if v is None or self._out is None else torch.where(v, m, self._out)
        self.count, self._out = count, out
        if v is None:
            self._all_started = True
        return out[:, 0] if flat else out

    # --- internals --------------------------------------------------------------------------------
    def _start(self, x: torch.Tensor) -> None:
        self.count = torch.zeros(x.shape[0], 1, dtype=x.dtype, device=x.device)
        z = torch.zeros_like(x)
        if self.base == "mean":
            self._state["sum"] = z.double()
        elif self.base == "ema":
            self._state["ema"] = z
        elif self.base == "rolling":
            self._state["buf"] = x.new_zeros((*x.shape, int(self.window or 1)))
        elif self.base == "softmax":
            self._state.update(max=torch.full_like(x, float("-inf")), z=z, num=z)
        elif self.base == "window_softmax":
            w = int(self.window or 1)
            self._state["vbuf"] = x.new_zeros((*x.shape, w))
            self._state["abuf"] = x.new_full((*x.shape, w), torch.finfo(x.dtype).min)
        if self.peak:
            self._state["best"] = torch.full_like(x, float("-inf"))

    def _commit(self, key: str, new: torch.Tensor, v: torch.Tensor | None) -> torch.Tensor:
        old = self._state[key]
        if v is not None:
            new = torch.where(v if new.ndim == v.ndim else v[..., None], new, old)
        self._state[key] = new
        return new

    def _base(
        self, x: torch.Tensor, a: torch.Tensor | None, v: torch.Tensor | None, count: torch.Tensor
    ) -> torch.Tensor:
        st = self._state
        if self.base == "last":
            return x
        if self.base == "mean":
            total = self._commit("sum", st["sum"] + x.double(), v)
            return (total / count.double().clamp(min=1.0)).to(x.dtype)
        if self.base == "ema":
            # Same expression as ema_step, so the stream equals the batch function bit for bit.
            step = self.alpha * x + (1.0 - self.alpha) * st["ema"]
            new = step if self._all_started else torch.where(count > 1, step, x)
            return self._commit("ema", new, v)
        if self.base == "rolling":
            # Oldest ... newest, the element order of the batch unfold window.
            buf = self._commit("buf", torch.cat([st["buf"][..., 1:], x[..., None]], dim=-1), v)
            return buf.sum(-1) / count.clamp(min=1.0, max=float(self._warm))
        assert a is not None
        if self.base == "softmax":
            # Online softmax: running max, normaliser and weighted sum (rescaled when the max grows).
            new_max = torch.maximum(st["max"], a)
            scale, e = torch.exp(st["max"] - new_max), torch.exp(a - new_max)
            z = self._commit("z", st["z"] * scale + e, v)
            num = self._commit("num", st["num"] * scale + e * x, v)
            self._commit("max", new_max, v)
            return num / z
        vbuf = self._commit("vbuf", torch.cat([st["vbuf"][..., 1:], x[..., None]], dim=-1), v)
        abuf = self._commit("abuf", torch.cat([st["abuf"][..., 1:], a[..., None]], dim=-1), v)
        return (torch.softmax(abuf, dim=-1) * vbuf).sum(-1)

    def _peak(self, m: torch.Tensor, v: torch.Tensor | None, count: torch.Tensor) -> torch.Tensor:
        best = self._state["best"]
        if self._warm == 1:
            return self._commit("best", torch.maximum(best, m), v)
        ready = count >= self._warm  # a full window has arrived: from now on the score is a running max
        top = self._commit("best", torch.where(ready, torch.maximum(best, m), best), v)
        return torch.where(ready, top, m)
