"""What a run leaves on disk: the timestamped run folder, the probe bundle (with its thresholds and the
evaluate calibrator's state), ``report.json`` and the other JSON files (inf/nan written as strings), dataset
summaries, and the per-token HTML view of token probes. Every writer here takes finished results; none
fits or scores anything except the token view.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from probes.config import DatasetSpec, RunConfig
from probes.pipeline.prepare import _Prepared
from probes.pipeline.results import RunResult

if TYPE_CHECKING:  # pragma: no cover
    from probes.data import ContrastDataset
    from probes.evaluation import EvalReport


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.\-]+", "_", text).strip("_") or "probe"


def _new_run_dir(config: RunConfig) -> Path:
    """A fresh staging folder ``<output_dir>/<run name>-<timestamp>[-n].partial/`` holding ``config.yaml``.

    Outputs are written there and :func:`_publish_run_dir` renames it to its final name once complete, so a
    crashed run never leaves a folder that looks finished.
    """
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(config.output_dir) / f"{_slug(config.run_name)}-{stamp}"
    path, n = base, 1
    while path.exists() or _staging(path).exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    staging = _staging(path)
    staging.mkdir(parents=True)
    (staging / "config.yaml").write_text(config.to_yaml(), encoding="utf-8")
    return staging


def _staging(path: Path) -> Path:
    return path.with_name(path.name + ".partial")


def _publish_run_dir(staging: Path) -> Path:
    """Rename a complete staging folder to its final name (atomic on one filesystem)."""
    final = staging.with_name(staging.name.removesuffix(".partial"))
    os.replace(staging, final)
    return final


def _save_bundle(
    prep: _Prepared,
    probe: Any,
    site: str,
    run_dir: Path,
    thresholds: list[dict[str, Any]],
    calibration: dict[str, Any] | None,
    extra: dict[str, Any],
) -> Path:
    """Save ``probe`` at ``site`` as ``run_dir/bundle``; ``calibration`` is an evaluate calibrator's state."""
    from probes.package import ProbeBundle

    bundle = ProbeBundle.from_probe(
        probe,
        model=prep.fingerprint,
        layer=site,
        threshold=thresholds or None,
        name=_slug(prep.train_ds.name),
        label_names=prep.train_ds.label_names,
        pooling=prep.config.primary_pooling,
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


def _threshold_record(
    value: float,
    target_fpr: float,
    n_control: int,
    control_ds: ContrastDataset | None,
    source: str = "control",
) -> dict[str, Any]:
    """One bundle threshold: the value and the false-positive rate it was set for, on which set."""
    on_control = control_ds is not None and source == "control"
    return {
        "value": float(value),
        "target_fpr": float(target_fpr),
        "control_set": control_ds.name if on_control else source,
        "control_fingerprint": control_ds.fingerprint() if on_control else None,
        "n_control": int(n_control),
    }


def _thresholds_from_report(report: EvalReport, control_ds: ContrastDataset | None) -> list[dict[str, Any]]:
    """The report's finite operating points as bundle thresholds. evaluate already warns about the ones
    it could not set (too few control rows); the bundle simply stores none for them."""
    return [
        _threshold_record(op.threshold, op.target_fpr, op.n_control_cal, control_ds, op.source)
        for op in report.operating_points
        if math.isfinite(op.threshold)
    ]


def _write_json(path: Path, data: Any) -> None:
    """Indented JSON with inf/nan as strings (strict JSON has neither)."""
    path.write_text(
        json.dumps(_finite(data), indent=2, default=_json_default, allow_nan=False) + "\n", encoding="utf-8"
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


def _datasets_info(prep: _Prepared) -> dict[str, dict[str, Any]]:
    """Every dataset of the run by role (``train``, ``control``, ``eval.<name>``)."""
    data = prep.config.data
    out = {"train": _dataset_info(prep.train_ds, data.train)}
    if prep.control_ds is not None:
        controls = data.control_specs
        out["control"] = _dataset_info(prep.control_ds, data.control if len(controls) == 1 else None)
        if len(controls) > 1:
            out["control"]["paths"] = [p for spec in controls.values() for p in spec.paths]
            out["control"]["sets"] = {k: list(v.paths) for k, v in controls.items()}
    for name, ds in prep.eval_ds.items():
        out[f"eval.{name}"] = _dataset_info(ds, data.eval[name])
    return out


def _report_dict(result: RunResult, prep: _Prepared) -> dict[str, Any]:
    from probes._version import __version__

    config = result.config
    return {
        "schema_version": 1,
        "probes_version": __version__,
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
        max_chars=prep.config.data.max_chars,
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
