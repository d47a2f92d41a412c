"""Raw rows ``(where, dict)`` into validated :class:`~probes.data.types.Example` rows.

:class:`ColumnMapping` says which source column feeds each row field; :func:`parse_rows` validates every
row (id, text or messages, label, group, split, conditions, target, meta) and raises one
:class:`~probes.errors.DatasetError` listing every problem with its file, line and field.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from probes.data.fields import (
    RowErrors,
    is_missing,
    json_cell,
    near_miss,
    parse_label,
    parse_messages,
    parse_target,
    to_plain,
)
from probes.data.render import plain_target_text
from probes.data.types import Example, Message, Target
from probes.errors import DatasetError

FIELDS = ("id", "text", "messages", "label", "group", "conditions", "target", "split", "meta", "target_value")


class ColumnMapping:
    """Which source column feeds each row field."""

    def __init__(self, overrides: Mapping[str, str | None], conditions: Sequence[str] | None) -> None:
        claimed = {v for v in overrides.values() if v}
        # A column mapped to one field (e.g. label='target') is not also read as the field of its own name.
        self.columns = {
            f: overrides.get(f) or (f"<{f}: column {f!r} is mapped to another field>" if f in claimed else f)
            for f in FIELDS
        }
        self.condition_columns = list(conditions or [])
        self.explicit = {f for f, v in overrides.items() if v}

    def used(self) -> set[str]:
        return set(self.columns.values()) | set(self.condition_columns)


def _number(value: Any) -> float | None:
    value = to_plain(value)
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        out = float(value)
    elif isinstance(value, str):
        try:
            out = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    return out if math.isfinite(out) else None


def parse_values(raw: Any, where: str, field: str, errors: RowErrors) -> dict[str, float]:
    """``target_value`` as ``{name: value}``: a bare number is named ``"value"``."""
    if isinstance(raw, dict):
        items = list(raw.items())
        if not items:
            errors.add(where, f"field {field!r} is an empty object; give at least one named number")
    else:
        items = [("value", raw)]
    out: dict[str, float] = {}
    for name, value in items:
        number = _number(value)
        label = field if name == "value" and not isinstance(raw, dict) else f"{field}.{name}"
        if number is None:
            errors.add(where, f"field {label!r}: {to_plain(value)!r} is not a finite number")
        else:
            out[str(name)] = number
    return out


def parse_rows(
    rows: Sequence[tuple[str, dict[str, Any]]],
    origin: str,
    mapping: ColumnMapping,
    label_names: tuple[str, str],
    check_typos: bool,
    kind: str = "contrast",
) -> list[Example]:
    """Validate raw rows ``(where, dict)`` into examples, raising one error that lists every problem."""
    errors = RowErrors(origin)
    cols = mapping.columns
    if not rows:
        raise DatasetError(f"{origin}: the dataset has no rows.")
    any_id = any(not is_missing(r.get(cols["id"])) for _, r in rows)
    first_seen: dict[str, str] = {}
    examples: list[Example] = []
    used = mapping.used()

    for i, (where, raw) in enumerate(rows):
        n_before = errors.total
        columns = list(raw)
        if check_typos:
            for f in (
                "text",
                "messages",
                "label",
                "group",
                "conditions",
                "target",
                "split",
                "id",
                "meta",
                "target_value",
            ):
                c = cols[f]
                if c in raw:
                    continue
                miss = near_miss(c, [k for k in columns if k not in used])
                if miss is not None:
                    errors.add(
                        where,
                        f"unknown field {miss!r}: did you mean {c!r}? Rename it (or put it under 'meta')",
                    )

        # id
        rid = raw.get(cols["id"])
        if is_missing(rid):
            if any_id:
                errors.add(where, f"missing field {cols['id']!r}: give every row a unique id")
            rid = str(i)
        rid = str(to_plain(rid))
        if rid in first_seen:
            errors.add(
                where,
                f"field {cols['id']!r}: duplicate id {rid!r} (first at {first_seen[rid]}); ids must be unique",
            )
        else:
            first_seen[rid] = where

        # text | messages
        text_raw, msgs_raw = raw.get(cols["text"]), raw.get(cols["messages"])
        text: str | None = None
        messages: tuple[Message, ...] | None = None
        has_text, has_msgs = not is_missing(text_raw), msgs_raw is not None and not is_missing(msgs_raw)
        if has_text and has_msgs:
            errors.add(
                where,
                f"gives both {cols['text']!r} and {cols['messages']!r}; a row is plain text or a chat, not both",
            )
        elif has_msgs:
            messages = parse_messages(json_cell(msgs_raw, where, cols["messages"], errors), where, errors)
        elif has_text:
            if not isinstance(text_raw, str):
                errors.add(where, f"field {cols['text']!r} must be a string, got {type(text_raw).__name__}")
            elif not text_raw.strip():
                errors.add(where, f"field {cols['text']!r} is empty or whitespace; give the row's text")
            else:
                text = text_raw
        elif cols["text"] in raw:
            errors.add(where, f"field {cols['text']!r} is empty; give the row's text")
        elif cols["messages"] in raw:
            errors.add(where, f"field {cols['messages']!r} is empty; give the chat messages")
        else:
            hint = near_miss(cols["text"], columns) or near_miss(cols["messages"], columns)
            fix = (
                f"did you mean {hint!r}? pass text={hint!r} (or messages={hint!r})"
                if hint
                else f"add one, or map a column with text=... or messages=... (columns: {columns})"
            )
            errors.add(where, f"missing field {cols['text']!r} or {cols['messages']!r}: {fix}")

        # label
        label_raw = raw.get(cols["label"])
        label: int | None = None
        if kind == "regress" and (cols["label"] not in raw or is_missing(label_raw)):
            label = 0  # a regression row needs no class; its target is target_value
        elif cols["label"] not in raw or is_missing(label_raw):
            hint = near_miss(cols["label"], columns) if cols["label"] not in raw else None
            fix = (
                f"did you mean {hint!r}? pass label={hint!r}"
                if hint
                else f"give {label_names[1]!r}/1 or {label_names[0]!r}/0"
            )
            errors.add(where, f"missing field {cols['label']!r}: {fix}")
        else:
            label = parse_label(label_raw, label_names)
            if label is None:
                errors.add(
                    where,
                    f"field {cols['label']!r}: unknown label {to_plain(label_raw)!r}; use one of "
                    f"{list(label_names)} (or 0/1, false/true), or set label_names in the card",
                )

        # target_value: a number, or an object of named numbers
        values: dict[str, float] = {}
        v_raw = raw.get(cols["target_value"])
        if not is_missing(v_raw):
            if isinstance(v_raw, str) and v_raw.lstrip().startswith("{"):  # named values in a CSV cell
                v_raw = json_cell(v_raw, where, cols["target_value"], errors)
            if v_raw is not None:
                values = parse_values(v_raw, where, cols["target_value"], errors)
        elif kind == "regress":
            errors.add(
                where,
                f"missing field {cols['target_value']!r}: a regression dataset needs a number (or an object of "
                "named numbers) in every row",
            )

        # group, split
        group = raw.get(cols["group"])
        group = None if is_missing(group) else str(to_plain(group))
        split = raw.get(cols["split"])
        split = None if is_missing(split) else str(to_plain(split))

        # conditions
        conditions: dict[str, str] = {}
        cond_raw = raw.get(cols["conditions"])
        if not is_missing(cond_raw):
            cond_raw = json_cell(cond_raw, where, cols["conditions"], errors)
            if isinstance(cond_raw, dict):
                for k, v in cond_raw.items():
                    if not is_missing(v):
                        conditions[str(k)] = str(to_plain(v))
            elif cond_raw is not None:
                errors.add(
                    where, f"field {cols['conditions']!r} must be an object of tag: value, got {cond_raw!r}"
                )
        for c in mapping.condition_columns:
            if c not in raw:
                errors.add(where, f"missing condition column {c!r} (columns: {columns})")
            elif not is_missing(raw[c]):
                conditions[c] = str(to_plain(raw[c]))

        # target
        target: Target | None = None
        t_raw = raw.get(cols["target"])
        if not is_missing(t_raw):
            t_raw = json_cell(t_raw, where, cols["target"], errors)
            # Parquet/HF struct columns give a row without a target as a struct of nulls.
            if isinstance(t_raw, dict) and all(v is None for v in t_raw.values()):
                t_raw = None
            if t_raw is not None:
                target = parse_target(t_raw, where, errors)

        # meta: every column nobody asked for
        meta: dict[str, Any] = {}
        meta_raw = raw.get(cols["meta"])
        if isinstance(meta_raw, dict):
            meta.update(meta_raw)
        elif not is_missing(meta_raw):
            meta[cols["meta"]] = to_plain(meta_raw)
        for k, v in raw.items():
            if k not in used:
                meta[k] = to_plain(v)

        if errors.total > n_before or label is None:
            continue
        ex = Example(
            id=rid,
            label=label,
            text=text,
            messages=messages,
            group=group,
            conditions=conditions,
            target=target,
            split=split,
            meta=meta,
            values=values,
        )
        if target is not None:
            if text is not None and (target.message is not None or target.role is not None):
                errors.add(
                    where,
                    "field 'target': a text row can only have a 'span'; 'message'/'role' need 'messages'",
                )
                continue
            try:
                plain_target_text(ex)  # resolves index/role/span against this row
            except DatasetError as exc:
                errors.add(where, f"field 'target': {str(exc).split(': ', 1)[-1]}")
                continue
        examples.append(ex)

    errors.raise_if_any()
    if kind == "regress":
        names = {tuple(sorted(ex.values)) for ex in examples}
        if len(names) > 1:
            raise DatasetError(
                f"{origin}, field {cols['target_value']!r}: rows name different values {sorted(names)}; every "
                "row must give the same named values"
            )
        return examples
    labels = {ex.label for ex in examples}
    if len(labels) < 2 and kind != "control":
        only = labels.pop()
        raise DatasetError(
            f"{origin}, field {cols['label']!r}: all {len(examples)} rows have label {label_names[only]!r} "
            f"({only}); a contrast dataset needs both {label_names[0]!r} (0) and {label_names[1]!r} (1) rows. "
            "If this is a single-class control set (e.g. for FPR thresholds), set 'kind: control' in its card "
            "or pass load_dataset(..., kind='control')."
        )
    return examples
