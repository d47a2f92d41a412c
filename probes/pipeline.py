"""Config-driven runs: ``probes.run(config) -> RunResult``, and the stages behind ``probes collect|train|evaluate``.

A run, step by step (each step is one function below)::

    load datasets → split train (grouped, seeded, holdout) → load model → collect activations (cached)
    → layer sweep on train, pick the layer (and grid point) on validation only
    → evaluate on test with the control set (thresholds at the target FPRs), calibrate on validation,
      text-only baselines (full text and detected span) → eval sets → generalisation matrix (optional)
    → write <output_dir>/<name>-<timestamp>/ (report.json, plots/, bundle/, config.yaml) → log to MLflow

Heavy imports (torch, transformers, mlflow) happen inside functions, so importing this module is instant.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from probes.config import DatasetSpec, RunConfig, load_config, resolve_model_path
from probes.errors import ConfigError, DatasetError

if TYPE_CHECKING:  # pragma: no cover
    from probes.collect import Activations
    from probes.data import ContrastDataset
    from probes.evaluate import EvalReport
    from probes.track import TrackingOutcome

__all__ = [
    "EvaluateResult",
    "Reporter",
    "RunResult",
    "TrainResult",
    "collect_stage",
    "evaluate_run",
    "reproducibility_warnings",
    "run",
    "train_stage",
    "validate_config",
    "validate_dataset",
]

log = logging.getLogger("probes")


# ----------------------------------------------------------------------------------------------------------
# Progress reporting


class Reporter(Protocol):
    """Where a run reports its stages (the CLI shows them live; the default logs them)."""

    def stage(self, message: str) -> contextlib.AbstractContextManager[None]: ...
    def info(self, message: str) -> None: ...
    def warn(self, message: str) -> None: ...


class LogReporter:
    """The default reporter: stage timings and warnings go to the ``probes`` logger."""

    @contextlib.contextmanager
    def stage(self, message: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        log.info("%s (%.1fs)", message, time.perf_counter() - start)

    def info(self, message: str) -> None:
        log.info(message)

    def warn(self, message: str) -> None:
        log.warning(message)


# ----------------------------------------------------------------------------------------------------------
# Results


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.{digits}f}"


def _fmt_ci(ci: Sequence[float] | None) -> str:
    if not ci or any(v is None for v in ci):
        return ""
    return f" [{_fmt(ci[0])}, {_fmt(ci[1])}]"


def _pct(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"{100 * value:.1f}%"


@dataclass
class RunResult:
    """Everything a run produced. ``table()`` is what ``probes run`` prints."""

    config: RunConfig
    run_dir: Path
    layer: str
    probe_params: dict[str, Any]
    sweep: list[dict[str, Any]]
    test: EvalReport
    evals: dict[str, Any] = field(default_factory=dict)  # name -> EvalReport | single-class flag rates
    baselines: dict[str, Any] = field(default_factory=dict)
    generalization: Any = None
    bundle_dir: Path | None = None
    tracking: TrackingOutcome | None = None
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    datasets: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def report_path(self) -> Path:
        return self.run_dir / "report.json"

    def summary(self) -> dict[str, Any]:
        """A small JSON-ready summary (``probes run --json``)."""
        t = self.test
        return {
            "run_dir": str(self.run_dir),
            "layer": self.layer,
            "probe": {"kind": self.config.probe.kind, "params": self.probe_params},
            "test": {
                "auroc": t.auroc,
                "auroc_ci": list(t.auroc_ci),
                "recall_at_fpr": t.recall_at_fpr,
                "target_fpr": t.target_fpr,
                "empirical_fpr": t.empirical_fpr,
                "ece": t.ece,
                "text_baseline_auroc": t.text_baseline_auroc,
                "text_baseline_span_auroc": t.text_baseline_span_auroc,
            },
            "evals": {k: _eval_summary(v) for k, v in self.evals.items()},
            "bundle": str(self.bundle_dir) if self.bundle_dir else None,
            "tracking": self.tracking.to_dict() if self.tracking else None,
            "warnings": self.warnings,
        }

    def table(self) -> Any:
        """Rich renderable: the layer sweep, then one row per evaluated set at the chosen layer."""
        from rich.console import Group
        from rich.table import Table

        sweep = Table(
            title=f"Layer sweep · {self.config.probe.kind} · picked on validation AUROC", title_justify="left"
        )
        sweep.add_column("layer")
        sweep.add_column("val AUROC [95% CI]", justify="right")
        sweep.add_column("test AUROC", justify="right")
        for row in self.sweep:
            mark = " ←" if row["layer"] == self.layer else ""
            sweep.add_row(
                row["layer"] + mark,
                _fmt(row["val_auroc"]) + _fmt_ci((row.get("val_auroc_lo"), row.get("val_auroc_hi"))),
                _fmt(row.get("test_auroc")),
            )

        fpr = self.test.target_fpr
        results = Table(
            title=f"Results at {self.layer} (thresholds on the control set)", title_justify="left"
        )
        for column in (
            "set",
            "layer",
            "AUROC [95% CI]",
            f"recall@{_pct(fpr)}FPR",
            "FPR held-out",
            "ECE",
            "text AUROC",
            "span AUROC",
        ):
            results.add_column(column, justify="left" if column in ("set", "layer") else "right")
        rows = [("test", self.test)] + [(f"eval:{k}", v) for k, v in self.evals.items()]
        for name, rep in rows:
            if isinstance(rep, dict):  # a single-class eval set: only its flag rate is defined
                results.add_row(
                    name, self.layer, "-", "-", f"flags {_pct(rep.get('flag_rate'))}", "-", "-", "-"
                )
                continue
            results.add_row(
                name,
                self.layer,
                _fmt(rep.auroc) + _fmt_ci(rep.auroc_ci),
                _pct(rep.recall_at_fpr),
                _pct(rep.empirical_fpr) + ("" if rep.threshold_source == "control" else "*"),
                _fmt(rep.ece),
                _fmt(rep.text_baseline_auroc),
                _fmt(rep.text_baseline_span_auroc),
            )
        if any(not isinstance(r, dict) and r.threshold_source != "control" for _, r in rows):
            results.caption = "* no control set: threshold and FPR from test negatives"
        parts: list[Any] = [sweep, results]
        if self.generalization is not None:
            parts.append(self.generalization)
        if self.warnings:
            notes = Table.grid()
            notes.add_column()
            for w in self.warnings:
                notes.add_row(f"[yellow]• {w}[/]")
            parts.append(notes)
        return Group(*parts)


def _eval_summary(rep: Any) -> dict[str, Any]:
    if isinstance(rep, dict):
        return rep
    return {"auroc": rep.auroc, "auroc_ci": list(rep.auroc_ci), "recall_at_fpr": rep.recall_at_fpr}


@dataclass
class TrainResult:
    """What ``probes train`` produced: the chosen layer and the saved bundle."""

    run_dir: Path
    bundle_dir: Path
    layer: str
    probe_params: dict[str, Any]
    sweep: list[dict[str, Any]]
    thresholds: list[dict[str, Any]]

    def table(self) -> Any:
        from rich.table import Table

        table = Table(title=f"Layer sweep (picked on validation): {self.layer}", title_justify="left")
        table.add_column("layer")
        table.add_column("val AUROC [95% CI]", justify="right")
        for row in self.sweep:
            mark = " ←" if row["layer"] == self.layer else ""
            table.add_row(
                row["layer"] + mark,
                _fmt(row["val_auroc"]) + _fmt_ci((row.get("val_auroc_lo"), row.get("val_auroc_hi"))),
            )
        return table


@dataclass
class EvaluateResult:
    """What ``probes evaluate`` produced for one dataset."""

    path: Path
    layer: str
    report: EvalReport | None
    at_bundle_threshold: dict[str, Any]

    def table(self) -> Any:
        from rich.console import Group
        from rich.table import Table

        parts: list[Any] = []
        if self.report is not None:
            parts.append(self.report)
        t = Table(title="At the bundle's saved threshold", title_justify="left")
        t.add_column("quantity")
        t.add_column("value", justify="right")
        for key, value in self.at_bundle_threshold.items():
            t.add_row(key, _fmt(value) if isinstance(value, float) else str(value))
        parts.append(t)
        return Group(*parts)


# ----------------------------------------------------------------------------------------------------------
# Reproducibility


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True


def reproducibility_warnings(config: RunConfig) -> list[str]:
    """Reasons the run could not be reproduced from its config alone (empty when it can)."""
    out: list[str] = []
    name = config.model.name_or_path
    if not config.model.is_package and not Path(name).expanduser().exists() and config.model.revision is None:
        out.append(
            f"model {name!r} is a Hub id without a pinned revision: the weights behind it can change. Set "
            "model.revision to a commit hash (the run records the commit it loaded)."
        )
    if (
        not config.model.is_package
        and Path(name).expanduser().exists()
        and not _inside(Path(name), Path.cwd())
    ):
        out.append(f"model folder {name!r} lies outside the current directory: keep it with the config.")
    for key, spec in config.data.all_specs().items():
        for p in spec.paths:
            if p.startswith("hf:"):
                out.append(f"data.{key}: {p} is a Hub dataset read at its latest version; pin a local copy.")
            elif not _inside(Path(p), Path.cwd()):
                out.append(f"data.{key}: {p} lies outside the current directory: keep it with the config.")
    if config.model.device.startswith("cuda") and config.model.dtype in ("float16", "bfloat16"):
        out.append(
            "half precision on CUDA is not bit-for-bit deterministic; expect small metric differences."
        )
    return out


# ----------------------------------------------------------------------------------------------------------
# Datasets


def load_spec(
    spec: DatasetSpec, *, seed: int, target: str = "dataset", what: str = "dataset", control: bool = False
) -> ContrastDataset:
    """Load one dataset spec: every path (concatenated), optional whole-target override, optional limit.

    ``control=True`` accepts single-class (all benign) data whatever its card says.
    """
    from probes.data import ContrastDataset, load_dataset

    kwargs = spec.load_kwargs()
    if control:
        kwargs["kind"] = "control"
    parts = [load_dataset(p.removeprefix("hf:"), hf_split=spec.hf_split, **kwargs) for p in spec.paths]
    ds = parts[0]
    if len(parts) > 1:
        names = {tuple(d.label_names) for d in parts}
        if len(names) > 1:
            raise DatasetError(
                f"{what}: the files {spec.paths} have different label names {sorted(names)}; give label_names "
                "to make them agree."
            )
        examples = [ex for d in parts for ex in d]
        ds = ContrastDataset(examples, parts[0].card, source=" + ".join(d.source for d in parts))
    if target == "all":
        ds = ContrastDataset([dataclasses.replace(ex, target=None) for ex in ds], ds.card, source=ds.source)
    if spec.limit is not None and spec.limit < len(ds):
        frac = spec.limit / len(ds)
        ds = ds.split({"keep": frac, "rest": 1.0 - frac}, seed=seed, use_column=False)["keep"]
    return ds


def split_train(ds: ContrastDataset, config: RunConfig) -> dict[str, ContrastDataset]:
    """Train/val/test of the training dataset: the rows' own split column, or grouped seeded fractions."""
    s = config.data.splits
    has_column = len(ds) > 0 and all(ex.split is not None for ex in ds)
    if s.use_column and has_column and not s.holdout:
        parts = ds.split(use_column=True)
        aliases = {"validation": "val", "dev": "val", "valid": "val"}
        parts = {aliases.get(k, k): v for k, v in parts.items()}
        missing = {"train", "val", "test"} - set(parts)
        if missing:
            raise DatasetError(
                f"{ds.source}: its 'split' column has {sorted(parts)} but a run needs train, val and test; "
                "set data.splits.use_column=false to split by fractions instead."
            )
    else:
        fractions = {"train": s.train, "val": s.val, "test": s.test}
        parts = ds.split(fractions, seed=config.seed, holdout=s.holdout or None, use_column=False)
    for name in ("train", "val", "test"):
        labels = set(parts[name].labels.tolist())
        if labels != {0, 1}:
            raise DatasetError(
                f"{ds.source}: the {name} split has {len(parts[name])} rows with labels {sorted(labels)}; each "
                "split needs both classes. Use more rows (data.train.limit), other fractions, or another holdout."
            )
    return {k: parts[k] for k in ("train", "val", "test")}


