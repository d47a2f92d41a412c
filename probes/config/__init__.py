"""Run configs: one YAML file describes a whole experiment.

A config is a frozen, strict :class:`RunConfig` (unknown keys are errors). :func:`load_config` reads YAML,
applies ``--set a.b=c`` overrides (values parsed as YAML scalars) and turns every problem into one
:class:`probes.errors.ConfigError` naming the file and the key path.

Datasets on the Hugging Face Hub are written ``hf:owner/name``. Relative paths resolve against the current
directory (see :mod:`probes.config.loading`); ``model.name_or_path`` forms are in :mod:`probes.config.model`.

Constructing a config has no side effects: nothing is created, downloaded or imported beyond pydantic.
"""

from probes.config.data import DataConfig, DatasetSpec, FieldMapping, SplitConfig
from probes.config.engine import EngineConfig
from probes.config.evaluation import EvaluationConfig, TrackingConfig
from probes.config.loading import apply_overrides, config_from_dict, load_config
from probes.config.model import ModelConfig, resolve_model_path
from probes.config.probe import LayerRange, ProbeConfig
from probes.config.run import RunConfig
from probes.config.stages import DetectorConfig, StageConfig, StagesConfig, check_stage_models

__all__ = [
    "DataConfig",
    "DetectorConfig",
    "DatasetSpec",
    "EngineConfig",
    "FieldMapping",
    "EvaluationConfig",
    "LayerRange",
    "ModelConfig",
    "ProbeConfig",
    "RunConfig",
    "SplitConfig",
    "StageConfig",
    "StagesConfig",
    "TrackingConfig",
    "apply_overrides",
    "check_stage_models",
    "config_from_dict",
    "load_config",
    "resolve_model_path",
]
