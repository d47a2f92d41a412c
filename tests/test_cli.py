"""The `probes` command line, in-process with typer's CliRunner: every subcommand, its --help, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
from test_pipeline import save_tiny_model, write_tiny_project
from typer.testing import CliRunner

from probes.cli import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, EXIT_TRACKING, app

ROOT = Path(__file__).resolve().parents[1]
SHIPPED_DATASETS = sorted(p for p in (ROOT / "datasets").iterdir() if (p / "card.yaml").is_file())
SHIPPED_CONFIGS = sorted((ROOT / "training").glob("*.yaml"))

runner = CliRunner()

# MLflow warns about its own type hints when first imported; import it here, outside the warnings-as-errors
# block below, so only warnings raised by our commands fail the tests.
import mlflow.pyfunc  # noqa: E402, F401


def invoke(*args: str, cwd: Path | None = None):
    """Run `probes ARGS` in-process with warnings raised as errors (ours must not warn on the happy path)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # Third-party deprecation chatter (torch, transformers, mlflow) is not ours to fix.
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        return runner.invoke(app, list(args), catch_exceptions=False)


def test_probes_help_is_instant_and_light() -> None:
    code = (
        "import sys, time\n"
        "t = time.perf_counter()\n"
        "from probes.cli import app\n"
        "try:\n    app(['--help'])\n"
        "except SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'transformers', 'mlflow', 'sklearn') if m in sys.modules]\n"
        "print('HEAVY', heavy, time.perf_counter() - t)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    line = next(x for x in out.stdout.splitlines() if x.startswith("HEAVY"))
    assert line.startswith("HEAVY []"), line
    assert float(line.split()[-1]) < 5.0  # instant on an idle machine; generous for a loaded CI runner


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["run"],
        ["collect"],
        ["train"],
        ["evaluate"],
        ["validate"],
        ["datasets"],
        ["datasets", "show"],
        ["pull"],
    ],
    ids=lambda c: " ".join(c) or "probes",
)
def test_every_command_has_help(command: list[str]) -> None:
    result = invoke(*command, "--help")
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output
    if command and command != ["datasets"]:
        # Every option and argument is explained.
        assert "--help" in result.output and len(result.output.splitlines()) > 8


def test_monitor_command_is_wired_when_present() -> None:
    result = invoke("--help")
    if (ROOT / "probes" / "monitor" / "cli.py").is_file():
        assert "monitor" in result.output
        sub = invoke("monitor", "--help")
        assert sub.exit_code == 0, sub.output
    else:
        assert "monitor" not in result.output.split("Commands")[-1]


def test_exit_codes_are_distinct() -> None:
    assert len({EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_TRACKING}) == 4
    assert "Exit codes" in invoke("--help").output


@pytest.mark.slow  # measured among the slowest on 2 cores; CI runs it with -m slow
@pytest.mark.parametrize("path", SHIPPED_DATASETS, ids=lambda p: p.name)
def test_validate_and_show_shipped_datasets(path: Path) -> None:
    result = invoke("validate", str(path))
    assert result.exit_code == 0, result.output
    assert path.name in result.output and "rows" in result.output
    show = invoke("datasets", "show", str(path), "--rows", "2")
    assert show.exit_code == 0, show.output
    assert "labels" in show.output and "fingerprint" in show.output and "First 2 rows" in show.output
    as_json = invoke("datasets", "show", str(path), "--json")
    assert json.loads(as_json.stdout)["summary"]["n"] > 0


