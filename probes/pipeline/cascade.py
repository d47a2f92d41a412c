"""The ``stages:`` of a run: a cheap probe, then a costlier judge on the rows it is least sure of.

:func:`stage_scores` gives one stage's scores on the validation and test rows and its measured compute per
decision (:class:`~probes.evaluation.StageCost`): the run's chosen probe, another probe fitted on the train
split (a multi-layer ``stacked`` / ``concat`` probe, an MLP, ...), or an LM judge
(:class:`~probes.train.LMJudge`) asked a yes/no question through its chat template. :func:`run_cascade`
puts both stages into :func:`~probes.evaluation.cascade_curve` -- recall at the fixed FPR versus the share
escalated, every band and threshold chosen on validation -- and fits the deployed cascade at the target
``escalation``, deciding the test rows with stage 2 called only on the escalated ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from probes.config import StageConfig
from probes.errors import ConfigError
from probes.pipeline.prepare import _Prepared
from probes.pipeline.results import Reporter

if TYPE_CHECKING:  # pragma: no cover
    from probes.evaluation import CascadeCurve, StageCost


@dataclass
class StageScores:
    """One stage's scores of the validation and test rows, what it is, and what a decision costs."""

    description: str
    val: Any  # (n_val,) float64
    test: Any  # (n_test,) float64
    cost: StageCost


@dataclass
class CascadeOutcome:
    """The cascade of a run: the curve over escalation fractions and the deployed cascade's decisions."""

    curve: CascadeCurve
    stages: list[str]
    deployed: dict[str, Any]
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "stages": list(self.stages),
            "curve": self.curve.to_dict(),
            "deployed": dict(self.deployed),
            "warnings": list(self.warnings),
        }


def _probe_stage(stage: StageConfig, prep: _Prepared, chosen_site: str, what: str) -> StageScores:
    import numpy as np

    from probes.evaluation import StageCost
    from probes.pipeline.detectors import resolve_site
    from probes.pipeline.sweep import _probe_params
    from probes.train import PROBE_REGISTRY, make_probe

    config = prep.config
    kind = str(stage.probe)
    params = _probe_params(kind, stage.params, config.seed)
    cls = PROBE_REGISTRY[kind][0]
    multi = bool(getattr(cls, "multi_site", False))
    items = stage.site_list
    if items is None:
        sites = list(prep.sites) if multi else [chosen_site]
    else:
        sites = [resolve_site(s, chosen_site, prep, f"{what}.layers") for s in items]
    if multi and len(sites) < 2:
        raise ConfigError(f"{what}: a {kind} probe reads at least two sites; got {sites}.")
    if not multi and len(sites) != 1:
        raise ConfigError(f"{what}: a {kind} probe reads one site; got {sites} (use stacked or concat).")
    acts = {k: prep.acts[k] for k in ("train", "val", "test")}

    def x(split: str) -> Any:
        return _only(acts[split], sites) if multi else acts[split][sites[0]]

    if multi:
        params = {**params, "sites": sites}
    probe = make_probe(kind, **params).fit(x("train"), acts["train"].labels, groups=acts["train"].groups)
    label = f"{kind} probe @ {'+'.join(sites)}"
    cost = StageCost.of_probe(probe, name=label, X=x("test"))
    return StageScores(
        label,
        np.asarray(probe.decision_function(x("val")), dtype=np.float64),
        np.asarray(probe.decision_function(x("test")), dtype=np.float64),
        cost,
    )


def _only(acts: Any, sites: list[str]) -> Any:
    from probes.collection import Activations

    return Activations({s: acts[s] for s in sites}, acts.labels, acts.ids, acts.groups, dict(acts.spec))