@dataclass
class _Prepared:
    """Datasets, model and activations shared by the stages."""

    config: RunConfig
    model: Any
    tokenizer: Any
    fingerprint: dict[str, Any]
    sites: list[str]
    train_ds: ContrastDataset
    splits: dict[str, ContrastDataset]
    control_ds: ContrastDataset | None
    eval_ds: dict[str, ContrastDataset]
    acts: dict[str, Activations]  # train/val/test/control/eval.<name>
    collected: list[dict[str, Any]]
    warnings: list[str]
    timings: dict[str, float]


def _load_all_datasets(
    config: RunConfig,
) -> tuple[ContrastDataset, ContrastDataset | None, dict[str, ContrastDataset]]:
    target = config.data.target
    train = load_spec(config.data.train, seed=config.seed, target=target, what="data.train")
    control = None
    if config.data.control is not None:
        control = load_spec(
            config.data.control, seed=config.seed, target=target, what="data.control", control=True
        )
    evals = {
        name: load_spec(spec, seed=config.seed, target=target, what=f"data.eval.{name}")
        for name, spec in config.data.eval.items()
    }
    return train, control, evals


@contextlib.contextmanager
def _timed(timings: dict[str, float], key: str, reporter: Reporter, message: str) -> Iterator[None]:
    start = time.perf_counter()
    with reporter.stage(message):
        yield
    timings[key] = round(time.perf_counter() - start, 3)


