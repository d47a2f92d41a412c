"""Dataset cards: what a contrast dataset is, where it came from, and what can fool a probe trained on it.

A card lives beside the data, either as ``card.yaml`` or as the YAML front matter of ``README.md``
(between two ``---`` lines at the top). Keys are strict: an unknown key is an error naming the key and the
file, so a typo never silently drops documentation. ``label_names`` is ``[negative, positive]``; the positive
class is the state a probe detects (label 1).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from probes.errors import DatasetError
from probes.textfile import read_utf8

# A card read from a file must document these; a card made for a bare data file only needs a name and
# label names.
REQUIRED_IN_FILE: tuple[str, ...] = ("name", "description", "label_names", "source", "license", "how_made")


class DatasetCard(BaseModel):
    """The documentation of a contrast dataset (frozen; unknown keys are an error)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    label_names: tuple[str, str]
    # "control": a calibration set that may hold a single class (e.g. benign rows only, for FPR thresholds).
    # "regress": rows carry a numeric target_value (label optional) for regression probes.
    kind: Literal["contrast", "control", "regress"] = "contrast"
    description: str = ""
    source: str = ""
    license: str = ""
    how_made: str = ""
    confounds: tuple[str, ...] = ()
    intended_use: str = ""
    splits: str = ""
    baselines: dict[str, Any] | None = None
    # Written by `probes generate`: the model, source dataset and sampling settings that made the replies.
    generation: dict[str, Any] | None = None

    @field_validator("label_names")
    @classmethod
    def _distinct_names(cls, value: tuple[str, str]) -> tuple[str, str]:
        if any(not str(v).strip() for v in value) or value[0] == value[1]:
            raise ValueError(
                f"label_names must be two distinct non-empty strings [negative, positive], got {list(value)}"
            )
        return value

    @property
    def positive(self) -> str:
        """The name of label 1, the state a probe detects."""
        return self.label_names[1]

    @property
    def negative(self) -> str:
        return self.label_names[0]

    @classmethod
    def from_dict(
        cls, data: dict[str, Any], *, origin: str = "<dict>", require_docs: bool = False
    ) -> DatasetCard:
        """Validate a card mapping; errors name ``origin`` (a file) and the offending key."""
        if not isinstance(data, dict):
            raise DatasetError(
                f"{origin}: a dataset card must be a YAML mapping of keys, got {type(data).__name__}."
            )
        if require_docs:
            missing = [k for k in REQUIRED_IN_FILE if k not in data or data[k] in (None, "", [])]
            if missing:
                raise DatasetError(
                    f"{origin}: dataset card is missing {', '.join(repr(k) for k in missing)}. Add them "
                    f"(required keys: {', '.join(REQUIRED_IN_FILE)}; optional: kind, confounds, "
                    "intended_use, splits, baselines, generation)."
                )
        known = set(cls.model_fields)
        unknown = sorted(set(data) - known)
        if unknown:
            raise DatasetError(
                f"{origin}: unknown dataset card key(s) {', '.join(repr(k) for k in unknown)}. "
                f"Allowed keys: {', '.join(sorted(known))}."
            )
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(
                f"key {'.'.join(str(p) for p in e['loc']) or '<card>'}: {e['msg']}" for e in exc.errors()
            )
            raise DatasetError(f"{origin}: invalid dataset card: {problems}.") from None


def read_front_matter(path: Path) -> dict[str, Any] | None:
    """The YAML front matter of a Markdown file, or ``None`` when it has none."""
    import yaml

    text = read_utf8(path, DatasetError)
    if not text.startswith("---"):
        return None
    lines = text.splitlines()
    if lines[0].strip() != "---":
        return None
    for end, line in enumerate(lines[1:], start=1):
        if line.strip() in ("---", "..."):
            try:
                data = yaml.safe_load("\n".join(lines[1:end]))
            except yaml.YAMLError as exc:
                raise DatasetError(f"{path}: the README front matter is not valid YAML: {exc}") from None
            return data if data is not None else {}
    raise DatasetError(
        f"{path}: the README front matter opened with '---' is never closed; add a '---' line."
    )


def load_card(path: str | Path) -> DatasetCard:
    """Read a card from ``card.yaml`` (or any YAML file) or from a README's front matter."""
    import yaml

    path = Path(path)
    if path.suffix.lower() == ".md":
        data = read_front_matter(path)
        if data is None:
            raise DatasetError(
                f"{path}: no YAML front matter; start the README with a '---' block holding the card keys "
                f"({', '.join(REQUIRED_IN_FILE)}), or write a card.yaml."
            )
    else:
        try:
            data = yaml.safe_load(read_utf8(path, DatasetError))
        except yaml.YAMLError as exc:
            raise DatasetError(f"{path}: the dataset card is not valid YAML: {exc}") from None
    return DatasetCard.from_dict(data, origin=str(path), require_docs=True)


def find_card(folder: Path) -> DatasetCard | None:
    """The card of a dataset folder: ``card.yaml`` first, else README front matter, else ``None``."""
    for name in ("card.yaml", "card.yml"):
        if (folder / name).is_file():
            return load_card(folder / name)
    for name in ("README.md", "readme.md", "README.MD"):
        readme = folder / name
        if readme.is_file() and read_front_matter(readme) is not None:
            return load_card(readme)
    return None
