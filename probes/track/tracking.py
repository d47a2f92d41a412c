"""Logging a finished run to MLflow, and fetching a run's probe back.

Layout of an MLflow run written by :func:`log_run`:

- params: the flattened config (``model.name_or_path``, ``probe.kind``, ``data.splits.train``, ...) plus
  ``overrides`` (the ``--set`` items);
- metrics, grouped by MLflow's ``/`` convention so the UI shows one section per group: ``sweep/val_auroc``
  (and ``sweep/val_auroc/lo|hi``, ``sweep/test_auroc``) logged once per swept layer with ``step = layer index``
  (the layer sweep is a chart), ``test/auroc``, ``test/recall_at_fpr/0.01``, ``eval/<set>/...``,
  ``test/baseline/text/auroc`` for the chosen layer;
- datasets: every dataset of the run with ``mlflow.log_input`` (context = its role, digest = the start of its
  fingerprint, the full fingerprint as the input tag ``probes.fingerprint``), listed in the Datasets tab;
- tags: ``probes.version``, ``probes.git_commit``, ``probes.model``, ``probes.model_revision``,
  ``probes.model_weight_hash``, ``probes.layer``, ``probes.dataset.<role>.fingerprint``, ``probes.config``,
  plus the config's ``tracking.tags``;
- artifacts: everything in the run folder (``report.json``, ``config.yaml``, ``plots/``, ``bundle/``, ...);
- a text-in model named ``probe_text`` (:mod:`probes.track.text_model`): the language model reference and the
  bundle, ``predict(["some text"])`` -> scores, so ``mlflow models serve`` runs the monitor on raw text;
- a logged MLflow model named ``probe``: a pyfunc model-from-code (:mod:`probes.track.pyfunc_model`) whose
  artifact is the bundle; ``mlflow.pyfunc.load_model(model_uri).predict(features)`` scores activations (a
  list of ``(tokens, d)`` arrays for token probes). ``register_as`` registers it as a model version.

A run whose logging fails after MLflow created it is ended ``FAILED``; when the server cannot be reached to
say so, the run id is kept in ``<probes cache>/tracking_unfinished.json`` and ended ``FAILED`` by the next
``log_run`` that reaches that server. The run folder's ``tracking.json`` is written in every case.

Nothing here imports mlflow at module level.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from probes.errors import TrackingError

__all__ = [
    "TrackingOutcome",
    "default_tracking_uri",
    "end_unfinished_runs",
    "git_commit",
    "log_run",
    "log_text_model",
    "not_tracked_outcome",
    "pull",
    "write_outcome",
]

MODEL_NAME = "probe"
TEXT_MODEL_NAME = "probe_text"
BUNDLE_ARTIFACT = "bundle"
# Short network settings so an unreachable server costs seconds, not minutes; the user's env wins.
_HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}


@dataclass(frozen=True)
class TrackingOutcome:
    """What happened to tracking: ``tracked`` is False when the run was not (fully) logged."""

    tracked: bool
    tracking_uri: str
    message: str
    run_id: str | None = None
    experiment_id: str | None = None
    model_uri: str | None = None
    #: ``FINISHED`` when tracked; ``FAILED`` when MLflow created the run and was told it failed;
    #: ``FAILED (pending)`` when the server could not be told (the next run that reaches it ends it FAILED);
    #: ``None`` when no MLflow run exists (disabled, unreachable before the start).
    status: str | None = None
    #: the text-in model (``predict(["some text"])``, :mod:`probes.track.text_model`)
    text_model_uri: str | None = None
    registered_model: str | None = None
    model_version: str | None = None
    #: runs of earlier failures that this call ended FAILED on the server
    resolved_failed_runs: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "tracked": self.tracked,
            "tracking_uri": self.tracking_uri,
            "message": self.message,
            "run_id": self.run_id,
            "experiment_id": self.experiment_id,
            "model_uri": self.model_uri,
            "text_model_uri": self.text_model_uri,
            "status": self.status,
            "registered_model": self.registered_model,
            "model_version": self.model_version,
            "resolved_failed_runs": list(self.resolved_failed_runs),
        }


def not_tracked_outcome(why: str, tracking_uri: str | None = None) -> TrackingOutcome:
    """The outcome of a run that did not try MLflow at all (e.g. ``tracking.enabled: false``)."""
    return TrackingOutcome(tracked=False, tracking_uri=tracking_uri or "", message=why)


def default_tracking_uri() -> str:
    """$MLFLOW_TRACKING_URI, else MLflow's own default (a SQLite ``mlflow.db`` in the current directory)."""
    import mlflow

    return str(mlflow.get_tracking_uri())


def git_commit(start: str | Path | None = None) -> str | None:
    """The git commit of the probes source tree (``+dirty`` if modified), or None outside git."""
    where = Path(start) if start is not None else Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=where,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return sha + ("+dirty" if dirty else "") if sha else None


