"""Shared writing helpers for the dataset generators in ``scripts/make_*.py``.

A dataset folder is written as a whole: rows and card go to a temporary sibling folder which then replaces the
old one, so an interrupted run never leaves a half-written dataset behind.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ROOT / "datasets"

# The keys the card schema (probes.data.card.DatasetCard) accepts, in the order they are written.
CARD_KEYS: tuple[str, ...] = (
    "name",
    "description",
    "label_names",
    "kind",
    "source",
    "license",
    "how_made",
    "confounds",
    "intended_use",
    "splits",
    "baselines",
)

LICENSE = "Apache-2.0 (same as the probes repository); every sentence was written for this project."


class _CardDumper(yaml.SafeDumper):
    """Writes long strings as folded blocks so cards stay readable in a diff."""


def _str_representer(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = ">" if len(value) > 100 and "\n" not in value else ("|" if "\n" in value else None)
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_CardDumper.add_representer(str, _str_representer)


def dump_card(card: Mapping[str, Any]) -> str:
    unknown = sorted(set(card) - set(CARD_KEYS))
    if unknown:
        raise ValueError(f"card keys {unknown} are not in the card schema {CARD_KEYS}")
    ordered = {k: card[k] for k in CARD_KEYS if k in card}
    return yaml.dump(ordered, Dumper=_CardDumper, sort_keys=False, allow_unicode=True, width=110)


def read_card(folder: Path) -> dict[str, Any]:
    path = folder / "card.yaml"
    if not path.is_file():
        return {}
    return yaml.safe_load(path.read_text(encoding="utf-8")) or {}


def write_card(folder: Path, card: Mapping[str, Any]) -> None:
    """Replace ``folder/card.yaml`` atomically (temp file + rename)."""
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".card.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(dump_card(card))
    os.replace(tmp, folder / "card.yaml")


def write_dataset(name: str, rows: Iterable[Mapping[str, Any]], card: Mapping[str, Any]) -> Path:
    """Write ``datasets/<name>/{data.jsonl,card.yaml}`` as one unit; keep measured baselines of the old card
    only when the rows are byte-identical (otherwise the numbers would describe other data)."""
    folder = DATASETS / name
    lines = "".join(json.dumps(dict(r), ensure_ascii=False, sort_keys=False) + "\n" for r in rows)
    old_rows = (
        (folder / "data.jsonl").read_text(encoding="utf-8") if (folder / "data.jsonl").is_file() else None
    )
    card = dict(card)
    if old_rows == lines and read_card(folder).get("baselines"):
        card["baselines"] = read_card(folder)["baselines"]
    DATASETS.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=DATASETS, prefix=f".{name}."))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the shipped folder must be readable like any other
    try:
        (tmp / "data.jsonl").write_text(lines, encoding="utf-8")
        (tmp / "card.yaml").write_text(dump_card(card), encoding="utf-8")
        if folder.exists():
            old = folder.with_name(f".{name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(folder, old)
            os.replace(tmp, folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def generator_main(
    argv: list[str] | None,
    *,
    doc: str | None,
    name: str,
    card: Mapping[str, Any],
    build_rows: Callable[[int], Sequence[Mapping[str, Any]]],
    seed: int,
) -> None:
    """The command line every ``scripts/make_*.py`` shares: ``[--seed N]``, build the rows, write the folder."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=seed)
    args = parser.parse_args(argv)
    rows = build_rows(args.seed)
    folder = write_dataset(name, rows, card)
    print(f"wrote {len(rows)} rows to {folder}")
