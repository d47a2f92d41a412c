"""Parsing single fields of a raw row (label, target, messages, JSON cells) and collecting the errors.

Every problem goes to a :class:`RowErrors` as ``<file>, line <n>: field '<name>' ...: <fix>`` so that all
of a file's errors (up to 20) are reported together, once the whole file has been read.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from typing import Any

from probes.data.types import Message, Target
from probes.errors import DatasetError

MAX_ERRORS = 20
TARGET_KEYS = {"message", "role", "span"}


class RowErrors:
    """Collects a file's errors so a user can fix them all in one pass."""

    def __init__(self, origin: str) -> None:
        self.origin = origin
        self.items: list[str] = []
        self.total = 0

    def add(self, where: str, message: str) -> None:
        self.total += 1
        if len(self.items) < MAX_ERRORS:
            self.items.append(f"{where}: {message}")

    def raise_if_any(self) -> None:
        if not self.items:
            return
        more = f"\n  ... and {self.total - len(self.items)} more" if self.total > len(self.items) else ""
        head = f"{self.origin}: {self.total} error(s) in the dataset:\n  " if self.total > 1 else ""
        body = "\n  ".join(self.items)
        raise DatasetError(f"{head}{body}{more}" if head else body)


def is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value == ""


def near_miss(name: str, columns: Iterable[str]) -> str | None:
    """A column that looks like a misspelling of ``name`` (plural/singular, case, swapped letters)."""
    for c in columns:
        low = c.lower()
        if (
            low == name
            or low in (name + "s", name.rstrip("s"))
            or (len(low) == len(name) and sorted(low) == sorted(name))
        ):
            return c
    return None


def json_cell(value: Any, where: str, field: str, errors: RowErrors) -> Any:
    """CSV cells hold JSON for structured fields; other formats hold the structure itself."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            errors.add(
                where, f"field {field!r} holds a string that is not valid JSON ({exc.msg}); write it as JSON"
            )
            return None
    return value


def to_plain(value: Any) -> Any:
    """numpy scalars/arrays (Parquet, HF) to plain Python."""
    if hasattr(value, "tolist") and not isinstance(value, str | bytes):
        return value.tolist()
    return value


def parse_label(value: Any, names: tuple[str, str]) -> int | None:
    value = to_plain(value)
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int) and value in (0, 1):
        return value
    if isinstance(value, float) and value in (0.0, 1.0):
        return int(value)
    if isinstance(value, str):
        v = value.strip()
        if v in names:
            return names.index(v)
        if v in ("0", "1"):
            return int(v)
        if v.lower() in ("true", "false"):
            return int(v.lower() == "true")
    return None


def parse_target(raw: Any, where: str, errors: RowErrors) -> Target | None:
    if not isinstance(raw, dict):
        errors.add(where, f'field \'target\' must be an object like {{"role": "assistant"}}, got {raw!r}')
        return None
    unknown = sorted(set(raw) - TARGET_KEYS)
    if unknown:
        errors.add(where, f"field 'target' has unknown key(s) {unknown}; use 'message', 'role' and/or 'span'")
        return None
    message, role, span = raw.get("message"), raw.get("role"), raw.get("span")
    if message is not None and role is not None:
        errors.add(where, "field 'target' gives both 'message' and 'role'; give one of them")
        return None
    if message is not None and (isinstance(message, bool) or not isinstance(to_plain(message), int)):
        errors.add(where, f"field 'target.message' must be an integer message index, got {message!r}")
        return None
    if role is not None and not isinstance(role, str):
        errors.add(where, f"field 'target.role' must be a string, got {role!r}")
        return None
    if span is not None:
        span = to_plain(span)
        if (
            not isinstance(span, list | tuple)
            or len(span) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in span)
        ):
            errors.add(where, f"field 'target.span' must be [start, end] integers, got {span!r}")
            return None
        span = (int(span[0]), int(span[1]))
    if message is None and role is None and span is None:
        errors.add(where, "field 'target' is empty; give 'message', 'role' or 'span', or drop it")
        return None
    return Target(message=None if message is None else int(to_plain(message)), role=role, span=span)


def parse_messages(raw: Any, where: str, errors: RowErrors) -> tuple[Message, ...] | None:
    raw = to_plain(raw)
    if not isinstance(raw, list) or not raw:
        errors.add(where, 'field \'messages\' must be a non-empty list of {"role", "content"} objects')
        return None
    out: list[Message] = []
    ok = True
    for k, m in enumerate(raw):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            errors.add(where, f"field 'messages[{k}]' must be an object with 'role' and 'content', got {m!r}")
            ok = False
            continue
        role, content = m["role"], m["content"]
        if not isinstance(role, str) or not role.strip():
            errors.add(where, f"field 'messages[{k}].role' must be a non-empty string, got {role!r}")
            ok = False
        if not isinstance(content, str) or not content.strip():
            errors.add(
                where, f"field 'messages[{k}].content' is empty or not a string; give the message text"
            )
            ok = False
        if ok:
            out.append(Message(role=role, content=content))
    return tuple(out) if ok else None
