"""The repository layout promises of STYLE.md: data and configs never shadow the `datasets` package."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_datasets_and_training_hold_no_python() -> None:
    for folder in ("datasets", "training"):
        offenders = [
            p for p in (ROOT / folder).rglob("*") if p.suffix in {".py", ".pyc"} or p.name == "__init__.py"
        ]
        assert offenders == [], f"{folder}/ must hold data/configs only, found {offenders}"


def test_hf_datasets_package_is_not_shadowed_from_repo_root() -> None:
    # Run from the repository root, where a local `datasets/` folder sits on sys.path[0].
    code = "import datasets, sys; print(datasets.__file__); assert hasattr(datasets, 'load_dataset')"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert str(ROOT / "datasets") not in out.stdout


def test_import_probes_is_light() -> None:
    code = "import sys, probes; heavy = [m for m in ('torch', 'transformers', 'mlflow') if m in sys.modules]; print(heavy)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_public_api_names_resolve() -> None:
    probes = importlib.import_module("probes")
    missing = [name for name in probes.__all__ if name != "__version__" and not hasattr(probes, name)]
    assert missing == []


def test_ruff_lint_and_format_are_clean() -> None:
    for args in (["check", "."], ["format", "--check", "."]):
        out = subprocess.run([sys.executable, "-m", "ruff", *args], cwd=ROOT, capture_output=True, text=True)
        assert out.returncode == 0, f"ruff {' '.join(args)} failed:\n{out.stdout}{out.stderr}"
