"""Reading a run config: YAML file, ``--set a.b=c`` overrides, validation, and dataset path checks.

Relative paths in a config (datasets, ``cache_dir``, ``output_dir``) resolve against the **current working
directory**, like every other command-line tool, so the configs in ``training/`` are run from the
repository root exactly as the README shows: ``probes run training/quickstart.yaml``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from probes.config.messages import format_errors
from probes.config.run import RunConfig
from probes.config.stages import check_stage_models
from probes.errors import ConfigError
from probes.textfile import read_utf8

PATHS_NOTE = "relative paths resolve against the current directory"


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
        raw = yaml.safe_load(read_utf8(path, ConfigError))
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
        raise ConfigError(format_errors(exc, label)) from None
    config._source = source
    config._overrides = tuple(overrides)
    if check_paths:
        _check_dataset_paths(config, label)
        check_stage_models(config.stages, label)
    return config


def config_from_dict(raw: dict[str, Any], overrides: Sequence[str] = (), source: str = "<dict>") -> RunConfig:
    """Like :func:`load_config` for an in-memory mapping (no path checks)."""
    raw = apply_overrides(raw, overrides)
    try:
        config = RunConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_errors(exc, source)) from None
    config._overrides = tuple(overrides)
    return config
