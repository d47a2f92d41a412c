"""How a monitor drives decoding: the ``transformers.generate`` glue and the hand-written stream loop.

For ``generate``, a stopping criterion and a logits processor read the monitor's stop flags. Both are
built as real ``StoppingCriteria`` / ``LogitsProcessor`` subclasses only when asked for, so importing
:mod:`probes.monitor` does not import ``transformers``; they keep pointing at the live monitor
(``__deepcopy__`` returns ``self``) and only read its device tensors: no host sync per step.
:func:`stream_tokens` is the KV-cached loop behind :meth:`Monitor.stream`.

Everything here goes through the monitor's public, read-only surface (:class:`MonitorLike`); this module
never imports :mod:`probes.monitor.monitor`, so the two do not depend on each other in a circle.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack
from typing import Any, Protocol

import torch
from torch import nn

from probes.monitor.events import StepScores, StreamEvent
from probes.monitor.positions import cache_keyword, output_cache


class MonitorLike(Protocol):
    """The part of :class:`probes.Monitor` that the decoding drivers use."""

    action: Any
    score_prompt: bool
    probe_names: list[str]

    @property
    def stop_flags(self) -> torch.Tensor | None: ...
    @property
    def fired(self) -> torch.Tensor: ...
    @property
    def attached_model(self) -> nn.Module | None: ...
    @property
    def eos_token_ids(self) -> list[int]: ...
    def latest(self) -> StepScores | None: ...
    def end_token_id(self) -> int: ...
    def observe_sequences(self, input_ids: torch.Tensor | None) -> None: ...

    attach: Callable[..., AbstractContextManager[Any]]


class _MonitorCriterion:
    """A ``transformers`` stopping criterion: one bool per row, True where the monitor stopped the row."""

    def __init__(self, monitor: MonitorLike) -> None:
        self.monitor = monitor

    def __call__(self, input_ids: torch.LongTensor, scores: Any = None, **kwargs: Any) -> torch.BoolTensor:
        m = self.monitor
        m.observe_sequences(input_ids)  # a reference: the trace reads tokens from it later
        stop = m.stop_flags
        if stop is None or stop.shape[0] != input_ids.shape[0]:
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        return stop.to(input_ids.device)

    def __deepcopy__(self, memo: dict) -> _MonitorCriterion:
        # Older transformers deep-copy the criteria list; the criterion must keep pointing at the live monitor.
        return self


class _MonitorProcessor:
    """A ``transformers`` logits processor: rows the monitor stopped may only emit the end token.

    ``generate`` calls it right after the forward whose hooks set the stop flags, before sampling, so the
    token that fired is followed directly by EOS. Later steps of an already-finished row are padded by
    ``generate`` anyway; forcing them as well keeps a row ended even where ``generate`` has no EOS criterion.
    """

    def __init__(self, monitor: MonitorLike) -> None:
        self.monitor = monitor
        self._allowed: torch.Tensor | None = None  # (vocab,) bool, True at the end token only

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        m = self.monitor
        if m.action == "flag" or m.attached_model is None:
            return scores
        end = m.end_token_id()
        stop = m.stop_flags
        if stop is None or stop.shape[0] != scores.shape[0]:
            return scores
        allowed = self._allowed
        if allowed is None or allowed.shape[0] != scores.shape[-1] or allowed.device != scores.device:
            allowed = torch.zeros(scores.shape[-1], dtype=torch.bool, device=scores.device)
            allowed[end] = True
            self._allowed = allowed
        rows = stop.to(scores.device)[:, None]
        # -inf everywhere else and a finite logit for the end token (an earlier processor such as
        # min_new_tokens may have set it to -inf), so greedy and every sampling warper pick it.
        return scores.masked_fill(rows & ~allowed, float("-inf")).masked_fill(rows & allowed, 0.0)

    def __deepcopy__(self, memo: dict) -> _MonitorProcessor:
        return self


def processor_class() -> type:
    from transformers import LogitsProcessor

    return type("MonitorLogitsProcessor", (_MonitorProcessor, LogitsProcessor), {})


def pad_id(model: nn.Module, tokenizer: Any) -> int | None:
    for source in (getattr(model, "generation_config", None), getattr(model, "config", None), tokenizer):
        pad = getattr(source, "pad_token_id", None)
        if isinstance(pad, (list, tuple)):
            pad = pad[0] if pad else None
        if pad is not None:
            return int(pad)
    return None


# Registered as a real StoppingCriteria subclass lazily, so importing probes.monitor stays light.
def criterion_class() -> type:
    from transformers import StoppingCriteria

    return type("MonitorStoppingCriteria", (_MonitorCriterion, StoppingCriteria), {})


def stream_tokens(
    monitor: MonitorLike,
    model: nn.Module,
    tokenizer: Any,
    prompt: str | None = None,
    *,
    input_ids: torch.Tensor | None = None,
    max_new_tokens: int = 64,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int | None = None,
) -> Iterator[StreamEvent]:
    """The loop behind :meth:`Monitor.stream <probes.monitor.monitor.Monitor.stream>`."""
    if input_ids is None:
        if prompt is None:
            raise ValueError("Pass prompt= or input_ids=.")
        input_ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    if input_ids.ndim == 1:
        input_ids = input_ids[None]
    if input_ids.shape[0] != 1:
        raise ValueError(
            "stream() generates one sequence; use model.generate with stopping_criteria for batches."
        )
    device = next(model.parameters()).device
    input_ids = input_ids.to(device)
    generator = None
    if seed is not None:
        generator = torch.Generator(device=device).manual_seed(int(seed))
    ctx = monitor.attach(model, tokenizer=tokenizer) if monitor.attached_model is not model else ExitStack()
    cache_kw = cache_keyword(model)  # cache= (transformers >= 5.24) or past_key_values= (older)
    with ctx, torch.inference_mode():
        out = model(input_ids=input_ids, use_cache=True)
        stop = monitor.stop_flags
        if monitor.action == "stop" and monitor.score_prompt and stop is not None and bool(stop[0]):
            return
        ids = input_ids[0].tolist()
        was_fired = bool(monitor.fired[0])
        eos = set(monitor.eos_token_ids)
        for _ in range(max_new_tokens):
            logits = out.logits[:, -1].float()
            if do_sample:
                logits = logits / max(temperature, 1e-6)
                if top_k is not None:
                    kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                token = torch.multinomial(torch.softmax(logits, -1), 1, generator=generator)
            else:
                token = logits.argmax(-1, keepdim=True)
            out = model(input_ids=token, use_cache=True, **{cache_kw: output_cache(out)})
            monitor.observe_sequences(None)
            token_id = int(token)
            before = tokenizer.decode(ids, skip_special_tokens=True)
            ids.append(token_id)
            text = tokenizer.decode(ids, skip_special_tokens=True)[len(before) :]
            latest = monitor.latest()  # None when the step went unscored (on_error="continue" after an error)
            nan = [float("nan")] * len(monitor.probe_names)
            fired_now = latest is not None and bool(latest.fired[0]) and not was_fired
            was_fired = was_fired or fired_now
            yield StreamEvent(
                token_id=token_id,
                text=text,
                score=dict(
                    zip(monitor.probe_names, nan if latest is None else latest.score[0].tolist(), strict=True)
                ),
                smoothed=dict(
                    zip(
                        monitor.probe_names,
                        nan if latest is None else latest.smoothed[0].tolist(),
                        strict=True,
                    )
                ),
                fired=fired_now,
            )
            stop = monitor.stop_flags
            if (stop is not None and bool(stop[0])) or token_id in eos:
                return