def _judge_stage(stage: StageConfig, prep: _Prepared) -> StageScores:

    from probes.config import resolve_model_path
    from probes.evaluation import StageCost
    from probes.models import load_model
    from probes.train import LMJudge
    from probes.train.judge import DEFAULT_QUESTION

    config = prep.config
    name = stage.model or config.model.name_or_path
    if stage.model is None or stage.model == config.model.name_or_path:
        model, tokenizer = prep.model, prep.tokenizer
    else:
        model, tokenizer = load_model(
            resolve_model_path(stage.model), dtype=stage.dtype, device=config.model.device
        )
    judge = LMJudge(
        model,
        tokenizer,
        question=stage.question or DEFAULT_QUESTION,
        state=stage.state,
        yes=tuple(stage.yes),
        no=tuple(stage.no),
        score=stage.score,
        system=stage.system,
        batch_size=stage.batch_size,
    )

    def items(split: str) -> list[Any]:
        ds = prep.splits[split]
        return list(ds.target_texts) if stage.reads == "target" else list(ds)

    val = judge.score(items("val"))
    test = judge.score(items("test"))  # the cost below is measured on this call
    label = f"LM judge {name} ({stage.score}, reads the {stage.reads})"
    return StageScores(label, val, test, StageCost.of_judge(judge, name=label))


def stage_scores(stage: StageConfig, prep: _Prepared, probe: Any, chosen_site: str, what: str) -> StageScores:
    """Scores of the validation and test rows by one stage, and its compute per decision."""
    import numpy as np

    from probes.evaluation import StageCost

    if stage.kind == "judge":
        return _judge_stage(stage, prep)
    if stage.kind == "probe":
        return _probe_stage(stage, prep, chosen_site, what)
    label = f"{prep.config.probe.kind} probe @ {chosen_site} (chosen)"
    return StageScores(
        label,
        np.asarray(probe.decision_function(prep.acts["val"][chosen_site]), dtype=np.float64),
        np.asarray(probe.decision_function(prep.acts["test"][chosen_site]), dtype=np.float64),
        StageCost.of_probe(probe, name=label, X=prep.acts["test"][chosen_site]),
    )


def run_cascade(prep: _Prepared, probe: Any, chosen_site: str, reporter: Reporter) -> CascadeOutcome | None:
    """The cascade of ``prep.config.stages`` (see the module docstring); ``None`` without ``stages:``."""

    from probes.evaluation import cascade_curve
    from probes.train import Cascade

    config = prep.config
    st = config.stages
    if st is None:
        return None
    target_fpr = float(st.target_fpr or config.evaluation.target_fprs[0])
    scores = []
    for key in ("stage1", "stage2"):
        stage = getattr(st, key)
        with reporter.stage(f"Cascade {key}: {stage.kind} on {len(prep.splits['val'])} val + "
                            f"{len(prep.splits['test'])} test rows"):  # fmt: skip
            scores.append(stage_scores(stage, prep, probe, chosen_site, f"stages.{key}"))
    s1, s2 = scores
    y_val, y_test = prep.acts["val"].labels, prep.acts["test"].labels
    curve = cascade_curve(
        s1.val,
        s2.val,
        y_val,
        s1.test,
        s2.test,
        y_test,
        fractions=sorted({*st.curve, st.escalation}),
        target_fpr=target_fpr,
        combine=st.combine,
        costs=[s1.cost, s2.cost],
    )
    cascade = Cascade(escalation=st.escalation, target_fpr=target_fpr, combine=st.combine).fit(
        s1.val, s2.val, y_val
    )
    # Deployed: stage 2 is asked only about the escalated rows.
    decision = cascade.decide(s1.test, lambda idx: s2.test[idx])
    pos, neg = y_test == 1, y_test == 0
    point = next(p for p in curve.points if p.target_escalation == float(st.escalation))
    deployed = {
        "target_escalation": float(st.escalation),
        "band": [float(cascade.lo_), float(cascade.hi_)],
        "threshold": float(cascade.threshold_),
        "val_escalation": float(cascade.val_escalation_),
        "test_escalation": decision.escalation_fraction,
        "recall": float(decision.flagged[pos].mean()),
        "fpr": float(decision.flagged[neg].mean()),
        "stage2_calls": int(decision.escalated.sum()),
        "rows": int(y_test.size),
        "seconds_per_decision": point.seconds_per_decision,
        "flops_per_decision": point.flops_per_decision,
    }
    for w in curve.warnings:
        reporter.warn(f"cascade: {w}")
    return CascadeOutcome(curve, [s1.description, s2.description], deployed, list(curve.warnings))