@pytest.mark.slow  # measured among the slowest on 2 cores; CI runs it with -m slow
@pytest.mark.parametrize("path", SHIPPED_CONFIGS, ids=lambda p: p.name)
def test_validate_shipped_configs(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    result = invoke("validate", str(path.relative_to(ROOT)))
    assert result.exit_code == 0, result.output
    if "output:" in path.read_text(encoding="utf-8"):  # a probes generate config: prompts, model, sampling
        assert "generate 240 prompts from" in result.output and "sampling n=1" in result.output
        return
    assert "splits: train" in result.output and "control" in result.output


def test_validate_reports_bad_inputs_with_exit_2(tmp_path: Path) -> None:
    bad_cfg = tmp_path / "bad.yaml"
    bad_cfg.write_text("model: {name_or_path: gpt2, devcie: cpu}\ndata: {train: x.jsonl}\n")
    bad_data = tmp_path / "bad.jsonl"
    bad_data.write_text('{"id": "a", "text": "hi", "label": 0}\nnot json\n')
    result = invoke("validate", str(bad_cfg), str(bad_data), str(ROOT / "datasets" / "true_false_statements"))
    assert result.exit_code == EXIT_BAD_INPUT
    assert (
        "model.devcie" in result.output and "bad.jsonl" in result.output and "2 of 3 invalid" in result.output
    )


def test_run_with_bad_config_exits_2(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: gpt2\ndata: {train: missing.jsonl}\n")
    result = invoke("run", str(cfg))
    assert result.exit_code == EXIT_BAD_INPUT
    assert "missing.jsonl" in result.output and "error" in result.output
    result = invoke("run", str(cfg), "--set", "nonsense")
    assert result.exit_code == EXIT_BAD_INPUT and "KEY=VALUE" in result.output


# --------------------------------------------------------------------------------------------------------
# Real runs on a tiny model saved to disk


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli-project")
    model = save_tiny_model(root / "model")
    return write_tiny_project(root, model)


@pytest.fixture(scope="module")
def ran(project: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """One tracked run (local SQLite store): (run folder, printed output, tracking URI)."""
    store = f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"
    result = invoke(
        "run",
        str(project),
        "--set",
        "layers=[1, 3]",
        "--set",
        "tracking.enabled=true",
        "--set",
        "tracking.log_model=false",
        "--set",
        f"tracking.tracking_uri={store}",
    )
    assert result.exit_code == 0, result.output
    run_dir = Path(result.output.split("Outputs:")[-1].split()[0])
    return run_dir, result.output, store


def test_run_prints_the_result_table(ran: tuple[Path, str, str]) -> None:
    run_dir, output, store = ran
    for text in (
        "Layer sweep",
        "layers.1",
        "layers.3",
        "AUROC [95% CI]",
        "recall@",
        "ECE",
        "text",
        "span",
        "length",
    ):
        assert text in output, text
    assert "Tracked in MLflow at" in output and store in output
    assert (run_dir / "report.json").is_file()


def test_run_json_summary(project: Path) -> None:
    result = invoke("run", str(project), "--set", "layers=[2]", "--no-track", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["layer"] == "layers.2" and summary["test"]["auroc"] > 0.8
    assert summary["tracking"]["tracked"] is False and Path(summary["run_dir"]).is_dir()


def test_collect_then_train_use_the_cache(project: Path, ran: tuple[Path, str, str]) -> None:
    start = time.perf_counter()
    result = invoke("collect", str(project), "--set", "layers=[1, 3]")
    assert result.exit_code == 0, result.output
    assert (
        "Collected activations" in result.output and "train" in result.output and "control" in result.output
    )
    assert time.perf_counter() - start < 60
    trained = invoke("train", str(project), "--set", "layers=[1, 3]")
    assert trained.exit_code == 0, trained.output
    assert "Bundle:" in trained.output
    bundle_dir = Path(trained.output.split("Bundle:")[-1].split()[0])
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    assert manifest["probes"][0]["thresholds"][0]["target_fpr"] == 0.1


def test_evaluate_a_run_on_new_data(project: Path, ran: tuple[Path, str, str]) -> None:
    ran_dir = ran[0]
    data = project.parent / "data"
    result = invoke(
        "evaluate",
        str(ran_dir),
        "--data",
        str(data / "moods_eval.jsonl"),
        "--control",
        str(data / "control.jsonl"),
    )
    assert result.exit_code == 0, result.output
    assert "At the bundle's saved threshold" in result.output and "fpr_on_control" in result.output
    saved = json.loads((ran_dir / "evaluations" / "moods_eval.json").read_text())
    assert saved["report"]["auroc"] > 0.8
    assert 0.0 <= saved["at_bundle_threshold"]["fpr_on_control"] <= 0.5
    assert saved["at_bundle_threshold"]["recall_at_threshold"] > 0.5

    missing = invoke("evaluate", str(ran_dir), "--data", str(data / "nope.jsonl"))
    assert missing.exit_code == EXIT_BAD_INPUT
    not_a_run = invoke("evaluate", str(project.parent), "--data", str(data / "moods_eval.jsonl"))
    assert not_a_run.exit_code == EXIT_BAD_INPUT and "not a run folder" in not_a_run.output


def test_run_failure_exits_1(project: Path, tmp_path: Path) -> None:
    # A folder that exists but holds no model: transformers fails, the run fails (exit 1).
    result = runner.invoke(app, ["run", str(project), "--set", f"model.name_or_path={tmp_path}"])
    assert result.exit_code == EXIT_FAILED, result.output


def test_missing_model_folder_exits_2_in_one_line(project: Path) -> None:
    missing = project.parent / "no-model"
    result = runner.invoke(app, ["run", str(project), "--set", f"model.name_or_path={missing}"])
    assert result.exit_code == EXIT_BAD_INPUT, result.output
    assert "no such file or folder" in result.output and "Traceback" not in result.output


def test_tracking_failure_exits_3_after_writing_local_results(project: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    runs = project.parent / "runs"
    before = set(runs.iterdir())
    args = ["run", str(project), "--set", "layers=[2]", "--set", "tracking.enabled=true"]
    args += ["--set", f"tracking.tracking_uri=http://127.0.0.1:{port}", "--set", "tracking.on_error=fail"]
    failed = runner.invoke(app, args)
    assert failed.exit_code == EXIT_TRACKING, failed.output
    assert "NOT TRACKED" in failed.output and f"127.0.0.1:{port}" in failed.output
    new = set(runs.iterdir()) - before
    assert len(new) == 1
    run_dir = new.pop()
    assert (run_dir / "report.json").is_file()
    # on_error: fail still records what happened to tracking before failing
    assert json.loads((run_dir / "tracking.json").read_text())["tracked"] is False


def test_pull_from_the_local_store(ran: tuple[Path, str, str], tmp_path: Path) -> None:
    run_dir, _, store = ran
    run_id = json.loads((run_dir / "tracking.json").read_text())["run_id"]
    pulled = invoke("pull", run_id, "--to", str(tmp_path / "pulled"), "--tracking-uri", store)
    assert pulled.exit_code == 0, pulled.output
    assert (tmp_path / "pulled" / "bundle" / "manifest.json").is_file()
    unknown = runner.invoke(app, ["pull", "0" * 32, "--to", str(tmp_path / "x"), "--tracking-uri", store])
    assert unknown.exit_code == EXIT_TRACKING and "Cannot pull" in unknown.output