def _seed_everything(seed: int) -> None:
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 - legacy global RNG used by some third-party code
    torch.manual_seed(seed)


def _load_model(config: RunConfig, device: str | None = None) -> tuple[Any, Any]:
    from probes.models import load_model

    m = config.model
    return load_model(
        resolve_model_path(m.name_or_path),
        dtype=m.dtype,
        device=device or m.device,
        revision=m.revision,
        layers_attr=m.layers_attr,
    )


def _collect(
    prep_model: Any, tokenizer: Any, ds: ContrastDataset, sites: list[str], config: RunConfig
) -> Activations:
    from probes.collect import collect

    return collect(
        prep_model,
        tokenizer,
        ds,
        sites,
        config.pooling,
        batch_size=config.batch_size,
        max_length=config.data.max_length,
        cache_dir=config.cache_dir,
        chat_template=config.data.chat_template,
        progress=True,
        layers_attr=config.model.layers_attr,
    )


def _prepare(config: RunConfig, reporter: Reporter) -> _Prepared:
    from probes.models import model_fingerprint, num_layers

    timings: dict[str, float] = {}
    warns = reproducibility_warnings(config)
    for w in warns:
        reporter.warn(w)
    _seed_everything(config.seed)
    with _timed(timings, "load_data", reporter, "Loading datasets"):
        train_ds, control_ds, eval_ds = _load_all_datasets(config)
        splits = split_train(train_ds, config)
    reporter.info(
        f"train set {train_ds.name}: {len(train_ds)} rows → train {len(splits['train'])} / val "
        f"{len(splits['val'])} / test {len(splits['test'])}"
        + (
            f"; control {control_ds.name}: {len(control_ds)} rows"
            if control_ds is not None
            else "; no control set"
        )
    )
    with _timed(timings, "load_model", reporter, f"Loading model {config.model.name_or_path}"):
        model, tokenizer = _load_model(config)
        n_layers = num_layers(model, config.model.layers_attr)
        try:
            sites = config.layer_sites(n_layers)
        except ValueError as exc:  # SiteError: out-of-range layer for this model
            raise ConfigError(f"{config.source or 'config'}: layers: {exc}") from exc
        fingerprint = model_fingerprint(model, config.model.layers_attr)

    acts: dict[str, Activations] = {}
    collected: list[dict[str, Any]] = []
    to_collect: list[tuple[str, ContrastDataset]] = [("train", train_ds)]
    if control_ds is not None:
        to_collect.append(("control", control_ds))
    to_collect += [(f"eval.{k}", v) for k, v in eval_ds.items()]
    with _timed(
        timings,
        "collect",
        reporter,
        f"Collecting activations at {len(sites)} sites ({config.pooling} pooling)",
    ):
        for key, ds in to_collect:
            reporter.info(f"  {key}: {ds.name} ({len(ds)} rows)")
            a = _collect(model, tokenizer, ds, sites, config)
            acts[key] = a
            first = a.features[sites[0]]
            collected.append(
                {
                    "dataset": key,
                    "rows": len(a),
                    "sites": len(sites),
                    "dim": int(first.dim if hasattr(first, "offsets") else first.shape[-1]),
                    "cache": a.spec.get("cache_key") if config.cache_dir else "off",
                }
            )
    # Splits are row subsets of the once-collected training set (the cache is shared by any split/seed).
    position = {ex_id: i for i, ex_id in enumerate(train_ds.ids)}
    full = acts.pop("train")
    for name, part in splits.items():
        acts[name] = full.subset([position[i] for i in part.ids])
    return _Prepared(
        config=config,
        model=model,
        tokenizer=tokenizer,
        fingerprint=fingerprint,
        sites=sites,
        train_ds=train_ds,
        splits=splits,
        control_ds=control_ds,
        eval_ds=eval_ds,
        acts=acts,
        collected=collected,
        warnings=warns,
        timings=timings,
    )


