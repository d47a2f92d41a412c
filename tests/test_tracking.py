"""MLflow tracking against a real ``mlflow server`` process and the local SQLite store.

One server per test session (started on a free 127.0.0.1 port, terminated in teardown). Runs are read back
through ``MlflowClient``; the logged pyfunc model is loaded in a fresh Python process and must reproduce the
bundle's scores; an unreachable server must not lose local results.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from test_pipeline import save_tiny_model, write_tiny_project

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_server(root: Path, port: int) -> subprocess.Popen:
    """An ``mlflow server`` on ``port`` with its store in ``root``; returns once /health answers."""
    exe = shutil.which("mlflow")
    cmd = [exe] if exe else [sys.executable, "-m", "mlflow"]
    cmd += [
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--backend-store-uri",
        f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination",
        str(root / "artifacts"),
        "--workers",
        "1",
    ]
    # The GenAI job runner (a pool of worker processes) is not needed to track runs.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    log = (root / "server.log").open("a")
    # Own session: teardown stops the server and the workers it spawns, and nothing else.
    proc = subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, cwd=root, env=env, start_new_session=True
    )
    log.close()
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        if proc.poll() is not None:
            pytest.fail(
                f"mlflow server exited with {proc.returncode}:\n{(root / 'server.log').read_text()[-3000:]}"
            )
        try:
            with urllib.request.urlopen(uri + "/health", timeout=2) as response:
                if response.status == 200:
                    return proc
        except OSError:
            pass
        if time.monotonic() > deadline:
            _stop_server(proc)
            pytest.fail(
                f"mlflow server not healthy after 120 s:\n{(root / 'server.log').read_text()[-3000:]}"
            )
        time.sleep(0.5)


def _stop_server(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    proc = _start_server(root, port)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        _stop_server(proc)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny-llama-tracking"))


def _run(root: Path, model_dir: Path, overrides: list[str]):
    from probes.config import load_config
    from probes.pipeline import run

    cfg = load_config(write_tiny_project(root, model_dir), ["layers=[1, 2, 4]", *overrides])
    return run(cfg)


@pytest.fixture(scope="module")
def server_run(tmp_path_factory: pytest.TempPathFactory, model_dir: Path, mlflow_server: str):
    root = tmp_path_factory.mktemp("tracked")
    result = _run(
        root,
        model_dir,
        [
            "tracking.enabled=true",
            f"tracking.tracking_uri={mlflow_server}",
            "tracking.experiment=probes-tests",
            "tracking.tags={team: interp}",
            "tracking.register_as=tiny-mood-probe",
            "evaluation.plots=true",
            "evaluation.text_baselines=true",
        ],
    )
    return result, mlflow_server


def test_run_is_logged_to_the_server(server_run) -> None:
    from mlflow.tracking import MlflowClient

    result, uri = server_run
    assert result.tracking is not None and result.tracking.tracked, result.tracking
    client = MlflowClient(uri)
    run = client.get_run(result.tracking.run_id)
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "probes-tests"

    params = run.data.params
    assert params["probe.kind"] == "logistic"
    assert params["model.name_or_path"] == result.config.model.name_or_path
    assert params["chosen_layer"] == result.layer
    assert "layers=[1, 2, 4]" in params["overrides"]

    metrics = run.data.metrics
    # Grouped keys: the UI shows one section per prefix (test/, eval/, sweep/) instead of 68 loose charts.
    assert metrics["test/auroc"] == pytest.approx(result.test.auroc)
    assert metrics["test/recall_at_fpr/0.1"] == pytest.approx(result.test.recall_at_fpr)
    assert metrics["test/empirical_fpr/0.1/hi"] == pytest.approx(
        result.test.operating_points[0].empirical_fpr_ci[1]
    )
    assert metrics["test/baseline/text/auroc"] == pytest.approx(result.baselines["text"].auroc)
    assert any(k.startswith("eval/fresh/") for k in metrics)
    assert {k.split("/")[0] for k in metrics} == {"test", "eval", "sweep"}
    # The layer sweep is a step series: one point per swept layer, step = layer index.
    history = client.get_metric_history(run.info.run_id, "sweep/val_auroc")
    assert sorted(m.step for m in history) == [1, 2, 4]
    by_step = {m.step: m.value for m in history}
    for row in result.sweep:
        assert by_step[int(row["layer"].split(".")[1])] == pytest.approx(row["val_auroc"])

    tags = run.data.tags
    assert tags["probes.layer"] == result.layer
    assert tags["probes.version"]
    assert tags["team"] == "interp"
    assert tags["probes.dataset.train.fingerprint"] == result.datasets["train"]["fingerprint"]
    assert tags["probes.model_weight_hash"]

    # Every dataset is an MLflow input (the Datasets tab), digest from its fingerprint, context = its role.
    inputs = {d.context: d for d in _dataset_inputs(run)}
    assert set(inputs) == set(result.datasets) == {"train", "control", "eval.fresh"}
    for role, info in result.datasets.items():
        assert inputs[role].dataset.digest == info["fingerprint"][:32]
        assert inputs[role].dataset.name == info["name"]
        assert inputs[role].tags["probes.fingerprint"] == info["fingerprint"]

    # tracking.register_as: a model version of the logged model, linked to the run.
    assert result.tracking.registered_model == "tiny-mood-probe"
    version = client.get_model_version("tiny-mood-probe", result.tracking.model_version)
    assert version.run_id == run.info.run_id
    assert json.loads((result.run_dir / "tracking.json").read_text())["model_version"] == version.version

    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"report.json", "config.yaml", "bundle", "plots"} <= names
    report_path = client.download_artifacts(run.info.run_id, "report.json", str(result.run_dir.parent / "dl"))
    assert json.loads(Path(report_path).read_text())["chosen_layer"] == result.layer


def test_pyfunc_model_reproduces_scores_in_a_fresh_process(server_run, tmp_path: Path) -> None:
    import torch

    from probes.package import ProbeBundle

    result, uri = server_run
    model_uri = result.tracking.model_uri
    assert model_uri
    rng = np.random.default_rng(0)
    d = int(json.loads((result.bundle_dir / "manifest.json").read_text())["model"]["hidden_size"])
    X = rng.normal(size=(7, d)).astype(np.float32)
    np.save(tmp_path / "X.npy", X)
    code = (
        "import json, sys, numpy as np, pandas as pd, mlflow\n"
        "model = mlflow.pyfunc.load_model(sys.argv[1])\n"
        "X = np.load(sys.argv[2])\n"
        "a = model.predict(X)\n"
        "b = model.predict(pd.DataFrame(X))\n"
        "print(json.dumps({'score': a['score'].tolist(), 'p': a['probability'].tolist(),"
        " 'flag': a['flagged'].tolist(), 'score_df': b['score'].tolist()}))\n"
    )
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    out = subprocess.run(
        [sys.executable, "-c", code, model_uri, str(tmp_path / "X.npy")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=240,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])

    entry = next(iter(ProbeBundle.load(result.bundle_dir)))
    expected = entry.score(torch.from_numpy(X)).double().numpy()
    np.testing.assert_allclose(got["score"], expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got["score_df"], expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        got["p"], entry.calibrate(torch.from_numpy(expected)).numpy(), rtol=1e-5, atol=1e-6
    )
    assert got["flag"] == [bool(s > entry.threshold_for().value) for s in expected]


def test_pull_downloads_a_verified_bundle(server_run, tmp_path: Path) -> None:
    from probes.package import ProbeBundle
    from probes.track import pull

    result, uri = server_run
    bundle_dir = pull(result.tracking.run_id, tmp_path / "pulled", tracking_uri=uri)
    pulled = ProbeBundle.load(bundle_dir)
    original = json.loads((result.bundle_dir / "manifest.json").read_text())
    assert (
        json.loads((bundle_dir / "manifest.json").read_text())["tensors_sha256"] == original["tensors_sha256"]
    )
    assert pulled.names == ProbeBundle.load(result.bundle_dir).names


def test_local_sqlite_store_is_the_default(
    server_run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no tracking URI anywhere, runs go to MLflow's default store: ./mlflow.db in the current directory."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from probes.track import log_run

    result, _ = server_run
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    outcome = log_run(
        run_name="local",
        experiment="probes-local",
        tracking_uri=None,
        params=result.config.flat(),
        layer_metrics=[(1, {"sweep/val_auroc": 0.6}), (2, {"sweep/val_auroc": 0.7})],
        metrics={"test/auroc": result.test.auroc},
        tags={"probes.layer": result.layer},
        run_dir=result.run_dir,
        bundle_dir=result.bundle_dir,
        log_model=False,
    )
    assert outcome.tracked, outcome.message
    assert outcome.tracking_uri == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert (tmp_path / "mlflow.db").is_file()
    client = MlflowClient(outcome.tracking_uri)
    run = client.get_run(outcome.run_id)
    assert run.data.params["probe.kind"] == "logistic"
    assert run.data.metrics["test/auroc"] == pytest.approx(result.test.auroc)
    assert [m.step for m in client.get_metric_history(outcome.run_id, "sweep/val_auroc")] == [1, 2]
    assert {"report.json", "bundle"} <= {a.path for a in client.list_artifacts(outcome.run_id)}
    # Tracking left no global state behind: MLflow's default still follows the current directory.
    assert "MLFLOW_TRACKING_URI" not in os.environ
    other = tmp_path / "elsewhere"
    other.mkdir()
    monkeypatch.chdir(other)
    assert mlflow.get_tracking_uri() == f"sqlite:///{other / 'mlflow.db'}"


def test_unreachable_server_keeps_local_results(tmp_path: Path, model_dir: Path) -> None:
    from probes.config import load_config
    from probes.pipeline import run

    closed = f"http://127.0.0.1:{_free_port()}"
    overrides = [
        "layers=[2]",
        "evaluation.bootstrap=20",
        "tracking.enabled=true",
        f"tracking.tracking_uri={closed}",
    ]
    path = write_tiny_project(tmp_path, model_dir)
    start = time.perf_counter()
    result = run(load_config(path, overrides))
    assert result.timings["track"] < 15
    assert not result.tracking.tracked
    assert "NOT TRACKED" in result.tracking.message and closed in result.tracking.message
    assert (result.run_dir / "report.json").is_file() and (
        result.run_dir / "bundle" / "manifest.json"
    ).is_file()
    assert json.loads((result.run_dir / "tracking.json").read_text())["tracked"] is False
    assert time.perf_counter() - start < 120


def _dataset_inputs(run):  # noqa: ANN001, ANN202
    return [
        type(
            "Input",
            (),
            {
                "context": _tag(d.tags, "mlflow.data.context"),
                "dataset": d.dataset,
                "tags": {t.key: t.value for t in d.tags},
            },
        )
        for d in run.inputs.dataset_inputs
    ]


def _tag(tags, key: str):  # noqa: ANN001, ANN202
    return next((t.value for t in tags if t.key == key), None)


def test_a_server_that_dies_mid_run_gets_the_run_ended_failed_by_the_next_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server dies after MLflow created the run: the run cannot be ended then, so it is remembered and
    ended FAILED by the next run that reaches the server; tracking.json says so in both runs."""
    from mlflow.tracking import MlflowClient

    from probes.track import log_run

    monkeypatch.setenv("PROBES_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    root = tmp_path / "server"
    root.mkdir()
    port = _free_port()
    uri = f"http://127.0.0.1:{port}"
    proc = _start_server(root, port)
    try:
        first = log_run(
            run_name="dies",
            experiment="probes-failures",
            tracking_uri=uri,
            params={"a": "1"},
            metrics={"test/auroc": 0.5},
            outcome_path=tmp_path / "first.json",
            _during_run=lambda: _stop_server(proc, signal.SIGKILL),  # the server really goes away
        )
        assert not first.tracked and first.run_id is not None
        assert first.status == "FAILED (pending)"
        recorded = json.loads((tmp_path / "first.json").read_text())
        assert recorded["run_id"] == first.run_id and recorded["status"] == "FAILED (pending)"
        assert first.run_id in (tmp_path / "cache" / "tracking_unfinished.json").read_text()

        proc = _start_server(root, port)  # back, same store
        assert MlflowClient(uri).get_run(first.run_id).info.status == "RUNNING"
        second = log_run(
            run_name="next",
            experiment="probes-failures",
            tracking_uri=uri,
            params={"a": "2"},
            outcome_path=tmp_path / "second.json",
        )
        assert second.tracked and second.resolved_failed_runs == (first.run_id,)
        assert MlflowClient(uri).get_run(first.run_id).info.status == "FAILED"
        assert MlflowClient(uri).get_run(second.run_id).info.status == "FINISHED"
        assert not (tmp_path / "cache" / "tracking_unfinished.json").exists()
        assert json.loads((tmp_path / "second.json").read_text())["resolved_failed_runs"] == [first.run_id]
    finally:
        _stop_server(proc)


def test_text_in_model_scores_raw_text_like_the_pipeline(server_run, monkeypatch: pytest.MonkeyPatch) -> None:
    """``probe_text``: model reference + bundle; predict(["some text"]) collects and scores like offline."""
    import mlflow
    import torch

    import probes
    from probes.data import ContrastDataset, DatasetCard, Example
    from probes.package import ProbeBundle

    result, uri = server_run
    assert result.tracking.text_model_uri
    texts = ["Tom was angry at the rain.", "Anna was calm by the sea."]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    served = mlflow.pyfunc.load_model(result.tracking.text_model_uri)
    got = served.predict(texts)
    assert list(got.columns) == ["score", "probability", "flagged"] and len(got) == 2

    entry = next(iter(ProbeBundle.load(result.bundle_dir)))
    model, tok = probes.load_model(result.config.model.name_or_path, dtype="float32")
    card = DatasetCard(name="t", label_names=("a", "b"), kind="control")
    ds = ContrastDataset([Example(id=str(i), label=0, text=t) for i, t in enumerate(texts)], card)
    acts = probes.collect(model, tok, ds, [entry.site], pooling=entry.pooling, max_length=32, progress=False)
    with torch.inference_mode():
        expected = entry.score(acts[entry.site]).double().numpy()
    np.testing.assert_allclose(got["score"].to_numpy(), expected, rtol=1e-4, atol=1e-4)


def test_train_is_tracked_like_run(tmp_path: Path, model_dir: Path, mlflow_server: str) -> None:
    from mlflow.tracking import MlflowClient

    from probes.config import load_config
    from probes.pipeline import train_stage

    overrides = ["layers=[1, 2]", "tracking.enabled=true", f"tracking.tracking_uri={mlflow_server}"]
    result = train_stage(load_config(write_tiny_project(tmp_path, model_dir), overrides))
    assert result.tracking is not None and result.tracking.tracked, result.tracking
    client = MlflowClient(mlflow_server)
    run = client.get_run(result.tracking.run_id)
    assert run.data.params["chosen_layer"] == result.layer
    assert [m.step for m in client.get_metric_history(run.info.run_id, "sweep/val_auroc")] == [1, 2]
    assert {_tag(d.tags, "mlflow.data.context") for d in run.inputs.dataset_inputs} == {
        "train",
        "control",
        "eval.fresh",
    }
    assert result.tracking.model_uri and json.loads((result.run_dir / "tracking.json").read_text())["tracked"]
