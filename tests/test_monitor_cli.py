"""``probes monitor`` in-process on a tiny app: help, stopping real generation on stories260K, errors."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import typer
from conftest import STORIES, build_tiny_model
from test_monitor_stories import HAPPY_PROMPT, PATIENCE, SAD_PROMPT, WINDOW, stories_bundle
from typer.testing import CliRunner

from probes.monitor.cli import EXIT_ERROR, EXIT_FIRED, EXIT_OK, EXIT_USAGE, register


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    app = typer.Typer()
    register(app)

    @app.callback()
    def main() -> None:  # a callback keeps `monitor` a named subcommand, as in the real `probes` app
        pass

    return app


def _invoke(app: typer.Typer, args: list[str]):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return CliRunner().invoke(app, args, env={"COLUMNS": "200", "NO_COLOR": "1"})


def _args(bundle: Path, prompt: str, *extra: str) -> list[str]:
    return [
        "monitor", str(bundle), "--model", str(STORIES), "--prompt", prompt, "--device", "cpu",
        "--smoothing", "rolling", "--window", str(WINDOW), "--patience", str(PATIENCE), "--max-new-tokens", "24",
        *extra,
    ]  # fmt: skip


def test_help_lists_options_and_exit_codes(app: typer.Typer) -> None:
    result = _invoke(app, ["monitor", "--help"])
    assert result.exit_code == 0, result.output
    for option in (
        "--model",
        "--prompt",
        "--chat",
        "--threshold",
        "--smoothing",
        "--html",
        "--no-check-fingerprint",
    ):
        assert option in result.output
    assert "Exit codes" in result.output


def test_cli_module_import_is_light() -> None:
    code = "import sys, probes.monitor.cli; print([m for m in ('torch', 'transformers') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_cli_stops_a_sad_story_and_writes_the_trace(app: typer.Typer, tmp_path: Path) -> None:
    folder, _, _ = stories_bundle()
    html = tmp_path / "trace.html"
    result = _invoke(app, _args(folder, SAD_PROMPT, "--html", str(html)))
    assert result.exit_code == EXIT_FIRED, result.output
    assert "monitor stopped generation" in result.output and "\u26d4" in result.output
    assert html.exists() and "&#9940; stopped" in html.read_text()

    result = _invoke(app, _args(folder, HAPPY_PROMPT))
    assert result.exit_code == EXIT_OK, result.output
    assert "did not fire" in result.output


def test_cli_errors_are_one_line_with_the_fix(app: typer.Typer, tmp_path: Path) -> None:
    folder, _, _ = stories_bundle()
    result = _invoke(app, _args(tmp_path / "nowhere", SAD_PROMPT))
    assert result.exit_code == EXIT_USAGE and "ProbeBundle.save" in result.output

    result = _invoke(app, _args(folder, SAD_PROMPT, "--chat"))  # stories260K has no chat template
    assert result.exit_code == EXIT_ERROR and "drop --chat" in result.output

    # A bundle made on another model: refused, unless the user opts out.
    tiny, tok = build_tiny_model("llama")
    tiny.save_pretrained(tmp_path / "tiny")
    tok.save_pretrained(tmp_path / "tiny")
    args = ["monitor", str(folder), "--model", str(tmp_path / "tiny"), "--prompt", "Hi", "--device", "cpu"]
    result = _invoke(app, [*args, "--max-new-tokens", "3"])
    assert result.exit_code == EXIT_ERROR and "--no-check-fingerprint" in result.output
    result = _invoke(app, [*args, "--max-new-tokens", "3", "--no-check-fingerprint", "--threshold", "1e9"])
    # d=64 probe vs d=32 model: still refused, with a message rather than a traceback.
    assert result.exit_code == EXIT_ERROR and "64-dim" in result.output, result.output