# ----------------------------------------------------------------------------------------------------------
# Sweep and selection


def _probe_params(kind: str, params: dict[str, Any], seed: int) -> dict[str, Any]:
    """The candidate's params, seeded with the run's seed when the probe takes one and none was given."""
    import inspect

    import probes.train  # noqa: F401  (registers the built-in probe kinds)
    from probes.train.base import PROBE_TYPES

    if kind not in PROBE_TYPES:
        raise ConfigError(
            f"probe.kind: unknown probe kind {kind!r}; known: {', '.join(sorted(PROBE_TYPES))}."
        )
    accepted = inspect.signature(PROBE_TYPES[kind].__init__).parameters
    unknown = [
        k for k in params if k not in accepted and not any(p.kind == p.VAR_KEYWORD for p in accepted.values())
    ]
    if unknown:
        names = [n for n in accepted if n != "self"]
        raise ConfigError(
            f"probe.params: {kind} probes take no parameter(s) {unknown}; they take: {', '.join(names)}."
        )
    out = dict(params)
    if "seed" in accepted and "seed" not in out:
        out["seed"] = seed
    return out


def _sweep(prep: _Prepared, reporter: Reporter) -> tuple[Any, dict[str, Any], list[dict[str, Any]]]:
    """Fit every (grid point, layer) on train; keep the best by validation AUROC. Returns (sweep, params, rows)."""
    from probes.evaluate import layer_sweep

    config = prep.config
    best: tuple[float, Any, dict[str, Any]] | None = None
    candidates = config.probe.candidates()
    for i, params in enumerate(candidates):
        full_params = _probe_params(config.probe.kind, params, config.seed)
        label = f" grid point {i + 1}/{len(candidates)} {params}" if len(candidates) > 1 else ""
        with reporter.stage(f"Layer sweep{label}: {config.probe.kind} probe at {len(prep.sites)} sites"):
            sw = layer_sweep(
                prep.acts["train"],
                prep.acts["val"],
                probe=config.probe.kind,
                probe_params=full_params,
                layers=prep.sites,
                n_bootstrap=config.evaluation.bootstrap,
                seed=config.seed,
            )
        score = max(row["val_auroc"] for row in sw.table if row["val_auroc"] == row["val_auroc"])
        if best is None or score > best[0]:
            best = (score, sw, full_params)
    assert best is not None  # candidates() always yields at least one
    _, sweep, params = best
    rows = [dict(row) for row in sweep.table]
    # Test AUROC per layer is reported (never used to choose): how much the validation pick costs.
    from probes.evaluate import auroc

    y_test = prep.acts["test"].labels
    for row in rows:
        row["test_auroc"] = float(
            auroc(y_test, sweep.probes[row["layer"]].decision_function(prep.acts["test"][row["layer"]]))
        )
    return sweep, params, rows


def _site_index(site: str, n_layers: int) -> int:
    return int(site.split(".")[1]) if site.startswith("layers.") else n_layers + 1


# ----------------------------------------------------------------------------------------------------------
# Evaluation


def _baselines(
    train: ContrastDataset, test: ContrastDataset, config: RunConfig, *, same_source: bool
) -> dict[str, Any]:
    """TF-IDF baselines on the full text and on the detected span; failures become notes, not crashes."""
    from probes.evaluate import text_baseline

    out: dict[str, Any] = {}
    groups = (
        {"train_groups": train.groups, "test_groups": test.groups}
        if same_source
        else {"test_groups": test.groups}
    )
    pairs = [("text", train.texts, test.texts)]
    if config.data.target != "all":
        pairs.append(("span", train.target_texts, test.target_texts))
    for key, tr, te in pairs:
        try:
            out[key] = text_baseline(
                tr,
                train.labels,
                te,
                test.labels,
                n_bootstrap=config.evaluation.bootstrap,
                seed=config.seed,
                **groups,
            )
        except ValueError as exc:  # e.g. an empty vocabulary
            out[f"{key}_error"] = str(exc)
    return out


def _flag_rate(probe: Any, acts: Activations, site: str, threshold: float) -> dict[str, Any]:
    import numpy as np

    scores = probe.decision_function(acts[site])
    labels = set(np.asarray(acts.labels).tolist())
    return {
        "n": len(acts),
        "labels": sorted(labels),
        "threshold": threshold,
        "flag_rate": float(np.mean(scores > threshold)) if math.isfinite(threshold) else 0.0,
        "note": "single-class set: AUROC is undefined; flag_rate is the FPR (benign) or recall (positive)",
    }


def _bundle_calibration(state: dict[str, Any] | None) -> dict[str, Any] | None:
    """evaluate's calibrator state -> the bundle's calibration map (same maths, the bundle's key names)."""
    if not state:
        return None
    kind = state.get("kind")
    if kind == "platt":
        return {"method": "platt", "a": float(state["a"]), "b": float(state["b"])}
    if kind == "isotonic":
        return {"method": "isotonic", "x": list(state["x_thresholds"]), "y": list(state["y_thresholds"])}
    return None


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.\-]+", "_", text).strip("_") or "probe"


def _new_run_dir(config: RunConfig) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(config.output_dir) / f"{_slug(config.run_name)}-{stamp}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    path.mkdir(parents=True)
    return path