@contextlib.contextmanager
def _http_defaults() -> Iterator[None]:
    added = [k for k in _HTTP_DEFAULTS if k not in os.environ]
    for key in added:
        os.environ[key] = _HTTP_DEFAULTS[key]
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


@contextlib.contextmanager
def _tracking_uri(uri: str) -> Iterator[str]:
    """Point the fluent MLflow API at ``uri`` for the block, then restore exactly what the caller had.

    ``mlflow.set_tracking_uri`` also writes $MLFLOW_TRACKING_URI and pins a resolved default, so both the
    module global and the environment variable are put back by hand (a later run in another directory must
    still get *its* default ``./mlflow.db``).
    """
    import mlflow
    from mlflow.tracking._tracking_service import utils as tracking_utils

    saved_global = getattr(tracking_utils, "_tracking_uri", None)
    saved_env = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield uri
    finally:
        tracking_utils._tracking_uri = saved_global
        if saved_env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = saved_env


def check_reachable(uri: str, timeout: float = 3.0) -> str | None:
    """None if an HTTP tracking server answers its health check, else why not (non-HTTP URIs pass)."""
    if not uri.startswith(("http://", "https://")):
        return None
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (user-given URI)
            if response.status >= 400:
                return f"{url} answered HTTP {response.status}"
    except urllib.error.HTTPError as exc:
        return f"{url} answered HTTP {exc.code}"
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        return f"cannot reach {url} ({reason})"
    return None


def _not_tracked(
    uri: str,
    why: str,
    on_error: str,
    run_dir: Path | None,
    *,
    run_id: str | None = None,
    status: str | None = None,
    outcome_path: Path | None = None,
) -> TrackingOutcome:
    where = f" Results are in {run_dir}." if run_dir is not None else ""
    message = (
        f"NOT TRACKED: the run was not logged to MLflow at {uri}: {why}.{where} "
        "Start the server (or fix tracking.tracking_uri / $MLFLOW_TRACKING_URI), or set "
        "tracking.enabled=false to run without MLflow."
    )
    outcome = TrackingOutcome(tracked=False, tracking_uri=uri, message=message, run_id=run_id, status=status)
    if outcome_path is not None:  # written before raising: tracking.json exists whatever on_error says
        write_outcome(outcome_path, outcome)
    if on_error == "fail":
        raise TrackingError(message + " (tracking.on_error=fail)")
    return outcome


def write_outcome(path: Path, outcome: TrackingOutcome) -> None:
    """Write ``tracking.json`` (what happened to tracking) atomically."""
    import json

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(outcome.to_dict(), indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


# --- runs left RUNNING by a failure the server could not be told about -------------------------------------
def _unfinished_path() -> Path:
    from probes.models.gguf import cache_root

    return cache_root() / "tracking_unfinished.json"


def _read_unfinished() -> list[dict[str, str]]:
    import json

    path = _unfinished_path()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return [d for d in data if isinstance(d, dict) and "run_id" in d and "tracking_uri" in d]


def _write_unfinished(entries: list[dict[str, str]]) -> None:
    import json

    path = _unfinished_path()
    with contextlib.suppress(OSError):
        if not entries:
            path.unlink(missing_ok=True)
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(entries, indent=2), encoding="utf-8")
        os.replace(tmp, path)


def _remember_unfinished(uri: str, run_id: str) -> None:
    entries = [e for e in _read_unfinished() if e["run_id"] != run_id]
    _write_unfinished([*entries, {"tracking_uri": uri, "run_id": run_id}])


def end_unfinished_runs(uri: str) -> tuple[str, ...]:
    """End ``FAILED`` every run of ``uri`` that an earlier failure left ``RUNNING`` (see the module doc).

    Returns the run ids it ended; entries it cannot settle now stay for the next call.
    """
    import mlflow

    entries = _read_unfinished()
    mine = [e for e in entries if e["tracking_uri"] == uri]
    if not mine:
        return ()
    client = mlflow.tracking.MlflowClient(uri)
    done: list[str] = []
    for entry in mine:
        try:
            run = client.get_run(entry["run_id"])
            if run.info.status == "RUNNING":
                client.set_terminated(entry["run_id"], status="FAILED")
            done.append(entry["run_id"])
        except Exception as exc:  # noqa: BLE001 - keep the entry for the next call unless the run is gone
            if "RESOURCE_DOES_NOT_EXIST" in str(exc):
                done.append(entry["run_id"])
    _write_unfinished([e for e in _read_unfinished() if e["run_id"] not in done])
    return tuple(done)


