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

The readers are in :mod:`probes.data.readers`, row validation in :mod:`probes.data.rows` and
:mod:`probes.data.fields`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from probes.data.card import DatasetCard, find_card, load_card
from probes.data.dataset import ContrastDataset
from probes.data.readers import DATA_SUFFIXES, find_data_file, read_data_file
from probes.data.rows import ColumnMapping, parse_rows
from probes.errors import DatasetError


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
    target_value: str | None = None,
    **hf_kwargs: Any,
) -> ContrastDataset:
    """Load a contrast dataset from a folder, a ``.jsonl``/``.csv``/``.parquet`` file, or a Hugging Face
    dataset (a ``datasets.Dataset``/``DatasetDict``, a ``save_to_disk`` folder, or a Hub id).

    ``text``, ``messages``, ``label``, ``id``, ``group``, ``split``, ``target`` name the source column of
    each row field (default: the field's own name); ``conditions`` lists plain columns to read as
    condition tags. ``label_names=[negative, positive]`` overrides the card's; without a card they default
    to a two-class ``ClassLabel``'s names or ``("0", "1")``. ``card`` gives a card (object or file) for a
    source without one. ``kind="control"`` (or ``kind: control`` in the card) accepts a single-class
    calibration set; ``kind="regress"`` a regression set, whose rows carry a numeric ``target_value`` (a
    number, or an object of named numbers; ``target_value=`` names its column) and need no label. ``hf_split`` and ``**hf_kwargs`` go to ``datasets.load_dataset`` for Hub ids.
    """
    fields = {"text": text, "messages": messages, "label": label, "id": id, "group": group, "split": split}
    mapping = ColumnMapping({**fields, "target": target, "target_value": target_value}, conditions)
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
        data_file = find_data_file(path) if path.is_dir() else path
        found = find_card(path if path.is_dir() else path.parent)
        dcard = _resolve_card(
            card,
            found,
            name=name,
            label_names=label_names,
            default_name=path.name if path.is_dir() else path.stem,
            kind=kind,
        )
        rows = read_data_file(data_file)
        examples = parse_rows(
            rows,
            str(data_file),
            mapping,
            dcard.label_names,
            check_typos=data_file.suffix.lower() == ".jsonl",
            kind=dcard.kind,
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
    mapping: ColumnMapping,
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
    examples = parse_rows(rows, origin, mapping, dcard.label_names, check_typos=False, kind=dcard.kind)
    return ContrastDataset(examples, dcard, origin)