def _save_bundle(
    prep: _Prepared,
    probe: Any,
    site: str,
    run_dir: Path,
    thresholds: list[dict[str, Any]],
    calibration: dict[str, Any] | None,
    extra: dict[str, Any],
) -> Path:
    from probes.package import ProbeBundle

    bundle = ProbeBundle.from_probe(
        probe,
        model=prep.fingerprint,
        layer=site,
        threshold=thresholds or None,
        name=_slug(prep.train_ds.name),
        label_names=prep.train_ds.label_names,
        pooling=prep.config.pooling,
        calibration=calibration,
        run=prep.config.run_name,
        dataset=prep.train_ds.name,
        dataset_fingerprint=prep.train_ds.fingerprint(),
        **extra,
    )
    bundle.metadata.update(
        {"model_name_or_path": prep.config.model.name_or_path, "max_length": prep.config.data.max_length}
    )
    return bundle.save(run_dir / "bundle")


def _thresholds_from_report(
    report: EvalReport, control_ds: ContrastDataset | None
) -> tuple[list[dict[str, Any]], list[str]]:
    out, notes = [], []
    for op in report.operating_points:
        if not math.isfinite(op.threshold):
            notes.append(
                f"no finite threshold for target FPR {op.target_fpr:g}: {op.n_control_cal} calibration rows are "
                f"too few (need {op.n_needed}); the bundle stores none for it."
            )
            continue
        out.append(
            {
                "value": float(op.threshold),
                "target_fpr": float(op.target_fpr),
                "control_set": control_ds.name
                if control_ds is not None and op.source == "control"
                else op.source,
                "control_fingerprint": control_ds.fingerprint()
                if control_ds is not None and op.source == "control"
                else None,
                "n_control": int(op.n_control_cal),
            }
        )
    return out, notes


def _write_json(path: Path, data: Any) -> None:
    path.write_text(
        json.dumps(data, indent=2, default=_json_default, allow_nan=False) + "\n", encoding="utf-8"
    )


