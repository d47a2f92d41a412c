"""The Ray engine's bad input, without a Ray session: Ray missing, an unreachable address, a cluster too small.

Each fails in seconds with one message that says what to do, before any cache folder is made.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
from conftest import _require_package

from probes.collection.ray_engine import RAY_EXTRA, ModelSource, RayEngine
from probes.config import EngineConfig
from probes.errors import EngineError


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_ray_missing_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` does when Ray is not installed
    with pytest.raises(EngineError) as info, RayEngine(ModelSource("x"), EngineConfig(kind="ray")):
        pass
    assert RAY_EXTRA in str(info.value) and "\n" not in str(info.value)


def test_unreachable_address_fails_fast_and_writes_nothing(stories_path: Path, tmp_path: Path) -> None:
    _require_package("ray", "pip install -e '.[ray]'")
    from typer.testing import CliRunner

    from probes.cli import app

    config = tmp_path / "cfg.yaml"
    config.write_text(
        f"model: {{name_or_path: {stories_path}}}\n"
        "data: {train: datasets/story_moods}\nlayers: [2]\n"
        f"cache_dir: {tmp_path / 'cache'}\noutput_dir: {tmp_path / 'runs'}\n"
        f"engine: {{address: 'ray://127.0.0.1:{_free_port()}', connect_timeout_s: 2}}\n"
        "tracking: {enabled: false}\n"
    )
    start = time.monotonic()
    for command in ("collect", "run"):
        result = CliRunner().invoke(app, [command, str(config), "--engine", "ray"], env={"COLUMNS": "200"})
        assert result.exit_code == 1, result.output
        assert "Cannot reach the Ray cluster" in result.output and "ray start --head" in result.output
    assert time.monotonic() - start < 20
    assert not (tmp_path / "cache").exists() and not (tmp_path / "runs").exists()


def test_ray_engine_needs_a_cache_dir() -> None:
    from probes.config import config_from_dict
    from probes.errors import ConfigError

    with pytest.raises(ConfigError, match="cache_dir"):
        config_from_dict(
            {
                "model": "m",
                "data": {"train": "datasets/story_moods"},
                "cache_dir": None,
                "engine": {"kind": "ray"},
            }
        )
