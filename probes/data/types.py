"""The contrast-dataset row and its parts.

A row is either plain ``text`` or chat ``messages``. Its optional ``target`` says which part the probe
reads (the *detection mask*); it is resolved to token positions from tokenizer offset mappings only, never
by searching for strings later. ``label`` is 1 for the positive class (the state the probe detects).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, overload

import numpy as np


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


class EncodedRows(Sequence[Encoded]):
    """Encoded rows held as three flat arrays (token ids, target mask, row offsets) instead of Python tuples.

    A tuple of ints costs ~36 bytes a token (pointer plus int object); this costs 9. Indexing gives an
    :class:`Encoded` built on the fly, so code written for ``Sequence[Encoded]`` runs unchanged; ``lengths``
    gives every row's length without building any. Collection holds a dataset's encoding this way, so the
    driver's memory does not grow ~4x faster than the text it encodes.
    """

    def __init__(self, ids: np.ndarray, mask: np.ndarray, offsets: np.ndarray) -> None:
        if len(ids) != len(mask) or offsets[0] != 0 or offsets[-1] != len(ids):
            raise ValueError("EncodedRows: ids, mask and offsets disagree.")
        self.ids, self.mask, self.offsets = ids, mask, offsets

    @classmethod
    def from_rows(cls, rows: Iterable[Encoded]) -> EncodedRows:
        builder = _RowsBuilder()
        builder.extend(rows)
        return builder.build()

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @overload
    def __getitem__(self, i: int) -> Encoded: ...
    @overload
    def __getitem__(self, i: slice) -> EncodedRows: ...
    def __getitem__(self, i: int | slice) -> Encoded | EncodedRows:
        if isinstance(i, slice):
            return self.take(np.arange(len(self))[i])
        n = len(self)
        i = int(i)
        if not -n <= i < n:
            raise IndexError(f"row {i} of {n}")
        i %= n
        lo, hi = int(self.offsets[i]), int(self.offsets[i + 1])
        return Encoded(tuple(self.ids[lo:hi].tolist()), tuple(self.mask[lo:hi].tolist()))

    def __iter__(self) -> Iterator[Encoded]:
        for i in range(len(self)):
            yield self[i]

    def take(self, rows: Sequence[int] | np.ndarray) -> EncodedRows:
        """The rows ``rows``, in that order, as a new (compact) EncodedRows."""
        rows = np.asarray(rows, dtype=np.int64)
        lo, hi = self.offsets[rows], self.offsets[rows + 1]
        idx = np.concatenate(
            [np.arange(a, b) for a, b in zip(lo, hi, strict=True)] or [np.zeros(0, np.int64)]
        )
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(hi - lo, out=offsets[1:])
        return EncodedRows(self.ids[idx], self.mask[idx], offsets)


class _RowsBuilder:
    """Appends rows chunk by chunk (each chunk's tuples can be freed as soon as it is added)."""

    def __init__(self) -> None:
        self.ids: list[np.ndarray] = []
        self.mask: list[np.ndarray] = []
        self.lengths: list[int] = []

    def extend(self, rows: Iterable[Encoded]) -> None:
        ids: list[int] = []
        mask: list[bool] = []
        for row in rows:
            ids.extend(row.input_ids)
            mask.extend(row.target_mask)
            self.lengths.append(len(row.input_ids))
        self.ids.append(np.asarray(ids, dtype=np.int64))
        self.mask.append(np.asarray(mask, dtype=bool))

    def build(self) -> EncodedRows:
        offsets = np.zeros(len(self.lengths) + 1, dtype=np.int64)
        np.cumsum(self.lengths, out=offsets[1:])
        ids = np.concatenate(self.ids) if self.ids else np.zeros(0, dtype=np.int64)
        mask = np.concatenate(self.mask) if self.mask else np.zeros(0, dtype=bool)
        return EncodedRows(ids, mask, offsets)
