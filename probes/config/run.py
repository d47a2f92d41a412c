"""The whole experiment: :class:`RunConfig` assembles every section and renders itself (YAML, flat params)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, PrivateAttr, field_validator, model_validator

from probes.config.base import Strict
from probes.config.data import DataConfig
from probes.config.engine import EngineConfig
from probes.config.evaluation import EvaluationConfig, TrackingConfig
from probes.config.model import ModelConfig
from probes.config.probe import LayerItem, LayerRange, ProbeConfig
from probes.config.stages import DETECTOR_KINDS, DetectorConfig, StagesConfig
from probes.models.site_names import is_site_name

PoolingName = Literal["last", "mean", "tokens"]


class RunConfig(Strict):
    """A whole experiment. Every section is strict: unknown keys are errors."""

    name: str | None = Field(None, description="Run name; default: the config file's stem.")
    seed: int = Field(0, description="Seeds splits, subsampling, probe fitting and bootstrap.")
    model: ModelConfig
    data: DataConfig
    task: Literal["classify", "regress"] = Field(
        "classify",
        description="'classify': a probe for a binary label; 'regress': a ridge/sparse probe for a numeric "
        "target_value (the rows' target_value; see target_value).",
    )
    target_value: str | None = Field(
        None, description="task: regress: which named target_value to fit (default: the rows' only one)."
    )
    layers: Literal["all"] | list[LayerItem] | LayerRange = Field(
        "all", description="'all', a list of layer indices / site names, or {start, stop, step}."
    )
    pooling: PoolingName | list[PoolingName] = Field(
        "last",
        description="How a row's target tokens become one vector; 'tokens' keeps every token. A list "
        "(e.g. [mean, last, tokens]) collects all of them in one pass into one cache entry; the probe "
        "trains on the first.",
    )
    batch_size: int = Field(16, gt=0, description="Rows per forward pass (unless max_tokens is set).")
    max_tokens: int | None = Field(
        None, gt=0, description="Token budget per forward pass: rows per batch then vary with their length."
    )
    packing: Literal["auto"] | bool = Field(
        "auto",
        description=(
            "Pack several rows into one sequence: auto (where exact and estimated cheaper than padding), "
            "true (wherever exact), or false (never)."
        ),
    )
    shard_rows: int | None = Field(
        None, gt=0, description="Cache flush every N rows (besides every ~30 s of work and 64 MiB)."
    )
    probe: ProbeConfig = Field(default_factory=ProbeConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    cache_dir: str | None = Field(
        ".cache/probes", description="Activation cache folder; null disables caching."
    )
    engine: EngineConfig = Field(default_factory=EngineConfig)
    output_dir: str = Field("runs", description="Run outputs go to <output_dir>/<name>-<timestamp>/.")
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    detectors: list[DetectorConfig] = Field(
        default_factory=list, description="Anomaly detectors fitted on the control set's benign rows only."
    )
    stages: StagesConfig | None = Field(
        None, description="A two-stage cascade: the chosen probe, then a costlier probe or an LM judge."
    )

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
                if isinstance(item, str) and not is_site_name(item):
                    raise ValueError(f"layer {item!r} is not a site name ('layers.N' or 'final_norm')")
            return [int(i) if isinstance(i, str) and i.lstrip("-").isdigit() else i for i in value]
        raise ValueError("layers must be 'all', a list like [2, 4, 'final_norm'], or {start, stop, step}")

    @model_validator(mode="after")
    def _second_opinions(self) -> RunConfig:
        if self.probe.kind in DETECTOR_KINDS:
            raise ValueError(
                f"probe.kind: {self.probe.kind!r} is an anomaly detector, fitted on benign rows only; list it "
                f"under detectors: (e.g. detectors: [{{name: unusual, kind: {self.probe.kind}}}])"
            )
        if self.detectors and self.data.control is None:
            raise ValueError("detectors: a detector is fitted on benign rows only; set data.control")
        names = [d.name for d in self.detectors]
        if len(set(names)) != len(names):
            raise ValueError(f"detectors: names must be distinct; got {names}")
        for i, det in enumerate(self.detectors):
            for key in ("novel", "shifted"):
                unknown = [n for n in getattr(det, key) or [] if n not in self.data.eval]
                if unknown:
                    raise ValueError(
                        f"detectors.{i}.{key}: {unknown} are not eval sets; data.eval has "
                        f"{', '.join(self.data.eval) or 'none'}"
                    )
            both = set(det.novel or []) & set(det.shifted)
            if (
                both and det.novel_rows == "all"
            ):  # (with 'positive', a set's positives are novel, its negatives benign)
                raise ValueError(
                    f"detectors.{i}: {sorted(both)} are both novel (every row) and shifted (benign); set "
                    "novel_rows: positive to count a two-class set's positives as novel and its negatives as benign"
                )
        for key, given in (("stages", self.stages is not None), ("detectors", bool(self.detectors))):
            if given and self.primary_pooling == "tokens":
                raise ValueError(f"{key}: read pooled activations; set pooling to 'last' or 'mean'")
        return self

    @field_validator("pooling", mode="before")
    @classmethod
    def _pooling(cls, value: Any) -> Any:
        # Parsed by hand so a bad value gives one message instead of one per union member.
        items = value if isinstance(value, list) else [value]
        if not items:
            raise ValueError("pooling list is empty; name at least one of last, mean, tokens")
        for item in items:
            if item not in ("last", "mean", "tokens"):
                raise ValueError(f"pooling {item!r} is not one of last, mean, tokens")
        if len(set(items)) != len(items):
            raise ValueError(f"pooling {items} names a pooling twice")
        return items[0] if len(items) == 1 else items

    @property
    def primary_pooling(self) -> str:
        """The pooling probes train on: ``pooling``, or the first of a list."""
        return self.pooling if isinstance(self.pooling, str) else self.pooling[0]

    @model_validator(mode="after")
    def _ray_needs_cache(self) -> RunConfig:
        if self.engine.kind == "ray" and self.cache_dir is None:
            raise ValueError("engine.kind=ray writes through the activation cache: set cache_dir")
        return self

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