def log_run(
    *,
    run_name: str,
    experiment: str,
    tracking_uri: str | None,
    params: Mapping[str, str],
    layer_metrics: Sequence[tuple[int, Mapping[str, float]]] = (),
    metrics: Mapping[str, float] | None = None,
    tags: Mapping[str, str] | None = None,
    run_dir: Path | None = None,
    bundle_dir: Path | None = None,
    example_features: Any = None,
    log_model: bool = True,
    on_error: str = "warn",
    datasets: Mapping[str, Mapping[str, Any]] | None = None,
    register_as: str | None = None,
    outcome_path: Path | None = None,
    _during_run: Any = None,
) -> TrackingOutcome:
    """Log one finished run; never loses local results (they are already on disk when this is called).

    ``layer_metrics`` is ``[(layer_index, {"sweep/val_auroc": ..., ...}), ...]`` logged as step series;
    ``datasets`` is ``{role: {"name", "source", "fingerprint", "rows", ...}}`` (``mlflow.log_input``);
    ``register_as`` registers the logged model under that name. ``outcome_path`` (the run folder's
    ``tracking.json``) is written before this returns or raises. With ``on_error="fail"`` any tracking problem
    raises :class:`TrackingError`, else it is reported in the returned outcome's ``message``.
    """
    with _http_defaults():
        try:
            import mlflow
        except ImportError as exc:  # pragma: no cover - mlflow is a dependency
            return _not_tracked(
                tracking_uri or "?",
                f"mlflow is not installed ({exc})",
                on_error,
                run_dir,
                outcome_path=outcome_path,
            )
        uri = tracking_uri or default_tracking_uri()
        problem = check_reachable(uri)
        if problem is not None:
            return _not_tracked(uri, problem, on_error, run_dir, outcome_path=outcome_path)
        run_id: str | None = None
        resolved: tuple[str, ...] = ()
        registered: tuple[str, str] | None = None
        try:
            with _tracking_uri(uri) as uri:
                with contextlib.suppress(Exception):  # settling old failures must never fail this run
                    resolved = end_unfinished_runs(uri)
                # Looked up through a client rather than mlflow.set_experiment: no global state is left behind.
                client = mlflow.tracking.MlflowClient(uri)
                found = client.get_experiment_by_name(experiment)
                experiment_id = (
                    found.experiment_id if found is not None else client.create_experiment(experiment)
                )
                with mlflow.start_run(experiment_id=experiment_id, run_name=run_name) as active:
                    run_id = active.info.run_id
                    if _during_run is not None:  # tests: make the server fail while the run is open
                        _during_run()
                    _log_params(mlflow, params)
                    for step, values in layer_metrics:
                        for key, value in values.items():
                            if value is not None:
                                mlflow.log_metric(key, float(value), step=int(step))
                    clean = {k: float(v) for k, v in (metrics or {}).items() if v is not None}
                    if clean:
                        mlflow.log_metrics(clean)
                    mlflow.set_tags({k: str(v) for k, v in (tags or {}).items() if v is not None})
                    for role, info in (datasets or {}).items():
                        _log_dataset(mlflow, role, info)
                    if run_dir is not None:
                        mlflow.log_artifacts(str(run_dir))
                    model_uri = text_model_uri = None
                    if log_model and bundle_dir is not None:
                        model_uri = _log_probe_model(mlflow, bundle_dir, example_features)
                        text_model_uri = log_text_model(bundle_dir)
                    if bundle_dir is not None and (run_dir is None or not _inside(bundle_dir, run_dir)):
                        mlflow.log_artifacts(str(bundle_dir), artifact_path=BUNDLE_ARTIFACT)
                    if register_as:
                        if model_uri is None:
                            raise TrackingError(
                                f"tracking.register_as={register_as!r} needs a logged model, and this run logged "
                                "none (tracking.log_model is false or the probe has no MLflow model)."
                            )
                        version = mlflow.register_model(model_uri, register_as)
                        registered = (str(version.name), str(version.version))
        except Exception as exc:  # any MLflow/network/storage failure: keep the local run, say so
            status = None
            if run_id is not None:
                status = "FAILED (pending)"
                try:
                    with _tracking_uri(uri):
                        mlflow.tracking.MlflowClient().set_terminated(run_id, status="FAILED")
                    status = "FAILED"
                except Exception:  # noqa: BLE001 - the server is gone: end it FAILED when it is back
                    _remember_unfinished(uri, run_id)
            why = str(exc) if isinstance(exc, TrackingError) else f"{type(exc).__name__}: {exc}"
            return _not_tracked(
                uri, why, on_error, run_dir, run_id=run_id, status=status, outcome_path=outcome_path
            )
    outcome = TrackingOutcome(
        tracked=True,
        tracking_uri=uri,
        message=f"Tracked in MLflow at {uri}: experiment {experiment!r}, run {run_id}."
        + (f" Registered as {registered[0]} version {registered[1]}." if registered else ""),
        run_id=run_id,
        experiment_id=experiment_id,
        model_uri=model_uri,
        text_model_uri=text_model_uri,
        status="FINISHED",
        registered_model=registered[0] if registered else None,
        model_version=registered[1] if registered else None,
        resolved_failed_runs=resolved,
    )
    if outcome_path is not None:
        write_outcome(outcome_path, outcome)
    return outcome


