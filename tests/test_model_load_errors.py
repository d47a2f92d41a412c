"""A Hub id that cannot be reached fails after one try, fast, in one line that names the offline ways out."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
from test_pipeline import write_tiny_project
from typer.testing import CliRunner

from probes.cli import EXIT_BAD_INPUT, app
from probes.errors import ModelLoadError


@pytest.fixture
def unreachable_hub(monkeypatch: pytest.MonkeyPatch) -> str:
    """The Hub endpoint pointed at a closed local port (no network is touched); offline mode off."""
    import huggingface_hub.constants

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", endpoint)
    return endpoint


def test_unreachable_hub_id_is_one_fast_error_naming_the_fixes(unreachable_hub: str) -> None:
    import probes

    start = time.perf_counter()
    with pytest.raises(ModelLoadError) as info:
        probes.load_model("someorg/absent-model")
    assert time.perf_counter() - start < 20  # one try (transformers alone retries for about a minute)
    message = str(info.value)
    assert "someorg/absent-model" in message and unreachable_hub in message
    assert "HF_HUB_OFFLINE" in message and "local folder" in message
    assert "\n" not in message


def test_offline_mode_names_the_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    import probes

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="HF_HUB_OFFLINE is set"):
        probes.load_model("someorg/absent-model")


def test_cli_exits_2_with_one_line(unreachable_hub: str, tmp_path: Path) -> None:
    config = write_tiny_project(tmp_path, Path("someorg/absent-model"))
    result = CliRunner().invoke(app, ["run", str(config), "--no-track"])
    assert result.exit_code == EXIT_BAD_INPUT, result.output
    assert "HF_HUB_OFFLINE" in result.output and "Traceback" not in result.output