def _json_default(value: Any) -> Any:
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def _finite(obj: Any) -> Any:
    """Replace inf/nan (not JSON) with strings, recursively."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def _dataset_info(ds: ContrastDataset, spec: DatasetSpec | None) -> dict[str, Any]:
    labels = ds.labels
    return {
        "name": ds.name,
        "source": ds.source,
        "paths": spec.paths if spec else None,
        "rows": len(ds),
        "positives": int(labels.sum()),
        "label_names": list(ds.label_names),
        "fingerprint": ds.fingerprint(),
    }


def run(config: RunConfig, *, reporter: Reporter | None = None) -> RunResult:
    """Run the whole experiment described by ``config`` (see the module docstring); returns a RunResult.

    Local outputs are always written before tracking starts, so an unreachable MLflow server never loses
    results (``tracking.on_error: fail`` then raises :class:`probes.errors.TrackingError` afterwards).
    """
    from probes.evaluate import evaluate, generalization_matrix

    reporter = reporter or LogReporter()
    prep = _prepare(config, reporter)
    timings = prep.timings
    ev = config.evaluation
    n_layers = int(prep.fingerprint.get("num_layers") or 0)

    start = time.perf_counter()
    sweep, params, sweep_rows = _sweep(prep, reporter)
    timings["sweep"] = round(time.perf_counter() - start, 3)
    site = sweep.best_layer
    probe = sweep.probes[site]
    reporter.info(
        f"chosen on validation: {site} (val AUROC {_fmt(next(r['val_auroc'] for r in sweep_rows if r['layer'] == site))})"
    )

    with _timed(timings, "evaluate", reporter, f"Evaluating {site} on test, control and eval sets"):
        baselines = (
            _baselines(prep.splits["train"], prep.splits["test"], config, same_source=True)
            if ev.text_baselines
            else {}
        )
        tb = {k: v for k, v in baselines.items() if k in ("text", "span")}
        calibrate = None if ev.calibration == "none" else ev.calibration
        common = {
            "layer": site,
            "target_fpr": list(ev.target_fprs),
            "calibration": prep.acts["val"] if calibrate else None,
            "calibrate": calibrate,
            "n_bootstrap": ev.bootstrap,
            "seed": config.seed,
        }
        test_report = evaluate(
            probe,
            prep.acts["test"],
            prep.acts.get("control"),
            text_baseline=tb or None,
            name=prep.train_ds.name,
            **common,
        )
        evals: dict[str, Any] = {}
        for name, ds in prep.eval_ds.items():
            acts = prep.acts[f"eval.{name}"]
            if len(set(ds.labels.tolist())) < 2:
                evals[name] = _flag_rate(probe, acts, site, test_report.threshold)
                continue
            eb = _baselines(prep.splits["train"], ds, config, same_source=False) if ev.text_baselines else {}
            evals[name] = evaluate(
                probe,
                acts,
                prep.acts.get("control"),
                text_baseline={k: v for k, v in eb.items() if k in ("text", "span")} or None,
                name=name,
                **common,
            )

    generalization = None
    warns = list(prep.warnings)
    if ev.generalization_matrix:
        with _timed(timings, "generalization", reporter, "Generalisation matrix"):
            generalization, note = _generalization(prep, site, params, generalization_matrix)
            if note:
                warns.append(note)

    with _timed(timings, "write", reporter, "Writing outputs"):
        run_dir = _new_run_dir(config)
        # (evaluate already warns about thresholds it could not set; the bundle simply stores none for them)
        thresholds, _ = _thresholds_from_report(test_report, prep.control_ds)
        bundle_dir = _save_bundle(
            prep,
            probe,
            site,
            run_dir,
            thresholds,
            _bundle_calibration(test_report.calibrator),
            {"test_auroc": test_report.auroc, "probe_params": params},
        )
        (run_dir / "config.yaml").write_text(config.to_yaml(), encoding="utf-8")
        if ev.plots:
            plots = run_dir / "plots"
            plots.mkdir()
            sweep.plot(plots / "layer_sweep.png")
            test_report.plots(plots)
            for rep in evals.values():
                if not isinstance(rep, dict):
                    rep.plots(plots)
            if generalization is not None:
                generalization.plot(plots / "generalization.png")
        if config.pooling == "tokens":
            with contextlib.suppress(Exception):  # a visual aid: never fail a finished run over it
                _token_html(prep, probe, site, run_dir / "tokens.html", test_report.threshold)
        datasets = {"train": _dataset_info(prep.train_ds, config.data.train)}
        if prep.control_ds is not None:
            datasets["control"] = _dataset_info(prep.control_ds, config.data.control)
        for name, ds in prep.eval_ds.items():
            datasets[f"eval.{name}"] = _dataset_info(ds, config.data.eval[name])
        warns += [f"test: {w}" for w in test_report.warnings]
        result = RunResult(
            config=config,
            run_dir=run_dir,
            layer=site,
            probe_params=params,
            sweep=sweep_rows,
            test=test_report,
            evals=evals,
            baselines=baselines,
            generalization=generalization,
            bundle_dir=bundle_dir,
            warnings=warns,
            timings=timings,
            datasets=datasets,
        )
        report = _report_dict(result, prep)
        _write_json(run_dir / "report.json", _finite(report))

    if config.tracking.enabled:
        with _timed(timings, "track", reporter, "Logging to MLflow"):
            result.tracking = _track(result, prep, n_layers)
        _write_json(run_dir / "tracking.json", result.tracking.to_dict())
        if not result.tracking.tracked:
            reporter.warn(result.tracking.message)
    return result


def _generalization(
    prep: _Prepared, site: str, params: dict[str, Any], matrix_fn: Any
) -> tuple[Any, str | None]:
    config = prep.config
    datasets = {prep.train_ds.name: (prep.acts["train"], prep.acts["test"])}
    for name, ds in prep.eval_ds.items():
        if len(set(ds.labels.tolist())) < 2:
            continue
        try:
            parts = ds.split({"train": 0.7, "test": 0.3}, seed=config.seed, use_column=False)
        except (ValueError, DatasetError):
            continue
        if any(len(set(p.labels.tolist())) < 2 for p in parts.values()):
            continue
        acts = prep.acts[f"eval.{name}"]
        position = {ex_id: i for i, ex_id in enumerate(ds.ids)}
        datasets[name] = tuple(acts.subset([position[i] for i in parts[k].ids]) for k in ("train", "test"))  # type: ignore[assignment]
    if len(datasets) < 2:
        return None, "generalization_matrix needs at least one labelled (two-class) eval dataset; skipped."
    return (
        matrix_fn(
            datasets,
            layer=site,
            probe=config.probe.kind,
            probe_params=params,
            n_bootstrap=config.evaluation.bootstrap,
            seed=config.seed,
        ),
        None,
    )


def _report_dict(result: RunResult, prep: _Prepared) -> dict[str, Any]:
    import probes

    config = result.config
    return {
        "schema_version": 1,
        "probes_version": probes.__version__,
        "run": config.run_name,
        "created": datetime.now().isoformat(timespec="seconds"),
        "config_source": config.source,
        "overrides": list(config.overrides),
        "model": prep.fingerprint,
        "model_name_or_path": config.model.name_or_path,
        "datasets": result.datasets,
        "splits": {k: {"rows": len(v), "positives": int(v.labels.sum())} for k, v in prep.splits.items()},
        "sites": prep.sites,
        "pooling": config.pooling,
        "probe": {"kind": config.probe.kind, "params": result.probe_params},
        "chosen_layer": result.layer,
        "selected_on": "validation AUROC",
        "sweep": result.sweep,
        "test": result.test.to_dict(include_scores=True),
        "evals": {
            k: (v if isinstance(v, dict) else v.to_dict(include_scores=False))
            for k, v in result.evals.items()
        },
        "baselines": {k: (v.to_dict() if hasattr(v, "to_dict") else v) for k, v in result.baselines.items()},
        "generalization": result.generalization.to_dict() if result.generalization is not None else None,
        "bundle": "bundle",
        "warnings": result.warnings,
        "timings_s": result.timings,
    }


def _track(result: RunResult, prep: _Prepared, n_layers: int) -> TrackingOutcome:
    import probes
    from probes.track import git_commit, log_run

    config = result.config
    t = config.tracking
    layer_metrics = []
    for row in result.sweep:
        values = {k: row.get(k) for k in ("val_auroc", "val_auroc_lo", "val_auroc_hi", "test_auroc")}
        layer_metrics.append(
            (_site_index(row["layer"], n_layers), {f"sweep_{k}": v for k, v in values.items()})
        )
    metrics = {f"test_{k}": v for k, v in result.test.metrics().items()}
    for name, rep in result.evals.items():
        key = re.sub(r"[^A-Za-z0-9_]", "_", name)
        if isinstance(rep, dict):
            metrics[f"eval_{key}_flag_rate"] = rep["flag_rate"]
        else:
            metrics.update({f"eval_{key}_{k}": v for k, v in rep.metrics().items()})
    for key in ("text", "span"):
        b = result.baselines.get(key)
        if b is not None:
            metrics[f"baseline_{key}_auroc"] = b.auroc
    metrics["chosen_layer_index"] = _site_index(result.layer, n_layers)
    metrics = {k: v for k, v in metrics.items() if v is not None and math.isfinite(float(v))}
    fp = prep.fingerprint
    tags = {
        "probes.version": probes.__version__,
        "probes.git_commit": git_commit(),
        "probes.config": config.source,
        "probes.overrides": " ".join(config.overrides) or None,
        "probes.model": config.model.name_or_path,
        "probes.model_path": fp.get("name"),
        "probes.model_revision": config.model.revision,
        "probes.model_weight_hash": fp.get("weight_hash"),
        "probes.model_architecture": fp.get("architecture"),
        "probes.layer": result.layer,
        "probes.probe_kind": config.probe.kind,
        "probes.reproducible": "false" if prep.warnings else "true",
    }
    for role, info in result.datasets.items():
        tags[f"probes.dataset.{role}.fingerprint"] = info["fingerprint"]
        tags[f"probes.dataset.{role}.name"] = info["name"]
    tags.update(t.tags)
    params = dict(config.flat())
    params["overrides"] = " ".join(config.overrides) or "none"
    params["chosen_layer"] = result.layer
    example = None
    first = prep.acts["test"][result.layer]
    if not hasattr(first, "offsets"):  # token-level activations cannot be a flat (n, d) model input
        example = first[:5].float().cpu().numpy()
    return log_run(
        run_name=result.run_dir.name,
        experiment=t.experiment,
        tracking_uri=t.tracking_uri,
        params=params,
        layer_metrics=layer_metrics,
        metrics=metrics,
        tags=tags,
        run_dir=result.run_dir,
        bundle_dir=result.bundle_dir,
        example_features=example,
        log_model=t.log_model and example is not None,
        on_error=t.on_error,
    )


def _token_html(prep: _Prepared, probe: Any, site: str, path: Path, threshold: float) -> None:
    """Per-token scores of a few test rows as coloured HTML (token probes with a linear form)."""
    import html

    import torch

    from probes.data import encode_dataset

    form = probe.linear_form()
    if form is None:
        return
    w, b = (torch.as_tensor(t).float().reshape(-1) for t in form)
    test_ds = prep.splits["test"]
    n = min(12, len(test_ds))
    rows = test_ds.subset(list(range(n)))
    encoded = encode_dataset(
        rows,
        prep.tokenizer,
        max_length=prep.config.data.max_length,
        chat_template=prep.config.data.chat_template,
    )
    feats = prep.acts["test"][site]
    parts = [
        "<html><meta charset='utf-8'><body style='font-family:sans-serif'>",
        f"<h2>Per-token scores · {html.escape(site)}</h2><p>red = positive ({html.escape(prep.train_ds.label_names[1])}); "
        f"threshold {threshold:.3f}</p>",
    ]
    for i in range(n):
        tokens_ids = [t for t, m in zip(encoded[i].input_ids, encoded[i].target_mask, strict=True) if m]
        scores = (feats[i].float() @ w + b).tolist()
        label = prep.train_ds.label_names[int(rows.labels[i])]
        spans = []
        for tok, s in zip(tokens_ids, scores, strict=False):
            alpha = min(1.0, abs(s) / 5.0)
            colour = f"rgba(220,0,0,{alpha:.2f})" if s > 0 else f"rgba(0,90,220,{alpha:.2f})"
            text = html.escape(prep.tokenizer.decode([tok]))
            spans.append(f"<span title='{s:.3f}' style='background:{colour}'>{text}</span>")
        parts.append(f"<p><b>{html.escape(rows[i].id)}</b> ({html.escape(label)}): {''.join(spans)}</p>")
    parts.append("</body></html>")
    path.write_text("\n".join(parts), encoding="utf-8")


# ----------------------------------------------------------------------------------------------------------
# Stages for the CLI


def collect_stage(config: RunConfig, *, reporter: Reporter | None = None) -> list[dict[str, Any]]:
    """Collect (and cache) every dataset's activations; returns one summary row per dataset."""
    prep = _prepare(config, reporter or LogReporter())
    return prep.collected


