"""Data file readers: JSONL, CSV and Parquet rows as ``(where, row dict)``, ``where`` naming file and line.

JSONL lines count from 1; CSV lines count the header as line 1 (a quoted cell may span lines, so a row's
line is where it starts); Parquet rows are named by row index. Text files are strict UTF-8: a byte that is
not is a ``DatasetError`` naming the file, line and column (every such JSONL line is listed).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from probes.data.fields import RowErrors
from probes.errors import DatasetError
from probes.textfile import read_utf8, utf8_problem

DATA_SUFFIXES = (".jsonl", ".csv", ".parquet")


def read_jsonl(path: Path, errors: RowErrors) -> list[tuple[str, dict[str, Any]]]:
    rows: list[tuple[str, dict[str, Any]]] = []
    with path.open("rb") as fh:
        for n, raw in enumerate(fh, start=1):
            if n == 1 and raw.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte-order mark
                raw = raw[3:]
            where = f"{path}, line {n}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                _, column, message = utf8_problem(raw, exc)
                errors.add(f"{where}, column {column}", message)
                continue
            if not line.strip():
                continue
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


def read_csv(path: Path) -> list[tuple[str, dict[str, Any]]]:
    rows: list[tuple[str, dict[str, Any]]] = []
    with io.StringIO(read_utf8(path, DatasetError), newline="") as fh:
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


def read_parquet(path: Path) -> list[tuple[str, dict[str, Any]]]:
    import pyarrow.parquet as pq

    return [(f"{path}, row index {i}", row) for i, row in enumerate(pq.read_table(path).to_pylist())]


def find_data_file(folder: Path) -> Path:
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


def read_data_file(data_file: Path) -> list[tuple[str, dict[str, Any]]]:
    """The rows of a ``.jsonl``/``.csv``/``.parquet`` file; malformed JSONL lines are reported together."""
    suffix = data_file.suffix.lower()
    errors = RowErrors(str(data_file))
    if suffix == ".jsonl":
        rows = read_jsonl(data_file, errors)
        errors.raise_if_any()
    elif suffix == ".csv":
        rows = read_csv(data_file)
    elif suffix == ".parquet":
        rows = read_parquet(data_file)
    else:
        raise DatasetError(
            f"{data_file}: unsupported data file type {suffix!r}; use .jsonl, .csv or .parquet."
        )
    return rows
