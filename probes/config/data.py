"""The ``data`` section: dataset specs (path, column mapping, subsampling), rendering and splits."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from probes.config.base import Strict


class FieldMapping(Strict):
    """Source column names of the row fields, for files whose columns are named differently."""

    text: str | None = None
    messages: str | None = None
    label: str | None = None
    id: str | None = None
    group: str | None = None
    split: str | None = None
    target: str | None = None
    target_value: str | None = None


class DatasetSpec(Strict):
    """One dataset: a local folder/file (or several, concatenated) or ``hf:owner/name``.

    YAML shorthand: a bare string (or list of strings) is ``{path: ...}``.
    """

    path: str | list[str] = Field(
        description="Folder (data file + card.yaml), .jsonl/.csv/.parquet, or hf:owner/name."
    )
    fields: FieldMapping = Field(
        default_factory=FieldMapping, description="Column names of the row fields, e.g. {text: sentence}."
    )
    conditions: list[str] | None = Field(None, description="Plain columns to read as condition tags.")
    label_names: list[str] | None = Field(None, description="[negative, positive]; overrides the card's.")
    hf_split: str = Field("train", description="Split of a hf: dataset.")
    limit: int | None = Field(
        None, gt=0, description="Use at most about this many rows (a seeded, grouped subsample; quick runs)."
    )
    where: dict[str, list[str]] | None = Field(
        None,
        description="Keep only rows whose condition tags take one of these values, e.g. {family: [geography]}.",
    )

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"path": value}
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return {"path": value}
        return value

    @field_validator("label_names")
    @classmethod
    def _two_labels(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and len(value) != 2:
            raise ValueError("label_names must be [negative, positive]")
        return value

    @property
    def paths(self) -> list[str]:
        return [self.path] if isinstance(self.path, str) else list(self.path)

    @property
    def name(self) -> str:
        first = self.paths[0].removeprefix("hf:").rstrip("/")
        stem = Path(first).stem if Path(first).suffix else Path(first).name
        return stem + (f"+{len(self.paths) - 1}" if len(self.paths) > 1 else "")

    def load_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :func:`probes.data.load_dataset` for one of :attr:`paths`."""
        kwargs: dict[str, Any] = {k: v for k, v in self.fields.model_dump().items() if v is not None}
        if self.conditions is not None:
            kwargs["conditions"] = list(self.conditions)
        if self.label_names is not None:
            kwargs["label_names"] = list(self.label_names)
        return kwargs


class SplitConfig(Strict):
    """How the training dataset is split into train / validation / test (grouped, stratified, seeded)."""

    train: float = Field(0.6, gt=0, lt=1)
    val: float = Field(0.2, gt=0, lt=1)
    test: float = Field(
        0.2, ge=0, lt=1, description="Ignored with a holdout: test is then the held-out groups."
    )
    holdout: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Condition values kept out of train/val and used only for test, e.g. {frame: [stage_play]}.",
    )
    use_column: bool = Field(
        True,
        description="Honour the rows' own 'split' column when every row has one (unless holdout is given); "
        "false re-splits by the fractions.",
    )

    @model_validator(mode="after")
    def _sums_to_one(self) -> SplitConfig:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + val + test must sum to 1 (got {total:g})")
        if self.test == 0 and not self.holdout:
            raise ValueError("test is 0 but no holdout is given: nothing would be left to test on")
        return self


class DataConfig(Strict):
    """Datasets, rendering and splits."""

    train: DatasetSpec = Field(
        description="The contrast dataset probes are trained on (split into train/val/test)."
    )
    eval: dict[str, DatasetSpec] = Field(
        default_factory=dict, description="Extra test sets, by name, scored with the chosen probe."
    )
    control: list[DatasetSpec] | DatasetSpec | None = Field(
        None,
        union_mode="left_to_right",
        description="Benign single-class set: false-positive rates and the threshold are calibrated on it. "
        "A list ([a, b]) gives several control sets: the threshold is set on them pooled and the report shows "
        "the FPR a threshold set on each gives on the others (threshold transfer). A set made of several "
        "files is {path: [x, y]}.",
    )
    target: Literal["dataset", "all"] = Field(
        "dataset", description="'dataset': read each row's detection target; 'all': read every token."
    )
    chat_template: str | None = Field(
        None,
        description="A Jinja chat template overriding the tokenizer's. Chat rows use the tokenizer's template "
        "when it has one, else a plain 'User: ... / Assistant: ...' rendering.",
    )
    max_length: int = Field(
        512, gt=0, description="Token limit per row (longer rows are truncated at the end)."
    )
    max_chars: int | None = Field(
        None,
        gt=0,
        description="Character limit per row, applied before tokenizing so memory is bounded by max_length "
        "and not by the longest row (default 64 x max_length; rows cut are counted in a warning).",
    )
    splits: SplitConfig = Field(default_factory=SplitConfig)

    @field_validator("control")
    @classmethod
    def _one_or_several(
        cls, value: list[DatasetSpec] | DatasetSpec | None
    ) -> list[DatasetSpec] | DatasetSpec | None:
        if isinstance(value, list):
            if not value:
                raise ValueError("an empty list of control sets; leave control out for none")
            if len(value) == 1:
                return value[0]
        return value

    @property
    def control_specs(self) -> dict[str, DatasetSpec]:
        """The control sets by name (a spec's name; repeated names get ``-2``, ``-3``): ``{}`` without one."""
        if self.control is None:
            return {}
        specs = self.control if isinstance(self.control, list) else [self.control]
        out: dict[str, DatasetSpec] = {}
        for spec in specs:
            name, k = spec.name, 2
            while name in out:
                name, k = f"{spec.name}-{k}", k + 1
            out[name] = spec
        return out

    def all_specs(self) -> dict[str, DatasetSpec]:
        """Every dataset in the config: ``train``, ``control`` (``control.<name>`` for several) and
        ``eval.<name>``."""
        specs = {"train": self.train}
        controls = self.control_specs
        if len(controls) == 1:
            specs["control"] = next(iter(controls.values()))
        else:
            specs.update({f"control.{k}": v for k, v in controls.items()})
        specs.update({f"eval.{k}": v for k, v in self.eval.items()})
        return specs
