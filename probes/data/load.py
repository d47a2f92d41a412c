"""``load_dataset``: one loader for a dataset folder, a bare data file, or a Hugging Face dataset.

Row format (JSONL: one JSON object per line; CSV/Parquet/HF: the same names as columns)::

    {"id": "r1",                                   # unique; generated as the row index when no row has one
     "text": "..."  |  "messages": [{"role": "user", "content": "..."}, ...],   # exactly one of the two
     "label": "honest" | 1 | true,                 # a card label name, or 0/1/bool (1 = positive)
     "group": "pair-7",                            # optional: rows of a group never straddle splits
     "conditions": {"frame": "quote"},             # optional condition tags (strings)
     "target": {"role": "assistant"} | {"message": -1} | {"span": [s, e]} | {"message": 2, "span": [s, e]},
     "split": "train",                             # optional explicit split
     "meta": {...}}                                # optional free-form data

Columns that are none of these go to ``Example.meta``. In CSV files ``messages``, ``target`` and
``conditions`` cells hold JSON. Field-mapping keywords rename columns (``text="statement"``) and
``conditions=["frame", ...]`` reads plain columns as condition tags.

Errors name the file and the line (JSONL line; CSV line counting the header as line 1) or the row index
(Parquet, HF), the field, and the fix. All errors of a file (up to 20) are reported together.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from probes.data.card import DatasetCard, find_card, load_card
from probes.data.dataset import ContrastDataset
from probes.data.render import plain_target_text
from probes.data.types import Example, Message, Target
from probes.errors import DatasetError

DATA_SUFFIXES = (".jsonl", ".csv", ".parquet")
MAX_ERRORS = 20
FIELDS = ("id", "text", "messages", "label", "group", "conditions", "target", "split", "meta")
TARGET_KEYS = {"message", "role", "span"}


class _Errors:
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


class _Mapping:
    """Which source column feeds each row field."""

    def __init__(self, overrides: Mapping[str, str | None], conditions: Sequence[str] | None) -> None:
        self.columns = {f: (overrides.get(f) or f) for f in FIELDS}
        self.condition_columns = list(conditions or [])
        self.explicit = {f for f, v in overrides.items() if v}

    def used(self) -> set[str]:
        return set(self.columns.values()) | set(self.condition_columns)


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value == ""


def _near_miss(name: str, columns: Iterable[str]) -> str | None:
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


def _json_cell(value: Any, where: str, field: str, errors: _Errors) -> Any:
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


def _to_plain(value: Any) -> Any:
    """numpy scalars/arrays (Parquet, HF) to plain Python."""
    if hasattr(value, "tolist") and not isinstance(value, str | bytes):
        return value.tolist()
    return value


def _label(value: Any, names: tuple[str, str]) -> int | None:
    value = _to_plain(value)
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


def _parse_target(raw: Any, where: str, errors: _Errors) -> Target | None:
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
    if message is not None and (isinstance(message, bool) or not isinstance(_to_plain(message), int)):
        errors.add(where, f"field 'target.message' must be an integer message index, got {message!r}")
        return None
    if role is not None and not isinstance(role, str):
        errors.add(where, f"field 'target.role' must be a string, got {role!r}")
        return None
    if span is not None:
        span = _to_plain(span)
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
    return Target(message=None if message is None else int(_to_plain(message)), role=role, span=span)


def _parse_messages(raw: Any, where: str, errors: _Errors) -> tuple[Message, ...] | None:
    raw = _to_plain(raw)
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


def _parse_rows(
    rows: Sequence[tuple[str, dict[str, Any]]],
    origin: str,
    mapping: _Mapping,
    label_names: tuple[str, str],
    check_typos: bool,
    kind: str = "contrast",
) -> list[Example]:
    """Validate raw rows ``(where, dict)`` into examples, raising one error that lists every problem."""
    errors = _Errors(origin)
    cols = mapping.columns
    if not rows:
        raise DatasetError(f"{origin}: the dataset has no rows.")
    any_id = any(not _is_missing(r.get(cols["id"])) for _, r in rows)
    first_seen: dict[str, str] = {}
    examples: list[Example] = []
    used = mapping.used()

    for i, (where, raw) in enumerate(rows):
        n_before = errors.total
        columns = list(raw)
        if check_typos:
            for f in ("text", "messages", "label", "group", "conditions", "target", "split", "id", "meta"):
                c = cols[f]
                if c in raw:
                    continue
                miss = _near_miss(c, [k for k in columns if k not in used])
                if miss is not None:
                    errors.add(
                        where,
                        f"unknown field {miss!r}: did you mean {c!r}? Rename it (or put it under 'meta')",
                    )

        # id
        rid = raw.get(cols["id"])
        if _is_missing(rid):
            if any_id:
                errors.add(where, f"missing field {cols['id']!r}: give every row a unique id")
            rid = str(i)
        rid = str(_to_plain(rid))
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
        has_text, has_msgs = not _is_missing(text_raw), msgs_raw is not None and not _is_missing(msgs_raw)
        if has_text and has_msgs:
            errors.add(
                where,
                f"gives both {cols['text']!r} and {cols['messages']!r}; a row is plain text or a chat, not both",
            )
        elif has_msgs:
            messages = _parse_messages(_json_cell(msgs_raw, where, cols["messages"], errors), where, errors)
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
            hint = _near_miss(cols["text"], columns) or _near_miss(cols["messages"], columns)
            fix = (
                f"did you mean {hint!r}? pass text={hint!r} (or messages={hint!r})"
                if hint
                else f"add one, or map a column with text=... or messages=... (columns: {columns})"
            )
            errors.add(where, f"missing field {cols['text']!r} or {cols['messages']!r}: {fix}")

        # label
        label_raw = raw.get(cols["label"])
        label: int | None = None
        if cols["label"] not in raw or _is_missing(label_raw):
            hint = _near_miss(cols["label"], columns) if cols["label"] not in raw else None
            fix = (
                f"did you mean {hint!r}? pass label={hint!r}"
                if hint
                else f"give {label_names[1]!r}/1 or {label_names[0]!r}/0"
            )
            errors.add(where, f"missing field {cols['label']!r}: {fix}")
        else:
            label = _label(label_raw, label_names)
            if label is None:
                errors.add(
                    where,
                    f"field {cols['label']!r}: unknown label {_to_plain(label_raw)!r}; use one of "
                    f"{list(label_names)} (or 0/1, false/true), or set label_names in the card",
                )

        # group, split
        group = raw.get(cols["group"])
        group = None if _is_missing(group) else str(_to_plain(group))
        split = raw.get(cols["split"])
        split = None if _is_missing(split) else str(_to_plain(split))

        # conditions
        conditions: dict[str, str] = {}
        cond_raw = raw.get(cols["conditions"])
        if not _is_missing(cond_raw):
            cond_raw = _json_cell(cond_raw, where, cols["conditions"], errors)
            if isinstance(cond_raw, dict):
                for k, v in cond_raw.items():
                    if not _is_missing(v):
                        conditions[str(k)] = str(_to_plain(v))
            elif cond_raw is not None:
                errors.add(
                    where, f"field {cols['conditions']!r} must be an object of tag: value, got {cond_raw!r}"
                )
        for c in mapping.condition_columns:
            if c not in raw:
                errors.add(where, f"missing condition column {c!r} (columns: {columns})")
            elif not _is_missing(raw[c]):
                conditions[c] = str(_to_plain(raw[c]))

        # target
        target: Target | None = None
        t_raw = raw.get(cols["target"])
        if not _is_missing(t_raw):
            t_raw = _json_cell(t_raw, where, cols["target"], errors)
            # Parquet/HF struct columns give a row without a target as a struct of nulls.
            if isinstance(t_raw, dict) and all(v is None for v in t_raw.values()):
                t_raw = None
            if t_raw is not None:
                target = _parse_target(t_raw, where, errors)

        # meta: every column nobody asked for
        meta: dict[str, Any] = {}
        meta_raw = raw.get(cols["meta"])
        if isinstance(meta_raw, dict):
            meta.update(meta_raw)
        elif not _is_missing(meta_raw):
            meta[cols["meta"]] = _to_plain(meta_raw)
        for k, v in raw.items():
            if k not in used:
                meta[k] = _to_plain(v)

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


# -- readers: each yields (where, row dict) --------------------------------------------------------------
def _read_jsonl(path: Path, errors: _Errors) -> list[tuple[str, dict[str, Any]]]:
    rows: list[tuple[str, dict[str, Any]]] = []
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            where = f"{path}, line {n}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                errors.add(
                    where,
                    f"malformed JSON ({exc.msg} at column {exc.colno}); each line must be one JSON object",
                )
                continue
            if not isinstance(obj, dict):
                errors.add(where, f"a row must be a JSON object, got {type(obj).__name__}")
                continue
            rows.append((where, obj))
    return rows


def _read_csv(path: Path) -> list[tuple[str, dict[str, Any]]]:
    rows: list[tuple[str, dict[str, Any]]] = []
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None:
            raise DatasetError(f"{path}: the CSV file is empty; line 1 must be a header of column names.")
        end = reader.line_num  # the header's last physical line
        for row in reader:
            start, end = end + 1, reader.line_num
            if None in row:
                raise DatasetError(
                    f"{path}, line {start}: the row has more cells than the header has columns; quote cells "
                    "that contain commas."
                )
            rows.append((f"{path}, line {start}", dict(row)))
    return rows


def _read_parquet(path: Path) -> list[tuple[str, dict[str, Any]]]:
    import pyarrow.parquet as pq

    return [(f"{path}, row index {i}", row) for i, row in enumerate(pq.read_table(path).to_pylist())]


def _find_data_file(folder: Path) -> Path:
    named = [folder / f"data{s}" for s in DATA_SUFFIXES if (folder / f"data{s}").is_file()]
    if len(named) == 1:
        return named[0]
    candidates = named or sorted(
        p for p in folder.iterdir() if p.suffix.lower() in DATA_SUFFIXES and p.is_file()
    )
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise DatasetError(
            f"{folder}: no data file; a dataset folder holds one data.jsonl (or .csv/.parquet) and a card.yaml."
        )
    raise DatasetError(
        f"{folder}: several data files {[p.name for p in candidates]}; pass the one to load, e.g. "
        f"load_dataset('{candidates[0]}')."
    )


def _resolve_card(
    card: DatasetCard | str | Path | None,
    found: DatasetCard | None,
    *,
    name: str | None,
    label_names: Sequence[str] | None,
    default_name: str,
    kind: str | None = None,
    hf_label_names: Sequence[str] | None = None,
) -> DatasetCard:
    """The given card (object or file), else the one found beside the data, else a minimal card; keyword
    overrides (``name``, ``label_names``, ``kind``) win."""
    if isinstance(card, str | Path):
        card = load_card(card)
    card = card or found
    if label_names is not None and len(label_names) != 2:
        raise DatasetError(f"label_names must be [negative, positive], got {list(label_names)}")
    update: dict[str, Any] = {}
    if name:
        update["name"] = name
    if label_names is not None:
        update["label_names"] = list(label_names)
    if kind:
        update["kind"] = kind
    if card is None:
        names = tuple(hf_label_names) if hf_label_names else ("0", "1")
        return DatasetCard.from_dict(
            {"name": default_name, "label_names": list(names), **update}, origin="load_dataset"
        )
    return DatasetCard.from_dict({**card.model_dump(), **update}, origin="load_dataset") if update else card


def _hf_label_names(ds: Any, column: str) -> list[str] | None:
    """The names of a two-class ``ClassLabel`` label column, if it is one."""
    feature = getattr(ds, "features", {}).get(column) if hasattr(ds, "features") else None
    names = getattr(feature, "names", None)
    return list(names) if names is not None and len(names) == 2 else None


def load_dataset(
    path_or_name: str | Path | Any,
    *,
    text: str | None = None,
    messages: str | None = None,
    label: str | None = None,
    id: str | None = None,  # noqa: A002 - mirrors the row field it maps
    group: str | None = None,
    split: str | None = None,
    conditions: Sequence[str] | None = None,
    target: str | None = None,
    label_names: Sequence[str] | None = None,
    name: str | None = None,
    card: DatasetCard | str | Path | None = None,
    kind: str | None = None,
    hf_split: str = "train",
    **hf_kwargs: Any,
) -> ContrastDataset:
    """Load a contrast dataset from a folder, a ``.jsonl``/``.csv``/``.parquet`` file, or a Hugging Face
    dataset (a ``datasets.Dataset``/``DatasetDict``, a ``save_to_disk`` folder, or a Hub id).

    ``text``, ``messages``, ``label``, ``id``, ``group``, ``split``, ``target`` name the source column of
    each row field (default: the field's own name); ``conditions`` lists plain columns to read as
    condition tags. ``label_names=[negative, positive]`` overrides the card's; without a card they default
    to a two-class ``ClassLabel``'s names or ``("0", "1")``. ``card`` gives a card (object or file) for a
    source without one. ``kind="control"`` (or ``kind: control`` in the card) accepts a single-class
    calibration set. ``hf_split`` and ``**hf_kwargs`` go to ``datasets.load_dataset`` for Hub ids.
    """
    fields = {"text": text, "messages": messages, "label": label, "id": id, "group": group, "split": split}
    mapping = _Mapping({**fields, "target": target}, conditions)
    common: dict[str, Any] = {"card": card, "label_names": label_names, "hf_split": hf_split, "kind": kind}
    if not isinstance(path_or_name, str | Path):
        return _load_hf_object(path_or_name, mapping, name=name, **common)

    path = Path(path_or_name)
    if path.is_dir() and ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file()):
        import datasets

        ds = datasets.load_from_disk(str(path))
        return _load_hf_object(
            ds, mapping, name=name or path.name, origin=str(path), found=find_card(path), **common
        )
    if path.is_dir() or path.is_file():
        if hf_kwargs:
            raise TypeError(f"unexpected keyword argument(s) {sorted(hf_kwargs)} for a local dataset {path}")
        data_file = _find_data_file(path) if path.is_dir() else path
        found = find_card(path if path.is_dir() else path.parent)
        dcard = _resolve_card(
            card,
            found,
            name=name,
            label_names=label_names,
            default_name=path.name if path.is_dir() else path.stem,
            kind=kind,
        )
        suffix = data_file.suffix.lower()
        errors = _Errors(str(data_file))
        if suffix == ".jsonl":
            rows = _read_jsonl(data_file, errors)
            errors.raise_if_any()
        elif suffix == ".csv":
            rows = _read_csv(data_file)
        elif suffix == ".parquet":
            rows = _read_parquet(data_file)
        else:
            raise DatasetError(
                f"{data_file}: unsupported data file type {suffix!r}; use .jsonl, .csv or .parquet."
            )
        examples = _parse_rows(
            rows, str(data_file), mapping, dcard.label_names, check_typos=suffix == ".jsonl", kind=dcard.kind
        )
        return ContrastDataset(examples, dcard, data_file)
    if path.suffix.lower() in DATA_SUFFIXES or str(path_or_name).startswith((".", "/", "~")):
        raise DatasetError(f"{path}: no such file or folder.")

    # A Hugging Face Hub id: the ordinary datasets code path (needs the network or a local HF cache).
    import datasets

    try:
        ds = datasets.load_dataset(str(path_or_name), split=hf_split, **hf_kwargs)
    except Exception as exc:  # both readings of the name failed: say so, with the Hub's reason
        raise DatasetError(
            f"{str(path_or_name)!r} is no local file or folder, and loading it as a Hugging Face dataset "
            f"failed ({type(exc).__name__}: {exc}). Check the path, or the Hub id and your network/HF cache."
        ) from exc
    return _load_hf_object(ds, mapping, name=name or str(path_or_name), origin=str(path_or_name), **common)


def _load_hf_object(
    ds: Any,
    mapping: _Mapping,
    *,
    card: DatasetCard | str | Path | None,
    name: str | None,
    label_names: Sequence[str] | None,
    hf_split: str,
    kind: str | None = None,
    origin: str | None = None,
    found: DatasetCard | None = None,
) -> ContrastDataset:
    if isinstance(ds, ContrastDataset):
        return ds
    if hasattr(ds, "keys") and not hasattr(ds, "features"):  # a DatasetDict
        if hf_split not in ds:
            raise DatasetError(
                f"{origin or 'dataset'}: no split {hf_split!r}; available: {sorted(ds.keys())}."
            )
        ds = ds[hf_split]
    if not hasattr(ds, "features") or not hasattr(ds, "__iter__"):
        raise TypeError(f"load_dataset takes a path, a Hub id or a datasets.Dataset, got {type(ds).__name__}")
    info_name = getattr(getattr(ds, "info", None), "dataset_name", None)
    origin = origin or name or info_name or "hf-dataset"
    dcard = _resolve_card(
        card,
        found,
        name=name,
        label_names=label_names,
        default_name=info_name or "hf-dataset",
        kind=kind,
        hf_label_names=_hf_label_names(ds, mapping.columns["label"]),
    )
    rows = [(f"{origin}, row index {i}", row) for i, row in enumerate(ds)]
    examples = _parse_rows(rows, origin, mapping, dcard.label_names, check_typos=False, kind=dcard.kind)
    return ContrastDataset(examples, dcard, origin)


def iter_rows_jsonl(examples: Iterable[Example]) -> Iterator[str]:
    """Serialize examples back to the JSONL row format (one line per row), e.g. for generators."""
    for ex in examples:
        row: dict[str, Any] = {"id": ex.id}
        if ex.text is not None:
            row["text"] = ex.text
        else:
            row["messages"] = [{"role": m.role, "content": m.content} for m in ex.messages or ()]
        row["label"] = ex.label
        if ex.group is not None:
            row["group"] = ex.group
        if ex.conditions:
            row["conditions"] = dict(ex.conditions)
        if ex.target is not None:
            t = {k: v for k, v in (("message", ex.target.message), ("role", ex.target.role)) if v is not None}
            if ex.target.span is not None:
                t["span"] = list(ex.target.span)
            row["target"] = t
        if ex.split is not None:
            row["split"] = ex.split
        if ex.meta:
            row["meta"] = ex.meta
        yield json.dumps(row, ensure_ascii=False)