def train_stage(config: RunConfig, *, reporter: Reporter | None = None) -> TrainResult:
    """Collect, sweep, choose the layer on validation and save the bundle (thresholds from the control set)."""
    import numpy as np

    from probes.evaluate import conformal_threshold

    reporter = reporter or LogReporter()
    prep = _prepare(config, reporter)
    sweep, params, rows = _sweep(prep, reporter)
    site = sweep.best_layer
    probe = sweep.probes[site]
    thresholds: list[dict[str, Any]] = []
    if prep.control_ds is not None:
        scores = np.asarray(probe.decision_function(prep.acts["control"][site]), dtype=np.float64)
        for fpr in config.evaluation.target_fprs:
            value = conformal_threshold(scores, fpr)
            if math.isfinite(value):
                thresholds.append(
                    {
                        "value": float(value),
                        "target_fpr": float(fpr),
                        "control_set": prep.control_ds.name,
                        "control_fingerprint": prep.control_ds.fingerprint(),
                        "n_control": len(scores),
                    }
                )
            else:
                reporter.warn(f"control set too small for target FPR {fpr:g}: no threshold stored for it.")
    else:
        reporter.warn("no control set: the bundle has no threshold (set data.control to calibrate one).")
    run_dir = _new_run_dir(config)
    bundle_dir = _save_bundle(prep, probe, site, run_dir, thresholds, None, {"probe_params": params})
    (run_dir / "config.yaml").write_text(config.to_yaml(), encoding="utf-8")
    _write_json(
        run_dir / "sweep.json",
        _finite({"chosen_layer": site, "selected_on": "validation AUROC", "sweep": rows}),
    )
    return TrainResult(
        run_dir=run_dir,
        bundle_dir=bundle_dir,
        layer=site,
        probe_params=params,
        sweep=rows,
        thresholds=thresholds,
    )


