"""The contrast-dataset row and its parts.

A row is either plain ``text`` or chat ``messages``. Its optional ``target`` says which part the probe
reads (the *detection mask*); it is resolved to token positions from tokenizer offset mappings only, never
by searching for strings later. ``label`` is 1 for the positive class (the state the probe detects).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Message:
    """One chat turn."""

    role: str
    content: str


@dataclass(frozen=True)
class Target:
    """Which part of a row the probe reads.

    Exactly one way of pointing is used:
    - ``message``: index into ``messages`` (negative counts from the end); optional ``span`` is then a
      character span *inside that message's content*;
    - ``role``: the last message with this role (e.g. ``"assistant"``); ``span`` likewise inside it;
    - ``span`` alone (text rows): a ``(start, end)`` character span of ``text``, end exclusive.
    """

    message: int | None = None
    role: str | None = None
    span: tuple[int, int] | None = None


@dataclass(frozen=True)
class Example:
    """One row of a contrast dataset."""

    id: str
    label: int
    text: str | None = None
    messages: tuple[Message, ...] | None = None
    group: str | None = None
    conditions: dict[str, str] = field(default_factory=dict)
    target: Target | None = None
    split: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    #: numeric targets of regression probes (``target_value`` in the data): name -> value
    values: dict[str, float] = field(default_factory=dict)

    @property
    def is_chat(self) -> bool:
        return self.messages is not None


@dataclass(frozen=True)
class Encoded:
    """A tokenized row: ``input_ids`` (special tokens and template markup included) and the detection mask.

    ``target_mask[i]`` is True where token ``i`` belongs to the detection target. It is never True on special
    tokens (BOS/CLS/SEP), chat-template markup or padding. A row without a target reads its whole text.
    """

    input_ids: tuple[int, ...]
    target_mask: tuple[bool, ...]

    def __len__(self) -> int:
        return len(self.input_ids)