def _log_dataset(mlflow: Any, role: str, info: Mapping[str, Any]) -> None:
    """One dataset in the run's Datasets tab: its source, name, a digest from its fingerprint, its role."""
    import warnings

    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    fingerprint = str(info.get("fingerprint") or "")
    source = str(info.get("source") or info.get("name") or role)
    with warnings.catch_warnings():  # a path or a Hub dataset name: a plain local source either way
        warnings.simplefilter("ignore")
        dataset = MetaDataset(
            resolve_dataset_source(source),
            name=str(info.get("name") or role),
            digest=fingerprint[:32] or None,
        )
    tags = {"probes.fingerprint": fingerprint, "probes.rows": str(info.get("rows", ""))}
    mlflow.log_input(dataset, context=role, tags={k: v for k, v in tags.items() if v})


def _inside(path: Path, folder: Path) -> bool:
    try:
        Path(path).resolve().relative_to(Path(folder).resolve())
    except ValueError:
        return False
    return True


def _log_params(mlflow: Any, params: Mapping[str, str]) -> None:
    # MLflow caps param values (6000 chars) and batch sizes (100 per call).
    items = [(k, str(v)[:6000]) for k, v in params.items()]
    for i in range(0, len(items), 100):
        mlflow.log_params(dict(items[i : i + 100]))


def _log_probe_model(mlflow: Any, bundle_dir: Path, example_features: Any) -> str:
    code = Path(__file__).with_name("pyfunc_model.py")
    example = None
    if example_features is not None:
        import numpy as np

        example = np.asarray(example_features, dtype=np.float32)
    return str(_log_pyfunc(mlflow, code, bundle_dir, example).model_uri)


def _log_pyfunc(mlflow: Any, code: Path, bundle_dir: Path, example: Any) -> Any:
    from probes._version import __version__

    return mlflow.pyfunc.log_model(
        name=MODEL_NAME,
        python_model=str(code),
        artifacts={"bundle": str(bundle_dir)},
        # MLflow runs the model on the example to record the input/output signature.
        input_example=example,
        # Given explicitly: inferring requirements would import the model in a subprocess (slow).
        pip_requirements=[f"residual-probes=={__version__}", "torch", "safetensors", "pandas"],
    )


def log_text_model(
    bundle_dir: str | Path,
    *,
    model: str | None = None,
    name: str = TEXT_MODEL_NAME,
    model_config: Mapping[str, Any] | None = None,
) -> str:
    """Log the text-in model of ``bundle_dir`` to the active MLflow run; returns its model URI.

    ``model`` names the language model to load at serving time (default: the one the bundle records);
    ``model_config`` may add ``revision``, ``dtype``, ``device``, ``layers_attr``, ``max_length``,
    ``chat_template``, ``probe``. Serve it with ``mlflow models serve -m <uri> --env-manager local``.
    """
    import mlflow

    from probes._version import __version__

    config = {k: v for k, v in dict(model_config or {}).items() if v is not None}
    if model is not None:
        config["model"] = model
    info = mlflow.pyfunc.log_model(
        name=name,
        python_model=str(Path(__file__).with_name("text_model.py")),
        artifacts={"bundle": str(bundle_dir)},
        model_config=config or None,
        pip_requirements=[
            f"residual-probes=={__version__}",
            "torch",
            "transformers",
            "safetensors",
            "pandas",
        ],
    )
    return str(info.model_uri)


def pull(run_id: str, to: str | Path, tracking_uri: str | None = None) -> Path:
    """Download the probe bundle of MLflow run ``run_id`` into folder ``to``; returns the bundle folder.

    The bundle is verified (sha256 of its tensors, schema) before this returns.
    """
    with _http_defaults():
        import mlflow

        uri = tracking_uri or default_tracking_uri()
        problem = check_reachable(uri)
        if problem is not None:
            raise TrackingError(
                f"Cannot pull run {run_id}: {problem}. Check --tracking-uri / $MLFLOW_TRACKING_URI."
            )
        dest = Path(to)
        dest.mkdir(parents=True, exist_ok=True)
        try:
            local = mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=BUNDLE_ARTIFACT, dst_path=str(dest), tracking_uri=uri
            )
        except Exception as exc:
            raise TrackingError(
                f"Cannot pull the bundle of run {run_id} from {uri}: {type(exc).__name__}: {exc}. Check the run "
                "id (mlflow ui lists runs) and that the run was logged by `probes run`."
            ) from exc
    from probes.package import ProbeBundle

    ProbeBundle.load(local)  # verify before handing it over
    return Path(local)