def evaluate_run(
    run_dir: str | Path,
    data: str | Path,
    *,
    control: str | Path | None = None,
    limit: int | None = None,
    device: str | None = None,
    reporter: Reporter | None = None,
) -> EvaluateResult:
    """Score ``data`` (and ``control``) with the probe saved in ``run_dir``; writes ``evaluations/<name>.json``."""
    import numpy as np

    from probes.evaluate import evaluate
    from probes.package import ProbeBundle

    reporter = reporter or LogReporter()
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file() or not (run_dir / "bundle").is_dir():
        raise ConfigError(
            f"{run_dir} is not a run folder (it needs config.yaml and bundle/ written by probes run)."
        )
    config = load_config(run_dir / "config.yaml", check_paths=False)
    bundle = ProbeBundle.load(run_dir / "bundle")
    entry = next(iter(bundle))
    for p in (data, control):
        if p is not None and not Path(p).exists():
            raise DatasetError(f"dataset {str(p)!r} not found (relative paths resolve against {Path.cwd()}).")
    with reporter.stage("Loading datasets"):
        ds = load_spec(DatasetSpec(path=str(data), limit=limit), seed=config.seed, target=config.data.target)
        control_ds = (
            load_spec(
                DatasetSpec(path=str(control), limit=limit),
                seed=config.seed,
                target=config.data.target,
                control=True,
            )
            if control is not None
            else None
        )
    with reporter.stage(f"Loading model {config.model.name_or_path}"):
        model, tokenizer = _load_model(config, device)
        bundle.check_model(model, config.model.layers_attr)
    site = entry.site
    pooling = entry.pooling or config.pooling
    cfg = config.model_copy(update={"pooling": pooling})
    with reporter.stage(f"Collecting activations at {site}"):
        acts = _collect(model, tokenizer, ds, [site], cfg)
        control_acts = _collect(model, tokenizer, control_ds, [site], cfg) if control_ds is not None else None
    threshold = entry.threshold_for()
    at: dict[str, Any] = {"layer": site, "threshold": threshold.value if threshold else None}
    import torch

    def scores_of(a: Activations) -> np.ndarray:
        with torch.inference_mode():
            return (
                entry.score(a[site]).float().cpu().numpy()
                if not hasattr(a[site], "offsets")
                else entry.probe.decision_function(a[site])
            )

    s = scores_of(acts)
    labels = ds.labels
    if threshold is not None:
        flags = s > threshold.value
        if (labels == 1).any():
            at["recall_at_threshold"] = float(flags[labels == 1].mean())
        if (labels == 0).any():
            at["fpr_on_negatives"] = float(flags[labels == 0].mean())
        if control_acts is not None:
            at["fpr_on_control"] = float((scores_of(control_acts) > threshold.value).mean())
    report = None
    if len(set(labels.tolist())) == 2:
        fprs = [t.target_fpr for t in entry.thresholds if t.target_fpr is not None] or list(
            config.evaluation.target_fprs
        )
        report = evaluate(
            entry.probe,
            acts,
            control_acts,
            layer=site,
            target_fpr=fprs,
            n_bootstrap=config.evaluation.bootstrap,
            seed=config.seed,
            name=ds.name,
        )
    else:
        reporter.warn(
            f"{ds.name} has a single class: AUROC is undefined; only rates at the threshold are shown."
        )
    out_dir = run_dir / "evaluations"
    out_dir.mkdir(exist_ok=True)
    path = out_dir / f"{_slug(ds.name)}.json"
    _write_json(
        path,
        _finite(
            {
                "dataset": _dataset_info(ds, None),
                "control": _dataset_info(control_ds, None) if control_ds is not None else None,
                "at_bundle_threshold": at,
                "report": report.to_dict(include_scores=False) if report is not None else None,
            }
        ),
    )
    return EvaluateResult(path=path, layer=site, report=report, at_bundle_threshold=at)


# ----------------------------------------------------------------------------------------------------------
# Validation without a model


def validate_dataset(path: str | Path) -> list[str]:
    """Parse a dataset (folder or file); returns summary lines. Raises DatasetError when malformed."""
    from probes.data import load_dataset

    if not Path(path).exists():
        raise DatasetError(f"{path}: no such file or folder (relative paths resolve against {Path.cwd()}).")
    ds = load_dataset(str(path))
    return [_describe(ds)]


def _describe(ds: ContrastDataset) -> str:
    labels = ds.labels
    neg, pos = ds.label_names
    n_pos = int(labels.sum())
    groups = len(set(ds.groups))
    return (
        f"{ds.name}: {len(ds)} rows ({neg}: {len(ds) - n_pos}, {pos}: {n_pos}), {groups} groups, "
        f"fingerprint {ds.fingerprint()[:12]}"
    )


def validate_config(path: str | Path, overrides: Sequence[str] = ()) -> list[str]:
    """Parse a run config and every dataset it names, check splits, holdout values and probe parameters.

    No model is loaded. Raises ConfigError / DatasetError; returns summary lines (and reproducibility notes).
    """
    config = load_config(path, overrides)
    lines = []
    train, control, evals = _load_all_datasets(config)
    splits = split_train(train, config)
    lines.append("train   " + _describe(train))
    lines.append(
        "        splits: " + ", ".join(f"{k} {len(v)} ({int(v.labels.sum())} pos)" for k, v in splits.items())
    )
    if control is not None:
        lines.append("control " + _describe(control))
        if int(control.labels.sum()) > 0:
            lines.append(
                f"        note: {int(control.labels.sum())} control rows are labelled positive; a control set should be benign"
            )
    for name, ds in evals.items():
        lines.append(f"eval.{name} " + _describe(ds))
    for params in config.probe.candidates():
        _probe_params(config.probe.kind, params, config.seed)
    model = config.model.name_or_path
    if config.model.is_package:
        lines.append(f"model   {model} → {resolve_model_path(model)}")
    else:
        lines.append(
            f"model   {model}"
            + (" (local folder)" if Path(model).expanduser().exists() else " (Hugging Face Hub id)")
        )
    lines.extend(f"note: {w}" for w in reproducibility_warnings(config))
    return lines
